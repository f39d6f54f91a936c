// Loads the API's proto files once, with options that keep the Alibaba field names as written
// (keepCase) and give int64 as JS numbers. Used by the server and by the client alike.

import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

import fs from 'node:fs';

/** The repository's proto/ directory, whether running compiled (dist/src/api) or from source (src/api). */
function findProtoRoot(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'proto');
    if (fs.existsSync(path.join(candidate, 'kms', 'v1', 'kms.proto'))) return candidate;
  }
  throw new Error('proto/kms/v1/kms.proto not found above ' + __dirname);
}

export const PROTO_DIR = findProtoRoot();
const protoRoot = PROTO_DIR;

export const PROTO_FILES = ['kms/v1/kms.proto', 'kms/v1/ceremony.proto', 'kms/v1/audit.proto'];

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [protoRoot],
};

let cached: { definition: protoLoader.PackageDefinition; pkg: grpc.GrpcObject } | null = null;

export function loadApi(): { definition: protoLoader.PackageDefinition; pkg: grpc.GrpcObject } {
  if (!cached) {
    const definition = protoLoader.loadSync(PROTO_FILES, LOADER_OPTIONS);
    cached = { definition, pkg: grpc.loadPackageDefinition(definition) };
  }
  return cached;
}

export function serviceConstructor(name: 'KeyManagementService' | 'CeremonyService' | 'AuditService'): grpc.ServiceClientConstructor {
  const { pkg } = loadApi();
  const v1 = (pkg.kms as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return v1[name] as grpc.ServiceClientConstructor;
}
