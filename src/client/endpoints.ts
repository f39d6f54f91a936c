// A client's list of kmsd endpoints (replicas): parsing `--endpoint host1:port,host2:port`, round
// robin with a short back-off for an endpoint that is down, and the rule for when a failed call may
// be sent again to the next endpoint. Shared by KmsClient, KmsdClient and kmsctl's light client, so
// it loads no gRPC library (types only).
//
// The retry rule. A call is sent again, to the next endpoint, only when sending it again cannot do
// twice what the caller asked once:
// - it never left this process (no connection to that endpoint could be made: refused, unreachable,
//   name not resolved, TLS handshake failed) or the replica refused the stream unprocessed (HTTP/2
//   REFUSED_STREAM): safe for every call, CreateKey and ImportKeyMaterial
//   included, since that replica never saw it;
// - it failed with UNAVAILABLE after it may have been sent (the connection dropped mid-call, or the
//   replica answered ServiceUnavailable): only for calls that are idempotent by nature (reads and
//   the data-plane calls that change no state: Encrypt, Decrypt, GenerateDataKey, Describe*, List*,
//   Get* reads). A call that creates or changes something (CreateKey, ImportKeyMaterial,
//   ApproveProposal, ...) may have run there, so its UNAVAILABLE goes back to the caller, who knows
//   whether doing it twice is harmless.
// Any other failure (an answer from kmsd, DEADLINE_EXCEEDED) is the call's answer and is not retried.

import type * as grpc from '@grpc/grpc-js';
import { KmsClientError } from './basics';

const INVALID_ARGUMENT = 3 as grpc.status;
const UNAVAILABLE = 14 as grpc.status;

/** How long an endpoint that failed to connect (or answered UNAVAILABLE) is passed over. */
export const DEFAULT_ENDPOINT_BACKOFF_MS = 1000;

/**
 * A comma-separated list of endpoints: each HOST:PORT, [IPv6]:PORT, dns:[//AUTHORITY/]HOST:PORT or
 * unix:PATH. `source` names where the list came from (the flag, the variable, the option) so that
 * the error says what to fix.
 */
