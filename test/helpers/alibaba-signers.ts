// Client-side Alibaba Cloud signers for tests, independent of kmsd's verifier (src/api/http/alibaba):
//  - V2: the official SDK's own signer (@alicloud/rpc-util getSignatureV1, what @alicloud/kms20160120
//    1.2.0 calls), so a request can be built, then tampered with, exactly as the SDK would sign it;
//  - V3: ACS3-HMAC-SHA256 written from Alibaba's documentation ("Request syntax and signature method
//    V3 for RPC and ROA APIs"): the canonical request is
//        HTTPRequestMethod \n CanonicalURI \n CanonicalQueryString \n CanonicalHeaders \n
//        SignedHeaders \n HashedRequestPayload
//    with percentCode(s) = URLEncoder.encode(s, "UTF-8") then "+"→"%20", "*"→"%2A", "%7E"→"~";
//    the string to sign is "ACS3-HMAC-SHA256\n" + hex(SHA256(canonical request)); the signature is
//    hex(HMAC-SHA256(AccessKeySecret, string to sign)).

import crypto from 'node:crypto';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const rpcUtil = require('@alicloud/rpc-util').default as { getSignatureV1(q: Record<string, string>, method: string, secret: string): string; getTimestamp(): string };

export interface Credentials {
  AccessKeyId: string;
  AccessKeySecret: string;
}

/** The query of a V2-signed RPC request, as the SDK builds it (Timestamp and nonce overridable). */
export function v2Params(cred: Credentials, action: string, params: Record<string, string>, o: { method?: string; timestamp?: string; nonce?: string } = {}): Record<string, string> {
  const q: Record<string, string> = {
    Action: action,
    Format: 'json',
    Timestamp: o.timestamp ?? rpcUtil.getTimestamp(),
    Version: '2016-01-20',
    SignatureNonce: o.nonce ?? crypto.randomUUID(),
    ...params,
    SignatureMethod: 'HMAC-SHA1',
    SignatureVersion: '1.0',
    AccessKeyId: cred.AccessKeyId,
  };
  q.Signature = rpcUtil.getSignatureV1(q, o.method ?? 'POST', cred.AccessKeySecret);
  return q;
}

export function toQuery(q: Record<string, string>): string {
  return Object.entries(q)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
}

/** Alibaba's percentCode, byte by byte: unreserved RFC 3986 characters stay, the rest is %XX. */
export function percentCode(s: string): string {
  let out = '';
  for (const b of Buffer.from(s, 'utf8')) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9\-_.~]/.test(c) ? c : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export interface V3Request {
  path: string;
  headers: Record<string, string>;
  body: string;
}

/** A V3-signed RPC request: parameters in the query string (and optionally a form body). */
export function signV3(
  cred: Credentials,
  host: string,
  action: string,
  query: Record<string, string>,
  o: { method?: string; body?: Record<string, string>; date?: string; nonce?: string; rawQuery?: string } = {},
): V3Request {
  const method = o.method ?? 'POST';
  const body = o.body ? toQuery(o.body) : '';
  const hashedPayload = crypto.createHash('sha256').update(body, 'utf8').digest('hex');
  const headers: Record<string, string> = {
    host,
    'x-acs-action': action,
    'x-acs-version': '2016-01-20',
    'x-acs-date': o.date ?? new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
    'x-acs-signature-nonce': o.nonce ?? crypto.randomUUID(),
    'x-acs-content-sha256': hashedPayload,
  };
  if (o.body) headers['content-type'] = 'application/x-www-form-urlencoded';
  const canonicalQueryString = Object.keys(query)
    .sort()
    .map((k) => `${percentCode(k)}=${percentCode(query[k])}`)
    .join('&');
  const signedNames = Object.keys(headers)
    .map((h) => h.toLowerCase())
    .sort();
  const canonicalHeaders = signedNames.map((h) => `${h}:${headers[h].trim()}\n`).join('');
  const signedHeaders = signedNames.join(';');
  const canonicalRequest = [method, '/', canonicalQueryString, canonicalHeaders, signedHeaders, hashedPayload].join('\n');
  const stringToSign = `ACS3-HMAC-SHA256\n${crypto.createHash('sha256').update(canonicalRequest, 'utf8').digest('hex')}`;
  const signature = crypto.createHmac('sha256', cred.AccessKeySecret).update(stringToSign, 'utf8').digest('hex');
  headers.authorization = `ACS3-HMAC-SHA256 Credential=${cred.AccessKeyId},SignedHeaders=${signedHeaders},Signature=${signature}`;
  // The query on the wire: as given (to test other escapings), else Alibaba's own encoding.
  const wire = o.rawQuery ?? canonicalQueryString;
  return { path: wire ? `/?${wire}` : '/', headers, body };
}
