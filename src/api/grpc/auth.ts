// Who is calling and may they: the TLS listener (TLS 1.3, client certificates verified against the
// configured CA, refused connections logged and audited), the caller's principal (from the client
// certificate), and the admission pipeline every call passes before its action runs:
//
//   identify → rate limit (per principal) → decode check → identifiers → authorize (policy) → bulkhead (HSM slots)
//
// Identifiers in the request are validated and bounded before policy. Denials are PERMISSION_DENIED
// (Forbidden.NoPermission) naming the principal, the action and the CMK reference, never a
// parameter value; each is logged and audited. Calls refused before their action runs (rate limit,
// undecodable, bad identifier, HSM queue) are audited too, floods aggregated (src/audit).

import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { KmsError } from '../../kms/errors';
import { parseBlob } from '../../kms/ciphertext';
import type { CallContext } from '../../kms/types';
import type { KmsService, Logger } from '../../kms/service';
import { ANONYMOUS, Policy, KeyResource, PolicyError, PrincipalKind, describeResource, isUriShaped } from '../../policy/policy';
import { actionInfo } from '../../policy/actions';
import { XKS_RULED_ACTIONS, XksRules } from '../../policy/xks';
import * as v from '../../kms/validate';
import { Bulkhead, CallAbandoned, ConnectionLimits, DEFAULT_CONNECTION_LIMITS, LimitsConfig, RateLimiter, isMalformed, malformedReason } from './limits';
import type { AdmissionCall } from '../admission';

export { ANONYMOUS };

/** Where denials and refused connections are recorded (src/audit's AuditLog has this shape). */
export interface AuditSink {
  append(ev: { requestId?: string; principal: string; action: string; keyId?: string; outcome: string; details?: Record<string, unknown> }): Promise<unknown>;
  /** A call refused before its action ran; `aggregate` folds a flood into one record per window. */
  refusal?(ev: { requestId?: string; principal: string; action: string; keyId?: string; outcome: string; kind: string; error: string; details?: Record<string, unknown> }, aggregate: boolean): Promise<unknown>;
}

// ------------------------------------------------------------------ principals

const PRINCIPAL_RE = /^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$/;

/** Splits a Node subjectaltname string ('DNS:a, URI:"x,y", IP Address:1.2.3.4') into entries. */
export function parseSubjectAltName(san: string | undefined): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  if (!san) return out;
  let i = 0;
  while (i < san.length) {
    const colon = san.indexOf(':', i);
    if (colon < 0) break;
    const type = san.slice(i, colon).trim();
    let j = colon + 1;
    let value: string;
    if (san[j] === '"') {
      // Node quotes values with separators in them as JSON strings.
      let k = j + 1;
      while (k < san.length && san[k] !== '"') k += san[k] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(san.slice(j, k + 1)) as string;
      } catch {
        value = san.slice(j + 1, k);
      }
      j = k + 1;
    } else {
      const comma = san.indexOf(', ', j);
      const end = comma < 0 ? san.length : comma;
      value = san.slice(j, end);
      j = end;
    }
    out.push({ type, value });
    const next = san.indexOf(', ', j);
    if (next < 0) break;
    i = next + 2;
  }
  return out;
}

/**
 * The principal a client certificate speaks for, with its kind: its URI SAN when it has exactly one
 * (SPIFFE style), else its subject CN. The two name spaces never overlap: a URI SAN must start with
 * a scheme, and a CN that does (`spiffe://corp/ops/x`, `urn:x`, `host:1`) is refused, so a CN can
 * never pass for a URI identity; neither can a CN take the name of callers without a certificate.
 * A certificate with several URI SANs or several CNs is ambiguous and refused, as is one with
 * neither. DNS and other SANs are not identities here.
 */
