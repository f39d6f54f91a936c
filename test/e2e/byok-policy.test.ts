// Issue 3, acceptance 3 (import token expiry, and material expiry swept by the scheduler) and 7 (the
// host-assisted policy and the capability probe), against two real kmsd daemons (dist/):
//   short   KMS_IMPORT_TOKEN_TTL_SECONDS=6, KMS_SCHEDULER_INTERVAL_MS=200: import tokens expire after 6 s
//           (long enough that the pkcs11-tool checks before expiry finish on a loaded machine)
//           and the scheduler destroys their wrapping keys and expired material within 200 ms;
//   strict  KMS_ALLOW_HOST_ASSISTED_UNWRAP=0 (the production default): no OAEP decoding in the daemon,
//           so algorithms the token cannot unwrap itself are refused, and say why.
// Neither assumes SoftHSM's gaps: expectations follow the capabilities the daemon probed, and what
// each token lacks (SoftHSM 2.6.1: RSA-OAEP with SHA-256; opencryptoki 3.8: CKM_AES_KEY_WRAP_PAD) is
// asserted for that token. One daemon at a time (opencryptoki's slot is one per machine): each
// group of tests starts its own and stops it.

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, TEST_TOKEN, listTokenObjects, startKmsd } from '../helpers/daemon';
import { clientErrorOf } from '../helpers/errors';
import { within } from '../helpers/poll';

/* eslint-disable @typescript-eslint/no-explicit-any */

let short: Kmsd;
let strict: Kmsd;

/** The development-default daemon: no pre-generated wrapping keys, so each GetParametersForImport makes a fresh pair, seen as new labels. */
function withShort(): void {
  beforeAll(async () => {
    short = await startKmsd({ env: { KMS_IMPORT_TOKEN_TTL_SECONDS: '6', KMS_SCHEDULER_INTERVAL_MS: '200', KMS_WRAPPING_KEY_POOL_SIZE: '0' } });
  });
  afterAll(async () => {
    await short?.stop();
  });
}

/** Host-assisted unwrap off, and a scheduler that never ticks: no pool refills, so the token holds only what the calls here make. */
function withStrict(): void {
  beforeAll(async () => {
    strict = await startKmsd({ env: { KMS_ALLOW_HOST_ASSISTED_UNWRAP: '0', KMS_SCHEDULER_INTERVAL_MS: '3600000' } });
  });
  afterAll(async () => {
    await strict?.stop();
  });
}

/** What each token cannot unwrap in the token, so that with host-assisted unwrap off it is refused. */
const REFUSED_WITHOUT_HOST_ASSISTED: Record<typeof TEST_TOKEN, { algorithms: string[]; reason: RegExp }> = {
  // SoftHSM 2.6.1: RSA-OAEP with SHA-256 fails in C_UnwrapKey.
  softhsm: { algorithms: ['RSAES_OAEP_SHA_256', 'RSA_AES_KEY_WRAP_SHA_256'], reason: /SHA-256/ },
  // opencryptoki 3.8: no CKM_AES_KEY_WRAP_PAD, so RSA_AES_KEY_WRAP_* would undo the AES key wrap in kmsd.
  opencryptoki: { algorithms: ['RSA_AES_KEY_WRAP_SHA_1', 'RSA_AES_KEY_WRAP_SHA_256'], reason: /CKM_AES_KEY_WRAP_PAD/ },
};

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const nowUnix = () => Math.floor(Date.now() / 1000);

/** Polls `check` every 50 ms until it returns true or `ms` pass; returns whether it did. */
function wrapOaep(publicKeyB64: string, material: Buffer, hash: 'sha1' | 'sha256'): string {
  const key = crypto.createPublicKey({ key: Buffer.from(publicKeyB64, 'base64'), format: 'der', type: 'spki' });
  return crypto.publicEncrypt({ key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash }, material).toString('base64');
}

