// The AWS KMS External Key Store Proxy API, v1 (github.com/aws/aws-kms-xksproxy-api-spec):
//   POST /{UriPathPrefix}/kms/xks/v1/keys/{externalKeyId}/metadata | encrypt | decrypt
//   POST /{UriPathPrefix}/kms/xks/v1/health
// JSON in and out (blobs in standard Base64), signed with SigV4 for service `kms-xks-proxy` by one of
// the key store's credentials (kmsctl CreateXksKeyStore / CreateXksCredential). Errors are
// `{"errorName","errorMessage"}` with the spec's statuses (./errors.ts).
//
// Order of checks: the route's shape (anything else under /kms/xks/v1 is InvalidUriPathException),
// the method (405 unless POST), the signature (AuthenticationFailedException), the credential's key
// store against the URI's prefix (InvalidUriPathException), then the body (ValidationException,
// UnsupportedOperationException past kmsd's sizes), then the operation through the same admission
// as every other call (policy on the key store's principal `xks:PREFIX`, rate limit, HSM bulkhead,
// audit record with the request metadata). Plaintext and AAD never reach a log line.

import { KmsError } from '../../../kms/errors';
import * as v from '../../../kms/validate';
import { XKS_MAX_AAD, XKS_MAX_PLAINTEXT, XKS_TAG_BYTES, xksPrincipal } from '../../../kms/xks';
import type { XksEncryptResult, XksHealth } from '../../../kms/xks';
import { HttpRefusalError } from '../error-table';
import type { HttpRefusal } from '../error-table';
import type { Dialect, HttpAnswer, HttpCall, HttpContext } from '../types';
import { AwsFault } from '../aws/faults';
import { SigningKeyCache, verifySigV4 } from '../aws/sigv4';
import { XKS_ERRORS, XksFault, errorMessage, xksErrorFor } from './errors';

export const XKS_SERVICE = 'kms-xks-proxy';
/** The spec: requests more than 5 minutes from the proxy's clock, either way, fail authentication. */
export const XKS_MAX_SKEW_MS = 5 * 60 * 1000;
/** What AWS KMS signs (Appendix A): host and x-amz-date only, though it sends a Content-Type too. */
const XKS_SIGNED_HEADERS = ['host', 'x-amz-date'] as const;
const XKS_SIGNED_WHEN_PRESENT = ['x-amz-content-sha256', 'x-amz-security-token'] as const;
/** ARNs are up to 2,048 characters (the spec); every requestMetadata string is held to that. */
export const XKS_MAX_METADATA_CHARS = 2048;
const EXTERNAL_KEY_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;
const ROUTE_RE = /^(?:\/(.*?))?\/kms\/xks\/v1(\/.*)?$/;

type Operation = 'metadata' | 'encrypt' | 'decrypt' | 'health';

/** The domain action each operation runs as (src/api/grpc/server.ts buildActions, src/policy/actions.ts). */
const ACTION: Record<Operation, string> = {
  metadata: 'XksGetKeyMetadata',
  encrypt: 'XksEncrypt',
  decrypt: 'XksDecrypt',
  health: 'XksGetHealthStatus',
};

/** requestMetadata members each operation requires (the others are optional and recorded when present). */
const REQUIRED_METADATA: Record<Operation, readonly string[]> = {
  metadata: ['awsPrincipalArn', 'kmsOperation', 'kmsRequestId'],
  encrypt: ['awsPrincipalArn', 'kmsKeyArn', 'kmsOperation', 'kmsRequestId'],
  decrypt: ['awsPrincipalArn', 'kmsKeyArn', 'kmsOperation', 'kmsRequestId'],
  health: ['kmsOperation', 'kmsRequestId'],
};

/** requestMetadata members as they go into the audit record (src/audit/audit.ts records these names). */
const METADATA_AUDIT_NAMES: Record<string, string> = {
  awsPrincipalArn: 'AwsPrincipalArn',
  awsSourceVpc: 'AwsSourceVpc',
  awsSourceVpce: 'AwsSourceVpce',
  kmsKeyArn: 'KmsKeyArn',
  kmsOperation: 'KmsOperation',
  kmsRequestId: 'KmsRequestId',
  kmsViaService: 'KmsViaService',
};

interface Route {
  prefix: string;
  op: Operation;
  externalKeyId?: string;
}

const signingKeys = new SigningKeyCache();

