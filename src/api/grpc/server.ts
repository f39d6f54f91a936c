// gRPC wiring: one handler per action, each wrapped by the same envelope that assigns a request
// id, logs the call (never its payload), and maps errors through the one table. Health checking
// and server reflection are registered beside the KMS service.

import crypto from 'node:crypto';
import http2 from 'node:http2';
import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { ReflectionService } from '@grpc/reflection';
import { loadApi, serviceConstructor } from '../proto';
import { KmsError } from '../../kms/errors';
import type { KmsService, Logger } from '../../kms/service';
import type { ImportService } from '../../kms/import';
import type { CallContext } from '../../kms/types';
import type { CeremonyExtension } from './ceremony';
import { ANONYMOUS, principalFromCertificate } from './auth';
import type { CallGuard } from './auth';
import { CallAbandoned, DEFAULT_STREAM_LIMITS, StreamAccount, StreamBudget, StreamLimits, hardenService, wireBytes } from './limits';
import { DATA_PLANE_ACTIONS, admit, answerFor, logInternal } from '../admission';
import { BatchService } from '../../kms/batch';
import type { AccessKeyService } from '../../kms/access-keys';
import type { XksService } from '../../kms/xks';
import { describeRuntime, startRuntimeMonitor } from './runtime';
import { CALL_TURN_BUDGET_MS, Turns } from '../../turns';
import type { Readiness } from '../readiness';

export const ERROR_CODE_METADATA = 'kms-error-code';
export const REQUEST_ID_METADATA = 'kms-request-id';

const STATUS: Record<KmsError['status'], grpc.status> = {
  INVALID_ARGUMENT: grpc.status.INVALID_ARGUMENT,
  NOT_FOUND: grpc.status.NOT_FOUND,
  ALREADY_EXISTS: grpc.status.ALREADY_EXISTS,
  FAILED_PRECONDITION: grpc.status.FAILED_PRECONDITION,
  PERMISSION_DENIED: grpc.status.PERMISSION_DENIED,
  UNAUTHENTICATED: grpc.status.UNAUTHENTICATED,
  RESOURCE_EXHAUSTED: grpc.status.RESOURCE_EXHAUSTED,
  UNAVAILABLE: grpc.status.UNAVAILABLE,
  INTERNAL: grpc.status.INTERNAL,
};

type Action = (req: never, ctx: CallContext) => unknown;

export interface GrpcServices {
  kms: KmsService;
  imports: ImportService;
  log: Logger;
  /** The quorum guard and audit recorder around every action, and the Ceremony/Audit services. */
  ceremony?: CeremonyExtension;
  /** Identity, rate limit, authorization and HSM bulkhead before every action (src/api/grpc/auth.ts). */
  security?: CallGuard;
  /** Access keys of the HTTP dialects (src/kms/access-keys.ts). */
  accessKeys?: AccessKeyService;
  /** The AWS external key store proxy (src/kms/xks.ts). */
  xks?: XksService;
}

function need<T>(service: T | undefined, what = 'access keys'): T {
  if (!service) throw new KmsError('InternalFailure', `${what} are not configured in this server`);
  return service;
}