/** kmsctl that must fail: exit 1, nothing on stdout, one {"Code","Message"} line on stderr. */
function ctlFails(k: Kmsd, args: string[], code: string): { Code: string; Message: string } {
  const r = k.kmsctl(args);
  expect(r.code, `kmsctl ${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.json).toMatchObject({ Code: code, Message: expect.any(String) });
  return r.json;
}

const wrapLabels = (k: Kmsd) => new Set(listTokenObjects(k).filter((o) => o.label.startsWith('kmsd:wrap:')).map((o) => o.label));

/** The public key of a wrapping key pair as the token holds it (pkcs11-tool --read-object), base64 DER. */
function tokenPublicKey(k: Kmsd, label: string): string {
  const env = k.tokenEnv();
  const out = path.join(k.dataDir, `pub-${crypto.randomUUID()}.der`);
  const r = spawnSync('pkcs11-tool', ['--module', env.module, '--token-label', env.label ?? 'kmsd-dev', '--login', '--pin', env.pin, '--read-object', '--type', 'pubkey', '--label', label, '-o', out], {
    encoding: 'utf8',
    env: { ...process.env, SOFTHSM2_CONF: env.SOFTHSM2_CONF },
  });
  expect(r.status, r.stderr).toBe(0);
  try {
    return fs.readFileSync(out).toString('base64');
  } finally {
    fs.rmSync(out, { force: true });
  }
}

describe('the development-default daemon (host-assisted allowed, import tokens live 6 s, scheduler every 200 ms)', () => {
  withShort();

  it('reports the host-assisted paths', async () => {
    const dev = await short.client.call('DescribeHsm');
    expect(dev.AllowHostAssistedUnwrap).toBe(true);
    const byAlg = Object.fromEntries(dev.WrappingAlgorithms.map((w: any) => [w.WrappingAlgorithm, w]));
    for (const w of dev.WrappingAlgorithms) expect(w.Supported, w.WrappingAlgorithm).toBe(true);
    if (TEST_TOKEN === 'softhsm') {
      // No RSA-OAEP with SHA-256 in the token: decoded in kmsd.
      expect(byAlg.RSAES_OAEP_SHA_256.Path).toBe('host-assisted');
      expect(byAlg.RSA_AES_KEY_WRAP_SHA_256.Path).toBe('composed-host-assisted');
    } else {
      // Every RSA-OAEP in the token, but no CKM_AES_KEY_WRAP_PAD: RFC 5649 undone in kmsd.
      expect(byAlg.RSAES_OAEP_SHA_256.Path).toBe('in-token');
      expect(byAlg.RSA_AES_KEY_WRAP_SHA_1.Path).toBe('composed-host-assisted-kwp');
      expect(byAlg.RSA_AES_KEY_WRAP_SHA_256.Path).toBe('composed-host-assisted-kwp');
    }
  });

  describe('import token expiry (KMS_IMPORT_TOKEN_TTL_SECONDS=6)', () => {
    it('after expiry ImportKeyMaterial is Rejected.ImportTokenExpired and the wrapping key is gone from the token', async () => {
      const cmk = (await short.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata;
      const labelsBefore = wrapLabels(short);
      const before = Date.now();
      const p = await short.client.call('GetParametersForImport', { KeyId: cmk.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
      const expires = Date.parse(p.TokenExpireTime);
      expect(expires).toBeGreaterThan(before + 6000 - 1000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 6000);
      // The new wrapping key pair (private and public half share the label) holds the public key handed out.
      // One listing for both checks: on a loaded machine the 2 s token may expire (and its key pair be
      // destroyed) between two pkcs11-tool runs.
      const objects = listTokenObjects(short);
      const created = [...new Set(objects.filter((o) => o.label.startsWith('kmsd:wrap:')).map((o) => o.label))].filter((l) => !labelsBefore.has(l));
      expect(created).toHaveLength(1);
      const label = created[0];
      expect(objects.filter((o) => o.label === label).map((o) => o.type).sort()).toEqual(['Private Key Object', 'Public Key Object']);
      expect(tokenPublicKey(short, label)).toBe(p.PublicKey);

      const encrypted = wrapOaep(p.PublicKey, crypto.randomBytes(32), 'sha1');
      await sleep(Math.max(0, expires - Date.now()) + 20);
      const meta = (await short.client.describeKey(cmk.KeyId)).KeyMetadata;
      const args = ['ImportKeyMaterial', '--KeyId', cmk.KeyId, '--EncryptedKeyMaterial', encrypted, '--ImportToken', p.ImportToken, '--KeyMaterialExpireUnix', '0'];
      const err = ctlFails(short, args, 'Rejected.ImportTokenExpired');
      expect(err.Message).toMatch(/expired/);
      expect(err.Message).toMatch(/GetParametersForImport/);
      expect((await short.client.describeKey(cmk.KeyId)).KeyMetadata).toEqual(meta);
      expect(meta.KeyState).toBe('PendingImport');

      // The scheduler destroys both halves of the key pair.
      expect(await within(3000, () => !listTokenObjects(short).some((o) => o.label === label), 50), `${label} destroyed`).toBeGreaterThanOrEqual(0);
      ctlFails(short, args, 'Rejected.ImportTokenExpired');
      // New parameters work.
      const fresh = await short.client.call('GetParametersForImport', { KeyId: cmk.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1' });
      expect(fresh.PublicKey).not.toBe(p.PublicKey);
      await short.client.call('ImportKeyMaterial', { KeyId: cmk.KeyId, EncryptedKeyMaterial: wrapOaep(fresh.PublicKey, crypto.randomBytes(32), 'sha1'), ImportToken: fresh.ImportToken });
      expect((await short.client.describeKey(cmk.KeyId)).KeyMetadata.KeyState).toBe('Enabled');
    });
  });

  describe('key material expiry swept by the scheduler (KMS_SCHEDULER_INTERVAL_MS=200)', () => {
    it('the material is destroyed in the token after KeyMaterialExpireUnix without any call, and the CMK is PendingImport', async () => {
      const cmk = (await short.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata;
      const material = crypto.randomBytes(32);
      const p = await short.client.call('GetParametersForImport', { KeyId: cmk.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1' });
      const expireUnix = nowUnix() + 3;
      await short.client.call('ImportKeyMaterial', { KeyId: cmk.KeyId, EncryptedKeyMaterial: wrapOaep(p.PublicKey, material, 'sha1'), ImportToken: p.ImportToken, KeyMaterialExpireUnix: expireUnix });
      const meta = (await short.client.describeKey(cmk.KeyId)).KeyMetadata;
      expect(meta).toMatchObject({ KeyState: 'Enabled', MaterialExpireTime: new Date(expireUnix * 1000).toISOString().replace('.000Z', 'Z') });
      const label = `kmsd:cmk:${meta.PrimaryKeyVersion}`;
      expect(listTokenObjects(short).filter((o) => o.label === label)).toHaveLength(1);
      await short.client.encrypt(cmk.KeyId, Buffer.from('before expiry'));

      // Only pkcs11-tool looks until the object is gone: the scheduler alone deletes it, not before its time.
      const gone = (await within(expireUnix * 1000 - Date.now() + 3000, () => !listTokenObjects(short).some((o) => o.label === label), 50)) >= 0;
      expect(gone).toBe(true);
      expect(Date.now()).toBeGreaterThanOrEqual(expireUnix * 1000);
      expect((await short.client.describeKey(cmk.KeyId)).KeyMetadata).toMatchObject({ KeyState: 'PendingImport', MaterialExpireTime: '' });
      ctlFails(short, ['Encrypt', '--KeyId', cmk.KeyId, '--Plaintext', 'aGVsbG8='], 'Rejected.PendingImport');
    });
  });
});

describe('the strict daemon', () => {
  withStrict();

  describe('host-assisted unwrap not allowed (KMS_ALLOW_HOST_ASSISTED_UNWRAP=0)', () => {
    let hsm: any;

    beforeAll(() => {
      const r = strict.kmsctl(['DescribeHsm']);
      expect(r.code, r.stderr).toBe(0);
      hsm = r.json;
    });

    it('kmsctl DescribeHsm reports the probe and the path of every algorithm', () => {
      expect(hsm).toMatchObject({ TokenLabel: TEST_TOKEN === 'opencryptoki' ? 'kmsd-ock' : 'kmsd-dev', AllowHostAssistedUnwrap: false });
      const caps = hsm.Capabilities;
      for (const f of ['RsaPkcs1Unwrap', 'RsaOaepSha1Unwrap', 'RsaOaepSha256Unwrap', 'RawRsa', 'AesKeyWrapPad', 'RsaAesKeyWrapMechanism', 'AesGcm', 'ReportsUnwrappedKeyLength']) {
        expect(typeof caps[f], f).toBe('boolean');
      }
      if (TEST_TOKEN === 'softhsm') {
        expect(hsm.Manufacturer).toMatch(/SoftHSM/i);
        // What SoftHSM 2.6.1 really does: OAEP with SHA-256 fails in C_UnwrapKey, no CKM_RSA_AES_KEY_WRAP.
        expect(caps).toMatchObject({ RsaPkcs1Unwrap: true, RsaOaepSha1Unwrap: true, RsaOaepSha256Unwrap: false, RawRsa: true, AesKeyWrapPad: true, RsaAesKeyWrapMechanism: false, AesGcm: true, AesGcmPath: 'in-token' });
      } else {
        // What opencryptoki 3.8's soft token really does: every RSA unwrap in the token, no KWP, no GCM.
        expect(caps).toMatchObject({ RsaPkcs1Unwrap: true, RsaOaepSha1Unwrap: true, RsaOaepSha256Unwrap: true, RawRsa: true, AesKeyWrapPad: false, AesGcm: true, AesGcmPath: 'composed' });
      }
      const byAlg = Object.fromEntries(hsm.WrappingAlgorithms.map((w: any) => [w.WrappingAlgorithm, w]));
      expect(Object.keys(byAlg).sort()).toEqual(['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'RSAES_PKCS1_V1_5', 'RSA_AES_KEY_WRAP_SHA_1', 'RSA_AES_KEY_WRAP_SHA_256']);
      const inToken = { RSAES_PKCS1_V1_5: caps.RsaPkcs1Unwrap, RSAES_OAEP_SHA_1: caps.RsaOaepSha1Unwrap, RSAES_OAEP_SHA_256: caps.RsaOaepSha256Unwrap, RSA_AES_KEY_WRAP_SHA_1: caps.RsaOaepSha1Unwrap, RSA_AES_KEY_WRAP_SHA_256: caps.RsaOaepSha256Unwrap } as Record<string, boolean>;
      for (const [alg, ok] of Object.entries(inToken)) {
        const composed = alg.startsWith('RSA_AES_KEY_WRAP');
        if (ok && (!composed || caps.AesKeyWrapPad)) {
          expect(byAlg[alg], alg).toMatchObject({ Supported: true, Path: composed ? 'composed' : 'in-token', Reason: '' });
        } else {
          expect(byAlg[alg], alg).toMatchObject({ Supported: false, Path: '' });
          expect(byAlg[alg].Reason.length, alg).toBeGreaterThan(20);
        }
      }
      const expected = REFUSED_WITHOUT_HOST_ASSISTED[TEST_TOKEN];
      expect(hsm.WrappingAlgorithms.filter((w: any) => !w.Supported).map((w: any) => w.WrappingAlgorithm)).toEqual(expected.algorithms);
      for (const alg of expected.algorithms) expect(byAlg[alg].Reason, alg).toMatch(expected.reason);
    });

    it('GetParametersForImport refuses an algorithm that would need it, naming what the token lacks, and creates nothing', async () => {
      const expected = REFUSED_WITHOUT_HOST_ASSISTED[TEST_TOKEN];
      const cmk = (await strict.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata;
      const before = listTokenObjects(strict).map((o) => `${o.type} ${o.label}`).sort();
      for (const alg of expected.algorithms) {
        const err = ctlFails(strict, ['GetParametersForImport', '--KeyId', cmk.KeyId, '--WrappingAlgorithm', alg, '--WrappingKeySpec', 'RSA_2048'], 'Rejected.UnsupportedWrappingAlgorithm');
        expect(err.Message).toMatch(/^WrappingAlgorithm: /);
        expect(err.Message, alg).toMatch(expected.reason);
        expect(err.Message).toMatch(/host-assisted[^.]* is disabled/);
        expect(err.Message).toMatch(/KMS_ALLOW_HOST_ASSISTED_UNWRAP/);
      }
      expect(listTokenObjects(strict).map((o) => `${o.type} ${o.label}`).sort()).toEqual(before);
      expect((await strict.client.describeKey(cmk.KeyId)).KeyMetadata.KeyState).toBe('PendingImport');
    });

    it('RSAES_OAEP_SHA_1 still works, in the token, with a wrapping key that cannot decrypt', async () => {
      const cmk = (await strict.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata;
      const material = crypto.randomBytes(32);
      const p = await strict.client.call('GetParametersForImport', { KeyId: cmk.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
      await strict.client.call('ImportKeyMaterial', { KeyId: cmk.KeyId, EncryptedKeyMaterial: wrapOaep(p.PublicKey, material, 'sha1'), ImportToken: p.ImportToken });
      const meta = (await strict.client.describeKey(cmk.KeyId)).KeyMetadata;
      expect(meta).toMatchObject({ KeyState: 'Enabled', MaterialImportPath: hsm.Capabilities.RsaOaepSha1Unwrap ? 'in-token' : 'host-assisted' });
      const plaintext = crypto.randomBytes(33);
      const blob = (await strict.client.encrypt(cmk.KeyId, plaintext)).CiphertextBlob;
      expect((await strict.client.decrypt(blob)).Plaintext.equals(plaintext)).toBe(true);
      const raw = Buffer.from(blob, 'base64');
      const d = crypto.createDecipheriv('aes-256-gcm', material, raw.subarray(36, 48));
      d.setAAD(raw.subarray(0, 48));
      d.setAuthTag(raw.subarray(raw.length - 16));
      expect(Buffer.concat([d.update(raw.subarray(48, raw.length - 16)), d.final()]).equals(plaintext)).toBe(true);

      // Without the host-assisted path no wrapping private key in this token may decrypt: unwrap only.
      const wrapKeys = listTokenObjects(strict).filter((o) => o.label.startsWith('kmsd:wrap:') && o.type === 'Private Key Object');
      expect(wrapKeys.length).toBeGreaterThan(0);
      for (const o of wrapKeys) expect(o.usage, o.raw).toBe('unwrap');
      // Nothing host-assisted happened.
      const lines = strict.logs().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
      expect(lines.filter((l) => /host-assisted/.test(l.msg ?? ''))).toEqual([]);
    });
  });

  describe('failed imports per import token', () => {
    const pkcs1 = (publicKeyB64: string, material: Buffer) =>
      crypto.publicEncrypt({ key: crypto.createPublicKey({ key: Buffer.from(publicKeyB64, 'base64'), format: 'der', type: 'spki' }), padding: crypto.constants.RSA_PKCS1_PADDING }, material).toString('base64');

    it('nine bad ciphertexts leave the token usable; the tenth destroys its wrapping key, and then even good material is refused', async () => {
      const k = strict;
      // Nine failures, then the right material: imported.
      const a = (await k.client.call('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
      const pa = await k.client.call('GetParametersForImport', { KeyId: a, WrappingAlgorithm: 'RSAES_PKCS1_V1_5' });
      for (let i = 1; i <= 9; i++) {
        const r = await clientErrorOf(k.client.call('ImportKeyMaterial', { KeyId: a, EncryptedKeyMaterial: crypto.randomBytes(256).toString('base64'), ImportToken: pa.ImportToken }));
        expect(r.code).toBe('InvalidParameter.EncryptedKeyMaterial');
        expect(r.message).toContain(`failed import ${i} of 10`);
      }
      await k.client.call('ImportKeyMaterial', { KeyId: a, EncryptedKeyMaterial: pkcs1(pa.PublicKey, crypto.randomBytes(32)), ImportToken: pa.ImportToken });
      expect((await k.client.describeKey(a)).KeyMetadata.KeyState).toBe('Enabled');

      // Ten failures: the wrapping key is destroyed in the token.
      const b = (await k.client.call('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
      const before = wrapLabels(k);
      const pb = await k.client.call('GetParametersForImport', { KeyId: b, WrappingAlgorithm: 'RSAES_PKCS1_V1_5' });
      const label = [...wrapLabels(k)].find((l) => !before.has(l)) as string;
      expect(tokenPublicKey(k, label)).toBe(pb.PublicKey);
      const good = pkcs1(pb.PublicKey, crypto.randomBytes(32)); // made before the attack, as a captured import would be
      for (let i = 1; i <= 10; i++) {
        const r = await clientErrorOf(k.client.call('ImportKeyMaterial', { KeyId: b, EncryptedKeyMaterial: crypto.randomBytes(256).toString('base64'), ImportToken: pb.ImportToken }));
        expect(r.code).toBe('InvalidParameter.EncryptedKeyMaterial');
        if (i === 10) expect(r.message).toMatch(/wrapping key is now destroyed: call GetParametersForImport/);
      }
      expect(wrapLabels(k).has(label)).toBe(false);
      const after = await clientErrorOf(k.client.call('ImportKeyMaterial', { KeyId: b, EncryptedKeyMaterial: good, ImportToken: pb.ImportToken }));
      expect(after.code).toBe('Rejected.ImportTokenExpired');
      expect(after.message).toMatch(/wrapping key no longer exists/);
      expect((await k.client.describeKey(b)).KeyMetadata.KeyState).toBe('PendingImport');
      // New parameters work.
      const fresh = await k.client.call('GetParametersForImport', { KeyId: b, WrappingAlgorithm: 'RSAES_PKCS1_V1_5' });
      await k.client.call('ImportKeyMaterial', { KeyId: b, EncryptedKeyMaterial: pkcs1(fresh.PublicKey, crypto.randomBytes(32)), ImportToken: fresh.ImportToken });
      expect((await k.client.describeKey(b)).KeyMetadata.KeyState).toBe('Enabled');
    });
  });
});
