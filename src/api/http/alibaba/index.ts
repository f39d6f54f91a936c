// The Alibaba Cloud KMS dialect (API version 2016-01-20, RPC style), as the official SDKs send it:
// `POST /` (or GET) with every parameter in the query string or an x-www-form-urlencoded body,
// signed with an access key by signature V2 (HMAC-SHA1, what @alicloud/kms20160120 1.2.0 sends) or
// V3 (ACS3-HMAC-SHA256, what the newer SDKs send). Parameters become the domain request of the same
// action (typed from the gRPC request message, so both transports accept exactly the same fields),
// the action runs through HttpContext.run, and the answer is flat JSON with Alibaba's field names.
// Binary values (Plaintext, CiphertextBlob, EncryptedKeyMaterial, PublicKey) are base64, as in gRPC.

import crypto from 'node:crypto';
import { KmsError, invalid, missing } from '../../../kms/errors';
import { loadApi } from '../../proto';
import { HTTP_ERROR_TABLE, HTTP_REFUSAL_TABLE, HttpRefusalError } from '../error-table';
import type { Dialect, HttpAnswer, HttpCall, HttpContext } from '../types';
import { NONCE_WINDOW_MS, NonceCache } from './nonces';
import { parseV3Authorization, sameSignature, v2Signature, v3CanonicalRequest, v3Signature } from './signature';

export const ALIBABA_API_VERSION = '2016-01-20';

/**
 * The actions served: every key, alias, version, data-key and import action, DescribeHsm, and the
 * ceremony and audit actions a console needs (InitCeremony, which takes a list of custodians, and
 * ExportAudit stay with kmsctl and gRPC).
 */
export const ALIBABA_ACTIONS = [
  'CreateKey',
  'DescribeKey',
  'ListKeys',
  'UpdateKeyDescription',
  'EnableKey',
  'DisableKey',
  'ScheduleKeyDeletion',
  'CancelKeyDeletion',
  'UpdateRotationPolicy',
  'CreateAlias',
  'UpdateAlias',
  'DeleteAlias',
  'ListAliases',
  'ListAliasesByKeyId',
  'Encrypt',
  'Decrypt',
  'GenerateDataKey',
  'GenerateDataKeyWithoutPlaintext',
  'ReEncrypt',
  'CreateKeyVersion',
  'ListKeyVersions',
  'DescribeKeyVersion',
  'GetParametersForImport',
  'ImportKeyMaterial',
  'DeleteKeyMaterial',
  'DescribeHsm',
  'DescribeCeremony',
  'CreateProposal',
  'GetProposal',
  'ListProposals',
  'ApproveProposal',
  'ExecuteProposal',
  'CancelProposal',
  'RenewProposal',
  'ListAuditEvents',
  'VerifyAudit',
  'GetUsageCounters',
] as const;

const SERVED = new Set<string>(ALIBABA_ACTIONS);

/** Parameters of the protocol itself (signature V2, and what the SDKs add), not of the action. */
const PROTOCOL_PARAMS = new Set(['Action', 'Version', 'Format', 'AccessKeyId', 'Signature', 'SignatureMethod', 'SignatureVersion', 'SignatureNonce', 'SignatureType', 'Timestamp', 'RegionId']);

/** Timestamps as the SDKs write them: UTC ISO 8601 to the second (milliseconds tolerated). */
const TIMESTAMP_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,3})?Z$/;

type FieldKind = 'string' | 'int' | 'bool' | 'map';

type MethodDefs = Record<string, { requestType: { type: { field: { name: string; type: string; label: string; typeName?: string }[]; nestedType?: { name: string; options?: { mapEntry?: boolean } }[] } } }>;

/** The services whose actions the dialect may serve, searched in this order. */
const SERVICES = ['kms.v1.KeyManagementService', 'kms.v1.CeremonyService', 'kms.v1.AuditService'];

