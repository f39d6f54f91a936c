// The Alibaba Cloud dialect of the HTTP listener against a real kmsd on a SoftHSM token: the seed's
// import flow with the official SDK (@alicloud/kms20160120 1.2.0, unmodified), V3 signatures from an
// independent signer, Alibaba's answer shapes, every refusal with its code and status and nothing
// changed, access keys (sealed, shown once, audited), and ciphertexts crossing HTTP and gRPC.

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Kms, * as $Kms from '@alicloud/kms20160120';
import { ROOT, makeTempDir } from '../helpers/daemon';
import { HttpKmsd, rawRequest, startHttpKmsd } from '../helpers/http';
import { Credentials, signV3, toQuery, v2Params } from '../helpers/alibaba-signers';
import { within } from '../helpers/poll';

let k: HttpKmsd;
let app1: Credentials;
let policyFile: string;

/** Admins may manage (not use) keys; local-admin and gRPC's anonymous caller also get crypto; app1 may only Encrypt. */
const policy = {
  version: 1,
  admins: ['local-admin', 'anonymous'],
  grants: [
    { id: 'admins-use-keys', principals: ['local-admin', 'anonymous'], actions: ['Encrypt', 'Decrypt', 'GenerateDataKey*', 'ReEncrypt'], keys: ['*'] },
    { id: 'app1-encrypt', principals: ['app1'], actions: ['Encrypt'], keys: ['*'] },
  ],
};

beforeAll(async () => {
  const dir = makeTempDir('kmsd-http-policy-');
  policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify(policy));
  k = await startHttpKmsd({ args: ['--policy', policyFile] });
  const r = k.kmsctl(['CreateAccessKey', '--Principal', 'app1']);
  expect(r.code, r.stderr).toBe(0);
  app1 = r.json;
});

afterAll(async () => {
  await k?.stop();
  if (policyFile) fs.rmSync(path.dirname(policyFile), { recursive: true, force: true });
});

function sdk(cred: Credentials = k.devKey): Kms {
  return new Kms({ accessKeyId: cred.AccessKeyId, accessKeySecret: cred.AccessKeySecret, endpoint: k.httpEndpoint, protocol: 'http', regionId: 'local' } as never);
}

/** A V2-signed request with parameters in a form body, as the SDK would sign it. */
function v2(cred: Credentials, action: string, params: Record<string, string>, o: { timestamp?: string; nonce?: string } = {}) {
  const q = v2Params(cred, action, params, o);
  return { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: toQuery(q), q };
}

async function keyCount(): Promise<number> {
  return (await k.client.call('ListKeys', { PageSize: 1 })).TotalCount;
}

describe('the seed import flow with the Alibaba Cloud SDK', () => {
  it('runs examples/alibaba-sdk-import.ts end to end on an HSM key', () => {
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'examples', 'alibaba-sdk-import.js'), '--endpoint', k.httpEndpoint, '--access-key-file', path.join(k.dataDir, 'dev-access-key.json'), '--protection-level', 'HSM'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines.slice(0, -1).join('\n')).toMatch(/CreateKey: KeyId [0-9a-f-]{36}\nGetParametersForImport: RSA_2048 .*\nImportKeyMaterial: done\nDescribeKey: KeyState Enabled, Origin EXTERNAL, Arn acs:kms:local:kmsd:key\/[0-9a-f-]{36}\nEncrypt\/Decrypt .*OK\nDeleteKeyMaterial: KeyState PendingImport/);
    const last = JSON.parse(lines[lines.length - 1]);
    expect(last.KeyStateAfterImport).toBe('Enabled');
    expect(last.KeyStateAfterDelete).toBe('PendingImport');
  });

  it('the development access key file is owner-only and names the local admin', async () => {
    const file = path.join(k.dataDir, 'dev-access-key.json');
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    expect(JSON.parse(fs.readFileSync(file, 'utf8')).Principal).toBe('local-admin');
    // Logged right after the file is written; kmsd's output reaches this process a moment later.
    expect(await within(5000, () => k.logs().includes('development access key created'))).toBeGreaterThanOrEqual(0);
    expect(k.logs()).not.toContain(k.devKey.AccessKeySecret);
  });
});