export function buildActions(s: GrpcServices): Record<string, Action> {
  const k = s.kms;
  const i = s.imports;
  const batch = new BatchService(k);
  return {
    CreateKey: (r: never, ctx: CallContext) => k.CreateKey(r, ctx),
    DescribeKey: (r: never) => k.DescribeKey(r),
    ListKeys: (r: never) => k.ListKeys(r),
    UpdateKeyDescription: (r: never, ctx: CallContext) => k.UpdateKeyDescription(r, ctx),
    EnableKey: (r: never, ctx: CallContext) => k.EnableKey(r, ctx),
    DisableKey: (r: never, ctx: CallContext) => k.DisableKey(r, ctx),
    ScheduleKeyDeletion: (r: never, ctx: CallContext) => k.ScheduleKeyDeletion(r, ctx),
    CancelKeyDeletion: (r: never, ctx: CallContext) => k.CancelKeyDeletion(r, ctx),
    UpdateRotationPolicy: (r: never, ctx: CallContext) => k.UpdateRotationPolicy(r, ctx),
    CreateAlias: (r: never, ctx: CallContext) => k.CreateAlias(r, ctx),
    UpdateAlias: (r: never, ctx: CallContext) => k.UpdateAlias(r, ctx),
    DeleteAlias: (r: never, ctx: CallContext) => k.DeleteAlias(r, ctx),
    ListAliases: (r: never) => k.ListAliases(r),
    ListAliasesByKeyId: (r: never) => k.ListAliasesByKeyId(r),
    Encrypt: (r: never) => k.Encrypt(r),
    Decrypt: (r: never) => k.Decrypt(r),
    GenerateDataKey: (r: never) => k.GenerateDataKey(r),
    GenerateDataKeyWithoutPlaintext: (r: never) => k.GenerateDataKeyWithoutPlaintext(r),
    ReEncrypt: (r: never) => k.ReEncrypt(r),
    GenerateRandom: (r: never) => k.GenerateRandom(r),
    CreateKeyVersion: (r: never, ctx: CallContext) => k.CreateKeyVersion(r, ctx),
    ListKeyVersions: (r: never) => k.ListKeyVersions(r),
    DescribeKeyVersion: (r: never) => k.DescribeKeyVersion(r),
    GetParametersForImport: (r: never) => i.GetParametersForImport(r),
    ImportKeyMaterial: (r: never, ctx: CallContext) => i.ImportKeyMaterial(r, ctx),
    DeleteKeyMaterial: (r: never, ctx: CallContext) => i.DeleteKeyMaterial(r, ctx),
    DescribeHsm: () => i.DescribeHsm(),
    RemoveUnknownTokenObjects: (r: never) => k.RemoveUnknownTokenObjects(r),
    // Batches, their streams (one batch per message, see bidi below) and runtime figures.
    EncryptBatch: (r: never, ctx: CallContext) => batch.EncryptBatch(r, ctx),
    DecryptBatch: (r: never, ctx: CallContext) => batch.DecryptBatch(r, ctx),
    EncryptStream: (r: never, ctx: CallContext) => batch.EncryptBatch(r, ctx),
    DecryptStream: (r: never, ctx: CallContext) => batch.DecryptBatch(r, ctx),
    DescribeRuntime: (r: never) => describeRuntime(k.keyring, r),
    CreateAccessKey: (r: never, ctx: CallContext) => need(s.accessKeys).CreateAccessKey(r, ctx),
    ListAccessKeys: () => need(s.accessKeys).ListAccessKeys(),
    UpdateAccessKey: (r: never, ctx: CallContext) => need(s.accessKeys).UpdateAccessKey(r, ctx),
    DeleteAccessKey: (r: never, ctx: CallContext) => need(s.accessKeys).DeleteAccessKey(r, ctx),
    // The AWS external key store proxy: its administration (gRPC and kmsctl) and the four XKS
    // operations, which only the HTTP listener's XKS dialect calls (no RPC carries them).
    CreateXksKeyStore: (r: never, ctx: CallContext) => need(s.xks, 'external key stores').CreateXksKeyStore(r, ctx),
    CreateXksCredential: (r: never, ctx: CallContext) => need(s.xks, 'external key stores').CreateXksCredential(r, ctx),
    DeleteXksCredential: (r: never, ctx: CallContext) => need(s.xks, 'external key stores').DeleteXksCredential(r, ctx),
    ListXksKeyStores: () => need(s.xks, 'external key stores').ListXksKeyStores(),
    DeleteXksKeyStore: (r: never, ctx: CallContext) => need(s.xks, 'external key stores').DeleteXksKeyStore(r, ctx),
    CreateXksKey: (r: never, ctx: CallContext) => need(s.xks, 'external key stores').CreateXksKey(r, ctx),
    DeleteXksKey: (r: never, ctx: CallContext) => need(s.xks, 'external key stores').DeleteXksKey(r, ctx),
    ListXksKeys: (r: never) => need(s.xks, 'external key stores').ListXksKeys(r),
    XksGetKeyMetadata: (r: never) => need(s.xks, 'external key stores').XksGetKeyMetadata(r),
    XksEncrypt: (r: never) => need(s.xks, 'external key stores').XksEncrypt(r),
    XksDecrypt: (r: never) => need(s.xks, 'external key stores').XksDecrypt(r),
    XksGetHealthStatus: () => need(s.xks, 'external key stores').XksGetHealthStatus(),
  };
}