/** The fields of each action's gRPC request message, with how their string form is read. */
function fieldsOf(action: string): Map<string, FieldKind> {
  const cached = FIELDS.get(action);
  if (cached) return cached;
  const api = loadApi().definition as unknown as Record<string, MethodDefs>;
  const service = SERVICES.find((s) => Object.prototype.hasOwnProperty.call(api[s], action));
  if (!service) throw new KmsError('InternalFailure', `no RPC ${action} in the API`);
  const t = api[service][action].requestType.type;
  const maps = new Set((t.nestedType ?? []).filter((n) => n.options?.mapEntry).map((n) => n.name));
  const out = new Map<string, FieldKind>();
  for (const f of t.field) {
    if (f.type === 'TYPE_STRING') out.set(f.name, 'string');
    else if (f.type === 'TYPE_INT32' || f.type === 'TYPE_INT64') out.set(f.name, 'int');
    else if (f.type === 'TYPE_BOOL') out.set(f.name, 'bool');
    else if (f.type === 'TYPE_MESSAGE' && maps.has(f.typeName ?? '')) out.set(f.name, 'map');
  }
  FIELDS.set(action, out);
  return out;
}
const FIELDS = new Map<string, Map<string, FieldKind>>();

// ------------------------------------------------------------------ parameters

/** Decodes one x-www-form-urlencoded component strictly: a bad %-sequence is refused, not guessed. */
function decodeComponent(s: string, what: string): string {
  if (s.indexOf('%') < 0 && s.indexOf('+') < 0) return s;
  try {
    return decodeURIComponent(s.replace(/\+/g, ' '));
  } catch {
    throw new HttpRefusalError('MalformedRequest', `${what}: malformed percent-encoding`);
  }
}

/**
 * Every parameter of the query and the form body, in order (`all`), and those of the query alone
 * (what a V3 signature's canonical query covers; the body is covered by its hash). A name given
 * twice, in either place, is refused.
 */
export function readParams(call: HttpCall): { all: [string, string][]; query: [string, string][] } {
  const out: [string, string][] = [];
  const seen = new Set<string>();
  const add = (raw: string, where: string) => {
    if (raw === '') return;
    for (const part of raw.split('&')) {
      if (part === '') continue;
      const eq = part.indexOf('=');
      const k = decodeComponent(eq < 0 ? part : part.slice(0, eq), `${where} parameter name`);
      const v = decodeComponent(eq < 0 ? '' : part.slice(eq + 1), `${where} parameter ${k.slice(0, 64)}`);
      if (k === '') throw new HttpRefusalError('MalformedRequest', `${where}: a parameter without a name`);
      if (seen.has(k)) throw new HttpRefusalError('MalformedRequest', `${k.slice(0, 64)}: given more than once`);
      seen.add(k);
      out.push([k, v]);
    }
  };
  add(call.rawQuery, 'query');
  const query = out.slice();
  if (call.body.length > 0) {
    const type = String(call.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
    if (type !== 'application/x-www-form-urlencoded') throw new HttpRefusalError('UnsupportedMediaType', `Content-Type: the body must be application/x-www-form-urlencoded (got "${type.slice(0, 64)}")`);
    const text = call.body.toString('utf8');
    if (Buffer.byteLength(text) !== call.body.length || text.includes('\uFFFD')) throw new HttpRefusalError('MalformedRequest', 'body: not UTF-8');
    add(text, 'body');
  }
  return { all: out, query };
}

/**
 * True when a parameter with a protocol name is the action's own field (CreateProposal's proposed
 * Action, ListAuditEvents' Action filter, ApproveProposal's custodian Signature). Only under V3,
 * where headers carry the API action and the signature; under V2 those names are the protocol's,
 * so these fields can only be given in V3-signed requests.
 */
function ownsParam(action: string, name: string, v3: boolean): boolean {
  return v3 && SERVED.has(action) && fieldsOf(action).has(name);
}

/** The domain request of an action from its string parameters, typed by the gRPC message. */
export function domainRequest(action: string, params: Map<string, string>, v3 = false): Record<string, unknown> {
  const fields = fieldsOf(action);
  const req: Record<string, unknown> = {};
  const flattened = new Map<string, Record<string, string>>();
  for (const [name, value] of params) {
    if (PROTOCOL_PARAMS.has(name) && !ownsParam(action, name, v3)) continue;
    const dot = name.indexOf('.');
    if (dot > 0 && fields.get(name.slice(0, dot)) === 'map') {
      // What @alicloud/kms20160120 1.2.0 sends for a map: EncryptionContext.KEY=VALUE.
      const field = name.slice(0, dot);
      const m = flattened.get(field) ?? {};
      // defineProperty, not assignment: a context key named __proto__ must stay a key, not be dropped.
      Object.defineProperty(m, name.slice(dot + 1), { value, enumerable: true, writable: true, configurable: true });
      flattened.set(field, m);
      continue;
    }
    const kind = fields.get(name);
    if (!kind) throw invalid(name.slice(0, 64), `not a parameter of ${action} (it takes ${[...fields.keys()].join(', ') || 'none'})`);
    if (value === '') continue; // an empty parameter is an absent one, as in gRPC
    switch (kind) {
      case 'string':
        req[name] = value;
        break;
      case 'int': {
        const n = Number(value);
        if (!/^-?\d{1,16}$/.test(value) || !Number.isSafeInteger(n)) throw invalid(name, `must be an integer (got "${value.slice(0, 32)}")`);
        req[name] = n;
        break;
      }
      case 'bool':
        if (value !== 'true' && value !== 'false') throw invalid(name, `must be true or false (got "${value.slice(0, 32)}")`);
        req[name] = value === 'true';
        break;
      case 'map': {
        // What the newer SDKs send: the map as a JSON string.
        let parsed: unknown;
        try {
          parsed = JSON.parse(value);
        } catch {
          throw invalid(name, 'must be a JSON object whose values are strings, or given as ' + name + '.KEY=VALUE parameters');
        }
        if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed) || Object.values(parsed).some((x) => typeof x !== 'string')) {
          throw invalid(name, 'must be a JSON object whose values are strings');
        }
        req[name] = parsed;
        break;
      }
    }
  }
  for (const [field, m] of flattened) {
    if (req[field] !== undefined) throw invalid(field, `given both as JSON and as ${field}.KEY parameters`);
    req[field] = m;
  }
  return req;
}

