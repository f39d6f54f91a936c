// kmsctl's client: every unary action of every service as one gRPC call over node:http2, with
// messages encoded from the precompiled descriptor (src/client/descriptor.ts, src/client/wire.ts)
// as the proto-loader stubs of KmsClient and KmsdClient encode them, but without loading
// @grpc/grpc-js or any protobuf library: loading them was most of a kmsctl call's start-up time. No kmsctl action streams (the
// stream RPCs have batch twins), so the unary subset of gRPC's wire protocol is all it speaks:
// POST /kms.v1.Service/Action with a 5-byte length prefix on the message, the status in trailers.

import fs from 'node:fs';
import http2 from 'node:http2';
import { ClientOptions, Json, KmsClientError, endpointsOf } from './basics';
import { clientEnvironment } from '../config';
import { EndpointRing } from './endpoints';
import { SERVICE_NAMES, serviceMethods, serviceOf } from './descriptor';
import { decode, encode } from './wire';

/** gRPC status codes by number, named as grpc-js names them (the Code of an error without kms-error-code). */
const STATUS_NAMES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS', 'UNAUTHENTICATED'] as const;
const status = Object.fromEntries(STATUS_NAMES.map((n, i) => [n, i])) as Record<(typeof STATUS_NAMES)[number], number>;

/** KmsClient's limit on an answer (grpc.max_receive_message_length). */
const MAX_RECEIVE = 16 * 1024 * 1024;

/** The gRPC status for an HTTP status other than 200 (gRPC's http-grpc-status-mapping). */
function statusOfHttp(code: number): number {
  switch (code) {
    case 400:
      return status.INTERNAL;
    case 401:
      return status.UNAUTHENTICATED;
    case 403:
      return status.PERMISSION_DENIED;
    case 404:
      return status.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return status.UNAVAILABLE;
    default:
      return status.UNKNOWN;
  }
}

/** host:port, [v6]:port, or grpc-js's dns: forms, as an https/http authority. */
function authorityOf(endpoint: string): string {
  const target = endpoint.replace(/^dns:(\/\/[^/]*\/)?/, '');
  if (!/^(\[[0-9a-fA-F:.]+\]|[^:\s/]+):\d+$/.test(target)) throw new KmsClientError('InvalidEndpoint', `endpoint "${endpoint}" is not HOST:PORT`, status.INVALID_ARGUMENT);
  return target;
}

/** gRPC's timeout header holds at most 8 digits: milliseconds, or seconds for a long deadline. */
function grpcTimeout(ms: number): string {
  const n = Math.max(1, Math.ceil(ms));
  return n < 1e8 ? `${n}m` : `${Math.min(99_999_999, Math.ceil(n / 1000))}S`;
}

function header(headers: http2.IncomingHttpHeaders, name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

function grpcMessage(raw: string | undefined): string {
  if (!raw) return '';
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw;
  }
}

/** One endpoint's HTTP/2 connection, reopened when it has gone. */
interface Connection {
  session: http2.ClientHttp2Session | null;
  /** The current session's connection (and TLS handshake) is up: a call on it may have been sent. */
  connected: boolean;
}

/**
 * Several endpoints (`--endpoint a:1,b:2`): each has its own connection, calls go round robin and a
 * failed call goes to the next endpoint as src/client/endpoints.ts states, as with KmsClient.
 */
export class LightClient {
  private readonly ring: EndpointRing<Connection>;

  constructor(private readonly opts: ClientOptions = {}) {
    this.ring = new EndpointRing(endpointsOf(opts), () => ({ session: null, connected: false }), opts.endpointBackoffMs);
  }

  get actions(): string[] {
    return SERVICE_NAMES.flatMap((s) => Object.keys(serviceMethods(s)));
  }

