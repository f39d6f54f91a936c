// Issue 3, acceptance 2, 3 (material expiry checked on use), 5, 6 and the host-assisted log line of 7,
// against the real kmsd (dist/) on its development SoftHSM token, through kmsctl (exit codes, JSON on
// stdout, {"Code","Message"} on stderr) and pkcs11-tool.
//
// One daemon for the file, with a scheduler that never ticks: then nothing but the calls made here
// touches the token (no wrapping-key pool refills, no expiry sweeps), so the set of token objects can
// be compared before and after every bad input, and expired material is provably deleted by the check
// kmsd makes on use (the scheduler's sweep is tested in byok-policy.test.ts).
//
// Key material is wrapped with node:crypto here (the seed's OpenSSL commands are run verbatim in
// byok-walkthrough.test.ts); each wrapping algorithm follows its standard (PKCS#1 v1.5, OAEP with the
// same hash for MGF1, and AWS's RSA-OAEP || RFC 5649 hybrid).

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/client';
import { Kmsd, listTokenObjects, startKmsd } from '../helpers/daemon';
import { auditArgsFor, auditToken, describeFindings } from '../helpers/audit-token';

/* eslint-disable @typescript-eslint/no-explicit-any */

type Algorithm = 'RSAES_PKCS1_V1_5' | 'RSAES_OAEP_SHA_1' | 'RSAES_OAEP_SHA_256' | 'RSA_AES_KEY_WRAP_SHA_1' | 'RSA_AES_KEY_WRAP_SHA_256';

let k: Kmsd;
let caps: Record<string, boolean>;
/** Every piece of key material used here, to prove none reaches the daemon's log. */
const materials: Buffer[] = [];

beforeAll(async () => {
  // Kept after stop: the token auditor reads the store at the end.
  k = await startKmsd({ keep: true, env: { KMS_SCHEDULER_INTERVAL_MS: '3600000' } });
  caps = (await k.client.call('DescribeHsm')).Capabilities;
});