/** Alibaba's list shapes: {"Keys":{"Key":[...]}} where the domain (and gRPC) answer {"Keys":[...]}. */
function alibabaShape(action: string, res: Record<string, unknown>): Record<string, unknown> {
  const wrap = (list: string, item: string) => ({ ...res, [list]: { [item]: res[list] ?? [] } });
  switch (action) {
    case 'ListKeys':
      return wrap('Keys', 'Key');
    case 'ListAliases':
    case 'ListAliasesByKeyId':
      return wrap('Aliases', 'Alias');
    case 'ListKeyVersions':
      return wrap('KeyVersions', 'KeyVersion');
    case 'ListProposals':
      return wrap('Proposals', 'Proposal');
    case 'ListAuditEvents':
      return wrap('Events', 'Event');
    case 'GetUsageCounters':
      return wrap('Counters', 'Counter');
    default:
      return res;
  }
}

// ------------------------------------------------------------------ authentication

interface Authenticated {
  /** Signed with V3 (the API action in x-acs-action), not V2 (in the Action parameter). */
  v3: boolean;
  accessKeyId: string;
  principal: string;
  action: string;
  params: Map<string, string>;
}

const nonces = new NonceCache();

function header(call: HttpCall, name: string): string | undefined {
  const v = call.headers[name];
  return Array.isArray(v) ? v.join(',') : v;
}

/** The request's signing time, checked to be within 15 minutes of the server's clock. */
function checkTime(value: string | undefined, field: string, now: number): number {
  if (!value) throw new HttpRefusalError('IncompleteSignature', `${field}: is required`);
  if (!TIMESTAMP_RE.test(value)) throw new HttpRefusalError('StaleTimestamp', `${field}: must be a UTC time such as 2026-01-02T03:04:05Z`);
  const t = Date.parse(value);
  if (!Number.isFinite(t) || Math.abs(now - t) > NONCE_WINDOW_MS) throw new HttpRefusalError('StaleTimestamp', `${field}: more than 15 minutes from the server's time`);
  return t;
}

function authenticate(call: HttpCall, ctx: HttpContext): Authenticated {
  const { all, query } = readParams(call);
  const params = new Map(all);
  const authorization = header(call, 'authorization');
  if (authorization?.startsWith('ACS3-')) return authenticateV3(call, ctx, query, params, authorization);
  return authenticateV2(call, ctx, all, params);
}

function accessKey(ctx: HttpContext, id: string) {
  const key = ctx.lookupAccessKey(id);
  if (!key) throw new HttpRefusalError('UnknownAccessKey', `AccessKeyId: no access key "${id.slice(0, 64)}"`);
  if (key.status !== 'Active') throw new HttpRefusalError('InactiveAccessKey', `AccessKeyId: the access key ${key.accessKeyId} is Inactive`);
  return key;
}