  /** One HTTP/2 connection per endpoint for every call of this client, opened on the first (TLS when a CA is given, as KmsClient). */
  private connect(i: number): Connection {
    const conn = this.ring.conn(i);
    if (conn.session && !conn.session.closed && !conn.session.destroyed) return conn;
    const authority = authorityOf(this.ring.endpoints[i]);
    const env = clientEnvironment();
    const caFile = this.opts.caFile ?? env.caFile;
    let session: http2.ClientHttp2Session;
    if (caFile) {
      const keyFile = this.opts.keyFile ?? env.keyFile;
      const certFile = this.opts.certFile ?? env.certFile;
      session = http2.connect(`https://${authority}`, {
        ca: fs.readFileSync(caFile),
        ...(keyFile ? { key: fs.readFileSync(keyFile) } : {}),
        ...(certFile ? { cert: fs.readFileSync(certFile) } : {}),
        ALPNProtocols: ['h2'],
      });
    } else {
      session = http2.connect(`http://${authority}`);
    }
    // A connection or handshake failure fails the calls on it (each stream sees it); the session
    // must not throw it as an uncaught 'error'.
    session.on('error', () => undefined);
    conn.session = session;
    conn.connected = false;
    session.once('connect', () => {
      if (conn.session === session) conn.connected = true;
    });
    return conn;
  }

  call<T = Json>(action: string, request: Json = {}): Promise<T> {
    const service = serviceOf(action);
    const method = service ? serviceMethods(service)[action] : undefined;
    if (!service || !method) return Promise.reject(new KmsClientError('InvalidAction', `unknown action ${action}`, status.UNIMPLEMENTED));
    if (method.requestStream || method.responseStream) return Promise.reject(new KmsClientError('InvalidAction', `${action} is a stream`, status.UNIMPLEMENTED));
    let body: Buffer;
    try {
      const msg = encode(method.requestType, request);
      body = Buffer.alloc(5 + msg.length);
      body.writeUInt32BE(msg.length, 1);
      body.set(msg, 5);
    } catch (e) {
      return Promise.reject(new KmsClientError('INTERNAL', `Request message serialization failure: ${(e as Error).message}`, status.INTERNAL));
    }
    // One deadline for the call, retries on other endpoints included.
    const end = Date.now() + (this.opts.deadlineMs ?? 60_000);
    return this.ring.route(action, (i) => this.attempt<T>(i, service, action, method.responseType, body, Math.max(1, end - Date.now())));
  }

