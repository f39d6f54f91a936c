// Secrets hygiene (issue 6, item 7): the data directory is 0700 and everything in it is owner-only
// (kmsd.sqlite, its -wal and -shm, the development token's files); and no log line and no file of
// the data directory holds a known plaintext, a data key, imported key material or the PIN, in
// any of the encodings they travel in (raw, hex, base64, base64url), whether kmsd stopped cleanly
// or was killed with the WAL still full. Also with an existing ("production") token and
// --pin-file, and with a wrong PIN.

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KMSD, Kmsd, makeTempDir, startKmsd } from '../helpers/daemon';

const PLAINTEXT = `kmsd-known-plaintext-${crypto.randomBytes(8).toString('hex')}`;
const MATERIAL_HSM = crypto.randomBytes(32);
const MATERIAL_SOFTWARE = crypto.randomBytes(32);

function encodings(b: Buffer): Buffer[] {
  const out = [b, Buffer.from(b.toString('hex')), Buffer.from(b.toString('hex').toUpperCase()), Buffer.from(b.toString('base64')), Buffer.from(b.toString('base64url'))];
  // A prefix of base64 is enough to find a secret cut by line wrapping or padding differences.
  return out.map((x) => (x.length > 24 ? x.subarray(0, Math.max(16, x.length - 4)) : x));
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(p, ...filesUnder(p));
    else out.push(p);
  }
  return out;
}

/** Where each secret turns up: `label` → files (or "logs"). */
function findSecrets(secrets: Record<string, Buffer>, logs: string, dataDir: string, allowed: (label: string, file: string) => boolean = () => false): string[] {
  const hits: string[] = [];
  const logBytes = Buffer.from(logs);
  const files = filesUnder(dataDir).filter((f) => fs.statSync(f).isFile());
  for (const [label, secret] of Object.entries(secrets)) {
    for (const enc of encodings(secret)) {
      if (logBytes.includes(enc)) hits.push(`${label} in the logs (${enc.toString('latin1').slice(0, 12)}...)`);
      for (const f of files) if (!allowed(label, f) && fs.readFileSync(f).includes(enc)) hits.push(`${label} in ${path.relative(dataDir, f)}`);
    }
  }
  return hits;
}

function expectOwnerOnly(dataDir: string): void {
  expect(fs.statSync(dataDir).mode & 0o777).toBe(0o700);
  for (const f of filesUnder(dataDir)) {
    const st = fs.statSync(f);
    expect(st.mode & 0o077, `${path.relative(dataDir, f)} is ${(st.mode & 0o777).toString(8)}`).toBe(0);
  }
}

async function importMaterial(k: Kmsd, level: 'HSM' | 'SOFTWARE', material: Buffer): Promise<string> {
  const keyId = (await k.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: level })).KeyMetadata.KeyId;
  const p = await k.client.call('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
  const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
  const wrapped = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, material);
  await k.client.call('ImportKeyMaterial', { KeyId: keyId, EncryptedKeyMaterial: wrapped.toString('base64'), ImportToken: p.ImportToken, KeyMaterialExpireUnix: 0 });
  return keyId;
}