function useNonce(accessKeyId: string, nonce: string | undefined, field: string, now: number, signedAt: number): void {
  if (!nonce) throw new HttpRefusalError('IncompleteSignature', `${field}: is required`);
  if (nonce.length > 128) throw invalid(field, 'at most 128 characters');
  const r = nonces.use(accessKeyId, nonce, now, signedAt);
  if (r === 'replayed') throw new HttpRefusalError('ReplayedNonce', `${field}: this nonce was already used within 15 minutes`);
  if (r === 'full') throw new KmsError('Throttling', 'too many signed requests within 15 minutes; retry later');
}

function authenticateV2(call: HttpCall, ctx: HttpContext, list: [string, string][], params: Map<string, string>): Authenticated {
  for (const p of ['AccessKeyId', 'Signature', 'SignatureMethod', 'SignatureVersion']) {
    if (!params.get(p)) throw new HttpRefusalError('IncompleteSignature', `${p}: is required (signature V2), or sign with an ACS3-HMAC-SHA256 Authorization header`);
  }
  if (params.get('SignatureMethod') !== 'HMAC-SHA1') throw new HttpRefusalError('IncompleteSignature', 'SignatureMethod: must be HMAC-SHA1');
  if (params.get('SignatureVersion') !== '1.0') throw new HttpRefusalError('IncompleteSignature', 'SignatureVersion: must be 1.0');
  if (params.has('SignatureType') && params.get('SignatureType') !== '') throw new HttpRefusalError('IncompleteSignature', 'SignatureType: only HMAC signatures are accepted');
  const signedAt = checkTime(params.get('Timestamp'), 'Timestamp', call.receivedAt);
  const key = accessKey(ctx, params.get('AccessKeyId') as string);
  const expected = v2Signature(key.secret(), call.method, list);
  if (!sameSignature(expected, params.get('Signature') as string)) throw new HttpRefusalError('SignatureMismatch', 'Signature: does not match the request signed with the access key secret');
  useNonce(key.accessKeyId, params.get('SignatureNonce'), 'SignatureNonce', call.receivedAt, signedAt);
  const action = params.get('Action');
  if (!action) throw missing('Action');
  const version = params.get('Version');
  if (!version) throw missing('Version');
  if (version !== ALIBABA_API_VERSION) throw invalid('Version', `must be ${ALIBABA_API_VERSION}`);
  const format = params.get('Format');
  if (format && format.toUpperCase() !== 'JSON') throw invalid('Format', 'must be JSON');
  return { v3: false, accessKeyId: key.accessKeyId, principal: key.principal, action, params };
}

function authenticateV3(call: HttpCall, ctx: HttpContext, query: [string, string][], params: Map<string, string>, authorization: string): Authenticated {
  const auth = parseV3Authorization(authorization);
  if (!auth) throw new HttpRefusalError('IncompleteSignature', 'Authorization: must be "ACS3-HMAC-SHA256 Credential=ID,SignedHeaders=a;b,Signature=HEX"');
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(call.headers)) if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(',') : v;
  for (const h of ['x-acs-action', 'x-acs-version', 'x-acs-date', 'x-acs-signature-nonce', 'x-acs-content-sha256']) {
    if (!headers[h]) throw new HttpRefusalError('IncompleteSignature', `${h}: header is required`);
  }
  const mustSign = ['host', ...Object.keys(headers).filter((h) => h.startsWith('x-acs-')), ...(headers['content-type'] ? ['content-type'] : [])];
  for (const h of mustSign) {
    if (!auth.signedHeaders.includes(h)) throw new HttpRefusalError('IncompleteSignature', `SignedHeaders: must include ${h}`);
  }
  for (const h of auth.signedHeaders) if (headers[h] === undefined) throw new HttpRefusalError('IncompleteSignature', `SignedHeaders: names ${h}, which the request does not have`);
  const signedAt = checkTime(headers['x-acs-date'], 'x-acs-date', call.receivedAt);
  const key = accessKey(ctx, auth.accessKeyId);
  const bodyHash = crypto.createHash('sha256').update(call.body).digest('hex');
  if (headers['x-acs-content-sha256'] !== bodyHash) throw new HttpRefusalError('SignatureMismatch', 'x-acs-content-sha256: is not the SHA-256 of the body');
  const canonical = v3CanonicalRequest(call.method, decodeComponent(call.path, 'path'), query, headers, auth.signedHeaders, bodyHash);
  if (!sameSignature(v3Signature(key.secret(), canonical), auth.signature)) throw new HttpRefusalError('SignatureMismatch', 'Signature: does not match the canonical request signed with the access key secret');
  useNonce(key.accessKeyId, headers['x-acs-signature-nonce'], 'x-acs-signature-nonce', call.receivedAt, signedAt);
  if (headers['x-acs-version'] !== ALIBABA_API_VERSION) throw invalid('x-acs-version', `must be ${ALIBABA_API_VERSION}`);
  const action = headers['x-acs-action'];
  if (params.has('Action') && params.get('Action') !== action && !ownsParam(action, 'Action', true)) throw invalid('Action', 'differs from the x-acs-action header');
  return { v3: true, accessKeyId: key.accessKeyId, principal: key.principal, action, params };
}