export function principalFromCertificate(cert: Pick<tls.PeerCertificate, 'subject' | 'subjectaltname'>): { principal: string; kind: PrincipalKind } | { refused: string } {
  const uris = parseSubjectAltName(cert.subjectaltname).filter((e) => e.type === 'URI').map((e) => e.value);
  if (uris.length > 1) return { refused: `the client certificate has ${uris.length} URI SANs; kmsd needs at most one to name the caller` };
  let principal: string | undefined = uris[0];
  const kind: PrincipalKind = principal ? 'uri' : 'cn';
  if (!principal) {
    const cn = (cert.subject as unknown as Record<string, string | string[]> | undefined)?.CN;
    if (Array.isArray(cn)) return { refused: 'the client certificate has several subject CNs' };
    principal = cn;
  }
  if (!principal) return { refused: 'the client certificate names no principal (no URI SAN and no subject CN)' };
  if (!PRINCIPAL_RE.test(principal)) return { refused: 'the client certificate principal has characters kmsd does not accept (printable ASCII, at most 256)' };
  if (kind === 'uri' && !isUriShaped(principal)) return { refused: 'the URI SAN of the client certificate is not a URI (it must start with a scheme such as spiffe:)' };
  if (kind === 'cn' && isUriShaped(principal)) {
    return { refused: 'the subject CN of the client certificate has the shape of a URI (scheme:...); kmsd takes URI identities from a URI SAN only, never from a CN' };
  }
  if (kind === 'cn' && principal === ANONYMOUS) return { refused: `the subject CN "${ANONYMOUS}" is reserved for callers without a certificate` };
  return { principal, kind };
}

// ------------------------------------------------------------------ resources

/** Resolves key references for authorization (reads metadata; never touches the token). */
export interface KeyDirectory {
  /** The CMK id a reference names: the target of an existing alias, or the reference itself when it is not an alias. */
  resolve(ref: string): Promise<{ keyId?: string }>;
}

export function storeDirectory(kms: KmsService): KeyDirectory {
  return {
    async resolve(ref) {
      if (ref.startsWith('alias/')) {
        const a = await kms.store.getAlias(ref);
        return a ? { keyId: a.key_id } : {};
      }
      return { keyId: ref };
    },
  };
}

type Req = Record<string, unknown>;
const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const ctxOf = (v: unknown): Record<string, string> => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, string>) : {});

/**
 * The CMKs a request names, each with the EncryptionContext that goes with it and the alias the
 * caller named it by, if any. A ciphertext names its CMK itself; the caller's KeyId beside it counts
 * as the alias it was named by only when that alias points at the ciphertext's CMK right now.
 */
export async function resourcesFor(action: string, req: Req, dir: KeyDirectory): Promise<KeyResource[]> {
  const byRef = async (ref: string, context?: Record<string, string>): Promise<KeyResource> => {
    if (!ref) return { ref: '', unknown: true, context };
    const r = await dir.resolve(ref);
    return ref.startsWith('alias/') ? { ref, keyId: r.keyId, alias: ref, context } : { ref, keyId: r.keyId, context };
  };
  const byBlob = async (blob: string, context: Record<string, string>, namedRef: string): Promise<KeyResource> => {
    let keyId: string;
    try {
      keyId = parseBlob(Buffer.from(blob, 'base64')).keyId;
    } catch {
      return namedRef ? byRef(namedRef, context) : { ref: '', unknown: true, context };
    }
    const res = await byRef(keyId, context);
    if (namedRef.startsWith('alias/') && res.keyId !== undefined && (await dir.resolve(namedRef)).keyId === res.keyId) res.alias = namedRef;
    return res;
  };
  switch (action) {
    case 'Encrypt':
    case 'GenerateDataKey':
    case 'GenerateDataKeyWithoutPlaintext':
      return [await byRef(str(req.KeyId), ctxOf(req.EncryptionContext))];
    case 'Decrypt':
      return [await byBlob(str(req.CiphertextBlob), ctxOf(req.EncryptionContext), str(req.KeyId))];
    case 'ReEncrypt':
      return [await byBlob(str(req.CiphertextBlob), ctxOf(req.SourceEncryptionContext), ''), await byRef(str(req.DestinationKeyId), ctxOf(req.DestinationEncryptionContext))];
    case 'CreateAlias':
    case 'UpdateAlias':
      return [await byRef(str(req.AliasName)), await byRef(str(req.KeyId))];
    case 'DeleteAlias':
      return [await byRef(str(req.AliasName))];
    case 'EncryptBatch':
    case 'EncryptStream':
    case 'DecryptBatch':
    case 'DecryptStream': {
      // One resource per distinct (CMK reference, context) among the items.
      const items = Array.isArray(req.Items) ? (req.Items as Req[]) : [];
      const seen = new Map<string, KeyResource>();
      for (const it of items) {
        const ctx = ctxOf(it?.EncryptionContext);
        const r = action.startsWith('Encrypt') ? await byRef(str(it?.KeyId), ctx) : await byBlob(str(it?.CiphertextBlob), ctx, str(it?.KeyId));
        const key = JSON.stringify([r.keyId ?? r.ref, r.alias ?? '', r.unknown ?? false, Object.entries(ctx).sort()]);
        if (!seen.has(key)) seen.set(key, r);
      }
      return [...seen.values()];
    }
    default:
      return actionInfo(action)?.keyed ? [await byRef(str(req.KeyId))] : [];
  }
}