function answer(status: number, requestId: string, body: unknown, extra: Record<string, string> = {}): HttpAnswer {
  return { status, headers: { 'content-type': 'application/json', 'x-request-id': requestId, ...extra }, body: JSON.stringify(body) };
}

function failure(name: keyof typeof XKS_ERRORS, status: number, message: string, requestId: string, extra?: Record<string, string>): HttpAnswer {
  return answer(status, requestId, { errorName: name, errorMessage: errorMessage(message) }, extra);
}

function header(call: HttpCall, name: string): string | undefined {
  const h = Object.prototype.hasOwnProperty.call(call.headers, name) ? call.headers[name] : undefined;
  return Array.isArray(h) ? h.join(',') : h;
}

/** The route of a path under /kms/xks/v1, or an InvalidUriPathException. */
function route(path: string): Route {
  const m = ROUTE_RE.exec(path);
  if (!m) throw new XksFault('InvalidUriPathException', `${path.slice(0, 128)}: not an XKS Proxy API path`);
  const prefix = (m[1] ?? '').replace(/^\/+|\/+$/g, '');
  const rest = m[2] ?? '';
  if (rest === '/health') return { prefix, op: 'health' };
  const k = /^\/keys\/([^/]+)\/(metadata|encrypt|decrypt)$/.exec(rest);
  if (!k) throw new XksFault('InvalidUriPathException', `${path.slice(0, 128)}: the XKS Proxy API v1 has .../kms/xks/v1/health and .../kms/xks/v1/keys/{externalKeyId}/metadata|encrypt|decrypt`);
  let id: string;
  try {
    id = decodeURIComponent(k[1]);
  } catch {
    throw new XksFault('InvalidUriPathException', `${path.slice(0, 128)}: the external key id has a malformed percent-encoding`);
  }
  if (!EXTERNAL_KEY_ID_RE.test(id)) throw new XksFault('InvalidUriPathException', `external key id "${id.slice(0, 128)}": 1 to 128 letters, digits, '-', '.' or '_'`);
  return { prefix, op: k[2] as Operation, externalKeyId: id };
}

function parseBody(body: Buffer): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw new XksFault('ValidationException', 'body: must be a JSON object (Content-Type application/json)');
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) throw new XksFault('ValidationException', 'body: must be a JSON object');
  return parsed as Record<string, unknown>;
}

/** requestMetadata checked and named as the audit record names it. */
function metadata(op: Operation, body: Record<string, unknown>): Record<string, string> {
  const md = body.requestMetadata;
  if (md === undefined || md === null) throw new XksFault('ValidationException', 'requestMetadata: is required');
  if (typeof md !== 'object' || Array.isArray(md)) throw new XksFault('ValidationException', 'requestMetadata: must be a JSON object');
  const m = md as Record<string, unknown>;
  for (const name of REQUIRED_METADATA[op]) {
    if (m[name] === undefined || m[name] === null || m[name] === '') throw new XksFault('ValidationException', `requestMetadata.${name}: is required`);
  }
  const out: Record<string, string> = {};
  // Members AWS KMS may add later (Appendix B) are accepted and not recorded; the known ones must be strings.
  for (const [name, auditName] of Object.entries(METADATA_AUDIT_NAMES)) {
    const val = m[name];
    if (val === undefined || val === null) continue;
    if (typeof val !== 'string') throw new XksFault('ValidationException', `requestMetadata.${name}: must be a string`);
    if (val.length > XKS_MAX_METADATA_CHARS) throw new XksFault('ValidationException', `requestMetadata.${name}: at most ${XKS_MAX_METADATA_CHARS} characters (got ${val.length})`);
    out[auditName] = val;
  }
  return out;
}

/** A Base64 member; absent → undefined unless required. Too long for kmsd → UnsupportedOperation (the spec's case). */
function blob(body: Record<string, unknown>, name: string, o: { required: boolean; maxBytes: number; tooLong?: 'UnsupportedOperationException' | 'ValidationException' }): Buffer | undefined {
  const val = body[name];
  if (val === undefined || val === null) {
    if (o.required) throw new XksFault('ValidationException', `${name}: is required`);
    return undefined;
  }
  if (typeof val !== 'string') throw new XksFault('ValidationException', `${name}: must be a Base64 string`);
  if (val === '' && o.required) throw new XksFault('ValidationException', `${name}: is required (not empty)`);
  let b: Buffer;
  try {
    b = v.base64(name, val, { allowEmpty: true });
  } catch (e) {
    throw new XksFault('ValidationException', e instanceof KmsError ? e.message : `${name}: must be standard Base64`);
  }
  if (b.length > o.maxBytes) {
    const fault = o.tooLong ?? 'UnsupportedOperationException';
    throw new XksFault(fault, `${name}: kmsd takes at most ${o.maxBytes} bytes (got ${b.length})`);
  }
  return b;
}

