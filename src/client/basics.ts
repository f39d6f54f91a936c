// What every kmsd client shares: options, the error type and how a gRPC error becomes one, the
// endpoint and the channel credentials. Apart from client.ts so that kmsctl's light client
// (light-client.ts) gets them without loading the proto-loader stubs.

import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';

export interface ClientOptions {
  endpoint?: string;
  /** CA bundle to verify the server (enables TLS); cert/key for mutual TLS. */
  caFile?: string;
  certFile?: string;
  keyFile?: string;
  deadlineMs?: number;
}

export class KmsClientError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly grpcCode: grpc.status,
    readonly requestId?: string,
  ) {
    super(message);
    this.name = 'KmsClientError';
  }
}

export const DEFAULT_ENDPOINT = '127.0.0.1:50051';

/* eslint-disable-next-line @typescript-eslint/no-explicit-any */
export type Json = Record<string, any>;

export function endpointOf(opts: ClientOptions): string {
  return opts.endpoint ?? process.env.KMS_ENDPOINT ?? DEFAULT_ENDPOINT;
}

/** TLS when a CA is given (option or KMS_CA), with a client certificate for mutual TLS; else plaintext. */
export function channelCredentials(opts: ClientOptions): grpc.ChannelCredentials {
  const caFile = opts.caFile ?? process.env.KMS_CA;
  if (!caFile) return grpc.credentials.createInsecure();
  const keyFile = opts.keyFile ?? process.env.KMS_KEY;
  const certFile = opts.certFile ?? process.env.KMS_CERT;
  return grpc.credentials.createSsl(fs.readFileSync(caFile), keyFile ? fs.readFileSync(keyFile) : null, certFile ? fs.readFileSync(certFile) : null);
}

export function toClientError(e: { code: grpc.status; details?: string; message?: string; metadata?: grpc.Metadata }): KmsClientError {
  const code = e.metadata?.get('kms-error-code')?.[0]?.toString() ?? grpc.status[e.code] ?? 'Unknown';
  return new KmsClientError(code, e.details || e.message || '', e.code, e.metadata?.get('kms-request-id')?.[0]?.toString());
}
