// Who is calling and may they: the TLS listener (TLS 1.3, client certificates verified against the
// configured CA, refused connections logged and audited), the caller's principal (from the client
// certificate), and the admission pipeline every call passes before its action runs:
//
//   identify → rate limit (per principal) → decode check → authorize (policy) → bulkhead (HSM slots)
//
// Denials are PERMISSION_DENIED (Forbidden.NoPermission) naming the principal, the action and the
// CMK reference, never a parameter value; each is logged and audited.

import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { KmsError } from '../../kms/errors';
import { parseBlob } from '../../kms/ciphertext';
import type { CallContext } from '../../kms/types';
import type { KmsService, Logger } from '../../kms/service';
import { Policy, KeyResource, PolicyError, describeResource } from '../../policy/policy';
import { actionInfo } from '../../policy/actions';
import { Bulkhead, CallAbandoned, LimitsConfig, RateLimiter, isMalformed, malformedReason } from './limits';
import type { AdmissionCall } from '../admission';

/** The principal of callers that present no certificate (plaintext on loopback, TLS without a client CA). */
export const ANONYMOUS = 'anonymous';

/** Where denials and refused connections are recorded (src/audit's AuditLog has this shape). */
export interface AuditSink {
  append(ev: { requestId?: string; principal: string; action: string; keyId?: string; outcome: string; details?: Record<string, unknown> }): unknown;
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
 * The principal a client certificate speaks for: its URI SAN when it has exactly one (SPIFFE style),
 * else its subject CN. A certificate with several URI SANs or several CNs is ambiguous and refused,
 * as is one with neither.
 */
export function principalFromCertificate(cert: Pick<tls.PeerCertificate, 'subject' | 'subjectaltname'>): { principal: string } | { refused: string } {
  const uris = parseSubjectAltName(cert.subjectaltname).filter((e) => e.type === 'URI').map((e) => e.value);
  if (uris.length > 1) return { refused: `the client certificate has ${uris.length} URI SANs; kmsd needs at most one to name the caller` };
  let principal: string | undefined = uris[0];
  if (!principal) {
    const cn = (cert.subject as unknown as Record<string, string | string[]> | undefined)?.CN;
    if (Array.isArray(cn)) return { refused: 'the client certificate has several subject CNs' };
    principal = cn;
  }
  if (!principal) return { refused: 'the client certificate names no principal (no URI SAN and no subject CN)' };
  if (!PRINCIPAL_RE.test(principal)) return { refused: 'the client certificate principal has characters kmsd does not accept (printable ASCII, at most 256)' };
  return { principal };
}

// ------------------------------------------------------------------ resources

/** Resolves key references for authorization (reads metadata; never touches the token). */
export interface KeyDirectory {
  resolve(ref: string): { keyId?: string; aliases: string[] };
}

export function storeDirectory(kms: KmsService): KeyDirectory {
  const aliasesOf = (keyId: string) => kms.store.listAliases(0, 10_000, keyId).map((a) => a.alias_name);
  return {
    resolve(ref) {
      if (ref.startsWith('alias/')) {
        const a = kms.store.getAlias(ref);
        return a ? { keyId: a.key_id, aliases: aliasesOf(a.key_id) } : { aliases: [ref] };
      }
      return kms.store.getCmk(ref) ? { keyId: ref, aliases: aliasesOf(ref) } : { keyId: ref, aliases: [] };
    },
  };
}

type Req = Record<string, unknown>;
const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const ctxOf = (v: unknown): Record<string, string> => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, string>) : {});