// ------------------------------------------------------------------ answers

function json(status: number, body: object, requestId: string): HttpAnswer {
  // Answers carry key metadata, import tokens and plaintexts: no cache may keep them.
  return { status, headers: { 'content-type': 'application/json;charset=utf-8', 'cache-control': 'no-store', 'x-acs-request-id': requestId }, body: JSON.stringify(body) };
}

function errorAnswer(call: HttpCall, code: string, status: number, message: string): HttpAnswer {
  const host = String(call.headers.host ?? 'kmsd').slice(0, 255);
  return json(status, { Code: code, Message: message, RequestId: call.requestId, HostId: host }, call.requestId);
}

export const alibabaDialect: Dialect = {
  name: 'alibaba',
  matches: (call) => call.path === '/',
  async handle(call, ctx) {
    let who: Authenticated | undefined;
    let ran = false;
    try {
      if (call.method !== 'POST' && call.method !== 'GET') throw new HttpRefusalError('MalformedRequest', `method: ${call.method.slice(0, 16)} is not served (POST or GET)`);
      who = authenticate(call, ctx);
      if (!SERVED.has(who.action)) throw new HttpRefusalError('UnknownAction', `Action: "${who.action.slice(0, 64)}" is not an action of KMS ${ALIBABA_API_VERSION} served by kmsd`);
      const req = domainRequest(who.action, who.params, who.v3);
      ran = true;
      const res = (await ctx.run(who.action, req, { principal: who.principal, accessKeyId: who.accessKeyId }, call)) as Record<string, unknown>;
      return json(200, { ...alibabaShape(who.action, res ?? {}), RequestId: call.requestId }, call.requestId);
    } catch (e) {
      if (e instanceof HttpRefusalError) {
        const row = HTTP_REFUSAL_TABLE[e.refusal];
        ctx.log.warn({ requestId: call.requestId, peer: call.peer, accessKeyId: who?.accessKeyId ?? authKeyId(call), refusal: e.refusal, reason: e.message }, 'http request refused');
        return errorAnswer(call, row.alibaba.code, row.alibaba.status, e.message);
      }
      if (e instanceof KmsError) {
        const row = HTTP_ERROR_TABLE[e.code];
        // What HttpContext.run refused it has logged; parameter errors found here are logged here.
        if (!ran) ctx.log.info({ requestId: call.requestId, accessKeyId: who?.accessKeyId, action: who?.action, outcome: e.code, reason: e.message }, 'http request refused');
        return errorAnswer(call, row.alibaba.code, row.alibaba.status, e.message);
      }
      ctx.log.error({ requestId: call.requestId, err: (e as Error)?.message }, 'alibaba dialect failed');
      return errorAnswer(call, 'InternalFailure', 500, `internal error (request id ${call.requestId})`);
    }
  },
};

/** The access key a refused request claimed, for the log line only. */
function authKeyId(call: HttpCall): string | undefined {
  const m = /AccessKeyId=([A-Za-z0-9]{1,64})/.exec(call.rawQuery) ?? /Credential=([A-Za-z0-9]{1,64})/.exec(String(call.headers.authorization ?? ''));
  return m?.[1];
}