/** Empty proto3 map fields arrive as {}; the domain treats "no context" and "{}" the same. */
function unary(name: string, action: Action, log: Logger, turns: Turns, guard?: CallGuard): grpc.handleUnaryCall<unknown, unknown> {
  guard?.register(name);
  const quiet = DATA_PLANE_ACTIONS.has(name);
  return (call, callback) => {
    const requestId = crypto.randomUUID();
    const started = process.hrtime.bigint();
    const ctx: CallContext = { requestId, principal: call.getPeer() };
    const trailer = () => {
      const t = new grpc.Metadata();
      t.set(REQUEST_ID_METADATA, requestId);
      return t;
    };
    const done = (err: KmsError | null, outcome: string, internal?: unknown) => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      if (internal !== undefined && err) logInternal(log, requestId, name, internal, err);
      const entry = { requestId, action: name, principal: ctx.principal, outcome, ms: Math.round(ms * 10) / 10 };
      // Successful data-plane calls are counted by the audit log; one info line each cost ~8% of a
      // unary Encrypt (measured by the bench), so they log at debug. Failures and control-plane calls at info.
      if (!err && quiet) log.debug?.(entry, 'call');
      else log.info(entry, 'call');
      if (err) {
        const t = trailer();
        t.set(ERROR_CODE_METADATA, err.code);
        callback({ code: STATUS[err.status], details: err.message, metadata: t });
      }
    };
    const start = () => {
      let result: unknown;
      try {
        // The guard identifies, throttles, authorizes and queues; without one, only the decode check.
        result = admit(name, call, ctx, guard, () => action(call.request as never, ctx));
      } catch (e) {
        fail(e);
        return;
      }
      Promise.resolve(result).then(
        (value) => {
          done(null, 'ok');
          // The request id goes back with every error and every control-plane answer. Successful
          // data-plane answers leave it out: they are only logged at debug level, so there is
          // nothing to look up by it, and the trailer cost the client ~10% of its time per call.
          callback(null, value, quiet ? undefined : trailer());
        },
        (e) => fail(e),
      );
    };
    turns.run(start);

    function fail(e: unknown) {
      if (e instanceof CallAbandoned) return done(null, 'Abandoned'); // grpc-js has answered already
      const { err, internal } = answerFor(e, requestId);
      done(err, err.code, internal);
    }
  };
}

// ------------------------------------------------------------------ batch streams

/** Messages of one stream being worked on at once; past this the stream is paused (backpressure). */
const STREAM_MAX_IN_FLIGHT = 8;
/** Bytes of answers written to a stream and not yet taken by its client past which the stream is paused. */
const STREAM_WRITE_HIGH_WATER = 1024 * 1024;

/** The principal a stream's limits are counted under: the certificate's, or anonymous. */
function streamPrincipal(call: grpc.ServerDuplexStream<unknown, unknown>): string {
  const cert = call.getAuthContext()?.sslPeerCertificate;
  if (!cert) return ANONYMOUS;
  const p = principalFromCertificate(cert);
  return 'principal' in p ? p.principal : 'unauthenticated';
}

/** Roughly the encoded size of a batch answer: its strings and a little per item. */
function answerBytes(value: unknown): number {
  const results = (value as { Results?: Record<string, unknown>[] })?.Results;
  let n = 64;
  if (Array.isArray(results)) {
    for (const r of results) {
      n += 16;
      for (const v of Object.values(r)) if (typeof v === 'string') n += v.length;
    }
  }
  return n;
}

/**
 * Ends a stream with an error status (trailers-only when nothing was written yet), then resets it
 * (NO_ERROR, after the status), so the client stops sending: grpc-js would otherwise go on
 * receiving, and dropping, whatever the client still sends on it.
 */
function endStreamWith(call: grpc.ServerDuplexStream<unknown, unknown>, err: KmsError, streamId: string): void {
  const t = new grpc.Metadata();
  t.set(REQUEST_ID_METADATA, streamId);
  t.set(ERROR_CODE_METADATA, err.code);
  // grpc-js keeps the HTTP/2 stream to itself (call.call.stream, with no server interceptors).
  const h2 = (call as unknown as { call?: { stream?: http2.ServerHttp2Stream } }).call?.stream;
  // Only a trailers-only answer is reset: after headers, the status goes out as trailers later on.
  const trailersOnly = h2 !== undefined && typeof h2.close === 'function' && !h2.headersSent;
  call.emit('error', { code: STATUS[err.status], details: err.message, metadata: t });
  if (!trailersOnly) return;
  // The status goes out from grpc-js's _final, after this turn.
  setImmediate(() => {
    if (h2.headersSent && !h2.closed && !h2.destroyed) h2.close(http2.constants.NGHTTP2_NO_ERROR);
  });
}