// ------------------------------------------------------------------ the admission pipeline

export interface GuardOptions {
  /** The listener is TLS: principals come from client certificates. */
  tls: boolean;
  /** Policy file; undefined = open when plaintext (development), deny-all when TLS. */
  policyFile?: string;
  /** The policy file as kmsd read it at start (else it is read here); SIGHUP reads the file again. */
  policy?: Policy;
  limits: LimitsConfig;
  directory: KeyDirectory;
  log: Logger;
  audit?: AuditSink;
}

type Cancellable = AdmissionCall;

export class CallGuard {
  private policy: Policy | null;
  private readonly rate: RateLimiter;
  readonly bulkhead: Bulkhead;
  private readonly warned = new Set<string>();
  audit?: AuditSink;
  readonly stats = { denied: 0, throttled: 0, unauthenticated: 0 };

  constructor(private readonly o: GuardOptions) {
    this.policy = o.policyFile ? (o.policy ?? Policy.load(o.policyFile)) : o.tls ? Policy.denyAll() : null;
    this.rate = new RateLimiter(o.limits.ratePerSecond, o.limits.rateBurst);
    this.bulkhead = new Bulkhead(o.limits);
    this.audit = o.audit;
    if (this.policy) o.log.info({ policy: this.policy.source, ...this.policy.summary }, 'authorization policy loaded');
    else o.log.warn({}, 'no authorization policy: every loopback caller may call every action (development mode)');
    if (o.tls && !o.policyFile) o.log.warn({}, 'TLS is on and no --policy is given: every call will be denied');
  }

  get mode(): 'open' | 'enforcing' {
    return this.policy ? 'enforcing' : 'open';
  }

  /** Re-reads the policy file; a bad file keeps the current policy (and says why). */
  reload(): { ok: boolean; message: string } {
    if (!this.o.policyFile) {
      this.o.log.info({}, 'SIGHUP: no --policy file configured; nothing to reload');
      return { ok: false, message: 'no --policy file configured; nothing to reload' };
    }
    try {
      const next = Policy.load(this.o.policyFile);
      this.policy = next;
      this.o.log.info({ policy: next.source, ...next.summary }, 'authorization policy reloaded');
      return { ok: true, message: 'reloaded' };
    } catch (e) {
      const message = e instanceof PolicyError ? e.message : (e as Error).message;
      this.o.log.error({ policy: this.o.policyFile, err: message }, 'policy reload failed; the previous policy stays in force');
      return { ok: false, message };
    }
  }

