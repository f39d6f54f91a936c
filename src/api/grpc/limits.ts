// Limits that keep kmsd answering under abuse and overload, so that too much work turns into clear
// errors (Throttling, RESOURCE_EXHAUSTED) instead of memory growth or a stuck event loop:
//   - a per-principal token bucket (requests per second with a burst);
//   - a bulkhead in front of the token: at most N actions that use the HSM in flight, a bounded
//     queue behind them, and a queue timeout; a full queue is answered with Throttling at once;
//   - request decoding that cannot fail inside grpc-js: a malformed protobuf frame becomes a
//     marker the envelope answers with InvalidParameter (grpc-js itself would say INTERNAL).
//   - unauthenticated TLS connections: a handshake timeout and caps per source address and in all
//     (ConnectionLimits, enforced by listenTls);
//   - batch streams: open streams and buffered bytes per connection and per principal (StreamLimits).
// The maximum message size is a server option (createServer).

import v8 from 'node:v8';
import vm from 'node:vm';
import * as grpc from '@grpc/grpc-js';
import { KmsError } from '../../kms/errors';

export interface LimitsConfig {
  /** Requests per second per principal; 0 turns rate limiting off. */
  ratePerSecond: number;
  /** Bucket size: how many requests a principal may send at once after being idle. */
  rateBurst: number;
  /** Actions using the token that may be in flight at once. */
  maxInFlight: number;
  /** Actions waiting for a slot; beyond this, Throttling. */
  maxQueued: number;
  /** Longest wait for a slot before Throttling, ms. */
  queueTimeoutMs: number;
}

/** Connections that have not completed the TLS handshake (src/api/grpc/auth.ts, listenTls). */
export interface ConnectionLimits {
  /** From connect to a completed handshake, ms; a slower connection is closed. */
  handshakeTimeoutMs: number;
  /** Unauthenticated connections held at once, in all; below MAX_TLS_CONNECTIONS. */
  maxUnauthenticated: number;
  /** Unauthenticated connections held at once from one source address. */
  maxUnauthenticatedPerAddress: number;
}

export const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = {
  handshakeTimeoutMs: 10_000,
  maxUnauthenticated: 1024,
  maxUnauthenticatedPerAddress: 64,
};

export const DEFAULT_LIMITS: LimitsConfig = {
  ratePerSecond: 0,
  rateBurst: 0,
  maxInFlight: 64,
  maxQueued: 1024,
  queueTimeoutMs: 5000,
};

// ------------------------------------------------------------------ rate limit

interface Bucket {
  tokens: number;
  last: number;
}

/** Token buckets per principal. Idle full buckets are dropped, so the map stays small. */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private lastSweep = 0;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get enabled(): boolean {
    return this.rate > 0;
  }

  /** Takes one token for the principal, or throws Throttling. */
  take(principal: string): void {
    if (!this.enabled) return;
    const t = this.now();
    const cap = Math.max(1, this.burst || this.rate);
    if (t - this.lastSweep > 10_000) this.sweep(t, cap);
    let b = this.buckets.get(principal);
    if (!b) {
      b = { tokens: cap, last: t };
      this.buckets.set(principal, b);
    } else {
      b.tokens = Math.min(cap, b.tokens + ((t - b.last) / 1000) * this.rate);
      b.last = t;
    }
    if (b.tokens < 1) {
      const waitMs = Math.ceil(((1 - b.tokens) / this.rate) * 1000);
      throw new KmsError('Throttling', `principal ${principal} is over its rate limit of ${this.rate} requests per second (burst ${cap}); retry in ${waitMs} ms or later`);
    }
    b.tokens -= 1;
  }

  private sweep(t: number, cap: number): void {
    this.lastSweep = t;
    for (const [p, b] of this.buckets) {
      if (b.tokens + ((t - b.last) / 1000) * this.rate >= cap) this.buckets.delete(p);
    }
  }

  get size(): number {
    return this.buckets.size;
  }
}

// ------------------------------------------------------------------ bulkhead

/** Raised (never sent: grpc-js has already answered) when a queued call's deadline passed or its client went away. */
export class CallAbandoned extends Error {
  constructor(readonly why: 'cancelled') {
    super('the call was cancelled or its deadline passed while it waited');
    this.name = 'CallAbandoned';
  }
}