/**
 * A bidirectional stream of batches: each request message is one call of `action` through the same
 * admission as a unary call (identity, rate limit, decode check, policy, bulkhead), under its own
 * request id; up to STREAM_MAX_IN_FLIGHT messages run at once and the answers go out in request
 * order. A message refused as a whole is answered with Code and Message (and its BatchId) and the
 * stream goes on; the stream ends when the client half-closes and every answer is written.
 *
 * Memory is bounded (StreamBudget): a stream over the connection's or the principal's limit of open
 * streams is refused at once with RESOURCE_EXHAUSTED; each message is charged its size until its
 * answer has been taken by the client, and the stream stops reading while it has
 * STREAM_MAX_IN_FLIGHT messages in work or STREAM_WRITE_HIGH_WATER bytes of answers unread, or
 * while its connection or principal is out of room and it holds something itself; a stream that
 * holds nothing when there is no room (other streams hold it) ends with RESOURCE_EXHAUSTED.
 */
function bidi(name: string, action: Action, log: Logger, budget: StreamBudget, guard?: CallGuard): grpc.handleBidiStreamingCall<unknown, unknown> {
  guard?.register(name);
  return (call) => {
    const streamId = crypto.randomUUID();
    call.on('error', () => undefined); // a reset by the client ends the stream; nothing to answer
    // grpc-js decodes up to 16 messages ahead of the handler (the object-mode default): keep it to one.
    const readable = (call as unknown as { _readableState?: { highWaterMark: number } })._readableState;
    if (readable) readable.highWaterMark = 1;
    let account: StreamAccount;
    try {
      account = budget.open(name, call.getPeer(), streamPrincipal(call));
    } catch (e) {
      const { err } = answerFor(e, streamId);
      log.info({ requestId: streamId, action: name, peer: call.getPeer(), outcome: err.code, reason: err.message }, 'stream refused');
      endStreamWith(call, err, streamId);
      return;
    }
    let seq = 0;
    let inFlight = 0;
    let unread = 0; // bytes of answers written and not yet taken by the client
    let ended = false;
    let closed = false;
    let stopped = false;
    const waiting: unknown[] = [];
    let tail: Promise<void> = Promise.resolve();
    // One 'cancelled' listener for the stream; messages waiting in the bulkhead register here.
    const cancelHooks = new Set<() => void>();
    call.on('cancelled', () => {
      for (const cb of [...cancelHooks]) cb();
      cancelHooks.clear();
      waiting.length = 0;
      account.close();
    });
    call.on('close', () => account.close());
    const finish = () => {
      if (!ended || inFlight > 0 || waiting.length > 0 || closed || stopped) return;
      closed = true;
      tail.then(() => {
        account.close();
        call.end();
      });
    };
    const stop = (err: KmsError) => {
      // Only reached by a stream that holds nothing: no answer of its own is pending.
      stopped = true;
      waiting.length = 0;
      account.close();
      log.info({ requestId: streamId, action: name, peer: call.getPeer(), outcome: err.code, reason: err.message }, 'stream refused');
      endStreamWith(call, err, streamId);
    };
    const pump = () => {
      while (waiting.length > 0 && !stopped && !call.cancelled) {
        if (inFlight >= STREAM_MAX_IN_FLIGHT || unread >= STREAM_WRITE_HIGH_WATER) break;
        const cost = Math.max(1, wireBytes(waiting[0]));
        const room = account.reserve(cost);
        if (room === 'wait') break;
        if (room instanceof KmsError) return stop(room);
        start(waiting.shift(), cost);
      }
      if (stopped) return;
      if (waiting.length > 0 || inFlight >= STREAM_MAX_IN_FLIGHT || unread >= STREAM_WRITE_HIGH_WATER) call.pause();
      else {
        // Read the next message only when there is room for it: a message read is a message decoded.
        const room = account.room();
        if (room instanceof KmsError) return stop(room);
        if (room === 'wait') call.pause();
        else if (call.isPaused()) call.resume();
      }
      finish();
    };
    const start = (request: unknown, cost: number) => {
      const requestId = `${streamId}/${seq++}`;
      const started = process.hrtime.bigint();
      const ctx: CallContext = { requestId, principal: call.getPeer() };
      const hooks: (() => void)[] = [];
      const unit = {
        request,
        get cancelled() {
          return call.cancelled;
        },
        getPeer: () => call.getPeer(),
        getAuthContext: () => call.getAuthContext(),
        on: (_event: 'cancelled', cb: () => void) => {
          hooks.push(cb);
          cancelHooks.add(cb);
          return unit;
        },
      };
      inFlight++;
      const batchId = typeof (request as { BatchId?: unknown })?.BatchId === 'string' ? (request as { BatchId: string }).BatchId : '';
      const result = new Promise<unknown>((resolve) => {
        resolve(admit(name, unit, ctx, guard, () => action(request as never, ctx)));
      });
      const answer = result.then(
        (value) => {
          log.info({ requestId, action: name, principal: ctx.principal, outcome: 'ok', ms: Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10 }, 'call');
          return value;
        },
        (e: unknown) => {
          if (e instanceof CallAbandoned) return null;
          const { err, internal } = answerFor(e, requestId);
          if (internal !== undefined) logInternal(log, requestId, name, internal, err);
          log.info({ requestId, action: name, principal: ctx.principal, outcome: err.code, ms: Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10 }, 'call');
          return { Results: [], BatchId: batchId, SuccessCount: 0, ErrorCount: 0, Code: err.code, Message: err.message };
        },
      );
      // Answers in request order, whatever order the work finishes in. The message's charge is
      // given back when the client has taken its answer (grpc-js calls back once it is sent).
      tail = tail.then(() =>
        answer.then((value) => {
          for (const cb of hooks) cancelHooks.delete(cb);
          inFlight--;
          if (value !== null && !call.cancelled && !call.destroyed) {
            const size = answerBytes(value);
            unread += size;
            call.write(value, () => {
              unread -= size;
              account.release(cost);
              pump();
            });
          } else {
            account.release(cost);
          }
          pump();
        }),
      );
    };
    // Paused before the first 'data' listener, so nothing is read until pump() finds room.
    call.pause();
    call.on('data', (request: unknown) => {
      if (stopped) return;
      waiting.push(request);
      pump();
    });
    call.on('end', () => {
      ended = true;
      finish();
    });
    pump();
  };
}