describe('answers', () => {
  it('ListKeys, ListAliases and ListKeyVersions have Alibaba shapes and ARNs from the configured region and account', async () => {
    const c = sdk();
    const keyId = (await c.createKey(new $Kms.CreateKeyRequest({}))).keyMetadata.keyId;
    await c.createAlias(new $Kms.CreateAliasRequest({ aliasName: 'alias/http-shape', keyId }));
    const keys = await rawRequest(k.httpPort, v2(k.devKey, 'ListKeys', { PageSize: '100' }));
    expect(keys.status).toBe(200);
    expect(keys.headers['content-type']).toMatch(/^application\/json/);
    expect(keys.json.Keys.Key).toContainEqual({ KeyId: keyId, KeyArn: `acs:kms:local:kmsd:key/${keyId}` });
    expect(keys.json).toMatchObject({ PageNumber: 1, PageSize: 100, TotalCount: expect.any(Number), RequestId: expect.stringMatching(/^[0-9a-f-]{36}$/) });
    const aliases = await rawRequest(k.httpPort, v2(k.devKey, 'ListAliasesByKeyId', { KeyId: keyId }));
    expect(aliases.json.Aliases.Alias).toEqual([{ AliasName: 'alias/http-shape', AliasArn: 'acs:kms:local:kmsd:alias/http-shape', KeyId: keyId }]);
    const versions = await rawRequest(k.httpPort, v2(k.devKey, 'ListKeyVersions', { KeyId: keyId }));
    expect(versions.json.KeyVersions.KeyVersion).toHaveLength(1);
    const hsm = await rawRequest(k.httpPort, v2(k.devKey, 'DescribeHsm', {}));
    expect(hsm.status).toBe(200);
    expect(hsm.json.Capabilities.AesGcm).toBe(true);
  });

  it('accepts EncryptionContext as a JSON string as well as flattened, and both open the same blob', async () => {
    const keyId = (await sdk().createKey(new $Kms.CreateKeyRequest({ protectionLevel: 'HSM' }))).keyMetadata.keyId;
    const enc = await rawRequest(k.httpPort, v2(k.devKey, 'Encrypt', { KeyId: keyId, Plaintext: 'aGVsbG8=', EncryptionContext: '{"tenant":"acme","stage":"prod"}' }));
    expect(enc.status).toBe(200);
    const dec = await rawRequest(k.httpPort, v2(k.devKey, 'Decrypt', { CiphertextBlob: enc.json.CiphertextBlob, 'EncryptionContext.stage': 'prod', 'EncryptionContext.tenant': 'acme' }));
    expect(dec.json.Plaintext).toBe('aGVsbG8=');
    const both = await rawRequest(k.httpPort, v2(k.devKey, 'Decrypt', { CiphertextBlob: enc.json.CiphertextBlob, EncryptionContext: '{"tenant":"acme"}', 'EncryptionContext.stage': 'prod' }));
    expect([both.status, both.json.Code]).toEqual([400, 'InvalidParameter']);
    const wrong = await rawRequest(k.httpPort, v2(k.devKey, 'Decrypt', { CiphertextBlob: enc.json.CiphertextBlob, EncryptionContext: '{"tenant":"other","stage":"prod"}' }));
    expect([wrong.status, wrong.json.Code]).toEqual([400, 'InvalidCiphertext']);
    expect(Object.keys(wrong.json).sort()).toEqual(['Code', 'HostId', 'Message', 'RequestId']);
  });

  it('keeps a flattened EncryptionContext key named __proto__: the blob is bound to it', async () => {
    const keyId = (await sdk().createKey(new $Kms.CreateKeyRequest({ protectionLevel: 'HSM' }))).keyMetadata.keyId;
    const enc = await rawRequest(k.httpPort, v2(k.devKey, 'Encrypt', { KeyId: keyId, Plaintext: 'aGVsbG8=', 'EncryptionContext.__proto__': 'x' }));
    expect(enc.status, enc.body).toBe(200);
    const without = await rawRequest(k.httpPort, v2(k.devKey, 'Decrypt', { CiphertextBlob: enc.json.CiphertextBlob }));
    expect([without.status, without.json.Code]).toEqual([400, 'InvalidCiphertext']);
    const withIt = await rawRequest(k.httpPort, v2(k.devKey, 'Decrypt', { CiphertextBlob: enc.json.CiphertextBlob, EncryptionContext: '{"__proto__":"x"}' }));
    expect([withIt.status, withIt.json.Plaintext]).toEqual([200, 'aGVsbG8=']);
  });
});