  /** Called once per registered RPC: an RPC the policy catalogue does not know is denied to everyone under a policy. */
  register(action: string): void {
    if (!actionInfo(action) && !this.warned.has(action)) {
      this.warned.add(action);
      this.o.log.warn({ action }, 'RPC unknown to the authorization catalogue (src/policy/actions.ts): denied to every caller while a policy is in force');
    }
  }

  /**
   * The caller's principal, for the CallContext and for the policy (with its kind). `authenticated`
   * when it comes from a verified client certificate; otherwise `principal` is the gRPC peer address
   * (plaintext) or anonymous.
   */
  private async identify(call: Cancellable, requestId: string): Promise<{ principal: string; policyPrincipal: string; kind: PrincipalKind; authenticated: boolean }> {
    // An HTTP request signed with an access key: the key's principal, for the policy as for the log.
    // The name was given by an admin (CreateAccessKey), so a URI-shaped one is a URI principal.
    if (call.authenticated) {
      const name = call.authenticated.principal;
      return { principal: name, policyPrincipal: name, kind: isUriShaped(name) ? 'uri' : 'cn', authenticated: true };
    }
    if (!this.o.tls) return { principal: call.getPeer(), policyPrincipal: ANONYMOUS, kind: 'anonymous', authenticated: false };
    const cert = call.getAuthContext?.()?.sslPeerCertificate;
    if (!cert) return { principal: ANONYMOUS, policyPrincipal: ANONYMOUS, kind: 'anonymous', authenticated: false };
    const p = principalFromCertificate(cert);
    if ('refused' in p) {
      // The listener refuses such certificates at connect time; this is a second line.
      this.stats.unauthenticated++;
      this.o.log.warn({ requestId, peer: call.getPeer(), reason: p.refused }, 'unauthenticated call refused');
      try {
        await this.audit?.append({ requestId, principal: 'unauthenticated', action: 'Unauthenticated', outcome: 'Unauthenticated', details: { Peer: call.getPeer(), Reason: p.refused } });
      } catch (e) {
        this.o.log.error({ requestId, err: (e as Error).message }, 'could not audit a refusal');
      }
      throw new KmsError('Unauthenticated', p.refused);
    }
    return { principal: p.principal, policyPrincipal: p.principal, kind: p.kind, authenticated: true };
  }

  /**
   * Runs `run` if the call is admitted; throws KmsError (Throttling, Forbidden.NoPermission,
   * InvalidParameter, Unauthenticated) or CallAbandoned otherwise.
   */
  async admit(action: string, call: Cancellable, ctx: CallContext, run: () => unknown): Promise<unknown> {
    const who = await this.identify(call, ctx.requestId);
    ctx.principal = who.principal;
    if (who.authenticated) ctx.authenticated = true;
    if (call.cancelled) throw new CallAbandoned('cancelled');
    try {
      this.rate.take(who.policyPrincipal);
    } catch (e) {
      this.stats.throttled++;
      await this.refused(action, who, call, ctx, 'RateLimit', e, true);
      throw e;
    }
    if (isMalformed(call.request)) {
      const e = new KmsError('InvalidParameter', `request: not a valid ${action} request message (${malformedReason(call.request)})`);
      await this.refused(action, who, call, ctx, 'MalformedRequest', e, true);
      throw e;
    }
    // Identifiers are checked here, before policy resolution, a log line, an audit record or a
    // counter can see them. A refusal is recorded as the action's would be: one record per call,
    // except for the data plane (counted, not logged), whose floods are aggregated.
    try {
      v.requestIdentifiers(call.request);
    } catch (e) {
      await this.refused(action, who, call, ctx, 'InvalidIdentifier', e, actionInfo(action)?.cls === 'crypto');
      throw e;
    }
    const policy = this.policy;
    if (policy) {
      const req = (call.request ?? {}) as Req;
      const resources = actionInfo(action)?.keyed ? await resourcesFor(action, req, this.o.directory) : [];
      const d = policy.decide({ principal: { kind: who.kind, name: who.policyPrincipal }, action, resources });
      if (!d.allowed) await this.deny(action, who, call.getPeer(), ctx, resources, d.reason);
      if (policy.xks && XKS_RULED_ACTIONS.has(action)) await this.xksRules(policy.xks, action, who, call.getPeer(), ctx, req);
      if (action === 'CreateAlias' || action === 'UpdateAlias') run = this.recordWidening(policy, action, req, ctx, run);
    }
    const info = actionInfo(action);
    const usesToken = !info || info.cls === 'crypto' || info.cls === 'lifecycle' || info.cls === 'ceremony';
    if (!usesToken) return run();
    let started = false;
    return this.bulkhead
      .run(
        () => {
          started = true;
          return run();
        },
        { get cancelled() { return call.cancelled; }, onCancel: (cb) => call.on('cancelled', cb) },
      )
      .catch(async (e: unknown) => {
        // Refused by the bulkhead (queue full or timed out) or abandoned in the queue: the action
        // never ran, so its own audit record will not be written.
        if (!started) await this.refused(action, who, call, ctx, e instanceof CallAbandoned ? 'Abandoned' : 'HsmBusy', e, true);
        throw e;
      });
  }