interface Waiter {
  start: () => void;
  fail: (e: Error) => void;
}

/**
 * A semaphore with a bounded queue. Work runs when a slot is free; otherwise it waits in a FIFO of
 * at most maxQueued entries for at most queueTimeoutMs; past either bound it fails with Throttling.
 */
export class Bulkhead {
  private active = 0;
  private readonly queue: Waiter[] = [];
  readonly stats = { admitted: 0, queued: 0, rejected: 0, timedOut: 0, abandoned: 0, maxActive: 0, maxQueue: 0 };

  constructor(private readonly cfg: Pick<LimitsConfig, 'maxInFlight' | 'maxQueued' | 'queueTimeoutMs'>) {}

  get inFlight(): number {
    return this.active;
  }

  get waiting(): number {
    return this.queue.length;
  }

  /**
   * Runs fn in a slot. `cancelled` is polled before starting, and `onCancel` registers a hook the
   * caller fires when the call goes away, so abandoned work leaves the queue instead of running.
   */
  run<T>(fn: () => T | Promise<T>, call?: { cancelled: boolean; onCancel(cb: () => void): void }): Promise<T> {
    if (this.active < this.cfg.maxInFlight && this.queue.length === 0) return this.start(fn);
    if (this.queue.length >= this.cfg.maxQueued) {
      this.stats.rejected++;
      return Promise.reject(new KmsError('Throttling', `the HSM is busy: ${this.active} operations in flight and ${this.queue.length} waiting; retry with backoff`));
    }
    this.stats.queued++;
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        this.remove(w);
        this.stats.timedOut++;
        reject(new KmsError('Throttling', `the HSM is busy: no slot within ${this.cfg.queueTimeoutMs} ms; retry with backoff`));
      }, this.cfg.queueTimeoutMs);
      timer.unref?.();
      const w: Waiter = {
        start: () => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          if (call?.cancelled) {
            this.stats.abandoned++;
            this.releaseNext();
            reject(new CallAbandoned('cancelled'));
            return;
          }
          this.start(fn, true).then(resolve, reject);
        },
        fail: (e) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          reject(e);
        },
      };
      call?.onCancel(() => {
        if (settled) return;
        this.remove(w);
        this.stats.abandoned++;
        w.fail(new CallAbandoned('cancelled'));
      });
      this.queue.push(w);
      if (this.queue.length > this.stats.maxQueue) this.stats.maxQueue = this.queue.length;
    });
  }

  /** Starts fn, holding a slot until it settles. `handedOver`: the slot was passed on by releaseNext. */
  private start<T>(fn: () => T | Promise<T>, handedOver = false): Promise<T> {
    if (!handedOver) this.active++;
    this.stats.admitted++;
    if (this.active > this.stats.maxActive) this.stats.maxActive = this.active;
    let p: Promise<T>;
    try {
      p = Promise.resolve(fn());
    } catch (e) {
      p = Promise.reject(e);
    }
    return p.finally(() => this.releaseNext());
  }

  /** Frees a slot: hands it to the next waiter, or gives it back. */
  private releaseNext(): void {
    const next = this.queue.shift();
    if (next) next.start();
    else this.active--;
  }

  private remove(w: Waiter): void {
    const i = this.queue.indexOf(w);
    if (i >= 0) this.queue.splice(i, 1);
  }
}

// ------------------------------------------------------------------ batch streams

/** Batch streams (EncryptStream, DecryptStream): how many are open and how much they may hold. */
export interface StreamLimits {
  /** Open streams per connection; a stream over it is refused with RESOURCE_EXHAUSTED. */
  maxStreamsPerConnection: number;
  /** Open streams per principal, over every connection. */
  maxStreamsPerPrincipal: number;
  /** Bytes of stream messages being worked on and of answers the client has not read yet, per connection. */
  maxBufferedBytesPerConnection: number;
  /** The same, per principal. */
  maxBufferedBytesPerPrincipal: number;
}

export const DEFAULT_STREAM_LIMITS: StreamLimits = {
  maxStreamsPerConnection: 16,
  maxStreamsPerPrincipal: 32,
  maxBufferedBytesPerConnection: 8 * 1024 * 1024,
  maxBufferedBytesPerPrincipal: 32 * 1024 * 1024,
};