/** The CMKs a request names, each with the EncryptionContext that goes with it. */
export function resourcesFor(action: string, req: Req, dir: KeyDirectory): KeyResource[] {
  const byRef = (ref: string, context?: Record<string, string>): KeyResource => {
    if (!ref) return { ref: '', aliases: [], unknown: true, context };
    const r = dir.resolve(ref);
    return { ref, keyId: r.keyId, aliases: r.aliases.includes(ref) || !ref.startsWith('alias/') ? r.aliases : [ref, ...r.aliases], context };
  };
  const byBlob = (blob: string, context: Record<string, string>, fallbackRef: string): KeyResource => {
    try {
      const keyId = parseBlob(Buffer.from(blob, 'base64')).keyId;
      return byRef(keyId, context);
    } catch {
      return fallbackRef ? byRef(fallbackRef, context) : { ref: '', aliases: [], unknown: true, context };
    }
  };
  switch (action) {
    case 'Encrypt':
    case 'GenerateDataKey':
    case 'GenerateDataKeyWithoutPlaintext':
      return [byRef(str(req.KeyId), ctxOf(req.EncryptionContext))];
    case 'Decrypt':
      return [byBlob(str(req.CiphertextBlob), ctxOf(req.EncryptionContext), str(req.KeyId))];
    case 'ReEncrypt':
      return [byBlob(str(req.CiphertextBlob), ctxOf(req.SourceEncryptionContext), ''), byRef(str(req.DestinationKeyId), ctxOf(req.DestinationEncryptionContext))];
    case 'CreateAlias':
    case 'UpdateAlias':
      return [byRef(str(req.AliasName)), byRef(str(req.KeyId))];
    case 'DeleteAlias':
      return [byRef(str(req.AliasName))];
    case 'EncryptBatch':
    case 'EncryptStream':
    case 'DecryptBatch':
    case 'DecryptStream': {
      // One resource per distinct (CMK reference, context) among the items.
      const items = Array.isArray(req.Items) ? (req.Items as Req[]) : [];
      const seen = new Map<string, KeyResource>();
      for (const it of items) {
        const ctx = ctxOf(it?.EncryptionContext);
        const r = action.startsWith('Encrypt') ? byRef(str(it?.KeyId), ctx) : byBlob(str(it?.CiphertextBlob), ctx, str(it?.KeyId));
        const key = JSON.stringify([r.keyId ?? r.ref, r.unknown ?? false, Object.entries(ctx).sort()]);
        if (!seen.has(key)) seen.set(key, r);
      }
      return [...seen.values()];
    }
    default:
      return actionInfo(action)?.keyed ? [byRef(str(req.KeyId))] : [];
  }
}

// ------------------------------------------------------------------ the admission pipeline

export interface GuardOptions {
  /** The listener is TLS: principals come from client certificates. */
  tls: boolean;
  /** Policy file; undefined = open when plaintext (development), deny-all when TLS. */
  policyFile?: string;
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
    this.policy = o.policyFile ? Policy.load(o.policyFile) : o.tls ? Policy.denyAll() : null;
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

  /** The caller's principal, for the CallContext and for the policy. */
  private identify(call: Cancellable, requestId: string): { principal: string; policyPrincipal: string } {
    // An HTTP request signed with an access key: the key's principal, for the policy as for the log.
    if (call.authenticated) return { principal: call.authenticated.principal, policyPrincipal: call.authenticated.principal };
    if (!this.o.tls) return { principal: call.getPeer(), policyPrincipal: ANONYMOUS };
    const cert = call.getAuthContext?.()?.sslPeerCertificate;
    if (!cert) return { principal: ANONYMOUS, policyPrincipal: ANONYMOUS };
    const p = principalFromCertificate(cert);
    if ('refused' in p) {
      // The listener refuses such certificates at connect time; this is a second line.
      this.stats.unauthenticated++;
      this.o.log.warn({ requestId, peer: call.getPeer(), reason: p.refused }, 'unauthenticated call refused');
      try {
        this.audit?.append({ requestId, principal: 'unauthenticated', action: 'Unauthenticated', outcome: 'Unauthenticated', details: { Peer: call.getPeer(), Reason: p.refused } });
      } catch (e) {
        this.o.log.error({ requestId, err: (e as Error).message }, 'could not audit a refusal');
      }
      throw new KmsError('Unauthenticated', p.refused);
    }
    return { principal: p.principal, policyPrincipal: p.principal };
  }