  /** Audits a call refused before its action ran (see AuditLog.refusal). */
  private async refused(action: string, who: { principal: string; policyPrincipal: string }, call: Cancellable, ctx: CallContext, kind: string, e: unknown, aggregate: boolean): Promise<void> {
    if (!this.audit?.refusal) return;
    const outcome = e instanceof KmsError ? e.code : e instanceof CallAbandoned ? 'Abandoned' : 'InternalFailure';
    const req = isMalformed(call.request) ? {} : ((call.request ?? {}) as Req);
    try {
      await this.audit.refusal({ requestId: ctx.requestId, principal: who.policyPrincipal, action, keyId: str(req.KeyId) || str(req.DestinationKeyId), outcome, kind, error: (e as Error).message, details: { Peer: call.getPeer() } }, aggregate);
    } catch (err) {
      this.o.log.error({ requestId: ctx.requestId, err: (err as Error).message }, 'could not audit a refusal');
    }
  }

  /**
   * Pointing an alias at a CMK hands that CMK to every grant with a matching alias pattern: no policy
   * change and no quorum, so once the alias change succeeds it is audited as what it is
   * (GrantWidened, naming the grants), beside the record of the call itself.
   */
  private recordWidening(policy: Policy, action: string, req: Req, ctx: CallContext, run: () => unknown): () => unknown {
    const aliasName = str(req.AliasName);
    const grants = policy.grantsReaching(aliasName);
    if (grants.length === 0) return run;
    return () =>
      Promise.resolve(run()).then(async (res) => {
        const keyId = (await this.o.directory.resolve(aliasName)).keyId;
        this.o.log.warn({ requestId: ctx.requestId, principal: ctx.principal, action, aliasName, keyId, grants }, 'alias change widens grants');
        try {
          await this.audit?.append({ requestId: ctx.requestId, principal: ctx.principal, action: 'GrantWidened', keyId, outcome: 'ok', details: { AliasName: aliasName, By: action, Grants: grants } });
        } catch (e) {
          this.o.log.error({ requestId: ctx.requestId, err: (e as Error).message }, 'could not audit a widened grant');
        }
        return res;
      });
  }