interface StreamPool {
  streams: number;
  bytes: number;
}

/** What one stream holds, charged to its connection and its principal as well. */
export interface StreamAccount {
  /** Bytes this stream holds now (messages in work, answers not yet taken by the client). */
  readonly bytes: number;
  /**
   * Charges `n` bytes if the connection and the principal have room. Without room: 'wait' when this
   * stream holds something itself (it gets room back as its own answers are read), else a
   * Throttling error naming the limit (the room is held by other streams, maybe never given back).
   */
  reserve(n: number): 'ok' | 'wait' | KmsError;
  /** Whether another message may be read now: the same answer as reserve() for a message of 1 byte, without charging it. */
  room(): 'ok' | 'wait' | KmsError;
  release(n: number): void;
  /** Gives back everything and the stream's place; idempotent. */
  close(): void;
}

/** Streams that held at least this much together get a full garbage collection once they hold nothing. */
const IDLE_COLLECT_BYTES = 4 * 1024 * 1024;

let gc: (() => void) | null | undefined;

/**
 * A full V8 garbage collection. Large stream messages leave hundreds of MB of garbage that an idle
 * daemon would otherwise keep (V8 collects on allocation, and an idle kmsd allocates little), so
 * once stream buffers drain this gives the memory back. Costs one pause of some ms, at most once
 * per drain of a large stream load.
 */
export function collectGarbage(): void {
  if (gc === undefined) {
    try {
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } catch {
      gc = null;
    }
  }
  gc?.();
}

const MiB = (n: number) => (n >= 1024 * 1024 ? `${Math.round((n / 1024 / 1024) * 10) / 10} MiB` : `${n} bytes`);

/**
 * Open batch streams and the bytes they hold, per connection and per principal. Limits a client
 * that sends large messages and never reads the answers: without them each stream kept its
 * messages and their answers in memory for as long as it stayed open.
 */
export class StreamBudget {
  private readonly connections = new Map<string, StreamPool>();
  private readonly principals = new Map<string, StreamPool>();
  readonly stats = { refusedStreams: 0, refusedMessages: 0, maxBytes: 0 };
  private total = 0;

  private peakSinceIdle = 0;
  private collectTimer: NodeJS.Timeout | null = null;

  /** `onIdle`: called (debounced) when streams that held a lot hold nothing any more. */
  constructor(
    readonly limits: StreamLimits,
    private readonly onIdle: () => void = collectGarbage,
  ) {}

  /** Bytes held by every stream now. */
  get bytes(): number {
    return this.total;
  }

