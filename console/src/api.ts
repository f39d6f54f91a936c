// The console's only way to kmsd: Alibaba KMS 2016-01-20 calls to `/` on the page's own origin,
// signed in the browser with ACS3-HMAC-SHA256 (WebCrypto) by the access key the user signed in
// with. The page holds no privilege of its own: kmsd checks every call's signature and policy.

export const API_VERSION = '2016-01-20';

/** The access key, kept in sessionStorage only (gone with the tab, or on Sign out). */
export interface Credentials {
  AccessKeyId: string;
  AccessKeySecret: string;
}

const STORAGE_KEY = 'kmsd-console-credentials';

export function loadCredentials(): Credentials | null {
  try {
    const raw = sessionStorage.getItem(STORAGE_KEY);
    if (!raw) return null;
    const c = JSON.parse(raw) as Credentials;
    return typeof c.AccessKeyId === 'string' && typeof c.AccessKeySecret === 'string' ? c : null;
  } catch {
    return null;
  }
}

export function saveCredentials(c: Credentials): void {
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(c));
}

export function clearCredentials(): void {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** An answer of kmsd that is not a success: Alibaba's Code and Message, and the HTTP status. */
export class ApiError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly status: number,
    readonly requestId = '',
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** RFC 3986 percent-encoding, as kmsd and the Alibaba SDKs canonicalize. */
export function percentEncode(s: string): string {
  return encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);
}

const enc = new TextEncoder();

function hex(buf: ArrayBuffer): string {
  return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
}

async function sha256Hex(s: string): Promise<string> {
  return hex(await crypto.subtle.digest('SHA-256', enc.encode(s)));
}

async function hmacSha256Hex(secret: string, s: string): Promise<string> {
  const key = await crypto.subtle.importKey('raw', enc.encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return hex(await crypto.subtle.sign('HMAC', key, enc.encode(s)));
}

/** Parameters as the form body; a value left empty is left out (kmsd reads it as absent anyway). */
function formBody(params: Record<string, string | number | boolean | undefined>): string {
  return Object.keys(params)
    .filter((k) => params[k] !== undefined && params[k] !== '')
    .sort()
    .map((k) => `${percentEncode(k)}=${percentEncode(String(params[k]))}`)
    .join('&');
}

/** The signed request: V3 headers over the method, path `/`, no query, the headers and the body's hash. */
export async function signedRequest(cred: Credentials, action: string, params: Record<string, string | number | boolean | undefined>): Promise<{ headers: Record<string, string>; body: string }> {
  const body = formBody(params);
  const bodyHash = await sha256Hex(body);
  const headers: Record<string, string> = {
    'content-type': 'application/x-www-form-urlencoded',
    host: location.host,
    'x-acs-action': action,
    'x-acs-content-sha256': bodyHash,
    'x-acs-date': new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'),
    'x-acs-signature-nonce': crypto.randomUUID(),
    'x-acs-version': API_VERSION,
  };
  const names = Object.keys(headers).sort();
  const canonical = ['POST', '/', '', names.map((n) => `${n}:${headers[n].trim()}\n`).join(''), names.join(';'), bodyHash].join('\n');
  const signature = await hmacSha256Hex(cred.AccessKeySecret, `ACS3-HMAC-SHA256\n${await sha256Hex(canonical)}`);
  // The browser sets Host itself (to location.host, which was signed).
  const { host: _host, ...sent } = headers;
  void _host;
  sent.authorization = `ACS3-HMAC-SHA256 Credential=${cred.AccessKeyId},SignedHeaders=${names.join(';')},Signature=${signature}`;
  return { headers: sent, body };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Answer = Record<string, any>;

/** One call; resolves with kmsd's JSON answer or rejects with ApiError (kmsd's Code and Message). */
export async function call(cred: Credentials, action: string, params: Record<string, string | number | boolean | undefined> = {}): Promise<Answer> {
  const req = await signedRequest(cred, action, params);
  let res: Response;
  try {
    res = await fetch('/', { method: 'POST', headers: req.headers, body: req.body, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' });
  } catch (e) {
    throw new ApiError('NetworkError', `kmsd did not answer (${(e as Error).message})`, 0);
  }
  let json: Answer;
  try {
    json = (await res.json()) as Answer;
  } catch {
    throw new ApiError('BadAnswer', `kmsd answered HTTP ${res.status} without JSON`, res.status);
  }
  if (!res.ok) throw new ApiError(String(json.Code ?? 'Error'), String(json.Message ?? `HTTP ${res.status}`), res.status, String(json.RequestId ?? ''));
  return json;
}