  /**
   * The policy's `xks` rules on the request metadata AWS KMS sent. A denial names the rule and what
   * it matched, with the metadata beside it, in the log and the audit: enough to find the rule to change.
   */
  private async xksRules(rules: XksRules, action: string, who: { policyPrincipal: string }, peer: string, ctx: CallContext, req: Req): Promise<void> {
    const facts = { UriPathPrefix: str(req.UriPathPrefix), AwsPrincipalArn: str(req.AwsPrincipalArn), KmsKeyArn: str(req.KmsKeyArn), KmsOperation: str(req.KmsOperation) };
    const present = Object.fromEntries(Object.entries(facts).filter(([, val]) => val !== '')) as typeof facts;
    const d = rules.decide(present);
    if (d.allowed) return;
    this.stats.denied++;
    const rule = d.rule;
    const matched = Object.entries(d.matched).map(([c, pattern]) => `${c} "${pattern}"`).join(', ');
    const reason = rule === 'default' ? 'no xks rule matched and the xks default is deny' : `xks rule "${rule}" denies${matched ? ` (matched ${matched})` : ''}`;
    const request = { ...present, ExternalKeyId: str(req.ExternalKeyId), KmsRequestId: str(req.KmsRequestId) };
    this.o.log.warn({ requestId: ctx.requestId, principal: who.policyPrincipal, peer, action, keyId: str(req.KeyId) || undefined, xksRule: rule, matched: d.matched, ...request, reason }, 'permission denied by the xks policy');
    try {
      await this.audit?.append({
        requestId: ctx.requestId,
        principal: who.policyPrincipal,
        action,
        keyId: str(req.KeyId) || undefined,
        outcome: 'Forbidden.NoPermission',
        details: { Reason: reason, XksRule: rule, Matched: d.matched, ...request, Peer: peer, ...(ctx.accessKeyId ? { AccessKeyId: ctx.accessKeyId } : {}) },
      });
    } catch (e) {
      this.o.log.error({ requestId: ctx.requestId, err: (e as Error).message }, 'could not audit a denial');
    }
    // AWS KMS passes the message on to its caller: the rule's id, not the ARNs it matched.
    throw new KmsError('Forbidden.NoPermission', `${action} is denied by the key store's xks policy (${rule === 'default' ? 'the default' : `rule "${rule}"`})`);
  }

  private async deny(action: string, who: { principal: string; policyPrincipal: string }, peer: string, ctx: CallContext, resources: KeyResource[], reason: string): Promise<never> {
    this.stats.denied++;
    const on = resources.length ? ` on ${resources.map(describeResource).join(' and ')}` : '';
    // Identifiers were bounded in admit; the audit log resolves the reference to its CMK id and
    // keeps the caller's form beside it.
    const named = resources.find((r) => r.keyId || r.ref);
    const keyId = named?.keyId;
    this.o.log.warn({ requestId: ctx.requestId, principal: who.policyPrincipal, peer, action, keyId, reason }, 'permission denied');
    try {
      await this.audit?.append({ requestId: ctx.requestId, principal: who.policyPrincipal, action, keyId: named?.ref || keyId, outcome: 'Forbidden.NoPermission', details: { Reason: reason, Peer: peer, ...(ctx.accessKeyId ? { AccessKeyId: ctx.accessKeyId } : {}) } });
    } catch (e) {
      this.o.log.error({ requestId: ctx.requestId, err: (e as Error).message }, 'could not audit a denial');
    }
    throw new KmsError('Forbidden.NoPermission', `principal "${who.policyPrincipal}" may not call ${action}${on}`);
  }
}

// ------------------------------------------------------------------ the TLS listener

export const MAX_TLS_CONNECTIONS = 4096;

export interface TlsListenerOptions {
  host: string;
  port: number;
  certFile: string;
  keyFile: string;
  clientCaFile?: string;
  log: Logger;
  /** Read at refusal time, so the audit log can be attached after the listener starts. */
  audit?: () => AuditSink | undefined;
  /** Unauthenticated connections: handshake timeout and caps (DEFAULT_CONNECTION_LIMITS when absent). */
  limits?: ConnectionLimits;
}

export interface TlsListener {
  port: number;
  /** Stops accepting connections (in-flight calls are drained by the gRPC server). */
  close(): Promise<void>;
  readonly refused: number;
  /** Connections closed before completing the handshake: out of time, or pushed out by a newer one. */
  readonly unauthenticatedClosed: { timedOut: number; evicted: number };
}

interface Unauthenticated {
  raw: net.Socket;
  address: string;
  timer: NodeJS.Timeout;
}