  /** Opens a stream for `connection` (its peer address) and `principal`, or throws Throttling naming the limit. */
  open(action: string, connection: string, principal: string): StreamAccount {
    const conn = this.connections.get(connection) ?? { streams: 0, bytes: 0 };
    const who = this.principals.get(principal) ?? { streams: 0, bytes: 0 };
    const l = this.limits;
    if (conn.streams >= l.maxStreamsPerConnection) {
      this.stats.refusedStreams++;
      throw new KmsError('Throttling', `${action}: ${conn.streams} EncryptStream/DecryptStream streams are open on this connection, the limit is ${l.maxStreamsPerConnection} (KMS_STREAM_MAX_PER_CONNECTION); end a stream or use another connection`);
    }
    if (who.streams >= l.maxStreamsPerPrincipal) {
      this.stats.refusedStreams++;
      throw new KmsError('Throttling', `${action}: principal ${principal} has ${who.streams} EncryptStream/DecryptStream streams open, the limit is ${l.maxStreamsPerPrincipal} (KMS_STREAM_MAX_PER_PRINCIPAL); end a stream first`);
    }
    conn.streams++;
    who.streams++;
    this.connections.set(connection, conn);
    this.principals.set(principal, who);
    let own = 0;
    let closed = false;
    const stats = this.stats;
    const release = (n: number) => {
      const k = Math.min(n, own);
      own -= k;
      conn.bytes -= k;
      who.bytes -= k;
      this.total -= k;
      if (this.total === 0 && this.peakSinceIdle >= IDLE_COLLECT_BYTES) {
        this.peakSinceIdle = 0;
        if (this.collectTimer) clearTimeout(this.collectTimer);
        this.collectTimer = setTimeout(() => {
          this.collectTimer = null;
          if (this.total === 0) this.onIdle();
        }, 1000).unref();
      }
    };
    return {
      get bytes() {
        return own;
      },
      room: () => check(1, false),
      reserve: (n) => {
        const r = check(n, true);
        if (r !== 'ok' || closed) return r;
        own += n;
        conn.bytes += n;
        who.bytes += n;
        this.total += n;
        if (this.total > this.stats.maxBytes) this.stats.maxBytes = this.total;
        if (this.total > this.peakSinceIdle) this.peakSinceIdle = this.total;
        return 'ok';
      },
      release: (n) => {
        if (!closed) release(n);
      },
      close: () => {
        if (closed) return;
        release(own);
        closed = true;
        conn.streams--;
        who.streams--;
        if (conn.streams === 0) this.connections.delete(connection);
        if (who.streams === 0) this.principals.delete(principal);
      },
    };
    function check(n: number, count: boolean): 'ok' | 'wait' | KmsError {
      if (closed) return 'ok';
      // A message alone is always taken: the limits are on what streams hold together.
      const overConn = conn.bytes > 0 && conn.bytes + n > l.maxBufferedBytesPerConnection;
      const overWho = who.bytes > 0 && who.bytes + n > l.maxBufferedBytesPerPrincipal;
      if (overConn || overWho) {
        if (own > 0) return 'wait';
        if (count) stats.refusedMessages++;
        return overConn
            ? new KmsError('Throttling', `${action}: EncryptStream/DecryptStream buffers of this connection are full (${MiB(conn.bytes)} of messages in work and answers not read by the client), the limit is ${MiB(l.maxBufferedBytesPerConnection)} (KMS_STREAM_BUFFER_BYTES_PER_CONNECTION); read the answers of open streams`)
            : new KmsError('Throttling', `${action}: EncryptStream/DecryptStream buffers of principal ${principal} are full (${MiB(who.bytes)} of messages in work and answers not read), the limit is ${MiB(l.maxBufferedBytesPerPrincipal)} (KMS_STREAM_BUFFER_BYTES_PER_PRINCIPAL); read the answers of open streams`);
      }
      return 'ok';
    }
  }
}

// ------------------------------------------------------------------ request decoding

const MALFORMED = Symbol('kmsd.malformedRequest');
const WIRE_BYTES = Symbol('kmsd.wireBytes');

/** The size of a request as it arrived (its protobuf encoding), or 0 when unknown. */
export function wireBytes(req: unknown): number {
  return typeof req === 'object' && req !== null && WIRE_BYTES in req ? (req as { [WIRE_BYTES]: number })[WIRE_BYTES] : 0;
}

export interface MalformedRequest {
  [MALFORMED]: string;
}

export function isMalformed(req: unknown): req is MalformedRequest {
  return typeof req === 'object' && req !== null && MALFORMED in req;
}

export function malformedReason(req: MalformedRequest): string {
  return req[MALFORMED];
}

/**
 * A copy of a service definition whose request decoders never throw: a frame that is not a valid
 * message of the request type decodes to a marker, and the envelope answers InvalidParameter with
 * a request id, a log line and the usual accounting (grpc-js would answer INTERNAL on its own).
 */
export function hardenService(def: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, m] of Object.entries(def)) {
    const decode = m.requestDeserialize;
    out[name] = {
      ...m,
      requestDeserialize: (bytes: Buffer) => {
        let req: object;
        try {
          req = decode(bytes) as object;
        } catch (e) {
          const detail = e instanceof Error ? e.message.replace(/[^\x20-\x7e]/g, '?').slice(0, 120) : 'undecodable';
          req = { [MALFORMED]: detail } as MalformedRequest;
        }
        // Streams charge their memory limits by it (StreamBudget); invisible to everything else.
        if (req && typeof req === 'object') Object.defineProperty(req, WIRE_BYTES, { value: bytes.length });
        return req;
      },
    };
  }
  return out as grpc.ServiceDefinition;
}
