// What every kmsd client shares: options, the error type and the endpoint. Apart from client.ts,
// and without loading @grpc/grpc-js (types only), so that kmsctl's light client (light-client.ts)
// gets them without loading gRPC's library or the proto-loader stubs.

import type * as grpc from '@grpc/grpc-js';
import { clientEnvironment } from '../config';
import { parseEndpointList } from './endpoints';

export interface ClientOptions {
  /**
   * One endpoint (HOST:PORT) or several, as a list or comma-separated: calls go round robin, and a
   * call is retried on the next one as src/client/endpoints.ts states. Default: KMS_ENDPOINT, else
   * DEFAULT_ENDPOINT.
   */
  endpoint?: string | string[];
  /** Names where `endpoint` came from in an error about it (kmsctl: "--endpoint"). */
  endpointSource?: string;
  /** How long an endpoint that failed to connect is passed over (default 1 s). */
  endpointBackoffMs?: number;
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

/**
 * The endpoints a client uses, validated: the option, else KMS_ENDPOINT, else the default. A
 * malformed list (an empty entry, a bad port) fails naming the flag, variable or option it came from.
 */
export function endpointsOf(opts: ClientOptions): string[] {
  if (opts.endpoint !== undefined) {
    const raw = Array.isArray(opts.endpoint) ? opts.endpoint.join(',') : opts.endpoint;
    return parseEndpointList(raw, opts.endpointSource ?? 'endpoint');
  }
  const env = clientEnvironment().endpoint;
  return env !== undefined ? parseEndpointList(env, 'KMS_ENDPOINT') : [DEFAULT_ENDPOINT];
}

/** The first endpoint (for messages and callers that talk to one). */
export function endpointOf(opts: ClientOptions): string {
  return endpointsOf(opts)[0];
}