function algorithm(body: Record<string, unknown>, name: string, allowed: string, required: boolean): string | undefined {
  const val = body[name];
  if (val === undefined || val === null) {
    if (required) throw new XksFault('ValidationException', `${name}: is required (${allowed})`);
    return undefined;
  }
  if (typeof val !== 'string') throw new XksFault('ValidationException', `${name}: must be a string (${allowed})`);
  if (val !== allowed) throw new XksFault('UnsupportedOperationException', `${name}: "${val.slice(0, 64)}" is not supported; v1 of the XKS Proxy API has ${allowed}`);
  return val;
}

const b64 = (b: Buffer) => b.toString('base64');

function healthBody(h: XksHealth): Record<string, unknown> {
  return {
    xksProxyFleetSize: 1,
    xksProxyVendor: 'kmsd',
    xksProxyModel: 'kmsd XKS proxy (XKS Proxy API v1)',
    ekmVendor: h.tokenManufacturer || 'unknown',
    ekmFleetDetails: [{ id: h.tokenLabel || 'token', model: h.tokenModel || 'unknown', healthStatus: h.healthy ? 'ACTIVE' : 'UNAVAILABLE' }],
  };
}

export const xksDialect: Dialect = {
  name: 'xks',

  matches: (call) => ROUTE_RE.test(call.path),

  async handle(call, ctx) {
    let op: Operation | undefined;
    try {
      const r = route(call.path);
      op = r.op;
      if (call.method !== 'POST') {
        throw new XksFault('ValidationException', `${call.method}: the XKS Proxy API takes POST only`, 405);
      }
      const xks = ctx.xks;
      if (!xks) throw new XksFault('InvalidUriPathException', 'this kmsd serves no external key store');
      let who: { accessKeyId: string; principal: string };
      try {
        who = verifySigV4(
          call,
          { service: XKS_SERVICE, region: ctx.awsRegion, requiredSignedHeaders: XKS_SIGNED_HEADERS, signedWhenPresent: XKS_SIGNED_WHEN_PRESENT, maxSkewMs: XKS_MAX_SKEW_MS, lookupAccessKey: (id) => xks.lookupCredential(id) },
          signingKeys,
        );
      } catch (e) {
        if (e instanceof HttpRefusalError || e instanceof AwsFault) throw new XksFault('AuthenticationFailedException', e.message);
        throw e;
      }
      // A credential is its key store's: under any other prefix the URI path is what is wrong.
      if (who.principal !== xksPrincipal(r.prefix)) {
        throw new XksFault('InvalidUriPathException', `/${r.prefix.slice(0, 128)}/kms/xks/v1: is not the URI path of the external key store this credential (${who.accessKeyId}) belongs to`);
      }
      const contentType = (header(call, 'content-type') ?? '').split(';')[0].trim().toLowerCase();
      if (contentType && contentType !== 'application/json') {
        throw new XksFault('ValidationException', `Content-Type: must be application/json (got ${JSON.stringify(contentType.slice(0, 64))})`);
      }
      const body = parseBody(call.body);
      const req: Record<string, unknown> = { UriPathPrefix: r.prefix, ...metadata(r.op, body) };
      if (r.externalKeyId !== undefined) {
        req.ExternalKeyId = r.externalKeyId;
        const keyId = xks.keyIdOf(r.prefix, r.externalKeyId);
        if (keyId) req.KeyId = keyId;
      }
      const caller = { principal: who.principal, accessKeyId: who.accessKeyId };
      switch (r.op) {
        case 'health': {
          const h = (await ctx.run(ACTION.health, req, caller, call)) as XksHealth;
          if (!h.healthy) ctx.log.warn({ requestId: call.requestId, dialect: 'xks', reason: h.reason }, 'xks health check: the token is UNAVAILABLE');
          return answer(200, call.requestId, healthBody(h));
        }
        case 'metadata': {
          const out = await ctx.run(ACTION.metadata, req, caller, call);
          return answer(200, call.requestId, out);
        }
        case 'encrypt': {
          req.Plaintext = blob(body, 'plaintext', { required: true, maxBytes: XKS_MAX_PLAINTEXT });
          req.Aad = blob(body, 'additionalAuthenticatedData', { required: false, maxBytes: XKS_MAX_AAD });
          algorithm(body, 'encryptionAlgorithm', 'AES_GCM', true);
          req.CdivAlgorithm = algorithm(body, 'ciphertextDataIntegrityValueAlgorithm', 'SHA_256', false);
          try {
            const out = (await ctx.run(ACTION.encrypt, req, caller, call)) as XksEncryptResult;
            const res: Record<string, string> = {
              ciphertext: b64(out.ciphertext),
              ciphertextMetadata: b64(out.ciphertextMetadata),
              initializationVector: b64(out.initializationVector),
              authenticationTag: b64(out.authenticationTag),
            };
            if (out.ciphertextDataIntegrityValue) res.ciphertextDataIntegrityValue = b64(out.ciphertextDataIntegrityValue);
            return answer(200, call.requestId, res);
          } finally {
            (req.Plaintext as Buffer).fill(0);
          }
        }
        case 'decrypt': {
          req.Ciphertext = blob(body, 'ciphertext', { required: true, maxBytes: XKS_MAX_PLAINTEXT });
          req.Aad = blob(body, 'additionalAuthenticatedData', { required: false, maxBytes: XKS_MAX_AAD });
          req.CiphertextMetadata = blob(body, 'ciphertextMetadata', { required: false, maxBytes: 20, tooLong: 'ValidationException' });
          algorithm(body, 'encryptionAlgorithm', 'AES_GCM', true);
          const iv = blob(body, 'initializationVector', { required: true, maxBytes: 16, tooLong: 'ValidationException' }) as Buffer;
          if (iv.length !== 12 && iv.length !== 16) throw new XksFault('ValidationException', `initializationVector: must be 12 or 16 bytes (got ${iv.length})`);
          const tag = blob(body, 'authenticationTag', { required: true, maxBytes: XKS_TAG_BYTES, tooLong: 'ValidationException' }) as Buffer;
          if (tag.length !== XKS_TAG_BYTES) throw new XksFault('ValidationException', `authenticationTag: must be ${XKS_TAG_BYTES} bytes (got ${tag.length})`);
          req.Iv = iv;
          req.Tag = tag;
          const out = (await ctx.run(ACTION.decrypt, req, caller, call)) as { plaintext: Buffer };
          try {
            return answer(200, call.requestId, { plaintext: b64(out.plaintext) });
          } finally {
            out.plaintext.fill(0);
          }
        }
      }
    } catch (e) {
      return errorAnswer(e, call, ctx, op);
    }
  },

  refuse: xksRefusal,
};