export function parseEndpointList(raw: string, source: string): string[] {
  const bad = (why: string) => new KmsClientError('InvalidEndpoint', `${source}: ${why}`, INVALID_ARGUMENT);
  const entries = raw.split(',').map((e) => e.trim());
  const out: string[] = [];
  entries.forEach((entry, i) => {
    if (entry === '') throw bad(`entry ${i + 1} of "${raw}" is empty (give HOST:PORT, several separated by commas)`);
    const where = entries.length > 1 ? `entry ${i + 1} ("${entry}")` : `"${entry}"`;
    if (entry.startsWith('unix:')) {
      if (entry.length === 'unix:'.length) throw bad(`${where}: unix: needs a socket path`);
    } else {
      const target = entry.replace(/^dns:(\/\/[^/]*\/)?/, '');
      const m = /^(\[[0-9a-fA-F:.]+\]|[^:\s/[\]]+):([^:]*)$/.exec(target);
      if (!m) throw bad(`${where} is not HOST:PORT`);
      const port = m[2];
      if (!/^\d{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) throw bad(`${where} has port "${port}"; a port is an integer from 1 to 65535`);
    }
    if (out.includes(entry)) throw bad(`"${entry}" is listed twice`);
    out.push(entry);
  });
  return out;
}

const IDEMPOTENT_PREFIXES = ['Describe', 'List', 'Get'];
/** Get* actions that create something (an import token and its wrapping key). */
const NOT_IDEMPOTENT = new Set(['GetParametersForImport']);
const IDEMPOTENT = new Set(['Encrypt', 'Decrypt', 'EncryptBatch', 'DecryptBatch', 'ReEncrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'GenerateRandom', 'VerifyAudit', 'ExportAudit']);

/** Whether running the action twice does what running it once does (see the rule above). */
export function idempotentByNature(action: string): boolean {
  if (NOT_IDEMPOTENT.has(action)) return false;
  return IDEMPOTENT.has(action) || IDEMPOTENT_PREFIXES.some((p) => action.startsWith(p) && /^[A-Z]/.test(action.slice(p.length)));
}

/** What a failed attempt tells the router. */
export type AttemptFailure =
  /** No connection to the endpoint: the call never left this process. */
  | 'not-sent'
  /** UNAVAILABLE after the call may have reached the endpoint. */
  | 'unavailable'
  /** An answer (or a deadline): final. */
  | 'final';

/**
 * grpc-js' wording for a call that failed before any connection carried it, or that the server
 * refused with REFUSED_STREAM (HTTP/2 promises that such a stream was not processed at all: a
 * replica shutting down answers so).
 */
const NOT_SENT_DETAILS = /^(No connection established|Name resolution failed|Failed to connect|Stream refused by server)/;

/** Classifies a KmsClientError from grpc-js or the light client (which uses grpc-js' wording). */
export function classifyFailure(e: unknown): AttemptFailure {
  if (!(e instanceof KmsClientError) || e.grpcCode !== UNAVAILABLE) return 'final';
  if (e.code === 'UNAVAILABLE' && NOT_SENT_DETAILS.test(e.message)) return 'not-sent';
  return 'unavailable';
}

/**
 * Round robin over endpoints, each with its own connection (T), passing over for `backoffMs` an
 * endpoint whose last attempt failed with UNAVAILABLE. When every endpoint is in its back-off, all
 * are tried all the same: failing without trying would turn a brief outage into a longer one.
 */
export class EndpointRing<T> {
  private next = 0;
  private readonly downUntil: number[];
  private readonly conns: (T | undefined)[];

  constructor(
    readonly endpoints: string[],
    private readonly open: (endpoint: string) => T,
    private readonly backoffMs = DEFAULT_ENDPOINT_BACKOFF_MS,
  ) {
    if (endpoints.length === 0) throw new KmsClientError('InvalidEndpoint', 'no endpoint given', INVALID_ARGUMENT);
    this.downUntil = endpoints.map(() => 0);
    this.conns = endpoints.map(() => undefined);
  }

  /** The connection of endpoint i, opened on first use. */
  conn(i: number): T {
    return (this.conns[i] ??= this.open(this.endpoints[i]));
  }

  /** Every connection opened so far. */
  opened(): T[] {
    return this.conns.filter((c): c is T => c !== undefined);
  }

  /** The order in which one call tries the endpoints: from the round-robin position, endpoints in back-off last. */
  order(): number[] {
    const n = this.endpoints.length;
    const now = Date.now();
    const all = Array.from({ length: n }, (_, k) => (this.next + k) % n);
    const up = all.filter((i) => this.downUntil[i] <= now);
    const down = all.filter((i) => this.downUntil[i] > now);
    // The next call starts after the endpoint that answers this one (route() moves it there), or
    // after this one's first choice should none answer.
    this.next = ((up[0] ?? all[0]) + 1) % n;
    return [...up, ...down];
  }

  markDown(i: number): void {
    this.downUntil[i] = Date.now() + this.backoffMs;
  }

  markUp(i: number): void {
    this.downUntil[i] = 0;
  }

  /**
   * Runs one call: attempt(i) on endpoints in order() until one answers, moving on only as the rule
   * above allows. The last failure is what the caller gets.
   */
  async route<R>(action: string, attempt: (i: number) => Promise<R>): Promise<R> {
    let last: unknown;
    for (const i of this.order()) {
      try {
        const r = await attempt(i);
        this.markUp(i);
        this.next = (i + 1) % this.endpoints.length;
        return r;
      } catch (e) {
        const kind = classifyFailure(e);
        if (kind === 'final') throw e;
        this.markDown(i);
        last = e;
        if (kind === 'unavailable' && !idempotentByNature(action)) throw e;
      }
    }
    throw last;
  }
}
