// AWS Signature Version 4, verified as AWS documents it ("Create a signed AWS API request"), written
// independently of the SDK's signer: the canonical request (method, normalized path, sorted query,
// the signed headers, the SHA-256 of the body as received), the string to sign over the credential
// scope, and the HMAC chain from "AWS4" + secret. Every refusal says which part failed, never the
// expected signature.

import crypto from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { HttpRefusalError } from '../error-table';
import type { AccessKeyRecord } from '../types';
import { AwsFault } from './faults';

export const ALGORITHM = 'AWS4-HMAC-SHA256';
/** How far X-Amz-Date may be from kmsd's clock, either way (AWS: 15 minutes). */
export const MAX_SKEW_MS = 15 * 60 * 1000;
/** Hex SHA-256; crypto.hash (Node 20.12 and later) does it without a Hash object per call. */
const sha256Hex: (data: string | Buffer) => string =
  typeof crypto.hash === 'function' ? (data) => crypto.hash('sha256', data, 'hex') : (data) => crypto.createHash('sha256').update(data).digest('hex');
const EMPTY_SHA256 = sha256Hex('');

/** Headers a signature must cover: the endpoint, the time, and the operation the body is for. */
const REQUIRED_SIGNED = ['host', 'x-amz-date', 'x-amz-target'];

export interface SignedRequest {
  method: string;
  path: string;
  rawQuery: string;
  headers: IncomingHttpHeaders;
  body: Buffer;
  /** kmsd's clock when the request arrived, ms. */
  receivedAt: number;
}

export interface VerifyOptions {
  service: string;
  /** When set, the only region a credential scope may name. */
  region?: string;
  /** Headers the signature must cover (default: host, x-amz-date, x-amz-target, as the KMS API needs). */
  requiredSignedHeaders?: readonly string[];
  /** Headers that must be signed when the request has them (default: content-type, x-amz-content-sha256, x-amz-security-token). */
  signedWhenPresent?: readonly string[];
  /** How far X-Amz-Date may be from kmsd's clock (default MAX_SKEW_MS). */
  maxSkewMs?: number;
  lookupAccessKey(id: string): AccessKeyRecord | undefined;
}

export interface Verified {
  accessKeyId: string;
  principal: string;
  /** The region of the credential scope (kmsd answers with ARNs in it). */
  region: string;
}

function incomplete(message: string): HttpRefusalError {
  return new HttpRefusalError('IncompleteSignature', message);
}

function mismatch(message: string): HttpRefusalError {
  return new HttpRefusalError('SignatureMismatch', message);
}

/** RFC 3986 unreserved characters stay; everything else is %XX with upper-case hex (AWS's UriEncode). */
export function uriEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

/** The path as AWS canonicalizes it for every service but S3: dot segments resolved, each segment encoded again. */
export function canonicalPath(rawPath: string): string {
  const segments: string[] = [];
  for (const seg of rawPath.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') segments.pop();
    else segments.push(seg);
  }
  const trailing = segments.length > 0 && rawPath.endsWith('/') ? '/' : '';
  return `/${segments.map(uriEncode).join('/')}${trailing}`;
}

function decodeComponent(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw mismatch(`the query string has a malformed percent-encoding (${JSON.stringify(s.slice(0, 64))})`);
  }
}

/** Query parameters decoded, re-encoded the one AWS way, sorted by name then value. */
export function canonicalQuery(rawQuery: string): string {
  if (!rawQuery) return '';
  const pairs: [string, string][] = [];
  for (const part of rawQuery.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const k = eq < 0 ? part : part.slice(0, eq);
    const v = eq < 0 ? '' : part.slice(eq + 1);
    pairs.push([uriEncode(decodeComponent(k)), uriEncode(decodeComponent(v))]);
  }
  pairs.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0));
  return pairs.map(([k, v]) => `${k}=${v}`).join('&');
}

/** A request header by its lower-case name; never one of Object.prototype's members. */
function headerOf(headers: IncomingHttpHeaders, name: string): string | string[] | undefined {
  return Object.prototype.hasOwnProperty.call(headers, name) ? headers[name] : undefined;
}