describe('signature V3 (ACS3-HMAC-SHA256), from an independent signer', () => {
  it('CreateKey, Encrypt and Decrypt signed by the documented algorithm', async () => {
    const host = k.httpEndpoint;
    const created = signV3(k.devKey, host, 'CreateKey', { Description: 'v3 key', ProtectionLevel: 'HSM' });
    const c = await rawRequest(k.httpPort, { ...created, body: created.body });
    expect(c.status, c.body).toBe(200);
    const keyId = c.json.KeyMetadata.KeyId;
    expect(c.json.KeyMetadata.Description).toBe('v3 key');
    const e = signV3(k.devKey, host, 'Encrypt', { KeyId: keyId, Plaintext: 'djM=', EncryptionContext: '{"via":"v3"}' });
    const enc = await rawRequest(k.httpPort, e);
    expect(enc.status, enc.body).toBe(200);
    // Parameters in a form body this time.
    const d = signV3(k.devKey, host, 'Decrypt', {}, { body: { CiphertextBlob: enc.json.CiphertextBlob, EncryptionContext: '{"via":"v3"}' } });
    const dec = await rawRequest(k.httpPort, d);
    expect(dec.status, dec.body).toBe(200);
    expect(dec.json.Plaintext).toBe('djM=');
  });

  it("verifies whatever escaping of !'()* and spaces the client put on the wire", async () => {
    const description = "a!b'c(d)e*f g~h";
    // encodeURIComponent leaves !'()* as they are; the signer canonicalizes them as %21%27%28%29%2A.
    const wire = `Description=${encodeURIComponent(description)}`;
    const r = signV3(k.devKey, k.httpEndpoint, 'CreateKey', { Description: description }, { rawQuery: wire });
    const c = await rawRequest(k.httpPort, r);
    expect(c.status, c.body).toBe(200);
    expect(c.json.KeyMetadata.Description).toBe(description);
  });

  it('refuses a tampered V3 request, an unsigned x-acs header, a wrong body hash and a replayed nonce', async () => {
    const before = await keyCount();
    const good = signV3(k.devKey, k.httpEndpoint, 'CreateKey', { Description: 'v3 tamper' });
    const tampered = await rawRequest(k.httpPort, { ...good, path: good.path.replace('tamper', 'tamperX') });
    expect([tampered.status, tampered.json.Code]).toEqual([400, 'SignatureDoesNotMatch']);
    const extra = await rawRequest(k.httpPort, { ...good, headers: { ...good.headers, 'x-acs-extra': '1' } });
    expect([extra.status, extra.json.Code]).toEqual([400, 'IncompleteSignature']);
    const body = await rawRequest(k.httpPort, { ...good, headers: { ...good.headers, 'content-type': 'application/x-www-form-urlencoded' }, body: 'Description=x' });
    expect(body.status).toBe(400);
    const first = await rawRequest(k.httpPort, good);
    expect(first.status).toBe(200);
    const again = await rawRequest(k.httpPort, good);
    expect([again.status, again.json.Code]).toEqual([400, 'SignatureNonceUsed']);
    expect(await keyCount()).toBe(before + 1);
  });
});

