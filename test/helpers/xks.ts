// Requests to kmsd's AWS external key store proxy (XKS Proxy API v1) as AWS KMS sends them: JSON
// bodies, SigV4 for service kms-xks-proxy over host and x-amz-date only, signed by the AWS SDK's own
// signer (@smithy/signature-v4), never by kmsd code.

import crypto from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '@smithy/core/checksum';
import fs from 'node:fs';
import https from 'node:https';
import { RawAnswer, answerOf, rawRequest } from './http';

export interface XksCredential {
  AccessKeyId: string;
  SecretAccessKey: string;
}

export interface XksRequest {
  /** The path after the key store's URI path, e.g. 'health' or 'keys/k1/encrypt'. */
  op: string;
  /** The key store's UriPath (/PREFIX/kms/xks/v1). */
  uriPath: string;
  body: unknown;
  cred: XksCredential;
  method?: string;
  region?: string;
  service?: string;
  date?: Date;
  /** Sent as is instead of JSON.stringify(body) (malformed bodies). */
  rawBody?: string;
  /** HTTPS to `localhost` with this CA, and a client certificate when given. */
  tls?: { caFile: string; certFile?: string; keyFile?: string };
}

export const ARN_PRINCIPAL = 'arn:aws:iam::123456789012:user/Alice';
export const ARN_KEY = 'arn:aws:kms:us-east-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab';

/** requestMetadata as AWS KMS sends it for a key operation. */
export function requestMetadata(kmsOperation: string, over: Record<string, string> = {}): Record<string, string> {
  return { awsPrincipalArn: ARN_PRINCIPAL, kmsKeyArn: ARN_KEY, kmsOperation, kmsRequestId: crypto.randomUUID(), kmsViaService: 'ebs', ...over };
}

export async function xksRequest(port: number, r: XksRequest): Promise<RawAnswer> {
  const body = r.rawBody ?? JSON.stringify(r.body);
  const path = `${r.uriPath}/${r.op}`;
  const signer = new SignatureV4({
    credentials: { accessKeyId: r.cred.AccessKeyId, secretAccessKey: r.cred.SecretAccessKey },
    region: r.region ?? 'us-east-2',
    service: r.service ?? 'kms-xks-proxy',
    sha256: Sha256,
    applyChecksum: false,
  });
  const host = r.tls ? 'localhost' : '127.0.0.1';
  const signed = (await signer.sign(
    { method: r.method ?? 'POST', protocol: r.tls ? 'https:' : 'http:', hostname: host, port, path, query: {}, headers: { host: `${host}:${port}`, 'content-type': 'application/json' }, body } as never,
    // AWS KMS signs host and x-amz-date only (the spec's Appendix A).
    { signingDate: r.date, unsignableHeaders: new Set(['content-type']) },
  )) as unknown as { headers: Record<string, string> };
  if (r.tls) return httpsRequest(port, r.tls, { method: r.method ?? 'POST', path, headers: signed.headers, body });
  return rawRequest(port, { method: r.method ?? 'POST', path, headers: signed.headers, body: r.method === 'GET' ? undefined : body });
}

function httpsRequest(port: number, tls: NonNullable<XksRequest['tls']>, o: { method: string; path: string; headers: Record<string, string>; body: string }): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: 'localhost',
        port,
        method: o.method,
        path: o.path,
        headers: o.headers,
        agent: false,
        ca: fs.readFileSync(tls.caFile),
        cert: tls.certFile ? fs.readFileSync(tls.certFile) : undefined,
        key: tls.keyFile ? fs.readFileSync(tls.keyFile) : undefined,
      },
      (res) => {
        answerOf(res).then(resolve, reject);
      },
    );
    req.on('error', reject);
    req.end(o.body);
  });
}