  /** The call on endpoint i, with what is left of its deadline. */
  private attempt<T>(i: number, service: string, action: string, responseType: string, body: Buffer, deadlineMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let conn: Connection;
      try {
        conn = this.connect(i);
      } catch (e) {
        reject(e);
        return;
      }
      const session = conn.session!;
      let settled = false;
      const finish = (err: KmsClientError | null, value?: T) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value as T);
      };
      const timer = setTimeout(() => {
        finish(new KmsClientError('DEADLINE_EXCEEDED', `Deadline exceeded after ${(deadlineMs / 1000).toFixed(3)}s`, status.DEADLINE_EXCEEDED));
        stream.close(http2.constants.NGHTTP2_CANCEL);
      }, Math.min(deadlineMs, 2 ** 31 - 1)); // setTimeout fires at once beyond 32 bits
      const stream = session.request({
        ':method': 'POST',
        ':path': `/kms.v1.${service}/${action}`,
        'content-type': 'application/grpc',
        te: 'trailers',
        'grpc-timeout': grpcTimeout(deadlineMs),
        'user-agent': 'kmsctl-light',
      });
      const chunks: Buffer[] = [];
      let received = 0;
      let headers: http2.IncomingHttpHeaders = {};
      let trailers: http2.IncomingHttpHeaders | null = null;
      stream.on('response', (h) => {
        headers = h;
      });
      stream.on('trailers', (t) => {
        trailers = t;
      });
      stream.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > MAX_RECEIVE + 5) {
          finish(new KmsClientError('RESOURCE_EXHAUSTED', `Received message larger than max (${received} vs. ${MAX_RECEIVE})`, status.RESOURCE_EXHAUSTED));
          stream.close(http2.constants.NGHTTP2_CANCEL);
          return;
        }
        chunks.push(chunk);
      });
      stream.on('error', (e: Error & { code?: string }) => {
        if (e.code !== 'ERR_HTTP2_STREAM_ERROR') {
          // grpc-js' words, which the retry rule reads: before the connection was up the call was
          // never sent; after, it may have reached kmsd.
          const what = conn.connected ? 'Connection dropped' : 'No connection established';
          finish(new KmsClientError('UNAVAILABLE', `${what}. Last error: ${e.message}`, status.UNAVAILABLE));
          return;
        }
        // The server reset the call, as grpc-js maps the reset codes.
        const rst = stream.rstCode;
        const code = rst === http2.constants.NGHTTP2_REFUSED_STREAM ? status.UNAVAILABLE : rst === http2.constants.NGHTTP2_CANCEL ? status.CANCELLED : rst === http2.constants.NGHTTP2_ENHANCE_YOUR_CALM ? status.RESOURCE_EXHAUSTED : status.INTERNAL;
        // grpc-js' words for REFUSED_STREAM, which the retry rule reads (the call was not processed).
        finish(new KmsClientError(STATUS_NAMES[code], rst === http2.constants.NGHTTP2_REFUSED_STREAM ? 'Stream refused by server' : `Received RST_STREAM with code ${rst}`, code));
      });
      stream.on('close', () => {
        if (settled) return;
        // A trailers-only answer (every error kmsd gives) carries the status in the headers.
        const meta: http2.IncomingHttpHeaders = { ...headers, ...(trailers ?? {}) };
        const httpStatus = Number(header(headers, ':status') ?? 0);
        const grpcStatus = header(meta, 'grpc-status');
        if (grpcStatus === undefined) {
          if (httpStatus && httpStatus !== 200) {
            const code = statusOfHttp(httpStatus);
            finish(new KmsClientError(STATUS_NAMES[code], `Received HTTP status code ${httpStatus}`, code));
          } else if (!httpStatus) {
            // No answer at all, not even headers: the connection went (under TLS 1.3 a server
            // refuses a client certificate only after the client has sent its request; grpc-js
            // answers UNAVAILABLE there too). kmsd itself always answers with headers.
            const what = conn.connected ? 'Connection dropped' : 'No connection established';
            finish(new KmsClientError('UNAVAILABLE', `${what}. Last error: the connection closed before an answer`, status.UNAVAILABLE));
          } else {
            finish(new KmsClientError('INTERNAL', `Received RST_STREAM with code ${stream.rstCode ?? 0} (no status)`, status.INTERNAL));
          }
          return;
        }
        const code = Number(grpcStatus);
        if (code !== status.OK) {
          const name = header(meta, 'kms-error-code') ?? STATUS_NAMES[code] ?? 'Unknown';
          finish(new KmsClientError(name, grpcMessage(header(meta, 'grpc-message')), code, header(meta, 'kms-request-id')));
          return;
        }
        const data = Buffer.concat(chunks);
        if (data.length < 5 || data.readUInt32BE(1) !== data.length - 5) {
          finish(new KmsClientError('INTERNAL', `malformed answer: ${data.length} bytes do not hold one length-prefixed message`, status.INTERNAL));
          return;
        }
        if (data[0] !== 0) {
          finish(new KmsClientError('INTERNAL', 'the answer is compressed, which kmsctl does not ask for', status.INTERNAL));
          return;
        }
        try {
          finish(null, decode(responseType, data.subarray(5)) as T);
        } catch (e) {
          finish(new KmsClientError('INTERNAL', `Response message parsing error: ${(e as Error).message}`, status.INTERNAL));
        }
      });
      stream.end(body);
    });
  }

  close(): void {
    for (const conn of this.ring.opened()) {
      conn.session?.close();
      conn.session = null;
    }
  }
}
