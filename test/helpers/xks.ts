// Requests to kmsd's AWS external key store proxy (XKS Proxy API v1) as AWS KMS sends them: JSON
// bodies, SigV4 for service kms-xks-proxy over host and x-amz-date only, signed by the AWS SDK's own
// signer (@smithy/signature-v4), never by kmsd code.

import crypto from 'node:crypto';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '@smithy/core/checksum';
import { RawAnswer, rawRequest } from './http';

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
  const signed = (await signer.sign(
    { method: r.method ?? 'POST', protocol: 'http:', hostname: '127.0.0.1', port, path, query: {}, headers: { host: `127.0.0.1:${port}`, 'content-type': 'application/json' }, body } as never,
    // AWS KMS signs host and x-amz-date only (the spec's Appendix A).
    { signingDate: r.date, unsignableHeaders: new Set(['content-type']) },
  )) as unknown as { headers: Record<string, string> };
  return rawRequest(port, { method: r.method ?? 'POST', path, headers: signed.headers, body: r.method === 'GET' ? undefined : body });
}