const NEEDS_FOLDING = /[\r\n\t]|  |^ | $/;

/** A header's value as signed: repeated values joined by ',', runs of blanks made one space, trimmed. */
function canonicalHeaderValue(v: string | string[] | undefined): string {
  // Most values have nothing to fold: no line breaks or tabs, no runs of spaces, no blank at either end.
  if (typeof v === 'string' && !NEEDS_FOLDING.test(v)) return v;
  const joined = Array.isArray(v) ? v.join(',') : (v ?? '');
  return joined.replace(/[\r\n]/g, ' ').replace(/[ \t]+/g, ' ').replace(/^ | $/g, '');
}

export interface ParsedAuthorization {
  accessKeyId: string;
  date: string;
  region: string;
  service: string;
  terminator: string;
  signedHeaders: string[];
  signature: string;
}

/** `AWS4-HMAC-SHA256 Credential=AK/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex` */
export function parseAuthorization(header: string): ParsedAuthorization {
  const sp = header.indexOf(' ');
  const algorithm = sp < 0 ? header : header.slice(0, sp);
  if (algorithm !== ALGORITHM) {
    throw incomplete(`Authorization: unsupported algorithm ${JSON.stringify(algorithm.slice(0, 40))}; kmsd verifies ${ALGORITHM} (Signature Version 4)`);
  }
  const fields = new Map<string, string>();
  for (const part of header.slice(sp + 1).split(',')) {
    const item = part.trim();
    if (!item) continue;
    const eq = item.indexOf('=');
    if (eq < 0) throw incomplete(`Authorization: "${item.slice(0, 40)}" is not a name=value pair`);
    const name = item.slice(0, eq);
    if (fields.has(name)) throw incomplete(`Authorization: ${name} appears twice`);
    fields.set(name, item.slice(eq + 1));
  }
  for (const name of ['Credential', 'SignedHeaders', 'Signature']) {
    if (!fields.get(name)) throw incomplete(`Authorization: requires the ${name} parameter`);
  }
  const unknown = [...fields.keys()].filter((n) => !['Credential', 'SignedHeaders', 'Signature'].includes(n));
  if (unknown.length) throw incomplete(`Authorization: unknown parameter ${unknown[0].slice(0, 40)}`);
  const cred = (fields.get('Credential') as string).split('/');
  if (cred.length !== 5 || cred.some((c) => c === '')) {
    throw incomplete('Authorization: Credential must be ACCESS_KEY_ID/YYYYMMDD/REGION/SERVICE/aws4_request');
  }
  const signedHeaders = (fields.get('SignedHeaders') as string).split(';');
  for (let i = 0; i < signedHeaders.length; i++) {
    const h = signedHeaders[i];
    if (!/^[!#$%&'*+.^_`|~0-9a-z-]+$/.test(h)) throw incomplete(`Authorization: SignedHeaders has an invalid header name ${JSON.stringify(h.slice(0, 40))} (lower-case names separated by ';')`);
    if (i > 0 && signedHeaders[i - 1] >= h) throw incomplete('Authorization: SignedHeaders must be sorted and without repeats');
  }
  const signature = fields.get('Signature') as string;
  if (!/^[0-9a-f]{64}$/.test(signature)) throw incomplete('Authorization: Signature must be 64 lower-case hex digits');
  return { accessKeyId: cred[0], date: cred[1], region: cred[2], service: cred[3], terminator: cred[4], signedHeaders, signature };
}

/** 20260102T030405Z → ms, or NaN. */
export function parseAmzDate(s: string): number {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(s);
  if (!m) return NaN;
  const [y, mo, d, h, mi, se] = m.slice(1).map(Number);
  const t = Date.UTC(y, mo - 1, d, h, mi, se);
  const back = new Date(t);
  // Date.UTC rolls 20260231 over into March; such a date is not a date.
  if (back.getUTCFullYear() !== y || back.getUTCMonth() !== mo - 1 || back.getUTCDate() !== d || h > 23 || mi > 59 || se > 59) return NaN;
  return t;
}

function amzDate(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
}

const hmac = (key: crypto.BinaryLike, data: string): Buffer => crypto.createHmac('sha256', key).update(data, 'utf8').digest();

/**
 * Signing keys by access key, then by date, region and service. A key's secret never changes (a new
 * secret is a new access key id), so a cached signing key is reused without unsealing the secret
 * again; the access key is still looked up (and must be Active) on every request, and the signing
 * keys of one that is unknown or Inactive are zeroed and dropped then.
 */
export class SigningKeyCache {
  private readonly byKey = new Map<string, Map<string, Buffer>>();
  private size = 0;
  constructor(private readonly max = 1024) {}

  get(record: AccessKeyRecord, date: string, region: string, service: string): Buffer {
    const scope = `${date}\n${region}\n${service}`;
    const hit = this.byKey.get(record.accessKeyId)?.get(scope);
    if (hit) return hit;
    // The secret buffer is the access key store's own (unsealed once, kept for every dialect):
    // only the copy made here is zeroed.
    const seed = Buffer.concat([Buffer.from('AWS4'), record.secret()]);
    let k: Buffer;
    try {
      k = hmac(seed, date);
    } finally {
      seed.fill(0);
    }
    for (const part of [region, service, 'aws4_request']) k = hmac(k, part);
    if (this.size >= this.max) this.forget(this.byKey.keys().next().value as string);
    let scopes = this.byKey.get(record.accessKeyId);
    if (!scopes) this.byKey.set(record.accessKeyId, (scopes = new Map()));
    scopes.set(scope, k);
    this.size++;
    return k;
  }

  /** Zeroes and drops every signing key of an access key. */
  forget(accessKeyId: string): void {
    const scopes = this.byKey.get(accessKeyId);
    if (!scopes) return;
    for (const k of scopes.values()) k.fill(0);
    this.size -= scopes.size;
    this.byKey.delete(accessKeyId);
  }

  /** Signing keys held for an access key (for tests). */
  held(accessKeyId: string): number {
    return this.byKey.get(accessKeyId)?.size ?? 0;
  }
}

/** The canonical request of AWS's algorithm for these signed headers and this payload hash. */
export function canonicalRequest(req: Pick<SignedRequest, 'method' | 'path' | 'rawQuery' | 'headers'>, signedHeaders: string[], payloadHash: string): string {
  const headerLines = signedHeaders.map((h) => `${h}:${canonicalHeaderValue(headerOf(req.headers, h))}\n`).join('');
  return `${req.method}\n${canonicalPath(req.path)}\n${canonicalQuery(req.rawQuery)}\n${headerLines}\n${signedHeaders.join(';')}\n${payloadHash}`;
}

/**
 * Verifies a request's SigV4 Authorization header. Order: structure, scope, time, then the access
 * key (unknown or Inactive: UnrecognizedClient), then the signature. Throws AwsFault (no
 * Authorization header) or HttpRefusalError.
 */
export function verifySigV4(req: SignedRequest, o: VerifyOptions, cache: SigningKeyCache): Verified {
  const header = req.headers.authorization;
  if (!header) throw new AwsFault('MissingAuthenticationTokenException', 'Missing Authentication Token: the request has no Authorization header (AWS Signature Version 4)');
  if (req.rawQuery && /(?:^|&)X-Amz-(?:Signature|Credential)=/i.test(req.rawQuery)) {
    throw incomplete('presigned query-string authentication is not accepted; sign with the Authorization header');
  }
  const auth = parseAuthorization(header);

  const signed = new Set(auth.signedHeaders);
  for (const h of o.requiredSignedHeaders ?? REQUIRED_SIGNED) {
    if (!signed.has(h)) throw incomplete(`Authorization: SignedHeaders must include ${h}`);
  }
  for (const h of o.signedWhenPresent ?? ['content-type', 'x-amz-content-sha256', 'x-amz-security-token']) {
    if (headerOf(req.headers, h) !== undefined && !signed.has(h)) throw incomplete(`Authorization: the ${h} header is present, so SignedHeaders must include it`);
  }
  for (const h of auth.signedHeaders) {
    if (headerOf(req.headers, h) === undefined) throw mismatch(`Authorization: signed header ${h} is not in the request`);
  }

  const dateHeader = req.headers['x-amz-date'];
  const date = parseAmzDate(typeof dateHeader === 'string' ? dateHeader : '');
  if (Number.isNaN(date)) throw incomplete('X-Amz-Date: must be an ISO 8601 basic date-time in UTC, like 20260102T030405Z');
  if (auth.date !== (dateHeader as string).slice(0, 8)) {
    throw mismatch(`Authorization: the credential scope date ${JSON.stringify(auth.date.slice(0, 16))} is not the date of X-Amz-Date (${(dateHeader as string).slice(0, 8)})`);
  }
  if (auth.service !== o.service) throw mismatch(`Authorization: the credential must be scoped to service '${o.service}', not '${auth.service.slice(0, 40)}'`);
  if (auth.terminator !== 'aws4_request') throw mismatch(`Authorization: the credential scope must end in 'aws4_request', not '${auth.terminator.slice(0, 40)}'`);
  if (o.region !== undefined && auth.region !== o.region) {
    throw mismatch(`Authorization: the credential must be scoped to region '${o.region}' (this kmsd's --aws-region), not '${auth.region.slice(0, 40)}'`);
  }
  const skew = o.maxSkewMs ?? MAX_SKEW_MS;
  const minutes = `${Math.round(skew / 60_000)} min.`;
  if (date < req.receivedAt - skew) {
    throw new HttpRefusalError('StaleTimestamp', `Signature expired: ${dateHeader} is now earlier than ${amzDate(req.receivedAt - skew)} (${amzDate(req.receivedAt)} - ${minutes})`);
  }
  if (date > req.receivedAt + skew) {
    throw new HttpRefusalError('StaleTimestamp', `Signature not yet current: ${dateHeader} is still later than ${amzDate(req.receivedAt + skew)} (${amzDate(req.receivedAt)} + ${minutes})`);
  }

  if (req.headers['x-amz-security-token'] !== undefined) {
    // kmsd's access keys are long-term; there are no temporary credentials a session token could belong to.
    throw new HttpRefusalError('UnknownAccessKey', 'The security token included in the request is invalid: kmsd issues no session tokens (X-Amz-Security-Token)');
  }
  const record = o.lookupAccessKey(auth.accessKeyId);
  if (!record || record.status !== 'Active') {
    cache.forget(auth.accessKeyId);
    if (!record) throw new HttpRefusalError('UnknownAccessKey', `The security token included in the request is invalid: no access key ${JSON.stringify(auth.accessKeyId.slice(0, 64))}`);
    throw new HttpRefusalError('InactiveAccessKey', `The security token included in the request is invalid: access key ${record.accessKeyId} is Inactive`);
  }

  const payloadHash = req.body.length === 0 ? EMPTY_SHA256 : sha256Hex(req.body);
  const declared = req.headers['x-amz-content-sha256'];
  if (declared !== undefined && declared !== payloadHash) {
    throw mismatch(declared === 'UNSIGNED-PAYLOAD' ? 'X-Amz-Content-Sha256: kmsd needs a signed payload, not UNSIGNED-PAYLOAD' : 'X-Amz-Content-Sha256: is not the SHA-256 of the body received');
  }
  const scope = `${auth.date}/${auth.region}/${auth.service}/aws4_request`;
  const creq = canonicalRequest(req, auth.signedHeaders, payloadHash);
  const toSign = `${ALGORITHM}\n${dateHeader}\n${scope}\n${sha256Hex(creq)}`;
  const expected = crypto.createHmac('sha256', cache.get(record, auth.date, auth.region, auth.service)).update(toSign, 'utf8').digest();
  const given = Buffer.from(auth.signature, 'hex');
  if (!crypto.timingSafeEqual(expected, given)) {
    throw mismatch(`The request signature we calculated does not match the signature you provided. Check your access key secret and signing method (AWS Signature Version 4, service ${o.service}).`);
  }
  return { accessKeyId: record.accessKeyId, principal: record.principal, region: auth.region };
}
