// The transport-neutral admission every call passes, whatever carried it (gRPC, the HTTP dialects):
// identify → rate limit (per principal) → decode check → authorize (policy) → bulkhead (HSM slots),
// then the action (wrapped by the quorum guard and the audit recorder), then one log line per call.
// The rules themselves live in CallGuard (src/api/grpc/auth.ts, to move here) and the limits
// (src/api/grpc/limits.ts); a transport only describes its call with AdmissionCall.

import { KmsError, hsmUnavailable, storeUnavailable } from '../kms/errors';
import type { CallContext } from '../kms/types';
import type { Logger } from '../kms/service';
import type { CallGuard } from './grpc/auth';
import { isMalformed, malformedReason } from './grpc/limits';

/** One call as admission sees it, whatever the transport. */
export interface AdmissionCall {
  /** The decoded request (a marker when gRPC could not decode it). */
  request: unknown;
  /** True once the caller went away. */
  readonly cancelled: boolean;
  on(event: 'cancelled', cb: () => void): unknown;
  getPeer(): string;
  /** gRPC over TLS: the client certificate names the principal. */
  getAuthContext?(): { sslPeerCertificate?: import('node:tls').PeerCertificate } | null;
  /** Set by a transport that authenticated the caller itself (an HTTP request signed with an access key). */
  authenticated?: { principal: string };
}

type Action = (req: never, ctx: CallContext) => unknown;

/**
 * Runs `run` once the call is admitted. Without a guard (in-process tests of the server) only the
 * decode check applies. Throws what admission throws (KmsError, CallAbandoned).
 */
export function admit(action: string, call: AdmissionCall, ctx: CallContext, guard: CallGuard | undefined, run: () => unknown): unknown {
  if (guard) return guard.admit(action, call, ctx, run);
  if (isMalformed(call.request)) throw new KmsError('InvalidParameter', `request: not a valid ${action} request message (${malformedReason(call.request)})`);
  return run();
}

/**
 * Longest error message sent back, in characters and in bytes once percent-encoded for the
 * grpc-message trailer. A trailer larger than the peer's header-list limit is never delivered (the
 * client waits for its deadline instead), and grpc-js clients accept 8 KiB of metadata by default.
 */
export const MAX_ANSWER_MESSAGE_CHARS = 1024;
export const MAX_ANSWER_MESSAGE_BYTES = 4096;

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** A message within MAX_ANSWER_MESSAGE_CHARS/BYTES; a longer one is cut and says how much was cut. */
export function boundedMessage(message: string): string {
  const m = message.replace(LONE_SURROGATE, '\uFFFD');
  const fits = (s: string) => s.length <= MAX_ANSWER_MESSAGE_CHARS && encodeURI(s).length <= MAX_ANSWER_MESSAGE_BYTES;
  if (fits(m)) return m;
  // Room for the note; a cut never splits a surrogate pair.
  let keep = Math.min(m.length, MAX_ANSWER_MESSAGE_CHARS - 48);
  while (keep > 0 && encodeURI(m.slice(0, keep)).length > MAX_ANSWER_MESSAGE_BYTES - 48) keep = Math.floor(keep * 0.8);
  if (keep > 0 && /[\uD800-\uDBFF]/.test(m[keep - 1])) keep--;
  return `${m.slice(0, keep)}... (${m.length - keep} more characters cut)`;
}

/** The error a failed action is answered with; `internal` is the cause when it must go to the log. */
export function answerFor(e: unknown, requestId: string): { err: KmsError; internal?: unknown } {
  if (e instanceof KmsError) {
    const message = boundedMessage(e.message);
    return { err: message === e.message ? e : new KmsError(e.code, message) };
  }
  return { err: hsmUnavailable(e) ?? storeUnavailable(e) ?? new KmsError('InternalFailure', `internal error (request id ${requestId})`), internal: e };
}

/**
 * Internal details go to the log under the request id, never to the caller. A cause the caller was
 * answered with a retryable ServiceUnavailable for (the HSM or the store) is a warning saying so, not
 * an "internal error": that name is kept for the answers that are one.
 */
export function logInternal(log: Logger, requestId: string, action: string, cause: unknown, answered: KmsError): void {
  // One line per call while a dependency is down: the cause's message, without its stack.
  if (answered.code !== 'InternalFailure') log.warn({ requestId, action, answered: answered.code, cause: cause instanceof Error ? cause.message : String(cause) }, 'answered unavailable (retryable)');
  else log.error({ requestId, action, err: cause instanceof Error ? { name: cause.name, message: cause.message, stack: cause.stack } : String(cause) }, 'internal error');
}

/**
 * Actions whose successful calls are logged at debug level (one info line each cost ~8% of a unary
 * Encrypt, and each is a write now that lines are not buffered) and, over gRPC, answered without a
 * request id; the audit log counts or records them.
 */
export const DATA_PLANE_ACTIONS = new Set(['Encrypt', 'Decrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'ReEncrypt', 'EncryptBatch', 'DecryptBatch', 'XksEncrypt', 'XksDecrypt']);

export interface Admission {
  /** The action names this admission can run. */
  has(action: string): boolean;
  /**
   * Admits and runs one action for a call, logs it, and returns its result; a failure is thrown as
   * the KmsError the caller gets (internal errors logged and replaced by InternalFailure).
   */
  run(action: string, req: Record<string, unknown>, call: AdmissionCall, ctx: CallContext): Promise<unknown>;
}

/** Admission over a table of actions (the same table, decorated the same way, as gRPC serves). */
export function admission(actions: Record<string, Action>, guard: CallGuard | undefined, log: Logger): Admission {
  for (const name of Object.keys(actions)) guard?.register(name);
  return {
    has: (action) => Object.prototype.hasOwnProperty.call(actions, action),
    async run(action, req, call, ctx) {
      const started = process.hrtime.bigint();
      const fn = actions[action];
      const line = (outcome: string) => {
        const entry = { requestId: ctx.requestId, action, principal: ctx.principal, accessKeyId: ctx.accessKeyId, outcome, ms: Math.round(Number(process.hrtime.bigint() - started) / 1e5) / 10 };
        if (outcome === 'ok' && DATA_PLANE_ACTIONS.has(action)) log.debug?.(entry, 'call');
        else log.info(entry, 'call');
      };
      try {
        const value = await admit(action, call, ctx, guard, () => fn(req as never, ctx));
        line('ok');
        return value;
      } catch (e) {
        const { err, internal } = answerFor(e, ctx.requestId);
        if (internal !== undefined) logInternal(log, ctx.requestId, action, internal, err);
        line(err.code);
        throw err;
      }
    },
  };
}
