import { beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { SignatureV4 } from '@smithy/signature-v4';
import { Sha256 } from '@smithy/core/checksum';
import { HttpRefusalError } from '../../src/api/http/error-table';
import { AwsFault } from '../../src/api/http/aws/faults';
import { SigningKeyCache, canonicalQuery, parseAmzDate, verifySigV4 } from '../../src/api/http/aws/sigv4';
import type { AccessKeyRecord } from '../../src/api/http/types';

// The verifier is checked against requests signed by the AWS SDK's own signer (@smithy/signature-v4,
// what @aws-sdk/client-kms uses), never by kmsd code: the two are independent implementations.

const AK = 'KMSDTESTACCESSKEY01';
const SECRET = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';

function record(over: Partial<AccessKeyRecord> & { secretText?: string } = {}): AccessKeyRecord & { unsealed: number } {
  const r = {
    accessKeyId: AK,
    principal: 'app-1',
    status: 'Active' as const,
    unsealed: 0,
    secret() {
      r.unsealed++;
      return Buffer.from(over.secretText ?? SECRET);
    },
    ...over,
  };
  return r;
}

interface SignOpts {
  secret?: string;
  accessKeyId?: string;
  region?: string;
  service?: string;
  date?: Date;
  body?: string;
  headers?: Record<string, string>;
  path?: string;
  query?: Record<string, string>;
  applyChecksum?: boolean;
  unsignable?: string[];
}

async function signed(o: SignOpts = {}) {
  const signer = new SignatureV4({
    credentials: { accessKeyId: o.accessKeyId ?? AK, secretAccessKey: o.secret ?? SECRET },
    region: o.region ?? 'us-east-1',
    service: o.service ?? 'kms',
    sha256: Sha256,
    applyChecksum: o.applyChecksum,
  });
  const body = o.body ?? '{"KeyId":"alias/app","Plaintext":"aGVsbG8="}';
  const req = await signer.sign(
    {
      method: 'POST',
      protocol: 'http:',
      hostname: '127.0.0.1',
      port: 8080,
      path: o.path ?? '/',
      query: o.query ?? {},
      headers: { host: '127.0.0.1:8080', 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.Encrypt', ...(o.headers ?? {}) },
      body,
    } as never,
    { signingDate: o.date, unsignableHeaders: o.unsignable ? new Set(o.unsignable) : undefined },
  );
  const r = req as unknown as { headers: Record<string, string>; path: string; query: Record<string, string> };
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(r.headers)) headers[k.toLowerCase()] = v;
  const rawQuery = Object.entries(r.query ?? {})
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
  return { method: 'POST', path: r.path, rawQuery, headers, body: Buffer.from(body), receivedAt: (o.date ?? new Date()).getTime() };
}

function verify(req: Awaited<ReturnType<typeof signed>>, rec: AccessKeyRecord | undefined = record(), opts: { region?: string; cache?: SigningKeyCache } = {}) {
  return verifySigV4(req, { service: 'kms', region: opts.region, lookupAccessKey: (id) => (rec && id === rec.accessKeyId ? rec : undefined) }, opts.cache ?? new SigningKeyCache());
}

function refusal(fn: () => unknown): { refusal?: string; type?: string; message: string } {
  try {
    fn();
  } catch (e) {
    if (e instanceof HttpRefusalError) return { refusal: e.refusal, message: e.message };
    if (e instanceof AwsFault) return { type: e.type, message: e.message };
    throw e;
  }
  throw new Error('expected a refusal, but the request verified');
}

describe('SigV4 verification of requests signed by the AWS SDK signer', () => {
  // Requests used by several tests, signed once.
  const signedSync = {} as Record<'good' | 'wrongSecret' | 's3', Awaited<ReturnType<typeof signed>>>;
  beforeAll(async () => {
    signedSync.good = await signed();
    signedSync.wrongSecret = await signed({ secret: 'not-the-secret' });
    signedSync.s3 = await signed({ service: 's3' });
  });

  it('accepts a request signed with the access key secret, naming its principal and region', async () => {
    const req = await signed({ region: 'eu-west-3' });
    expect(req.headers.authorization).toMatch(/^AWS4-HMAC-SHA256 Credential=KMSDTESTACCESSKEY01\/\d{8}\/eu-west-3\/kms\/aws4_request, SignedHeaders=/);
    expect(verify(req)).toEqual({ accessKeyId: AK, principal: 'app-1', region: 'eu-west-3' });
  });

  it('accepts a request without X-Amz-Content-Sha256 (the hash is computed from the body)', async () => {
    const req = await signed({ applyChecksum: false });
    expect(req.headers['x-amz-content-sha256']).toBeUndefined();
    expect(verify(req).principal).toBe('app-1');
  });

  it('accepts a signed query string and a header value with runs of blanks', async () => {
    const req = await signed({ query: { b: '2', a: "1 x/y!'()*" }, headers: { 'x-amz-meta': '  two   spaces  here ' } });
    expect(req.rawQuery).not.toBe('');
    expect(verify(req).principal).toBe('app-1');
  });

  it('accepts the comma-only separators other SDKs write in the Authorization header', async () => {
    const req = await signed();
    req.headers.authorization = req.headers.authorization.replace(/, /g, ',');
    expect(verify(req).principal).toBe('app-1');
  });

  it('refuses a wrong secret (InvalidSignature) without saying what was expected', async () => {
    const r = refusal(() => verify(signedSync.wrongSecret));
    expect(r.refusal).toBe('SignatureMismatch');
    expect(r.message).toMatch(/signature we calculated does not match/);
  });

  it('refuses a body changed after signing, with or without X-Amz-Content-Sha256', async () => {
    for (const applyChecksum of [true, false]) {
      const req = await signed({ applyChecksum });
      req.body = Buffer.from('{"KeyId":"alias/other","Plaintext":"aGVsbG8="}');
      expect(refusal(() => verify(req)).refusal).toBe('SignatureMismatch');
    }
  });

  it('refuses a changed X-Amz-Target, host or query parameter', async () => {
    const a = await signed();
    a.headers['x-amz-target'] = 'TrentService.Decrypt';
    expect(refusal(() => verify(a)).refusal).toBe('SignatureMismatch');
    const b = await signed();
    b.headers.host = 'evil.example:8080';
    expect(refusal(() => verify(b)).refusal).toBe('SignatureMismatch');
    const c = await signed({ query: { a: '1' } });
    c.rawQuery = 'a=2';
    expect(refusal(() => verify(c)).refusal).toBe('SignatureMismatch');
  });

  it('refuses X-Amz-Date more than 15 minutes from its clock either way, and accepts 14', async () => {
    const now = Date.now();
    for (const [offsetMin, ok] of [
      [-16, false],
      [16, false],
      [-14, true],
      [14, true],
    ] as const) {
      const req = await signed({ date: new Date(now + offsetMin * 60_000) });
      req.receivedAt = now;
      if (ok) expect(verify(req).principal).toBe('app-1');
      else {
        const r = refusal(() => verify(req));
        expect(r.refusal).toBe('StaleTimestamp');
        expect(r.message).toMatch(offsetMin < 0 ? /Signature expired/ : /Signature not yet current/);
      }
    }
  });

  it('refuses an unknown access key and an Inactive one (UnrecognizedClient), before the signature', async () => {
    const unknown = await signed({ accessKeyId: 'KMSDNOSUCHKEY' });
    expect(refusal(() => verify(unknown)).refusal).toBe('UnknownAccessKey');
    const rec = record({ status: 'Inactive' });
    expect(refusal(() => verify(signedSync.good, rec)).refusal).toBe('InactiveAccessKey');
    expect(rec.unsealed).toBe(0);
  });

  it('refuses a request without Authorization (MissingAuthenticationToken) and a session token', async () => {
    const req = await signed();
    delete (req.headers as Record<string, string>).authorization;
    expect(refusal(() => verify(req)).type).toBe('MissingAuthenticationTokenException');
    const withToken = await signed({ headers: { 'x-amz-security-token': 'FwoGZXIvYXdzE' } });
    expect(refusal(() => verify(withToken)).refusal).toBe('UnknownAccessKey');
  });

  it('refuses a credential scoped to another service, or to another region when one is pinned', async () => {
    expect(refusal(() => verify(signedSync.s3)).refusal).toBe('SignatureMismatch');
    const req = await signed({ region: 'us-west-2' });
    expect(verify(req, record(), { region: 'us-west-2' }).region).toBe('us-west-2');
    const r = refusal(() => verify(req, record(), { region: 'eu-central-1' }));
    expect(r.refusal).toBe('SignatureMismatch');
    expect(r.message).toMatch(/region 'eu-central-1'/);
  });

  it('refuses a signature that leaves X-Amz-Target or Content-Type unsigned', async () => {
    for (const h of ['x-amz-target', 'content-type']) {
      const req = await signed({ unsignable: [h] });
      expect(req.headers.authorization).not.toContain(h);
      const r = refusal(() => verify(req));
      expect(r.refusal).toBe('IncompleteSignature');
      expect(r.message).toContain(h);
    }
  });

  it('derives the signing key once per access key, date and region (the secret is unsealed once)', async () => {
    const rec = record();
    const cache = new SigningKeyCache();
    for (let i = 0; i < 3; i++) verify(await signed(), rec, { cache });
    expect(rec.unsealed).toBe(1);
    verify(await signed({ region: 'ap-south-1' }), rec, { cache });
    expect(rec.unsealed).toBe(2);
  });

  it('drops the signing keys of an access key once it is Inactive or gone', async () => {
    const rec = record();
    const cache = new SigningKeyCache();
    verify(await signed(), rec, { cache });
    verify(await signed({ region: 'eu-west-1' }), rec, { cache });
    expect(cache.held(AK)).toBe(2);
    const inactive = { ...rec, status: 'Inactive' as const };
    expect(refusal(() => verify(signedSync.good, inactive, { cache })).refusal).toBe('InactiveAccessKey');
    expect(cache.held(AK)).toBe(0);
    verify(await signed(), rec, { cache });
    expect(cache.held(AK)).toBe(1);
    expect(refusal(() => verify(signedSync.good, { ...rec, accessKeyId: 'KMSDSOMEOTHERKEY' }, { cache })).refusal).toBe('UnknownAccessKey');
    expect(cache.held(AK)).toBe(0);
    expect(rec.unsealed).toBe(3);
  });

  it('leaves the access key store\'s secret buffer as it was (other regions and dialects read it again)', async () => {
    // AccessKeyService unseals a secret once and hands out the same buffer on every call.
    const shared = Buffer.from(SECRET);
    const rec = { ...record(), secret: () => shared };
    const cache = new SigningKeyCache();
    expect(verify(await signed({ region: 'us-east-1' }), rec, { cache }).region).toBe('us-east-1');
    expect(shared.toString()).toBe(SECRET);
    expect(verify(await signed({ region: 'eu-west-1' }), rec, { cache }).region).toBe('eu-west-1');
  });

  it('answers every malformed Authorization header with a refusal, never another error', async () => {
    const base = await signed();
    const auth = base.headers.authorization;
    const cases = [
      '',
      'AWS4-HMAC-SHA256',
      'AWS4-HMAC-SHA256 ',
      'AWS4-ECDSA-P256-SHA256 Credential=a/b/c/d/e, SignedHeaders=host, Signature=00',
      'Bearer abc',
      auth.replace('Credential=', 'Credential=x/'),
      auth.replace(/Signature=[0-9a-f]+/, 'Signature=zz'),
      auth.replace(/Signature=[0-9a-f]+/, 'Signature=' + 'A'.repeat(64)),
      auth.replace('SignedHeaders=', 'SignedHeaders=zzz;'),
      auth.replace('SignedHeaders=', 'SignedHeaders=constructor;'),
      auth.replace('SignedHeaders=', 'SignedHeaders=__proto__;'),
      auth + ', Signature=00',
      auth + ', Extra=1',
      auth.replace(/, SignedHeaders=[^,]+/, ''),
    ];
    for (const a of cases) {
      const req = { ...base, headers: { ...base.headers, authorization: a } };
      const r = refusal(() => verify(req));
      expect(r.refusal ?? r.type, a).toMatch(/IncompleteSignature|SignatureMismatch|MissingAuthenticationTokenException/);
    }
    fc.assert(
      fc.property(fc.string({ maxLength: 300 }), fc.string({ maxLength: 40 }), (a, date) => {
        const req = { ...base, headers: { ...base.headers, authorization: a.startsWith('A') ? a : `AWS4-HMAC-SHA256 ${a}`, 'x-amz-date': date } };
        const r = refusal(() => verify(req));
        return Boolean(r.refusal ?? r.type);
      }),
      { numRuns: 500 },
    );
  });
});

describe('SigV4 pieces', () => {
  it('sorts and re-encodes the query the one AWS way', () => {
    expect(canonicalQuery('b=2&a=%7e&a=1&c')).toBe('a=1&a=~&b=2&c=');
    expect(canonicalQuery("x=a%20b!'")).toBe('x=a%20b%21%27');
  });

  it('reads only real ISO 8601 basic dates', () => {
    expect(parseAmzDate('20260102T030405Z')).toBe(Date.UTC(2026, 0, 2, 3, 4, 5));
    for (const bad of ['20260231T000000Z', '20260102T240000Z', '2026-01-02T03:04:05Z', '20260102T030405', '']) expect(parseAmzDate(bad), bad).toBeNaN();
  });
});
