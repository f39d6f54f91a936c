// The policy file's `xks` section (the XKS Proxy API's secondary authorization) against a real kmsd on
// a SoftHSM token, with requests signed by the AWS SDK's SigV4 signer as AWS KMS sends them: allow and
// deny by awsPrincipalArn, kmsKeyArn, kmsOperation and the key store, first match, the default,
// AccessDeniedException 403 with the rule in the log and the audit, SIGHUP reload (a bad section keeps
// the old policy), and a bad section refused at start, naming the problem.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir, runKmsdToExit } from '../helpers/daemon';
import { HttpKmsd, RawAnswer, startHttpKmsd } from '../helpers/http';
import { ARN_KEY, ARN_PRINCIPAL, XksCredential, requestMetadata, xksRequest } from '../helpers/xks';

const BOB = 'arn:aws:iam::123456789012:user/Bob';
const CAROL = 'arn:aws:iam::123456789012:role/Carol';
const KEY_B = 'arn:aws:kms:us-east-2:123456789012:key/bbbbbbbb-12ab-34cd-56ef-1234567890ab';
const KEY_C = 'arn:aws:kms:us-east-2:123456789012:key/cccccccc-12ab-34cd-56ef-1234567890ab';

let k: HttpKmsd;
let dir: string;
let policyFile: string;
const creds: Record<string, XksCredential> = {};

/** The grants: both key stores may use every CMK; the xks section then narrows by AWS's metadata. */
const policy = (xks: unknown) => ({
  version: 1,
  admins: ['anonymous'],
  grants: [{ id: 'xks-stores', principals: ['xks:*'], actions: ['XksEncrypt', 'XksDecrypt', 'XksGetKeyMetadata', 'XksGetHealthStatus'], keys: ['*'] }],
  xks,
});

function ok<T = any>(r: { code: number; stdout: string; stderr: string; json: any }): T {
  // eslint-disable-line @typescript-eslint/no-explicit-any
  expect(r.code, r.stderr).toBe(0);
  return r.json as T;
}

const b64 = (s: string) => Buffer.from(s).toString('base64');

function encrypt(store: string, md: Record<string, string>): Promise<RawAnswer> {
  return xksRequest(k.httpPort, { op: 'keys/k1/encrypt', uriPath: `/${store}/kms/xks/v1`, cred: creds[store], body: { requestMetadata: md, plaintext: b64('secondary authorization'), encryptionAlgorithm: 'AES_GCM' } });
}

function metadata(store: string, md: Record<string, string>): Promise<RawAnswer> {
  return xksRequest(k.httpPort, { op: 'keys/k1/metadata', uriPath: `/${store}/kms/xks/v1`, cred: creds[store], body: { requestMetadata: md } });
}

function health(store: string): Promise<RawAnswer> {
  return xksRequest(k.httpPort, { op: 'health', uriPath: `/${store}/kms/xks/v1`, cred: creds[store], body: { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: crypto.randomUUID() } } });
}

function allowed(r: RawAnswer): void {
  expect(r.status, r.body).toBe(200);
}

/** A denial: the spec's AccessDeniedException 403, naming the rule (never the ARNs) to AWS. */
function denied(r: RawAnswer, rule: string): void {
  expect({ status: r.status, errorName: r.json?.errorName }, r.body).toEqual({ status: 403, errorName: 'AccessDeniedException' });
  expect(r.json.errorMessage).toContain(rule === 'default' ? "xks policy (the default)" : `xks policy (rule "${rule}")`);
  expect(r.json.errorMessage).not.toContain('arn:');
}

/** The log line of a denial, found by the request id kmsd answered with (pino writes it asynchronously). */
async function denialLog(r: RawAnswer): Promise<Record<string, any>> {
  const id = r.headers['x-request-id'];
  const find = () =>
    k
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l))
      .find((l) => l.requestId === id && l.msg === 'permission denied by the xks policy');
  let line = find();
  for (let i = 0; i < 100 && !line; i++) {
    await new Promise((res) => setTimeout(res, 50));
    line = find();
  }
  expect(line, `no denial log line for request ${id}`).toBeDefined();
  return line;
}

async function reload(): Promise<string> {
  const before = k.logs().length;
  process.kill(k.pid, 'SIGHUP');
  for (let i = 0; i < 100; i++) {
    const m = /"msg":"(authorization policy reloaded|policy reload failed[^"]*)"/.exec(k.logs().slice(before));
    if (m) return m[1];
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error('kmsd did not log a policy reload after SIGHUP');
}

