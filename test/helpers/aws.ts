// The AWS side of kmsd's HTTP listener for tests: the unmodified AWS SDK client, access keys made
// with the real kmsctl, and raw requests signed by the SDK's own SigV4 signer (@smithy/signature-v4,
// what @aws-sdk/client-kms uses), so a test can change one thing after signing or send what no SDK
// would. Nothing here shares code with the server's verifier.

import http from 'node:http';
import { KMSClient } from '@aws-sdk/client-kms';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '@smithy/core/checksum';
import type { Kmsd } from './daemon';
import { answerOf, sendBody } from './http';

export interface AccessKey {
  AccessKeyId: string;
  AccessKeySecret: string;
}

/** The HTTP listener's port, from the daemon's `http listening on HOST:PORT` line. */
export async function httpPortOf(k: Kmsd): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const m = /http listening on 127\.0\.0\.1:(\d+)/.exec(k.logs());
    if (m) return Number(m[1]);
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`kmsd printed no "http listening on" line:\n${k.logs()}`);
}

/** `kmsctl CreateAccessKey --Principal NAME`, as an operator makes one. */
export function createAccessKey(k: Kmsd, principal: string): AccessKey {
  const r = k.kmsctl(['CreateAccessKey', '--Principal', principal]);
  if (r.code !== 0) throw new Error(`CreateAccessKey failed: ${r.stderr}`);
  return r.json as AccessKey;
}

/** The SDK client as an application configures it, pointed at kmsd; no retries, so each call is one request. */
export function awsClient(port: number, key: AccessKey, region = 'us-east-1'): KMSClient {
  return new KMSClient({ endpoint: `http://127.0.0.1:${port}`, region, credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.AccessKeySecret }, maxAttempts: 1 });
}

export interface RawAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  json: any;
}

export interface RawRequest {
  target?: string;
  body?: string | Buffer;
  key?: AccessKey;
  region?: string;
  service?: string;
  signingDate?: Date;
  /** Headers added before signing. */
  headers?: Record<string, string>;
  /** Changes after signing (the request as an attacker or a broken proxy would send it). */
  after?: (req: { headers: Record<string, string>; body: Buffer }) => void;
  /** Send without any signature. */
  unsigned?: boolean;
  method?: string;
}

/** One request to the AWS dialect, signed by the SDK's signer unless `unsigned`. */
export async function awsRaw(port: number, o: RawRequest): Promise<RawAnswer> {
  const body = Buffer.isBuffer(o.body) ? o.body : Buffer.from(o.body ?? '{}');
  let headers: Record<string, string> = {
    host: `127.0.0.1:${port}`,
    'content-type': 'application/x-amz-json-1.1',
    ...(o.target !== undefined ? { 'x-amz-target': o.target } : {}),
    ...(o.headers ?? {}),
  };
  if (!o.unsigned) {
    if (!o.key) throw new Error('awsRaw: a key is needed to sign');
    const signer = new SignatureV4({ credentials: { accessKeyId: o.key.AccessKeyId, secretAccessKey: o.key.AccessKeySecret }, region: o.region ?? 'us-east-1', service: o.service ?? 'kms', sha256: Sha256 });
    const signed = await signer.sign({ method: o.method ?? 'POST', protocol: 'http:', hostname: '127.0.0.1', port, path: '/', query: {}, headers, body } as never, { signingDate: o.signingDate });
    headers = { ...(signed as unknown as { headers: Record<string, string> }).headers };
  }
  const req = { headers, body };
  o.after?.(req);
  return new Promise((resolve, reject) => {
    // A connection per request: a test's case never depends on the state a previous case left.
    const r = http.request({ host: '127.0.0.1', port, agent: false, method: o.method ?? 'POST', path: '/', headers: { ...req.headers, 'content-length': String(req.body.length) } }, (res) => {
      answerOf(res).then(({ status, headers, body, json }) => resolve({ status, headers, text: body, json }), reject);
    });
    r.on('error', reject);
    sendBody(r, req.body);
  });
}

/** The AWS error of a failed SDK call: its __type (the error's name), HTTP status and message. */
export async function awsError(p: Promise<unknown>): Promise<{ name: string; status: number | undefined; message: string; requestId: string | undefined }> {
  try {
    await p;
  } catch (e) {
    const err = e as Error & { $metadata?: { httpStatusCode?: number; requestId?: string } };
    return { name: err.name, status: err.$metadata?.httpStatusCode, message: err.message, requestId: err.$metadata?.requestId };
  }
  throw new Error('expected the AWS call to fail, but it succeeded');
}
