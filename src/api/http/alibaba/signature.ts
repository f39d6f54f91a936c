// Alibaba Cloud request signatures, as the server checks them.
//   V2 (RPC, "SignatureVersion 1.0"): base64 HMAC-SHA1, key `secret + "&"`, over
//      METHOD + "&" + enc("/") + "&" + enc(sorted "enc(k)=enc(v)" joined by "&"), over every
//      parameter of the query and the form body except Signature.
//   V3 (ACS3-HMAC-SHA256): hex HMAC-SHA256 with the secret over
//      "ACS3-HMAC-SHA256\n" + hex(SHA-256(canonical request)), the canonical request being
//      METHOD \n enc(path) \n sorted "enc(k)=enc(v)" \n "name:value\n" per signed header \n
//      signed header names joined by ";" \n hex(SHA-256(body)).
// enc() is RFC 3986 percent-encoding (only A-Z a-z 0-9 - _ . ~ left as they are). Parameters are
// decoded first and re-encoded here, so clients that escape !'()* differently verify alike.

import crypto from 'node:crypto';

const UNRESERVED_ONLY = /^[A-Za-z0-9_.~-]*$/;
const SUB_DELIM = /[!'()*]/;
const SUB_DELIMS = /[!'()*]/g;

/** RFC 3986 unreserved characters stay; everything else is %XX of its UTF-8 bytes. */
export function percentEncode(s: string): string {
  // Most names and many values (ids, nonces, versions) need no encoding; encodeURIComponent leaves
  // only !'()* of the characters RFC 3986 wants encoded, and most strings have none of them.
  if (UNRESERVED_ONLY.test(s)) return s;
  const e = encodeURIComponent(s);
  return SUB_DELIM.test(e) ? e.replace(SUB_DELIMS, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`) : e;
}

/**
 * percentEncode applied twice, as V2's string to sign encodes the already encoded query: the first
 * pass leaves only unreserved characters and %XX, of which the second changes only '%'.
 */
function encodedTwice(s: string): string {
  const e = percentEncode(s);
  return e.includes('%') ? e.replaceAll('%', '%25') : e;
}

/** Code-unit order, as the SDKs sort (Java's String.compareTo, Go's sort.Strings on ASCII keys). */
function byKey(a: [string, string], b: [string, string]): number {
  return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0;
}

/** Sorted by the decoded names (as the SDKs' TreeMap / sort do), then each name and value encoded. */
export function canonicalQuery(params: [string, string][]): string {
  return [...params]
    .sort(byKey)
    .map(([k, v]) => `${percentEncode(k)}=${percentEncode(v)}`)
    .join('&');
}

export function v2StringToSign(method: string, params: [string, string][]): string {
  // percentEncode(canonicalQuery(signed)), built in one pass: '=' and '&' encoded once are %3D, %26.
  const signed = params.filter(([k]) => k !== 'Signature').sort(byKey);
  let query = '';
  for (let i = 0; i < signed.length; i++) query += `${i === 0 ? '' : '%26'}${encodedTwice(signed[i][0])}%3D${encodedTwice(signed[i][1])}`;
  return `${method.toUpperCase()}&${percentEncode('/')}&${query}`;
}

export function v2Signature(secret: Buffer, method: string, params: [string, string][]): string {
  return crypto.createHmac('sha1', Buffer.concat([secret, Buffer.from('&')])).update(v2StringToSign(method, params), 'utf8').digest('base64');
}

export interface V3Authorization {
  accessKeyId: string;
  signedHeaders: string[];
  signature: string;
}

/** Parses `ACS3-HMAC-SHA256 Credential=AK,SignedHeaders=a;b,Signature=hex`; null when it is not that shape. */
export function parseV3Authorization(header: string): V3Authorization | null {
  const m = /^ACS3-HMAC-SHA256 +(.*)$/.exec(header.trim());
  if (!m) return null;
  const parts = new Map<string, string>();
  for (const p of m[1].split(',')) {
    const eq = p.indexOf('=');
    if (eq <= 0) return null;
    const k = p.slice(0, eq).trim();
    if (parts.has(k)) return null;
    parts.set(k, p.slice(eq + 1).trim());
  }
  const accessKeyId = parts.get('Credential');
  const signedHeaders = parts.get('SignedHeaders');
  const signature = parts.get('Signature');
  if (!accessKeyId || !signedHeaders || !signature || parts.size !== 3) return null;
  if (!/^[0-9a-f]{64}$/.test(signature)) return null;
  const names = signedHeaders.split(';');
  if (names.some((n) => !/^[a-z0-9-]+$/.test(n))) return null;
  return { accessKeyId, signedHeaders: names, signature };
}

export function v3CanonicalRequest(method: string, path: string, params: [string, string][], headers: Record<string, string>, signedHeaders: string[], payloadHash: string): string {
  const names = [...signedHeaders].sort();
  const canonicalHeaders = names.map((n) => `${n}:${(headers[n] ?? '').trim()}\n`).join('');
  const canonicalPath = path.split('/').map((seg) => percentEncode(seg)).join('/');
  return [method.toUpperCase(), canonicalPath, canonicalQuery(params), canonicalHeaders, names.join(';'), payloadHash].join('\n');
}

export function v3Signature(secret: Buffer, canonicalRequest: string): string {
  const toSign = `ACS3-HMAC-SHA256\n${crypto.createHash('sha256').update(canonicalRequest, 'utf8').digest('hex')}`;
  return crypto.createHmac('sha256', secret).update(toSign, 'utf8').digest('hex');
}

/** Constant-time comparison of two signatures as strings. */
export function sameSignature(a: string, b: string): boolean {
  const x = Buffer.from(a, 'utf8');
  const y = Buffer.from(b, 'utf8');
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}