const denyRules = {
  rules: [
    { id: 'deny-bob', effect: 'deny', awsPrincipalArn: `${BOB}*` },
    // Never reached for Bob: the first matching rule decides.
    { id: 'allow-bob', effect: 'allow', awsPrincipalArn: [BOB] },
    { id: 'deny-key-b', effect: 'deny', kmsKeyArn: 'arn:aws:kms:*:123456789012:key/bbbbbbbb-*' },
    { id: 'deny-reencrypt', effect: 'deny', kmsOperation: ['ReEncrypt'] },
  ],
  default: 'allow',
};

beforeAll(async () => {
  dir = makeTempDir('kmsd-xks-policy-');
  policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify(policy(denyRules)));
  k = await startHttpKmsd({ args: ['--policy', policyFile] });
  const cmk = ok(k.kmsctl(['CreateKey', '--ProtectionLevel', 'HSM'])).KeyMetadata.KeyId;
  for (const store of ['pk', 'pk2']) {
    creds[store] = ok(k.kmsctl(['CreateXksKeyStore', '--UriPathPrefix', store]));
    ok(k.kmsctl(['CreateXksKey', '--UriPathPrefix', store, '--KeyId', cmk, '--ExternalKeyId', 'k1', '--Operations', 'ENCRYPT,DECRYPT']));
  }
});