export interface ServerHandle {
  server: grpc.Server;
  port: number;
  health: HealthImplementation;
}

/** HTTP/2 streams (calls of any kind) one connection may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS). */
export const DEFAULT_MAX_CONCURRENT_STREAMS = 256;

export function createServer(
  s: GrpcServices,
  opts: { maxMessageBytes?: number; maxConcurrentStreams?: number; streamLimits?: StreamLimits } = {},
): { server: grpc.Server; health: HealthImplementation; streams: StreamBudget; actions: Record<string, Action> } {
  const front = openServer({ ...opts, log: s.log, services: ['KeyManagementService', ...(s.ceremony?.services() ?? []).map((x) => x.name)] });
  const actions = front.install(s);
  return { server: front.server, health: front.health, streams: front.streams, actions };
}

type ServiceName = 'KeyManagementService' | 'CeremonyService' | 'AuditService';

/** A server whose services are registered before the token is open, and installed once it is. */
export interface ServerFront {
  server: grpc.Server;
  health: HealthImplementation;
  streams: StreamBudget;
  /**
   * Puts the real handlers behind every registered method; calls waiting in the front go on to
   * them when `readiness` (if any) is marked ready. Returns the decorated actions (for HTTP).
   */
  install(s: GrpcServices): Record<string, Action>;
}

export interface FrontOptions {
  maxMessageBytes?: number;
  maxConcurrentStreams?: number;
  streamLimits?: StreamLimits;
  log: Logger;
  /** Services (under kms.v1) to register now; each must be among those install() gets. */
  services: ServiceName[];
  /**
   * Calls before install() wait on it (bounded) and are answered ServiceUnavailable.Hsm when it
   * times out or fails. Without it, install() must come before the server is bound.
   */
  readiness?: Readiness;
  /** DescribeHsm's answer before install(): it says the token is still opening instead of waiting. */
  describeOpening?: () => Record<string, unknown>;
}