  /**
   * Runs `run` if the call is admitted; throws KmsError (Throttling, Forbidden.NoPermission,
   * InvalidParameter, Unauthenticated) or CallAbandoned otherwise.
   */
  admit(action: string, call: Cancellable, ctx: CallContext, run: () => unknown): unknown {
    const who = this.identify(call, ctx.requestId);
    ctx.principal = who.principal;
    if (call.cancelled) throw new CallAbandoned('cancelled');
    try {
      this.rate.take(who.policyPrincipal);
    } catch (e) {
      this.stats.throttled++;
      throw e;
    }
    if (isMalformed(call.request)) {
      throw new KmsError('InvalidParameter', `request: not a valid ${action} request message (${malformedReason(call.request)})`);
    }
    const policy = this.policy;
    if (policy) {
      const req = (call.request ?? {}) as Req;
      const resources = actionInfo(action)?.keyed ? resourcesFor(action, req, this.o.directory) : [];
      const d = policy.decide({ principal: who.policyPrincipal, action, resources });
      if (!d.allowed) this.deny(action, who, call.getPeer(), ctx, resources, d.reason);
    }
    const info = actionInfo(action);
    const usesToken = !info || info.cls === 'crypto' || info.cls === 'lifecycle' || info.cls === 'ceremony';
    if (!usesToken) return run();
    return this.bulkhead.run(run, { get cancelled() { return call.cancelled; }, onCancel: (cb) => call.on('cancelled', cb) });
  }

  private deny(action: string, who: { principal: string; policyPrincipal: string }, peer: string, ctx: CallContext, resources: KeyResource[], reason: string): never {
    this.stats.denied++;
    const on = resources.length ? ` on ${resources.map(describeResource).join(' and ')}` : '';
    const keyId = resources.find((r) => r.keyId)?.keyId;
    this.o.log.warn({ requestId: ctx.requestId, principal: who.policyPrincipal, peer, action, keyId, reason }, 'permission denied');
    try {
      this.audit?.append({ requestId: ctx.requestId, principal: who.policyPrincipal, action, keyId, outcome: 'Forbidden.NoPermission', details: { Reason: reason, Peer: peer, ...(ctx.accessKeyId ? { AccessKeyId: ctx.accessKeyId } : {}) } });
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
}

export interface TlsListener {
  port: number;
  /** Stops accepting connections (in-flight calls are drained by the gRPC server). */
  close(): Promise<void>;
  readonly refused: number;
}

/**
 * Serves the gRPC server over TLS 1.3 only. With a client CA, every connection must present a
 * certificate that chains to it and names a principal; any other connection is closed right after
 * the handshake, before a single request is read, and the refusal is logged and audited with the
 * peer address and the reason.
 */
export async function listenTls(server: grpc.Server, o: TlsListenerOptions): Promise<TlsListener> {
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
    handshakeTimeout: 10_000,
  });
  // Bounded connections: past this, new connections are dropped by the kernel-facing listener
  // (each open connection costs a file descriptor and an HTTP/2 session).
  tlsServer.maxConnections = MAX_TLS_CONNECTIONS;
  let refused = 0;
  const refuse = (socket: tls.TLSSocket | net.Socket, reason: string, subject?: string) => {
    refused++;
    const peer = `${socket.remoteAddress}:${socket.remotePort}`;
    o.log.warn({ peer, subject, reason }, 'TLS connection refused');
    try {
      o.audit?.()?.append({ principal: subject ?? 'unauthenticated', action: 'ConnectionRefused', outcome: 'Unauthenticated', details: { Peer: peer, Reason: reason } });
    } catch (e) {
      o.log.error({ err: (e as Error).message }, 'could not audit a refused connection');
    }
  };
  tlsServer.on('secureConnection', (socket: tls.TLSSocket) => {
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
    // Failed handshakes (old TLS versions, garbage, port scans): logged, not audited one by one.
    o.log.warn({ peer: `${socket.remoteAddress}:${socket.remotePort}`, reason: (err as NodeJS.ErrnoException).code ?? err.message }, 'TLS handshake failed');
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
    // Stops accepting; open sessions belong to the gRPC server, whose tryShutdown drains them.
    close: async () => {
      tlsServer.close();
    },
  };
}
