// What every kmsd client shares: options, the error type and the endpoint. Apart from client.ts,
// and without loading @grpc/grpc-js (types only), so that kmsctl's light client (light-client.ts)
// gets them without loading gRPC's library or the proto-loader stubs.

import type * as grpc from '@grpc/grpc-js';
import { clientEnvironment } from '../config';

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
  return opts.endpoint ?? clientEnvironment().endpoint ?? DEFAULT_ENDPOINT;
}
