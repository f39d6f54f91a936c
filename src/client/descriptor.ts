// The API's services and messages as a protobufjs JSON descriptor, proto/kms/v1/api.json, generated
// from the .proto files (`node dist/scripts/gen-api-descriptor.js`; test/unit/api-descriptor.test.ts
// fails when it is out of step). kmsctl reads it instead of parsing the .proto files at every start:
// listing actions, checking --Param names and types, and encoding a call's messages
// (src/client/wire.ts, src/client/light-client.ts) need no protobuf library at all.

import fs from 'node:fs';
import path from 'node:path';

export const SERVICE_NAMES = ['KeyManagementService', 'CeremonyService', 'AuditService'] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

export const PROTO_FILES = ['kms/v1/kms.proto', 'kms/v1/ceremony.proto', 'kms/v1/audit.proto'];
export const DESCRIPTOR_FILE = 'kms/v1/api.json';

export interface JsonField {
  type: string;
  id: number;
  rule?: string;
  /** Set for map fields. */
  keyType?: string;
}
export interface JsonMethod {
  requestType: string;
  responseType: string;
  requestStream?: boolean;
  responseStream?: boolean;
}
interface JsonNamespace {
  fields?: Record<string, JsonField>;
  methods?: Record<string, JsonMethod>;
  values?: Record<string, number>;
  nested?: Record<string, JsonNamespace>;
}

/** The repository's proto/ directory, whether running compiled (dist/src/client) or from source. */
export function findProtoDir(): string {
  for (let dir = __dirname; dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'proto');
    if (fs.existsSync(path.join(candidate, 'kms', 'v1', 'kms.proto'))) return candidate;
  }
  throw new Error('proto/kms/v1/kms.proto not found above ' + __dirname);
}

let cached: { root: Record<string, unknown>; v1: Record<string, JsonNamespace> } | null = null;

function load(): { root: Record<string, unknown>; v1: Record<string, JsonNamespace> } {
  if (!cached) {
    const root = JSON.parse(fs.readFileSync(path.join(findProtoDir(), DESCRIPTOR_FILE), 'utf8')) as { nested: { kms: JsonNamespace } };
    cached = { root, v1: root.nested.kms.nested?.v1?.nested ?? {} };
  }
  return cached;
}

/** The descriptor as protobufjs's Root.fromJSON takes it. */
export function apiDescriptorJson(): Record<string, unknown> {
  return load().root;
}

export function serviceMethods(service: ServiceName): Record<string, JsonMethod> {
  return load().v1[service]?.methods ?? {};
}

/** The service that has this action (names are unique across the services), or undefined. */
export function serviceOf(action: string): ServiceName | undefined {
  return SERVICE_NAMES.find((s) => Object.prototype.hasOwnProperty.call(serviceMethods(s), action));
}

/** A message or enum of package kms.v1 by its name as the descriptor writes it ("A" or "A.B"). */
export function lookupType(name: string): JsonNamespace | undefined {
  let node: JsonNamespace | undefined = { nested: load().v1 };
  for (const part of name.replace(/^\.?kms\.v1\./, '').split('.')) node = node?.nested?.[part];
  return node;
}

const SCALAR_TYPES = new Set(['double', 'float', 'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64', 'fixed32', 'fixed64', 'sfixed32', 'sfixed64', 'bool', 'string', 'bytes']);

/**
 * The descriptor cut down to the package's types `names` need (the types themselves, with their
 * nested types, and every type their fields use, transitively): Root.fromJSON of this is a fraction
 * of the cost of the whole API for the one call kmsctl makes.
 */
export function descriptorSubset(names: string[]): Record<string, unknown> {
  const all = load().v1;
  const out: Record<string, JsonNamespace> = {};
  const visit = (top: string): void => {
    if (out[top] || !all[top]) return;
    out[top] = all[top];
    const walk = (node: JsonNamespace): void => {
      for (const f of Object.values(node.fields ?? {})) {
        for (const t of [f.type, f.keyType]) {
          if (!t || SCALAR_TYPES.has(t)) continue;
          const first = t.replace(/^\.?kms\.v1\./, '').split('.')[0];
          if (!node.nested?.[first]) visit(first); // nested types come along with their parent
        }
      }
      for (const n of Object.values(node.nested ?? {})) walk(n);
    };
    walk(all[top]);
  };
  for (const n of names) visit(n.replace(/^\.?kms\.v1\./, '').split('.')[0]);
  return { nested: { kms: { nested: { v1: { nested: out } } } } };
}

/** Builds the descriptor from the .proto files (the generator and its test; needs full protobufjs). */
export function buildApiDescriptor(protoDir = findProtoDir()): Record<string, unknown> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const protobuf = require('protobufjs') as typeof import('protobufjs');
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(protoDir, target));
  root.loadSync(PROTO_FILES, { keepCase: true });
  return root.toJSON() as Record<string, unknown>;
}