/**
 * A refusal of the listener before the request is read whole (body over 1 MiB, oversized URL or
 * headers): the spec names no status for a request too large to read, and its name for input
 * outside what the proxy accepts is ValidationException (400).
 */
export function xksRefusal(_refusal: HttpRefusal, message: string, requestId: string): HttpAnswer {
  return failure('ValidationException', XKS_ERRORS.ValidationException, message, requestId);
}

function errorAnswer(e: unknown, call: HttpCall, ctx: HttpContext, op: Operation | undefined): HttpAnswer {
  if (e instanceof XksFault) {
    // Refusals before any action runs: logged here (the action's own refusals are in the call log and the audit).
    ctx.log.warn({ requestId: call.requestId, peer: call.peer, dialect: 'xks', operation: op, errorName: e.errorName, status: e.status, reason: e.message.slice(0, 300) }, 'xks request refused');
    return failure(e.errorName, e.status, e.message, call.requestId, e.status === 405 ? { allow: 'POST' } : undefined);
  }
  if (e instanceof KmsError) {
    const name = xksErrorFor(e.code, e.status);
    return failure(name, XKS_ERRORS[name], e.message, call.requestId);
  }
  const err = e instanceof Error ? { name: e.name, message: e.message, stack: e.stack } : String(e);
  ctx.log.error({ requestId: call.requestId, dialect: 'xks', operation: op, err }, 'internal error');
  return failure('InternalException', 500, `internal error (request id ${call.requestId})`, call.requestId);
}