export function openServer(opts: FrontOptions): ServerFront {
  const server = new grpc.Server({
    'grpc.max_receive_message_length': opts.maxMessageBytes ?? 4 * 1024 * 1024,
    'grpc.max_send_message_length': opts.maxMessageBytes ?? 4 * 1024 * 1024,
    // Clients queue calls beyond it on their side instead of making kmsd hold them.
    'grpc.max_concurrent_streams': opts.maxConcurrentStreams ?? DEFAULT_MAX_CONCURRENT_STREAMS,
  });
  const streams = new StreamBudget(opts.streamLimits ?? DEFAULT_STREAM_LIMITS);
  // service name -> method -> the real handler, once installed.
  const installed = new Map<string, grpc.UntypedServiceImplementation>();
  for (const svc of opts.services) {
    const c = serviceConstructor(svc);
    const front: grpc.UntypedServiceImplementation = {};
    for (const name of Object.keys(c.service)) {
      front[name] = gated(svc, name, installed, opts);
    }
    server.addService(hardenService(c.service), front);
  }
  const health = new HealthImplementation({ '': 'NOT_SERVING', 'kms.v1.KeyManagementService': 'NOT_SERVING' });
  health.addToServer(server);
  new ReflectionService(loadApi().definition).addToServer(server);
  return {
    server,
    health,
    streams,
    install(s: GrpcServices) {
      const ctor = serviceConstructor('KeyManagementService');
      const actions = s.ceremony ? s.ceremony.wrap(buildActions(s)) : buildActions(s);
      const impl: grpc.UntypedServiceImplementation = {};
      const turns = new Turns(CALL_TURN_BUDGET_MS);
      for (const name of Object.keys(ctor.service)) {
        const action = actions[name];
        if (!action) throw new Error(`no handler for RPC ${name}`);
        const m = ctor.service[name];
        impl[name] = m.requestStream && m.responseStream ? bidi(name, action, s.log, streams, s.security) : unary(name, action, s.log, turns, s.security);
      }
      startRuntimeMonitor();
      const all = new Map<string, grpc.UntypedServiceImplementation>([['KeyManagementService', impl]]);
      for (const extra of s.ceremony?.services() ?? []) {
        const c = serviceConstructor(extra.name);
        const extraImpl: grpc.UntypedServiceImplementation = {};
        for (const name of Object.keys(c.service)) {
          if (!extra.actions[name]) throw new Error(`no handler for RPC ${extra.name}.${name}`);
          extraImpl[name] = unary(name, extra.actions[name], s.log, turns, s.security);
        }
        all.set(extra.name, extraImpl);
      }
      for (const svc of opts.services) {
        const real = all.get(svc);
        if (!real) throw new Error(`service ${svc} was registered but has no handlers`);
        installed.set(svc, real);
      }
      // The decorated table goes back too: the HTTP dialects run the very same actions (src/api/admission.ts).
      return actions;
    },
  };
}

/**
 * The handler registered for one method: the real one once installed; before that, the call waits
 * for readiness and then goes on, or is answered ServiceUnavailable.Hsm (never left hanging).
 */
function gated(svc: string, name: string, installed: Map<string, grpc.UntypedServiceImplementation>, opts: FrontOptions): grpc.UntypedHandleCall {
  const real = () => installed.get(svc)?.[name] as ((call: unknown, callback?: unknown) => void) | undefined;
  return (call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, callback?: grpc.sendUnaryData<unknown>) => {
    const h = real();
    if (h) return h(call, callback);
    if (svc === 'KeyManagementService' && name === 'DescribeHsm' && opts.describeOpening && callback) {
      callback(null, opts.describeOpening());
      return;
    }
    const refuse = (err: KmsError) => {
      const t = new grpc.Metadata();
      t.set(ERROR_CODE_METADATA, err.code);
      opts.log.info({ action: name, principal: call.getPeer(), outcome: err.code, reason: 'token not ready' }, 'call');
      const status = { code: STATUS[err.status], details: err.message, metadata: t };
      if (callback) callback(status);
      else call.emit('error', status);
    };
    if (!opts.readiness) return refuse(new KmsError('ServiceUnavailable.Hsm', `${name} is not served yet`));
    opts.readiness.wait().then(
      () => {
        if (call.cancelled) return;
        const go = real();
        if (go) go(call, callback);
        else refuse(new KmsError('ServiceUnavailable.Hsm', `${name} is not served yet`));
      },
      (e: KmsError) => {
        if (!call.cancelled) refuse(e);
      },
    );
  };
}