/**
 * Serves the gRPC server over TLS 1.3 only. With a client CA, every connection must present a
 * certificate that chains to it and names a principal; any other connection is closed right after
 * the handshake, before a single request is read, and the refusal is logged and audited with the
 * peer address and the reason.
 *
 * A connection that has not completed its handshake is unauthenticated and costs kmsd a slot, so
 * such connections are bounded: each is closed when the handshake has not completed within
 * handshakeTimeoutMs of the connect (however slowly its bytes trickle in), and at most
 * maxUnauthenticatedPerAddress from one source address and maxUnauthenticated in all are held; a
 * new connection over either cap pushes out the oldest unauthenticated one (of its address, or of
 * all), so a client about to complete its handshake is never locked out by connections that will
 * not. maxUnauthenticated is below MAX_TLS_CONNECTIONS: the rest is kept for authenticated clients.
 */
export async function listenTls(server: grpc.Server, o: TlsListenerOptions): Promise<TlsListener> {
  const limits = o.limits ?? DEFAULT_CONNECTION_LIMITS;
  if (limits.maxUnauthenticated >= MAX_TLS_CONNECTIONS) {
    throw new Error(`maxUnauthenticated (${limits.maxUnauthenticated}) must stay below MAX_TLS_CONNECTIONS (${MAX_TLS_CONNECTIONS})`);
  }
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const ca = o.clientCaFile ? fs.readFileSync(o.clientCaFile) : undefined;
  const tlsServer = tls.createServer({
    cert: fs.readFileSync(o.certFile),
    key: fs.readFileSync(o.keyFile),
    ca,
    minVersion: 'TLSv1.3',
    ALPNProtocols: ['h2'],
    requestCert: Boolean(ca),
    // Verified here rather than inside OpenSSL so that a refusal can be audited with its reason.
    rejectUnauthorized: false,
    // Node's own timeout restarts with every byte received; the timer below does not.
    handshakeTimeout: limits.handshakeTimeoutMs,
  });
  // Bounded connections: past this, new connections are dropped by the kernel-facing listener
  // (each open connection costs a file descriptor and an HTTP/2 session).
  tlsServer.maxConnections = MAX_TLS_CONNECTIONS;
  let refused = 0;
  const refuse = (socket: tls.TLSSocket | net.Socket, reason: string, subject?: string) => {
    refused++;
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    o.log.warn({ peer, subject, reason }, 'TLS connection refused');
    // The connection is refused whatever the record's fate; its failure is logged.
    const recorded = o.audit?.()?.append({ principal: subject ?? 'unauthenticated', action: 'ConnectionRefused', outcome: 'Unauthenticated', details: { Peer: peer, Reason: reason } });
    recorded?.catch((e: unknown) => o.log.error({ err: (e as Error).message }, 'could not audit a refused connection'));
  };

  // Unauthenticated connections, keyed by peer address and port, oldest first (Map order).
  const pending = new Map<string, Unauthenticated>();
  const byAddress = new Map<string, Set<string>>();
  // Connections this listener closed itself: their handshake error is not logged one by one.
  const closedHere = new Set<string>();
  const closedCount = { timedOut: 0, evicted: 0 };
  // One log line per second at most for closed connections: a flood must not flood the log.
  const sinceLog = { timedOut: 0, evicted: 0, addresses: new Set<string>() };
  let logTimer: NodeJS.Timeout | null = null;
  const logClosed = () => {
    logTimer = null;
    o.log.warn(
      { timedOut: sinceLog.timedOut, evicted: sinceLog.evicted, addresses: [...sinceLog.addresses], handshakeTimeoutMs: limits.handshakeTimeoutMs, maxUnauthenticated: limits.maxUnauthenticated, maxUnauthenticatedPerAddress: limits.maxUnauthenticatedPerAddress },
      'TLS handshake not completed: unauthenticated connections closed',
    );
    sinceLog.timedOut = 0;
    sinceLog.evicted = 0;
    sinceLog.addresses.clear();
  };
  const release = (key: string): Unauthenticated | undefined => {
    const u = pending.get(key);
    if (!u) return undefined;
    clearTimeout(u.timer);
    pending.delete(key);
    const set = byAddress.get(u.address);
    set?.delete(key);
    if (set && set.size === 0) byAddress.delete(u.address);
    return u;
  };
  const drop = (key: string, why: 'timedOut' | 'evicted') => {
    const u = release(key);
    if (!u) return;
    closedCount[why]++;
    sinceLog[why]++;
    if (sinceLog.addresses.size < 16) sinceLog.addresses.add(u.address);
    if (!logTimer) logTimer = setTimeout(logClosed, 1000).unref();
    closedHere.add(key);
    // Destroying the TCP socket also ends the TLS socket on top of it (its handshake fails).
    u.raw.destroy();
  };
  tlsServer.on('connection', (raw: net.Socket) => {
    const address = raw.remoteAddress ?? 'unknown';
    const key = `${address}:${raw.remotePort}`;
    const mine = byAddress.get(address);
    if (mine && mine.size >= limits.maxUnauthenticatedPerAddress) drop(mine.values().next().value as string, 'evicted');
    if (pending.size >= limits.maxUnauthenticated) drop(pending.keys().next().value as string, 'evicted');
    const timer = setTimeout(() => drop(key, 'timedOut'), limits.handshakeTimeoutMs);
    timer.unref();
    pending.set(key, { raw, address, timer });
    if (mine) mine.add(key);
    else byAddress.set(address, new Set([key]));
    raw.once('close', () => {
      release(key);
      // The TLS socket reports its failed handshake after this; forget the key once it has.
      setImmediate(() => closedHere.delete(key));
    });
  });
  tlsServer.on('secureConnection', (socket: tls.TLSSocket) => {
    release(`${socket.remoteAddress}:${socket.remotePort}`);
    socket.on('error', () => undefined); // resets after the handshake are the peer's business
    if (ca) {
      const cert = socket.getPeerCertificate();
      const subject = cert && cert.subject ? (cert.subject.CN as string | undefined) : undefined;
      if (!cert || Object.keys(cert).length === 0) {
        refuse(socket, 'no client certificate');
        return socket.destroy();
      }
      if (!socket.authorized) {
        refuse(socket, `client certificate not issued by the configured CA (${String(socket.authorizationError)})`, subject);
        return socket.destroy();
      }
      const p = principalFromCertificate(cert);
      if ('refused' in p) {
        refuse(socket, p.refused, subject);
        return socket.destroy();
      }
    }
    if (socket.alpnProtocol !== 'h2') {
      refuse(socket, 'the client did not negotiate HTTP/2 (ALPN h2)');
      return socket.destroy();
    }
    injector.injectConnection(socket);
  });
  tlsServer.on('tlsClientError', (err, socket) => {
    // Node leaves the connection open after a failed handshake (a timeout included) when this
    // event has a listener: close it here.
    socket.destroy();
    const key = `${socket.remoteAddress}:${socket.remotePort}`;
    if (closedHere.has(key)) return;
    // Failed handshakes (old TLS versions, garbage, port scans): logged, not audited one by one.
    o.log.warn({ peer: key, reason: (err as NodeJS.ErrnoException).code ?? err.message }, 'TLS handshake failed');
  });
  await new Promise<void>((resolve, reject) => {
    tlsServer.once('error', reject);
    tlsServer.listen({ host: o.host, port: o.port }, () => {
      tlsServer.off('error', reject);
      resolve();
    });
  });
  const port = (tlsServer.address() as net.AddressInfo).port;
  return {
    port,
    get refused() {
      return refused;
    },
    unauthenticatedClosed: closedCount,
    // Stops accepting; open sessions belong to the gRPC server, whose tryShutdown drains them.
    close: async () => {
      tlsServer.close();
      for (const key of [...pending.keys()]) release(key)?.raw.destroy();
      if (logTimer) clearTimeout(logTimer);
    },
  };
}