afterAll(async () => {
  await k?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

describe('deny rules with default allow', () => {
  it('lets through what no rule denies', async () => {
    allowed(await encrypt('pk', requestMetadata('Encrypt')));
    allowed(await metadata('pk', requestMetadata('DescribeKey')));
  });

  it('denies by awsPrincipalArn (the first matching rule wins), and logs and audits the rule, what it matched and the metadata', async () => {
    const md = requestMetadata('Encrypt', { awsPrincipalArn: BOB });
    const r = await encrypt('pk', md);
    denied(r, 'deny-bob');
    const line = await denialLog(r);
    expect(line).toMatchObject({
      principal: 'xks:pk',
      action: 'XksEncrypt',
      xksRule: 'deny-bob',
      matched: { awsPrincipalArn: `${BOB}*` },
      UriPathPrefix: 'pk',
      ExternalKeyId: 'k1',
      AwsPrincipalArn: BOB,
      KmsKeyArn: ARN_KEY,
      KmsOperation: 'Encrypt',
      KmsRequestId: md.kmsRequestId,
    });
    const events = ok(k.kmsctl(['ListAuditEvents', '--PageSize', '200', '--Action', 'XksEncrypt'])).Events as any[];
    const rec = events.find((e) => e.RequestId === r.headers['x-request-id']);
    expect(rec).toMatchObject({ Principal: 'xks:pk', Outcome: 'Forbidden.NoPermission' });
    expect(JSON.parse(rec.Details)).toMatchObject({
      XksRule: 'deny-bob',
      Matched: { awsPrincipalArn: `${BOB}*` },
      AwsPrincipalArn: BOB,
      KmsKeyArn: ARN_KEY,
      KmsOperation: 'Encrypt',
      KmsRequestId: md.kmsRequestId,
      AccessKeyId: creds.pk.AccessKeyId,
    });
    // GetKeyMetadata too, and the plaintext never in the log.
    denied(await metadata('pk', requestMetadata('DescribeKey', { awsPrincipalArn: BOB })), 'deny-bob');
    expect(k.logs()).not.toContain(b64('secondary authorization'));
  });

  it('denies by kmsKeyArn', async () => {
    const r = await encrypt('pk', requestMetadata('Encrypt', { kmsKeyArn: KEY_B }));
    denied(r, 'deny-key-b');
    expect(await denialLog(r)).toMatchObject({ matched: { kmsKeyArn: 'arn:aws:kms:*:123456789012:key/bbbbbbbb-*' }, KmsKeyArn: KEY_B });
  });

  it('denies by kmsOperation', async () => {
    const r = await encrypt('pk', requestMetadata('ReEncrypt'));
    denied(r, 'deny-reencrypt');
    expect(await denialLog(r)).toMatchObject({ matched: { kmsOperation: 'ReEncrypt' }, KmsOperation: 'ReEncrypt' });
  });

  it('never applies to GetHealthStatus', async () => {
    allowed(await health('pk'));
  });
});

describe('allow rules with default deny, after SIGHUP', () => {
  beforeAll(async () => {
    fs.writeFileSync(
      policyFile,
      JSON.stringify(
        policy({
          rules: [
            { id: 'allow-carol', effect: 'allow', awsPrincipalArn: CAROL },
            { id: 'allow-key-c', effect: 'allow', kmsKeyArn: [KEY_C] },
            { id: 'allow-describe', effect: 'allow', kmsOperation: ['DescribeKey', 'CreateKey'] },
            { id: 'allow-pk2-data-keys', effect: 'allow', uriPathPrefix: 'pk2', kmsOperation: 'GenerateDataKey*' },
          ],
          default: 'deny',
        }),
      ),
    );
    expect(await reload()).toBe('authorization policy reloaded');
  });

  it('denies what no rule allows, saying so', async () => {
    const r = await encrypt('pk', requestMetadata('Encrypt'));
    denied(r, 'default');
    expect(await denialLog(r)).toMatchObject({ xksRule: 'default', matched: {}, AwsPrincipalArn: ARN_PRINCIPAL, reason: 'no xks rule matched and the xks default is deny' });
  });

  it('allows by awsPrincipalArn', async () => {
    allowed(await encrypt('pk', requestMetadata('Encrypt', { awsPrincipalArn: CAROL })));
  });

  it('allows by kmsKeyArn', async () => {
    allowed(await encrypt('pk', requestMetadata('Encrypt', { kmsKeyArn: KEY_C })));
  });

  it('allows by kmsOperation', async () => {
    allowed(await metadata('pk', requestMetadata('DescribeKey')));
    denied(await encrypt('pk', requestMetadata('GenerateDataKey')), 'default');
  });

  it('allows by key store and operation together: both must match', async () => {
    allowed(await encrypt('pk2', requestMetadata('GenerateDataKeyWithoutPlaintext')));
    denied(await encrypt('pk2', requestMetadata('Encrypt')), 'default');
  });

  it('still answers GetHealthStatus', async () => {
    allowed(await health('pk'));
  });

  it('a bad xks section on SIGHUP keeps the policy in force and logs every problem', async () => {
    const good = fs.readFileSync(policyFile, 'utf8');
    fs.writeFileSync(policyFile, JSON.stringify(policy({ rules: [{ effect: 'allow', awsPrincipalArn: 'user/Alice', kmsOperation: ['encrypt'], principal: 'x' }], default: 'allow' })));
    expect(await reload()).toMatch(/^policy reload failed/);
    const logs = k.logs();
    expect(logs).toContain('xks.rules[0].awsPrincipalArn: \\"user/Alice\\" can never match: an ARN starts with \\"arn:\\"');
    expect(logs).toContain('xks.rules[0].kmsOperation[0]: \\"encrypt\\" is not a KMS operation name or pattern');
    expect(logs).toContain('(did you mean Encrypt?)');
    expect(logs).toContain('xks.rules[0].principal: unknown field');
    // The previous section still decides.
    denied(await encrypt('pk', requestMetadata('Encrypt')), 'default');
    allowed(await encrypt('pk', requestMetadata('Encrypt', { awsPrincipalArn: CAROL })));
    fs.writeFileSync(policyFile, good);
  });
});

describe('at start', () => {
  it('refuses a bad xks section, naming each problem, and does not start', () => {
    const d = makeTempDir('kmsd-xks-policy-bad-');
    try {
      const bad = path.join(d, 'policy.json');
      fs.writeFileSync(
        bad,
        JSON.stringify(
          policy({
            rules: [
              { id: 'everyone', effect: 'deny' },
              { id: 'late', effect: 'permit', uriPathPrefix: '/pk/' },
            ],
          }),
        ),
      );
      const r = runKmsdToExit(path.join(d, 'data'), ['--policy', bad]);
      const out = r.stdout + r.stderr;
      expect(r.code, out).not.toBe(0);
      expect(r.code, out).not.toBeNull();
      expect(out).toContain('xks.default: must be "allow" or "deny"');
      expect(out).toContain('xks.rules[1]: is never reached: rule "everyone" has no condition');
      expect(out).toContain('xks.rules[1].effect: must be "allow" or "deny" (got "permit")');
      expect(out).toContain('xks.rules[1].uriPathPrefix: "/pk/" is not a key store');
    } finally {
      fs.rmSync(d, { recursive: true, force: true });
    }
  });
});