afterAll(async () => {
  await k?.stop();
  k?.cleanup();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const nowUnix = () => Math.floor(Date.now() / 1000);
const isoSeconds = (unix: number) => new Date(unix * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');

/** kmsctl arguments for an action and a request in the API's field names. */
function cliArgs(action: string, req: Record<string, unknown>): string[] {
  return [action, ...Object.entries(req).flatMap(([name, v]) => [`--${name}`, typeof v === 'object' ? JSON.stringify(v) : String(v)])];
}

/** kmsctl that must succeed: exit 0, JSON on stdout, nothing on stderr. */
function ctl(action: string, req: Record<string, unknown>): any {
  const args = cliArgs(action, req);
  const r = k.kmsctl(args);
  expect(r.code, `kmsctl ${args.join(' ')}\n${r.stderr}`).toBe(0);
  expect(r.stderr).toBe('');
  return r.json;
}

/**
 * An action that must fail with `code` (and a message matching `message`). Through kmsctl when `cli`:
 * exit 1, nothing on stdout, one {"Code","Message"} line on stderr. Otherwise through the gRPC client
 * (faster; kmsctl prints exactly what the client receives).
 */
async function fails(action: string, req: Record<string, unknown>, code: string, message?: RegExp, cli = false): Promise<{ Code: string; Message: string }> {
  let err: { Code: string; Message: string };
  if (cli) {
    const args = cliArgs(action, req);
    const r = k.kmsctl(args);
    expect(r.code, `kmsctl ${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    err = r.json;
  } else {
    const e = await k.client.call(action, req).then(
      () => null,
      (x: unknown) => x,
    );
    expect(e, `${action} should fail with ${code}`).toBeInstanceOf(KmsClientError);
    err = { Code: (e as KmsClientError).code, Message: (e as KmsClientError).message };
  }
  expect(err).toMatchObject({ Code: code, Message: expect.any(String) });
  expect(err.Message.length).toBeGreaterThan(10);
  if (message) expect(err.Message).toMatch(message);
  return err;
}

async function describeKey(keyId: string): Promise<any> {
  return (await k.client.describeKey(keyId)).KeyMetadata;
}

async function createExternal(level: 'HSM' | 'SOFTWARE' = 'HSM'): Promise<any> {
  return (await k.client.createKey({ Origin: 'EXTERNAL', Description: 'External key', ProtectionLevel: level })).KeyMetadata;
}

interface Params {
  ImportToken: string;
  PublicKey: string;
}

async function params(keyId: string, alg: Algorithm, spec = 'RSA_2048'): Promise<Params> {
  return k.client.call('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: alg, WrappingKeySpec: spec }) as Promise<any>;
}

/** Wraps key material for a wrapping algorithm with node:crypto; returns base64. */
function wrap(alg: Algorithm, publicKeyB64: string, material: Buffer): string {
  const key = crypto.createPublicKey({ key: Buffer.from(publicKeyB64, 'base64'), format: 'der', type: 'spki' });
  const oaep = (hash: string, m: Buffer) => crypto.publicEncrypt({ key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash }, m);
  let out: Buffer;
  if (alg === 'RSAES_PKCS1_V1_5') out = crypto.publicEncrypt({ key, padding: crypto.constants.RSA_PKCS1_PADDING }, material);
  else if (alg === 'RSAES_OAEP_SHA_1') out = oaep('sha1', material);
  else if (alg === 'RSAES_OAEP_SHA_256') out = oaep('sha256', material);
  else {
    const ephemeral = crypto.randomBytes(32);
    const kwp = crypto.createCipheriv('id-aes256-wrap-pad', ephemeral, Buffer.from('A65959A6', 'hex'));
    out = Buffer.concat([oaep(alg.endsWith('256') ? 'sha256' : 'sha1', ephemeral), kwp.update(material), kwp.final()]);
  }
  return out.toString('base64');
}

function newMaterial(): Buffer {
  const m = crypto.randomBytes(32);
  materials.push(m);
  return m;
}

function importReq(keyId: string, p: { ImportToken: string }, encrypted: string, expireUnix = 0) {
  return { KeyId: keyId, EncryptedKeyMaterial: encrypted, ImportToken: p.ImportToken, KeyMaterialExpireUnix: expireUnix };
}

async function importKeyMaterial(req: ReturnType<typeof importReq>): Promise<void> {
  expect(await k.client.call('ImportKeyMaterial', req)).toEqual({});
}

/** Imports `material` with a fresh token and algorithm; the CMK must end Enabled. */
async function importMaterial(keyId: string, material: Buffer, alg: Algorithm = 'RSAES_OAEP_SHA_1', expireUnix = 0): Promise<any> {
  const p = await params(keyId, alg);
  await importKeyMaterial(importReq(keyId, p, wrap(alg, p.PublicKey, material), expireUnix));
  const meta = await describeKey(keyId);
  expect(meta.KeyState).toBe('Enabled');
  return meta;
}

const CTX = { app: 'byok-lifecycle' };

async function encrypt(keyId: string, plaintext: Buffer): Promise<string> {
  return (await k.client.encrypt(keyId, plaintext, CTX)).CiphertextBlob;
}

async function decrypt(blob: string, keyId?: string): Promise<Buffer> {
  return (await k.client.decrypt(blob, CTX, keyId)).Plaintext;
}

function offlineDecrypt(material: Buffer, blobB64: string): Buffer {
  const blob = Buffer.from(blobB64, 'base64');
  const d = crypto.createDecipheriv('aes-256-gcm', material, blob.subarray(36, 48));
  d.setAAD(Buffer.concat([blob.subarray(0, 48), Buffer.from(JSON.stringify(CTX))]));
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(48, blob.length - 16)), d.final()]);
}

/** Every token object, as type and label (pkcs11-tool). */
const labels = () => listTokenObjects(k).map((o) => `${o.type} ${o.label}`).sort();
const cmkObjects = (versionId: string) => listTokenObjects(k).filter((o) => o.label === `kmsd:cmk:${versionId}`);

describe('re-import of the same key material', () => {
  for (const level of ['HSM', 'SOFTWARE'] as const) {
    it(`${level}: again with the same token while Enabled, and after DeleteKeyMaterial, old ciphertexts decrypt again`, async () => {
      const cmk = await createExternal(level);
      const material = newMaterial();
      const p = await params(cmk.KeyId, 'RSAES_OAEP_SHA_1');
      await importKeyMaterial(importReq(cmk.KeyId, p, wrap('RSAES_OAEP_SHA_1', p.PublicKey, material)));
      let meta = await describeKey(cmk.KeyId);
      expect(meta).toMatchObject({ KeyState: 'Enabled', MaterialExpireTime: '' });
      const plaintext = crypto.randomBytes(64);
      const blob = await encrypt(cmk.KeyId, plaintext);
      expect(offlineDecrypt(material, blob).equals(plaintext)).toBe(true);
      expect(cmkObjects(meta.PrimaryKeyVersion)).toHaveLength(level === 'HSM' ? 1 : 0);

      // The same token again while Enabled (a token is reusable for its 24 h): only the expiry changes.
      const expireUnix = nowUnix() + 7200;
      expect(ctl('ImportKeyMaterial', importReq(cmk.KeyId, p, wrap('RSAES_OAEP_SHA_1', p.PublicKey, material), expireUnix))).toEqual({});
      meta = await describeKey(cmk.KeyId);
      expect(meta).toMatchObject({ KeyState: 'Enabled', MaterialExpireTime: isoSeconds(expireUnix), PrimaryKeyVersion: cmk.PrimaryKeyVersion });
      expect((await decrypt(blob)).equals(plaintext)).toBe(true);
      expect(cmkObjects(meta.PrimaryKeyVersion)).toHaveLength(level === 'HSM' ? 1 : 0);
      // …and 0 resets it to "never".
      await importKeyMaterial(importReq(cmk.KeyId, p, wrap('RSAES_OAEP_SHA_1', p.PublicKey, material), 0));
      expect(await describeKey(cmk.KeyId)).toMatchObject({ KeyState: 'Enabled', MaterialExpireTime: '' });

      // DeleteKeyMaterial: the CMK stays, PendingImport, its material gone from the token.
      expect(ctl('DeleteKeyMaterial', { KeyId: cmk.KeyId })).toEqual({});
      meta = await describeKey(cmk.KeyId);
      expect(meta).toMatchObject({ KeyState: 'PendingImport', MaterialExpireTime: '', MaterialImportPath: '' });
      expect(cmkObjects(meta.PrimaryKeyVersion)).toEqual([]);
      await fails('Encrypt', { KeyId: cmk.KeyId, Plaintext: 'aGVsbG8=' }, 'Rejected.PendingImport', undefined, true);
      await fails('Decrypt', { CiphertextBlob: blob, EncryptionContext: CTX }, 'Rejected.PendingImport');
      // Deleting again is harmless.
      expect(await k.client.call('DeleteKeyMaterial', { KeyId: cmk.KeyId })).toEqual({});

      // The same material with the same, still valid token: Enabled again, the old ciphertext decrypts.
      await importKeyMaterial(importReq(cmk.KeyId, p, wrap('RSAES_OAEP_SHA_1', p.PublicKey, material)));
      expect((await describeKey(cmk.KeyId)).KeyState).toBe('Enabled');
      expect((await decrypt(blob)).equals(plaintext)).toBe(true);

      // And after another deletion, through another algorithm and path: the material is the same key.
      await k.client.call('DeleteKeyMaterial', { KeyId: cmk.KeyId });
      meta = await importMaterial(cmk.KeyId, material, 'RSA_AES_KEY_WRAP_SHA_256');
      expect(meta.MaterialImportPath).toBe(!caps.AesKeyWrapPad ? 'composed-host-assisted-kwp' : caps.RsaOaepSha256Unwrap ? 'composed' : 'composed-host-assisted');
      expect((await decrypt(blob)).equals(plaintext)).toBe(true);
      expect(offlineDecrypt(material, await encrypt(cmk.KeyId, plaintext)).equals(plaintext)).toBe(true);
      expect(cmkObjects(meta.PrimaryKeyVersion)).toHaveLength(level === 'HSM' ? 1 : 0);
    });
  }
});

describe('GetParametersForImport defaults', () => {
  it('without WrappingAlgorithm and WrappingKeySpec: RSAES_PKCS1_V1_5 with an RSA_2048 key, as the seed says', async () => {
    const cmk = await createExternal('HSM');
    const p: Params = await k.client.call('GetParametersForImport', { KeyId: cmk.KeyId });
    const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
    expect(pub.asymmetricKeyDetails?.modulusLength).toBe(2048);
    await fails('ImportKeyMaterial', importReq(cmk.KeyId, p, wrap('RSAES_OAEP_SHA_1', p.PublicKey, crypto.randomBytes(32))), 'InvalidParameter.EncryptedKeyMaterial');
    const material = newMaterial();
    await importKeyMaterial(importReq(cmk.KeyId, p, wrap('RSAES_PKCS1_V1_5', p.PublicKey, material)));
    const meta = await describeKey(cmk.KeyId);
    expect(meta).toMatchObject({ KeyState: 'Enabled', MaterialImportPath: caps.RsaPkcs1Unwrap ? 'in-token' : expect.any(String) });
    const plaintext = crypto.randomBytes(8);
    expect(offlineDecrypt(material, await encrypt(cmk.KeyId, plaintext)).equals(plaintext)).toBe(true);
  });
});

describe('different key material', () => {
  it('is refused (Rejected.KeyMaterialMismatch) whether the CMK is Enabled or PendingImport, and changes nothing', async () => {
    const cmk = await createExternal('HSM');
    const material = newMaterial();
    await importMaterial(cmk.KeyId, material, 'RSAES_PKCS1_V1_5', nowUnix() + 3600);
    const plaintext = crypto.randomBytes(40);
    const blob = await encrypt(cmk.KeyId, plaintext);

    for (const alg of ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'RSA_AES_KEY_WRAP_SHA_1'] as Algorithm[]) {
      const p = await params(cmk.KeyId, alg);
      const metaBefore = await describeKey(cmk.KeyId);
      const before = labels();
      await fails('ImportKeyMaterial', importReq(cmk.KeyId, p, wrap(alg, p.PublicKey, newMaterial())), 'Rejected.KeyMaterialMismatch', /different key material/, alg === 'RSAES_OAEP_SHA_1');
      expect(await describeKey(cmk.KeyId)).toEqual(metaBefore);
      expect(labels()).toEqual(before);
      expect((await decrypt(blob)).equals(plaintext)).toBe(true);
      expect(offlineDecrypt(material, await encrypt(cmk.KeyId, plaintext)).equals(plaintext)).toBe(true);
    }

    // After deletion too: a CMK is bound to its first material for life.
    await k.client.call('DeleteKeyMaterial', { KeyId: cmk.KeyId });
    const p = await params(cmk.KeyId, 'RSAES_OAEP_SHA_1');
    const metaBefore = await describeKey(cmk.KeyId);
    const before = labels();
    await fails('ImportKeyMaterial', importReq(cmk.KeyId, p, wrap('RSAES_OAEP_SHA_1', p.PublicKey, newMaterial())), 'Rejected.KeyMaterialMismatch', /different key material/, true);
    expect(await describeKey(cmk.KeyId)).toEqual(metaBefore);
    expect(metaBefore.KeyState).toBe('PendingImport');
    expect(labels()).toEqual(before);
    expect(cmkObjects(metaBefore.PrimaryKeyVersion)).toEqual([]);
    // …while the right one still goes in with the same token.
    await importKeyMaterial(importReq(cmk.KeyId, p, wrap('RSAES_OAEP_SHA_1', p.PublicKey, material)));
    expect((await decrypt(blob)).equals(plaintext)).toBe(true);
  });
});

describe('two CMKs with the same key material', () => {
  it("cannot decrypt each other's ciphertexts", async () => {
    const material = newMaterial();
    const a = await createExternal('HSM');
    const b = await createExternal('HSM');
    const c = await createExternal('SOFTWARE');
    await importMaterial(a.KeyId, material, 'RSAES_OAEP_SHA_1');
    await importMaterial(b.KeyId, material, 'RSAES_OAEP_SHA_256');
    await importMaterial(c.KeyId, material, 'RSA_AES_KEY_WRAP_SHA_1');
    const plaintext = crypto.randomBytes(48);
    const blobA = await encrypt(a.KeyId, plaintext);
    const blobB = await encrypt(b.KeyId, plaintext);
    // Same material indeed: both decrypt offline with it.
    expect(offlineDecrypt(material, blobA).equals(plaintext)).toBe(true);
    expect(offlineDecrypt(material, blobB).equals(plaintext)).toBe(true);

    // Decrypt naming the other CMK.
    await fails('Decrypt', { CiphertextBlob: blobA, EncryptionContext: CTX, KeyId: b.KeyId }, 'IncorrectKeyId', undefined, true);
    await fails('Decrypt', { CiphertextBlob: blobB, EncryptionContext: CTX, KeyId: a.KeyId }, 'IncorrectKeyId');
    expect((await decrypt(blobA, a.KeyId)).equals(plaintext)).toBe(true);

    const uuid = (id: string) => Buffer.from(id.replace(/-/g, ''), 'hex');
    const relabel = (blob: string, keyId: string, versionId?: string) => {
      const raw = Buffer.from(blob, 'base64');
      uuid(keyId).copy(raw, 4);
      if (versionId) uuid(versionId).copy(raw, 20);
      return raw.toString('base64');
    };
    for (const [blob, other] of [
      [blobA, b],
      [blobB, a],
      [blobA, c],
    ] as const) {
      // The CMK id bytes 4..20 relabelled to the other CMK…
      await fails('Decrypt', { CiphertextBlob: relabel(blob, other.KeyId), EncryptionContext: CTX }, 'InvalidCiphertext', undefined, blob === blobA && other === b);
      // …and the version id too, so that kmsd has to try the other CMK's material: the AAD differs.
      const both = relabel(blob, other.KeyId, other.PrimaryKeyVersion);
      await fails('Decrypt', { CiphertextBlob: both, EncryptionContext: CTX }, 'InvalidCiphertext', /authentication failed/);
      expect(() => offlineDecrypt(material, both)).toThrow();
    }
    // The originals are untouched.
    expect((await decrypt(blobA)).equals(plaintext)).toBe(true);
    expect((await decrypt(blobB)).equals(plaintext)).toBe(true);
  });
});

describe('KeyMaterialExpireUnix', () => {
  it('material set to expire a few seconds ahead is gone after that time (checked on use)', async () => {
    const cmk = await createExternal('HSM');
    const material = newMaterial();
    const p = await params(cmk.KeyId, 'RSAES_OAEP_SHA_1');
    const encrypted = wrap('RSAES_OAEP_SHA_1', p.PublicKey, material);
    const expireUnix = nowUnix() + 3;
    await importKeyMaterial(importReq(cmk.KeyId, p, encrypted, expireUnix));
    const meta = await describeKey(cmk.KeyId);
    expect(meta).toMatchObject({ KeyState: 'Enabled', MaterialExpireTime: isoSeconds(expireUnix) });
    const plaintext = crypto.randomBytes(16);
    const blob = await encrypt(cmk.KeyId, plaintext);
    expect(cmkObjects(meta.PrimaryKeyVersion)).toHaveLength(1);

    await sleep(Math.max(0, expireUnix * 1000 - Date.now()) + 20);
    // This daemon's scheduler never runs: the first use finds the material expired and deletes it.
    expect(cmkObjects(meta.PrimaryKeyVersion)).toHaveLength(1);
    await fails('Encrypt', { KeyId: cmk.KeyId, Plaintext: 'aGVsbG8=' }, 'Rejected.PendingImport', /PendingImport/, true);
    expect(await describeKey(cmk.KeyId)).toMatchObject({ KeyState: 'PendingImport', MaterialExpireTime: '', MaterialImportPath: '' });
    expect(cmkObjects(meta.PrimaryKeyVersion)).toEqual([]);
    await fails('Decrypt', { CiphertextBlob: blob, EncryptionContext: CTX }, 'Rejected.PendingImport');

    // Expired material can be imported again (the seed), and the old ciphertext decrypts.
    await importMaterial(cmk.KeyId, material, 'RSAES_PKCS1_V1_5');
    expect((await decrypt(blob)).equals(plaintext)).toBe(true);
  });
});

describe('bad input to GetParametersForImport and ImportKeyMaterial', () => {
  // Each case: a clear error ({"Code","Message"}; the first of each kind through kmsctl: exit 1, JSON on
  // stderr), no token object left behind, the CMKs unchanged. `target` is a fresh EXTERNAL HSM CMK in
  // PendingImport with parameters for four algorithms (every unwrap path); `other` is a second one.
  let target: any;
  let other: any;
  const p: Partial<Record<Algorithm, Params>> = {};
  let otherParams: Params;
  let generated: any;
  let deleting: any;
  let deletingParams: Params;

  beforeAll(async () => {
    target = await createExternal('HSM');
    other = await createExternal('HSM');
    for (const alg of ['RSAES_PKCS1_V1_5', 'RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'RSA_AES_KEY_WRAP_SHA_1'] as Algorithm[]) p[alg] = await params(target.KeyId, alg);
    otherParams = await params(other.KeyId, 'RSAES_OAEP_SHA_1');
    generated = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata;
    deleting = await createExternal('HSM');
    deletingParams = await params(deleting.KeyId, 'RSAES_OAEP_SHA_1');
    await k.client.call('ScheduleKeyDeletion', { KeyId: deleting.KeyId, PendingWindowInDays: 7 });
  });

  /**
   * Runs bad calls [action, request, code, message?] (the first through kmsctl); checks each error,
   * and that the token's objects and the CMKs' metadata are the same before and after.
   */
  async function refused(cases: [string, Record<string, unknown>, string, RegExp?][]): Promise<{ Code: string; Message: string }[]> {
    const ids = [target.KeyId, other.KeyId, generated.KeyId, deleting.KeyId];
    const metaBefore = await Promise.all(ids.map(describeKey));
    const before = labels();
    const errors = [];
    for (const [i, [action, req, code, message]] of cases.entries()) errors.push(await fails(action, req, code, message, i === 0));
    expect(labels()).toEqual(before);
    expect(await Promise.all(ids.map(describeKey))).toEqual(metaBefore);
    return errors;
  }
  const imp = (req: ReturnType<typeof importReq>, code: string, message?: RegExp): [string, Record<string, unknown>, string, RegExp?] => ['ImportKeyMaterial', req, code, message];

  const good = (alg: Algorithm = 'RSAES_OAEP_SHA_1') => wrap(alg, p[alg]!.PublicKey, crypto.randomBytes(32));

  it('malformed base64', async () => {
    await refused(['not base64!', 'QUJD*', 'QUJDRA', 'QUJD RA==', '@@@@'].map((bad) => imp(importReq(target.KeyId, p.RSAES_OAEP_SHA_1!, bad), 'InvalidParameter', /^EncryptedKeyMaterial: .*base64/)));
  });

  it('ciphertext of the wrong length for the wrapping key', async () => {
    const full = Buffer.from(good(), 'base64');
    const bads = [full.subarray(1), Buffer.concat([full, Buffer.from([0])]), full.subarray(0, 128), Buffer.from([1, 2, 3])];
    // The hybrid needs the RSA part and an AES-KWP part: the RSA part alone, or a cut KWP part, fails.
    const hybrid = Buffer.from(good('RSA_AES_KEY_WRAP_SHA_1'), 'base64');
    await refused([
      ...bads.map((bad) => imp(importReq(target.KeyId, p.RSAES_OAEP_SHA_1!, bad.toString('base64')), 'InvalidParameter.EncryptedKeyMaterial', /cannot be decrypted/)),
      ...bads.map((bad) => imp(importReq(target.KeyId, p.RSAES_OAEP_SHA_256!, bad.toString('base64')), 'InvalidParameter.EncryptedKeyMaterial', /cannot be decrypted/)),
      ...[hybrid.subarray(0, 256), hybrid.subarray(0, hybrid.length - 8), hybrid.subarray(1)].map((bad) =>
        imp(importReq(target.KeyId, p.RSA_AES_KEY_WRAP_SHA_1!, bad.toString('base64')), 'InvalidParameter.EncryptedKeyMaterial', /cannot be decrypted/),
      ),
    ]);
  });

  it('padding that does not verify (random bytes of the right length, another algorithm)', async () => {
    // Random bytes below the modulus (top byte 0), so that only the padding can fail.
    const random = () => Buffer.concat([Buffer.from([0]), crypto.randomBytes(255)]).toString('base64');
    const algs = ['RSAES_PKCS1_V1_5', 'RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'] as Algorithm[];
    const hybrid = Buffer.from(good('RSA_AES_KEY_WRAP_SHA_1'), 'base64');
    hybrid[hybrid.length - 1] ^= 1;
    const errors = await refused([
      ...algs.map((alg) => imp(importReq(target.KeyId, p[alg]!, random()), 'InvalidParameter.EncryptedKeyMaterial')),
      // Right wrapping key, wrong algorithm: OAEP SHA-1 under an OAEP SHA-256 token and vice versa.
      imp(importReq(target.KeyId, p.RSAES_OAEP_SHA_256!, wrap('RSAES_OAEP_SHA_1', p.RSAES_OAEP_SHA_256!.PublicKey, crypto.randomBytes(32))), 'InvalidParameter.EncryptedKeyMaterial'),
      imp(importReq(target.KeyId, p.RSAES_OAEP_SHA_1!, wrap('RSAES_OAEP_SHA_256', p.RSAES_OAEP_SHA_1!.PublicKey, crypto.randomBytes(32))), 'InvalidParameter.EncryptedKeyMaterial'),
      // Another wrapping key: the public key of another token.
      imp(importReq(target.KeyId, p.RSAES_OAEP_SHA_1!, wrap('RSAES_OAEP_SHA_1', otherParams.PublicKey, crypto.randomBytes(32))), 'InvalidParameter.EncryptedKeyMaterial'),
      // Hybrid: a good RSA part with a KWP part that fails its integrity check.
      imp(importReq(target.KeyId, p.RSA_AES_KEY_WRAP_SHA_1!, hybrid.toString('base64')), 'InvalidParameter.EncryptedKeyMaterial'),
    ]);
    // Every OAEP padding failure reads the same, whichever path (in-token or host-assisted) found it.
    expect(errors[1].Message.replace(algs[1], 'ALG')).toBe(errors[2].Message.replace(algs[2], 'ALG'));
  });

  it('a token for another CMK', async () => {
    const [e] = await refused([
      imp(importReq(target.KeyId, otherParams, wrap('RSAES_OAEP_SHA_1', otherParams.PublicKey, crypto.randomBytes(32))), 'Rejected.ImportTokenKeyMismatch'),
      imp(importReq(other.KeyId, p.RSAES_OAEP_SHA_1!, good()), 'Rejected.ImportTokenKeyMismatch'),
    ]);
    expect(e.Message).toContain(other.KeyId);
  });

  it('an altered token (payload, MAC, non-canonical encoding, truncation) and a forged one', async () => {
    const token = p.RSAES_OAEP_SHA_1!.ImportToken;
    const [prefix, payload, mac] = token.split('.');
    const flip = (s: string, i: number) => s.slice(0, i) + (s[i] === 'A' ? 'B' : 'A') + s.slice(i + 1);
    const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    // The last character of a base64url string carries unused low bits: changing only those leaves the
    // decoded bytes the same, but it is still not the token kmsd issued.
    const lowBit = (s: string) => s.slice(0, -1) + ALPHABET[ALPHABET.indexOf(s[s.length - 1]) ^ 1];
    expect(Buffer.from(lowBit(mac), 'base64url').equals(Buffer.from(mac, 'base64url'))).toBe(true);
    const altered = [
      [prefix, flip(payload, 10), mac],
      [prefix, flip(payload, payload.length - 5), mac],
      [prefix, payload, flip(mac, 0)],
      [prefix, payload, flip(mac, 20)],
      [prefix, payload, lowBit(mac)],
      [prefix, payload, mac.slice(0, -2)],
      [prefix, payload],
      [prefix.toUpperCase(), payload, mac],
    ].map((parts) => parts.join('.'));
    altered.push(token + 'A', token.slice(1), `${token}.x`, 'kmsd-it1.', 'garbage');

    // Forged: a payload kmsd would issue (this CMK, a real wrapping key, an expiry far ahead), with a
    // MAC under another key, and with the MAC of the real payload.
    const real = JSON.parse(Buffer.from(payload, 'base64url').toString('utf8'));
    const forgedPayload = Buffer.from(JSON.stringify({ ...real, exp: real.exp + 365 * 86400_000 })).toString('base64url');
    const forgedMac = crypto.createHmac('sha256', crypto.randomBytes(32)).update(`kmsd-import-token/v1.${forgedPayload}`).digest('base64url');
    // Another CMK's token with this CMK's id put in: the MAC no longer fits.
    const [, otherPayload, otherMac] = otherParams.ImportToken.split('.');
    const rebound = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(otherPayload, 'base64url').toString()), kid: target.KeyId })).toString('base64url');
    const forged = [
      [prefix, forgedPayload, forgedMac],
      [prefix, forgedPayload, mac],
      [prefix, rebound, otherMac],
    ].map((parts) => parts.join('.'));

    await refused([...altered, ...forged].map((t) => imp(importReq(target.KeyId, { ImportToken: t }, good()), 'Rejected.ImportTokenInvalid', /^ImportToken: /)));
  });

  it('an unknown wrapping algorithm or key spec', async () => {
    const gp = (alg: string, spec: string, field: string): [string, Record<string, unknown>, string, RegExp] => [
      'GetParametersForImport',
      { KeyId: target.KeyId, WrappingAlgorithm: alg, WrappingKeySpec: spec },
      'InvalidParameter',
      new RegExp(`^${field}: `),
    ];
    await refused([
      ...['RSAES_OAEP_SHA_512', 'rsaes_oaep_sha_1', 'RSA_AES_KEY_WRAP', 'SM2PKE'].map((alg) => gp(alg, 'RSA_2048', 'WrappingAlgorithm')),
      ...['RSA_1024', 'RSA_8192', 'rsa_2048', 'EC_SM2'].map((spec) => gp('RSAES_OAEP_SHA_1', spec, 'WrappingKeySpec')),
    ]);
  });

  it('an expiry in the past (or not representable)', async () => {
    await refused([nowUnix() - 3600, nowUnix() - 1, 1, -5, 253402300800].map((t) => imp(importReq(target.KeyId, p.RSAES_OAEP_SHA_1!, good(), t), 'InvalidParameter', /^KeyMaterialExpireUnix: /)));
  });

  it('import into a non-EXTERNAL CMK or a PendingDeletion CMK', async () => {
    await refused([
      ['GetParametersForImport', { KeyId: generated.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1' }, 'Rejected.NotExternalKey', /EXTERNAL/],
      imp(importReq(generated.KeyId, p.RSAES_OAEP_SHA_1!, good()), 'Rejected.NotExternalKey', /EXTERNAL/),
    ]);
    await refused([
      ['GetParametersForImport', { KeyId: deleting.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1' }, 'Rejected.PendingDeletion', /PendingDeletion/],
      imp(importReq(deleting.KeyId, deletingParams, wrap('RSAES_OAEP_SHA_1', deletingParams.PublicKey, crypto.randomBytes(32))), 'Rejected.PendingDeletion', /PendingDeletion/),
    ]);
    expect((await describeKey(deleting.KeyId)).KeyState).toBe('PendingDeletion');
  });

  it('key material of 16, 24, 31 and 33 bytes (and 0 and 64), on every unwrap path', async () => {
    // (AES-KWP cannot wrap an empty key, so no 0 for the hybrid.)
    const cases = (['RSAES_OAEP_SHA_1', 'RSAES_PKCS1_V1_5', 'RSAES_OAEP_SHA_256', 'RSA_AES_KEY_WRAP_SHA_1'] as Algorithm[]).flatMap((alg) =>
      [16, 24, 31, 33, 64, ...(alg.startsWith('RSA_AES') ? [] : [0])].map((n) => ({ alg, n })),
    );
    // With PKCS#1 v1.5 a wrong length is deliberately the same error as bad padding (telling them apart
    // would be a Bleichenbacher oracle on the wrapping key); the message still names the 256-bit rule.
    const code = (alg: Algorithm) => (alg === 'RSAES_PKCS1_V1_5' ? 'InvalidParameter.EncryptedKeyMaterial' : 'InvalidParameter.KeyMaterialLength');
    const errors = await refused(cases.map(({ alg, n }) => imp(importReq(target.KeyId, p[alg]!, wrap(alg, p[alg]!.PublicKey, crypto.randomBytes(n))), code(alg), /256-bit/)));
    for (const [i, e] of errors.entries()) {
      // Where the length is known exactly it is said; it is never misstated.
      const stated = /is (\d+) bits/.exec(e.Message);
      if (stated) expect(Number(stated[1]), `${cases[i].alg} ${cases[i].n} bytes: ${e.Message}`).toBe(cases[i].n * 8);
    }
  });

  it('after all of that the CMK takes good material: nothing was bound to it', async () => {
    const material = newMaterial();
    expect((await describeKey(target.KeyId)).KeyState).toBe('PendingImport');
    await importKeyMaterial(importReq(target.KeyId, p.RSAES_OAEP_SHA_1!, wrap('RSAES_OAEP_SHA_1', p.RSAES_OAEP_SHA_1!.PublicKey, material)));
    const plaintext = crypto.randomBytes(20);
    expect(offlineDecrypt(material, await encrypt(target.KeyId, plaintext)).equals(plaintext)).toBe(true);
  });
});

describe('EXTERNAL and non-EXTERNAL CMKs keep to their kind', () => {
  it('an EXTERNAL CMK refuses CreateKeyVersion and automatic rotation (Rejected.ExternalKey)', async () => {
    const cmk = await createExternal('HSM');
    await importMaterial(cmk.KeyId, newMaterial());
    const before = await describeKey(cmk.KeyId);
    await fails('CreateKeyVersion', { KeyId: cmk.KeyId }, 'Rejected.ExternalKey', /EXTERNAL/, true);
    expect(await describeKey(cmk.KeyId)).toEqual(before);
    expect((await k.client.call('ListKeyVersions', { KeyId: cmk.KeyId })).TotalCount).toBe(1);
    const keysBefore = (await k.client.call('ListKeys', { PageSize: 100 })).TotalCount;
    await fails('CreateKey', { Origin: 'EXTERNAL', EnableAutomaticRotation: true, RotationInterval: '30d' }, 'Rejected.ExternalKey', /EXTERNAL/, true);
    expect((await k.client.call('ListKeys', { PageSize: 100 })).TotalCount).toBe(keysBefore);
  });

  it('DeleteKeyMaterial on a non-EXTERNAL CMK is Rejected.NotExternalKey and changes nothing', async () => {
    const cmk = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata;
    const blob = await encrypt(cmk.KeyId, Buffer.from('still here'));
    const before = labels();
    await fails('DeleteKeyMaterial', { KeyId: cmk.KeyId }, 'Rejected.NotExternalKey', /EXTERNAL/, true);
    expect(await describeKey(cmk.KeyId)).toEqual(cmk);
    expect(labels()).toEqual(before);
    expect((await decrypt(blob)).toString()).toBe('still here');
  });
});

describe('host-assisted unwrap (allowed on the development token)', () => {
  it('is recorded in the key metadata and logged as a warning without any key material', async () => {
    const cmk = await createExternal('HSM');
    const material = newMaterial();
    const p = await params(cmk.KeyId, 'RSAES_OAEP_SHA_256');
    const encrypted = wrap('RSAES_OAEP_SHA_256', p.PublicKey, material);
    expect(ctl('ImportKeyMaterial', importReq(cmk.KeyId, p, encrypted))).toEqual({});
    const meta = await describeKey(cmk.KeyId);
    expect(meta.MaterialImportPath).toBe(caps.RsaOaepSha256Unwrap ? 'in-token' : 'host-assisted');
    const plaintext = crypto.randomBytes(30);
    expect(offlineDecrypt(material, await encrypt(cmk.KeyId, plaintext)).equals(plaintext)).toBe(true);
    if (caps.RsaOaepSha256Unwrap) return; // nothing host-assisted happens on such a token

    let line: any;
    for (let i = 0; i < 40 && !line; i++) {
      line = k
        .logs()
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l))
        .find((l) => l.level === 40 && /host-assisted/.test(l.msg) && l.keyId === cmk.KeyId);
      if (!line) await sleep(50);
    }
    expect(line, k.logs()).toBeDefined();
    expect(line).toMatchObject({ algorithm: 'RSAES_OAEP_SHA_256', path: 'host-assisted' });
    const text = JSON.stringify(line);
    expect(text).not.toContain(encrypted.slice(0, 40));
    for (const m of [material.toString('hex'), material.toString('base64'), material.toString('base64url')]) expect(text).not.toContain(m);
  });

  it('no key material used in this file appears anywhere in the daemon log', () => {
    expect(materials.length).toBeGreaterThan(5);
    const log = k.logs();
    for (const m of materials) {
      for (const form of [m.toString('hex'), m.toString('base64'), m.toString('base64url'), m.toString('hex').toUpperCase()]) expect(log).not.toContain(form);
    }
  });
});

describe('the independent token auditor', () => {
  it('accepts every imported CMK object and wrapping key pair this file left behind (exit 0)', async () => {
    // Stopped first: a settled store and token, with no background wrapping-key generation in flight.
    expect(await k.stop()).toBe(0);
    const audit = auditToken(auditArgsFor(k.dataDir));
    expect(audit.code, `audit-token after the BYOK runs: ${describeFindings(audit)}`).toBe(0);
    // Imported material: sensitive and non-extractable as read back, but never "always sensitive".
    const imported = (audit.report.objects as { role: string; attributes: Record<string, unknown> }[]).filter((o) => o.role === 'cmk' && o.attributes.neverExtractable === false);
    expect(imported.length).toBeGreaterThan(0);
    for (const o of imported) expect(o.attributes).toMatchObject({ sensitive: true, extractable: false, modifiable: false });
    expect(audit.report.summary.byRole['wrap-private']).toBeGreaterThan(0);
  });
});