/** Exercises every path that carries a secret; returns the data keys it was given. */
async function workload(k: Kmsd): Promise<Buffer[]> {
  const dataKeys: Buffer[] = [];
  const ids = [
    (await k.client.createKey({ ProtectionLevel: 'SOFTWARE' })).KeyMetadata.KeyId,
    (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId,
    await importMaterial(k, 'HSM', MATERIAL_HSM),
    await importMaterial(k, 'SOFTWARE', MATERIAL_SOFTWARE),
  ];
  for (const id of ids) {
    const e = await k.client.encrypt(id, Buffer.from(PLAINTEXT), { purpose: 'hygiene' });
    expect((await k.client.decrypt(e.CiphertextBlob, { purpose: 'hygiene' })).Plaintext.toString()).toBe(PLAINTEXT);
    await k.client.call('ReEncrypt', { CiphertextBlob: e.CiphertextBlob, SourceEncryptionContext: { purpose: 'hygiene' }, DestinationKeyId: ids[0] });
    // A wrong context: the error must not echo the plaintext either.
    await expect(k.client.decrypt(e.CiphertextBlob, { purpose: 'other' })).rejects.toMatchObject({ code: 'InvalidCiphertext' });
    const g = await k.client.call('GenerateDataKey', { KeyId: id, NumberOfBytes: 32 });
    dataKeys.push(Buffer.from(g.Plaintext, 'base64'));
  }
  // Bad requests that carry secrets in their fields.
  await expect(k.client.call('Encrypt', { KeyId: 'not-a-key', Plaintext: Buffer.from(PLAINTEXT).toString('base64') })).rejects.toMatchObject({ code: 'InvalidParameter' });
  await expect(k.client.call('Encrypt', { KeyId: ids[0], Plaintext: PLAINTEXT })).rejects.toMatchObject({ code: 'InvalidParameter' });
  await expect(k.client.call('ImportKeyMaterial', { KeyId: ids[2], EncryptedKeyMaterial: MATERIAL_HSM.toString('base64'), ImportToken: 'x' })).rejects.toBeTruthy();
  return dataKeys;
}

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

describe('the development token', () => {
  it('keeps the data directory owner-only and no secret in logs or data files (clean stop and SIGKILL)', async () => {
    // A data directory that already exists with loose permissions is tightened.
    const dataDir = makeTempDir('kmsd-secrets-');
    dirs.push(dataDir);
    fs.chmodSync(dataDir, 0o755);
    const k = await startKmsd({ dataDir, keep: true, env: { KMS_LOG_LEVEL: 'trace' } });
    expect(k.logs()).toContain('data directory was accessible to others; now 0700');
    const dataKeys = await workload(k);
    const pin = Buffer.from(k.tokenEnv().pin);
    const soPin = Buffer.from(fs.readFileSync(path.join(dataDir, 'softhsm', 'so.pin'), 'utf8').trim());
    // While running: the WAL holds the recent writes.
    for (const f of ['kmsd.sqlite', 'kmsd.sqlite-wal', 'kmsd.sqlite-shm']) expect(fs.existsSync(path.join(dataDir, f)), f).toBe(true);
    expectOwnerOnly(dataDir);
    const secrets: Record<string, Buffer> = { plaintext: Buffer.from(PLAINTEXT), 'HSM material': MATERIAL_HSM, 'SOFTWARE material': MATERIAL_SOFTWARE, 'user PIN': pin, 'SO PIN': soPin };
    dataKeys.forEach((d, i) => (secrets[`data key ${i}`] = d));
    // The PIN files of the development token are where PINs live, by design (0600).
    const pinFiles = (label: string, f: string) => (label === 'user PIN' && f.endsWith('user.pin')) || (label === 'SO PIN' && f.endsWith('so.pin'));
    expect(findSecrets(secrets, k.logs(), dataDir, pinFiles)).toEqual([]);
    // The scanner does find what is there: the PIN in its own file.
    expect(findSecrets({ 'user PIN': pin }, '', dataDir)).toContain('user PIN in softhsm/user.pin');
    await k.kill();
    expect(findSecrets(secrets, k.logs(), dataDir, pinFiles)).toEqual([]);
    expectOwnerOnly(dataDir);
    // Restart after the kill and stop cleanly: still nothing.
    const k2 = await startKmsd({ dataDir, keep: true, env: { KMS_LOG_LEVEL: 'trace' } });
    await k2.client.encrypt((await k2.client.call('ListKeys', {})).Keys[0].KeyId, Buffer.from(PLAINTEXT));
    expect(await k2.stop()).toBe(0);
    expect(findSecrets(secrets, k.logs() + k2.logs(), dataDir, pinFiles)).toEqual([]);
    expectOwnerOnly(dataDir);
  });
});

describe('an existing token with --pin-file', () => {
  it('never logs or stores the PIN, also when it is wrong', async () => {
    const tokenDir = makeTempDir('kmsd-prodtoken-');
    dirs.push(tokenDir);
    fs.mkdirSync(path.join(tokenDir, 'tokens'));
    const conf = path.join(tokenDir, 'softhsm2.conf');
    fs.writeFileSync(conf, `directories.tokendir = ${path.join(tokenDir, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    const pin = `pin-${crypto.randomBytes(6).toString('hex')}`;
    const init = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', 'kmsd-prod', '--so-pin', `so-${pin}`, '--pin', pin], { env: { ...process.env, SOFTHSM2_CONF: conf }, encoding: 'utf8' });
    expect(init.status, init.stderr).toBe(0);
    const pinFile = path.join(tokenDir, 'pin');
    fs.writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
    const args = ['--pkcs11-module', '/usr/lib/softhsm/libsofthsm2.so', '--token-label', 'kmsd-prod', '--pin-file', pinFile];
    const dataDir = makeTempDir('kmsd-secrets-prod-');
    dirs.push(dataDir);
    const k = await startKmsd({ dataDir, keep: true, args, env: { SOFTHSM2_CONF: conf, KMS_LOG_LEVEL: 'trace' } });
    const dataKeys = await workload(k);
    expect(await k.stop()).toBe(0);
    expectOwnerOnly(dataDir);
    const secrets: Record<string, Buffer> = { plaintext: Buffer.from(PLAINTEXT), 'HSM material': MATERIAL_HSM, 'SOFTWARE material': MATERIAL_SOFTWARE, PIN: Buffer.from(pin) };
    dataKeys.forEach((d, i) => (secrets[`data key ${i}`] = d));
    expect(findSecrets(secrets, k.logs(), dataDir)).toEqual([]);
    // The token's own files: SoftHSM keeps sensitive attributes encrypted under the PIN-derived key.
    expect(findSecrets({ 'HSM material': MATERIAL_HSM, PIN: Buffer.from(pin) }, '', path.join(tokenDir, 'tokens'))).toEqual([]);

    // A wrong PIN: one line naming the CKR code, never the PIN given.
    const wrongPin = `wrong-${crypto.randomBytes(6).toString('hex')}`;
    fs.writeFileSync(pinFile, wrongPin, { mode: 0o600 });
    const r = spawnSync(process.execPath, [KMSD, '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...args], { env: { ...process.env, SOFTHSM2_CONF: conf }, encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/CKR_PIN_INCORRECT/);
    expect(r.stdout + r.stderr).not.toContain(wrongPin);
    expect(r.stdout + r.stderr).not.toContain(pin);
  });
});