describe('refusals: each with its code and status, and nothing changed', () => {
  const cases: { name: string; status: number; code: string; make: () => Promise<{ headers?: Record<string, string>; body?: string | Buffer; path?: string; method?: string }> }[] = [
    { name: 'unknown access key', status: 404, code: 'InvalidAccessKeyId.NotFound', make: async () => v2({ AccessKeyId: 'KMSDAAAAAAAAAAAAAAAAAAAA', AccessKeySecret: 'x' }, 'CreateKey', {}) },
    { name: 'wrong secret', status: 400, code: 'SignatureDoesNotMatch', make: async () => v2({ ...k.devKey, AccessKeySecret: k.devKey.AccessKeySecret.replace(/.$/, (c) => (c === 'A' ? 'B' : 'A')) }, 'CreateKey', {}) },
    {
      name: 'tampered parameter',
      status: 400,
      code: 'SignatureDoesNotMatch',
      make: async () => {
        const q = v2Params(k.devKey, 'CreateKey', { Description: 'signed' });
        return { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: toQuery({ ...q, Description: 'changed' }) };
      },
    },
    { name: 'stale timestamp', status: 400, code: 'IllegalTimestamp', make: async () => v2(k.devKey, 'CreateKey', {}, { timestamp: new Date(Date.now() - 20 * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z') }) },
    { name: 'timestamp in the future', status: 400, code: 'IllegalTimestamp', make: async () => v2(k.devKey, 'CreateKey', {}, { timestamp: new Date(Date.now() + 20 * 60_000).toISOString().replace(/\.\d{3}Z$/, 'Z') }) },
    { name: 'policy denial', status: 403, code: 'Forbidden.NoPermission', make: async () => v2(app1, 'CreateKey', {}) },
    { name: 'unknown action', status: 404, code: 'InvalidAction.NotFound', make: async () => v2(k.devKey, 'CreateSecret', {}) },
    { name: 'missing parameter', status: 400, code: 'MissingParameter', make: async () => v2(k.devKey, 'EnableKey', {}) },
    { name: 'unknown parameter', status: 400, code: 'InvalidParameter', make: async () => v2(k.devKey, 'CreateKey', { Colour: 'red' }) },
    { name: 'bad integer', status: 400, code: 'InvalidParameter', make: async () => v2(k.devKey, 'ListKeys', { PageSize: 'ten' }) },
    { name: 'malformed query', status: 400, code: 'InvalidParameter', make: async () => ({ path: '/?Action=CreateKey&Description=%zz' }) },
    {
      name: 'duplicate parameter',
      status: 400,
      code: 'InvalidParameter',
      make: async () => {
        const r = v2(k.devKey, 'CreateKey', { Description: 'one' });
        return { ...r, path: '/?Description=two' };
      },
    },
    { name: 'a body that is not a form', status: 415, code: 'UnsupportedMediaType', make: async () => ({ headers: { 'content-type': 'application/json' }, body: '{"Action":"CreateKey"}' }) },
    { name: 'no signature at all', status: 400, code: 'IncompleteSignature', make: async () => ({ path: '/?Action=CreateKey&Version=2016-01-20' }) },
    { name: 'a 2 MiB body', status: 413, code: 'RequestEntityTooLarge', make: async () => ({ headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: Buffer.alloc(2 * 1024 * 1024, 0x61) }) },
  ];
  for (const c of cases) {
    it(c.name, async () => {
      const before = await keyCount();
      const req = await c.make();
      const r = await rawRequest(k.httpPort, req);
      expect([r.status, r.json?.Code], r.body).toEqual([c.status, c.code]);
      expect(r.json.Message).toEqual(expect.any(String));
      expect(r.json.RequestId).toEqual(expect.any(String));
      expect(await keyCount()).toBe(before);
    });
  }

  it('a 2 MiB chunked body (no Content-Length) is refused once it passes 1 MiB', async () => {
    const r = await rawRequest(k.httpPort, { headers: { 'content-type': 'application/x-www-form-urlencoded', 'transfer-encoding': 'chunked' }, body: Buffer.alloc(2 * 1024 * 1024, 0x61) }).catch((e: Error) => ({ status: -1, json: { Code: e.message } }) as never);
    // Either the 413 arrives, or kmsd hung up mid-body; never a 200 or a crash.
    expect([413, -1]).toContain(r.status);
    expect((await rawRequest(k.httpPort, v2(k.devKey, 'ListKeys', {}))).status).toBe(200);
  });

  it('a replayed nonce: the first request runs, the replay is refused', async () => {
    const before = await keyCount();
    const req = v2(k.devKey, 'CreateKey', { Description: 'replay' });
    expect((await rawRequest(k.httpPort, req)).status).toBe(200);
    const again = await rawRequest(k.httpPort, req);
    expect([again.status, again.json.Code]).toEqual([400, 'SignatureNonceUsed']);
    expect(await keyCount()).toBe(before + 1);
  });

  it('an Inactive access key is refused until it is made Active again', async () => {
    const made = k.kmsctl(['CreateAccessKey', '--Principal', 'local-admin']);
    const cred = made.json as Credentials;
    expect(k.kmsctl(['UpdateAccessKey', '--AccessKeyId', cred.AccessKeyId, '--Status', 'Inactive']).code).toBe(0);
    const before = await keyCount();
    const r = await rawRequest(k.httpPort, v2(cred, 'CreateKey', {}));
    expect([r.status, r.json.Code]).toEqual([400, 'InvalidAccessKeyId.Inactive']);
    expect(await keyCount()).toBe(before);
    expect(k.kmsctl(['UpdateAccessKey', '--AccessKeyId', cred.AccessKeyId, '--Status', 'Active']).code).toBe(0);
    expect((await rawRequest(k.httpPort, v2(cred, 'ListKeys', {}))).status).toBe(200);
    expect(k.kmsctl(['DeleteAccessKey', '--AccessKeyId', cred.AccessKeyId]).code).toBe(0);
    const gone = await rawRequest(k.httpPort, v2(cred, 'ListKeys', {}));
    expect([gone.status, gone.json.Code]).toEqual([404, 'InvalidAccessKeyId.NotFound']);
  });

  it('the policy applies to the access key principal, and the denial is audited with the access key id', async () => {
    const keyId = (await k.client.createKey({ Description: 'app1 target' })).KeyMetadata.KeyId;
    const ok = await rawRequest(k.httpPort, v2(app1, 'Encrypt', { KeyId: keyId, Plaintext: 'YQ==' }));
    expect(ok.status, ok.body).toBe(200);
    const no = await rawRequest(k.httpPort, v2(app1, 'Decrypt', { CiphertextBlob: ok.json.CiphertextBlob }));
    expect([no.status, no.json.Code]).toEqual([403, 'Forbidden.NoPermission']);
    expect(no.json.Message).toContain('principal "app1" may not call Decrypt');
    const events = k.kmsctl(['ListAuditEvents', '--PageSize', '100', '--KeyId', keyId]).json;
    const denial = JSON.stringify(events);
    expect(denial).toContain('Forbidden.NoPermission');
    expect(denial).toContain(app1.AccessKeyId);
  });
});

describe('access keys', () => {
  it('CreateAccessKey shows the secret once; ListAccessKeys never; no secret on disk or in the log; audited', async () => {
    const made = k.kmsctl(['CreateAccessKey', '--Principal', 'svc-disk-check']);
    expect(made.code, made.stderr).toBe(0);
    expect(Object.keys(made.json).sort()).toEqual(['AccessKeyId', 'AccessKeySecret', 'Principal', 'Status']);
    const secret: string = made.json.AccessKeySecret;
    const list = k.kmsctl(['ListAccessKeys']);
    expect(list.stdout).toContain(made.json.AccessKeyId);
    expect(list.stdout).not.toContain(secret);
    expect(list.json.AccessKeys.AccessKey.find((a: { AccessKeyId: string }) => a.AccessKeyId === made.json.AccessKeyId)).toMatchObject({ Principal: 'svc-disk-check', Status: 'Active' });
    // The secret signs requests...
    expect((await rawRequest(k.httpPort, v2(made.json, 'ListKeys', {}))).status).not.toBe(404);
    // ...and is nowhere in the data directory (outside the dev key file) in any form, nor in the log.
    const raw = Buffer.from(secret, 'base64url');
    for (const f of ['kmsd.sqlite', 'kmsd.sqlite-wal']) {
      const p = path.join(k.dataDir, f);
      if (!fs.existsSync(p)) continue;
      const bytes = fs.readFileSync(p);
      expect(bytes.includes(Buffer.from(secret)), f).toBe(false);
      expect(bytes.includes(raw), f).toBe(false);
    }
    expect(k.logs()).not.toContain(secret);
    const audit = JSON.stringify(k.kmsctl(['ListAuditEvents', '--PageSize', '1000']).json);
    expect(audit).toContain(made.json.AccessKeyId);
    expect(audit).not.toContain(secret);
  });

  it('refuses a bad principal and an unknown key id by name', () => {
    const bad = k.kmsctl(['CreateAccessKey', '--Principal', ' padded ']);
    expect(bad.code).toBe(1);
    expect(bad.json.Code).toBe('InvalidParameter');
    expect(bad.json.Message).toContain('Principal');
    const status = k.kmsctl(['UpdateAccessKey', '--AccessKeyId', 'KMSDAAAAAAAAAAAAAAAAAAAA', '--Status', 'Inactive']);
    expect(status.json.Code).toBe('Forbidden.AccessKeyNotFound');
    const wrong = k.kmsctl(['UpdateAccessKey', '--AccessKeyId', app1.AccessKeyId, '--Status', 'Sleeping']);
    expect(wrong.json.Code).toBe('InvalidParameter');
    expect(wrong.json.Message).toContain('Status');
  });

  it('an HTTP call is audited under the access key principal with the access key id', async () => {
    const keyId = (await sdk().createKey(new $Kms.CreateKeyRequest({ description: 'audited over http' }))).keyMetadata.keyId;
    const events = k.kmsctl(['ListAuditEvents', '--PageSize', '100', '--KeyId', keyId]).json;
    const text = JSON.stringify(events);
    expect(text).toContain('local-admin');
    expect(text).toContain(k.devKey.AccessKeyId);
    expect(text).toContain('CreateKey');
  });
});

describe('across transports', () => {
  it('a ciphertext made over HTTP decrypts over gRPC, and the reverse', async () => {
    const keyId = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
    const context = { app: 'cross' };
    const plaintext = crypto.randomBytes(48);
    const viaHttp = await sdk().encrypt(new $Kms.EncryptRequest({ keyId, plaintext: plaintext.toString('base64'), encryptionContext: context }));
    const opened = await k.client.decrypt(viaHttp.ciphertextBlob, context);
    expect(opened.Plaintext.equals(plaintext)).toBe(true);
    const viaGrpc = await k.client.encrypt(keyId, plaintext, context);
    const back = await sdk().decrypt(new $Kms.DecryptRequest({ ciphertextBlob: viaGrpc.CiphertextBlob, encryptionContext: context }));
    expect(Buffer.from(back.plaintext, 'base64').equals(plaintext)).toBe(true);
    const dk = await sdk().generateDataKey(new $Kms.GenerateDataKeyRequest({ keyId, encryptionContext: context }));
    expect((await k.client.decrypt(dk.ciphertextBlob, context)).Plaintext.toString('base64')).toBe(dk.plaintext);
  });
});
