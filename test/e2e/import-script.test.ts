// scripts/import-key-material.sh (the seed's CLI walkthrough as a ceremony script) and
// examples/import-key-material.ts (the seed's Java/Go SDK samples in TypeScript), run for real against
// kmsd (dist/) on its development SoftHSM token, with the real openssl CLI.
//
// One daemon for the file, with a scheduler that never ticks, so that the token holds only what the
// calls here create (a refused run must not even have asked for a wrapping key).

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMSCTL, Kmsd, ROOT, listTokenObjects, makeTempDir, startKmsd } from '../helpers/daemon';

/* eslint-disable @typescript-eslint/no-explicit-any */

const SCRIPT = path.join(ROOT, 'scripts', 'import-key-material.sh');
const EXAMPLE = path.join(ROOT, 'dist', 'examples', 'import-key-material.js');

let k: Kmsd;
let work: string;

beforeAll(async () => {
  k = await startKmsd({ env: { KMS_SCHEDULER_INTERVAL_MS: '3600000' } });
  work = makeTempDir('kmsd-import-script-');
});

afterAll(async () => {
  await k?.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], env: Record<string, string>): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: work, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** Runs the script with its own TMPDIR (to see that it leaves nothing there) against the test daemon. */
async function script(args: string[]): Promise<Ran & { tmp: string }> {
  const tmp = fs.mkdtempSync(path.join(work, 'tmp-'));
  const r = await run('bash', [SCRIPT, ...args], { KMSCTL: `${process.execPath} ${KMSCTL}`, KMS_ENDPOINT: k.endpoint, TMPDIR: tmp });
  return { ...r, tmp };
}

async function createExternal(level = 'HSM'): Promise<any> {
  return (await k.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: level })).KeyMetadata;
}

/** KCV as HSMs compute it: the first 3 bytes of AES-256-ECB(key, 16 zero bytes). */
function kcv(material: Buffer): string {
  const c = crypto.createCipheriv('aes-256-ecb', material, null);
  c.setAutoPadding(false);
  return Buffer.concat([c.update(Buffer.alloc(16)), c.final()]).subarray(0, 3).toString('hex');
}

function offlineDecrypt(material: Buffer, blobB64: string, ctx: Buffer = Buffer.alloc(0)): Buffer {
  const blob = Buffer.from(blobB64, 'base64');
  const d = crypto.createDecipheriv('aes-256-gcm', material, blob.subarray(36, 48));
  d.setAAD(Buffer.concat([blob.subarray(0, 48), ctx]));
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(48, blob.length - 16)), d.final()]);
}

const labels = () => listTokenObjects(k).map((o) => `${o.type} ${o.label}`).sort();

describe('scripts/import-key-material.sh', () => {
  const ALGORITHMS = ['RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'RSAES_PKCS1_V1_5', 'RSA_AES_KEY_WRAP_SHA_1', 'RSA_AES_KEY_WRAP_SHA_256'];

  it.concurrent.each(ALGORITHMS)('imports with %s, prints every step and the KCV, and keeps a 0600 copy that is the material kmsd uses', async (alg) => {
    const cmk = await createExternal();
    const keep = path.join(work, `keep-${alg}`);
    const r = await script([cmk.KeyId, alg, '--keep-material', keep, ...(alg === 'RSA_AES_KEY_WRAP_SHA_256' ? ['--key-spec', 'RSA_3072'] : [])]);
    expect(r.code, `${r.stdout}\n${r.stderr}`).toBe(0);
    for (let i = 1; i <= 8; i++) expect(r.stdout).toContain(`[${i}/8]`);
    // The seed's OpenSSL steps, as run.
    expect(r.stdout).toContain('$ openssl rand -out KeyMaterial.bin 32');
    expect(r.stdout).toContain('$ openssl enc -e -base64 -A -in EncryptedKeyMaterial.bin -out EncryptedKeyMaterial_base64.txt');
    if (alg === 'RSAES_OAEP_SHA_1') expect(r.stdout).toContain(`$ openssl rsautl -encrypt -in KeyMaterial.bin -oaep -inkey publickey_${cmk.KeyId}.bin -keyform DER -pubin -out EncryptedKeyMaterial.bin`);
    if (alg === 'RSAES_OAEP_SHA_256') expect(r.stdout).toMatch(/\$ openssl pkeyutl -encrypt .*rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256/);
    if (alg.startsWith('RSA_AES_KEY_WRAP')) expect(r.stdout).toContain('openssl enc -id-aes256-wrap-pad');
    expect(r.stdout).toContain(`kmsctl GetParametersForImport --KeyId ${cmk.KeyId} --WrappingAlgorithm ${alg}`);
    expect(r.stdout).toContain(`kmsctl ImportKeyMaterial --KeyId ${cmk.KeyId}`);

    // The copy: 32 bytes, mode 0600, and the KCV printed is its KCV.
    const file = path.join(keep, `keymaterial_${cmk.KeyId}.bin`);
    expect(fs.statSync(file).mode & 0o777).toBe(0o600);
    const material = fs.readFileSync(file);
    expect(material.length).toBe(32);
    const printed = /key check value \(KCV\): ([0-9a-f]{6})/.exec(r.stdout);
    expect(printed?.[1]).toBe(kcv(material));
    // The material itself is never printed.
    for (const form of [material.toString('hex'), material.toString('base64')]) expect(r.stdout + r.stderr).not.toContain(form);

    // The CMK is Enabled and what it encrypts decrypts offline with the copy: it is the material in use.
    const meta = (await k.client.describeKey(cmk.KeyId)).KeyMetadata;
    expect(meta.KeyState).toBe('Enabled');
    const plaintext = crypto.randomBytes(50);
    const blob = (await k.client.encrypt(cmk.KeyId, plaintext)).CiphertextBlob;
    expect(offlineDecrypt(material, blob).equals(plaintext)).toBe(true);

    // Its working files (the material, the ephemeral key) are gone.
    expect(fs.readdirSync(r.tmp)).toEqual([]);
  });

  it('refuses to overwrite a kept copy, before asking kmsd for anything', async () => {
    const cmk = await createExternal();
    const keep = path.join(work, 'keep-twice');
    fs.mkdirSync(keep);
    const file = path.join(keep, `keymaterial_${cmk.KeyId}.bin`);
    const copy = crypto.randomBytes(32);
    fs.writeFileSync(file, copy, { mode: 0o600 });
    const meta = (await k.client.describeKey(cmk.KeyId)).KeyMetadata;
    const before = labels();

    const r = await script([cmk.KeyId, 'RSAES_OAEP_SHA_256', '--keep-material', keep]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/already exists; refusing to overwrite/);
    expect(r.stdout).not.toContain('[2/8]');
    expect(fs.readFileSync(file).equals(copy)).toBe(true);
    expect(labels()).toEqual(before); // no wrapping key was made
    expect((await k.client.describeKey(cmk.KeyId)).KeyMetadata).toEqual(meta);
    expect(fs.readdirSync(r.tmp)).toEqual([]);
  });

  it('without --keep-material it warns that no copy is kept', async () => {
    const cmk = await createExternal('SOFTWARE');
    const r = await script([cmk.KeyId]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`with RSAES_OAEP_SHA_1 (RSA_2048 wrapping key)`); // the seed's defaults
    expect(r.stdout).toMatch(/WARNING: no --keep-material DIR given: no copy is kept/);
    expect((await k.client.describeKey(cmk.KeyId)).KeyMetadata.KeyState).toBe('Enabled');
    expect(fs.readdirSync(r.tmp)).toEqual([]);
  });

  it('a failed import exits 1, keeps the operator copy, and still wipes its working files', async () => {
    // A CMK already bound to other material: the import itself (step 7) is refused.
    const cmk = await createExternal();
    const p = await k.client.call('GetParametersForImport', { KeyId: cmk.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1' });
    const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
    const other = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, crypto.randomBytes(32));
    await k.client.call('ImportKeyMaterial', { KeyId: cmk.KeyId, EncryptedKeyMaterial: other.toString('base64'), ImportToken: p.ImportToken });
    const keep = path.join(work, 'keep-mismatch');
    const r = await script([cmk.KeyId, 'RSAES_OAEP_SHA_1', '--keep-material', keep]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('[7/8]');
    expect(r.stdout).not.toContain('[8/8]');
    expect(r.stderr).toMatch(/"Code":"Rejected.KeyMaterialMismatch"/);
    expect(r.stderr).toMatch(/ImportKeyMaterial failed/);
    expect(fs.existsSync(path.join(keep, `keymaterial_${cmk.KeyId}.bin`))).toBe(true);
    expect(fs.readdirSync(r.tmp)).toEqual([]);
  });

  it('checks its arguments and the CMK first', async () => {
    const generated = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata;
    const before = labels();
    const cases: [string[], number, RegExp][] = [
      [[], 2, /KEY_ID \[ALGORITHM\]/],
      [['not-a-key-id'], 1, /KEY_ID must be a key id/],
      [[generated.KeyId, 'RSAES_OAEP_SHA_512'], 1, /ALGORITHM must be/],
      [[generated.KeyId, 'RSAES_OAEP_SHA_1', '--key-spec', 'RSA_1024'], 1, /--key-spec must be/],
      [[generated.KeyId, 'RSAES_OAEP_SHA_1', '--expire-unix', 'soon'], 1, /--expire-unix must be/],
      [[generated.KeyId, 'RSAES_OAEP_SHA_1', '--bogus'], 1, /unknown option --bogus/],
      [[generated.KeyId], 1, /has Origin Aliyun_KMS; key material can only be imported into a CMK created with --Origin EXTERNAL/],
      [[crypto.randomUUID()], 1, /"Code":"Forbidden.KeyNotFound"/],
    ];
    const results = await Promise.all(cases.map(([args]) => script(args)));
    for (const [i, r] of results.entries()) {
      expect(r.code, `${cases[i][0].join(' ')}: ${r.stderr}`).toBe(cases[i][1]);
      expect(r.stderr).toMatch(cases[i][2]);
      expect(r.stdout).not.toContain('[2/8]');
      expect(fs.readdirSync(r.tmp)).toEqual([]);
    }
    expect(labels()).toEqual(before);
  });
});

describe('examples/import-key-material.ts (the seed\'s Java and Go samples)', () => {
  it('runs against kmsd given KMS_ENDPOINT: an EXTERNAL CMK with imported material, Enabled, round-tripping', async () => {
    expect(fs.existsSync(EXAMPLE), `${EXAMPLE} (built by npx tsc -p .)`).toBe(true);
    const r = await run(process.execPath, [EXAMPLE, '--protection-level', 'HSM'], { KMS_ENDPOINT: k.endpoint });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    for (const s of ['CreateKey: KeyId', 'GetParametersForImport', 'ImportKeyMaterial: KeyState Enabled', 'Encrypt/Decrypt: round trip OK', 'Offline decryption with the key material: OK']) {
      expect(r.stdout).toContain(s);
    }
    const summary = JSON.parse(r.stdout.trim().split('\n').pop() as string);
    const meta = (await k.client.describeKey(summary.KeyId)).KeyMetadata;
    expect(meta).toMatchObject({ Origin: 'EXTERNAL', KeyState: 'Enabled', ProtectionLevel: 'HSM', MaterialExpireTime: summary.MaterialExpireTime });
    expect(Date.parse(meta.MaterialExpireTime) - Date.now()).toBeGreaterThan(86400_000 - 120_000);
    const caps = (await k.client.call('DescribeHsm')).Capabilities;
    expect(meta.MaterialImportPath).toBe(caps.RsaOaepSha256Unwrap ? 'in-token' : 'host-assisted');
    // The material is in the token, sensitive and not extractable.
    const objects = listTokenObjects(k).filter((o) => o.label === `kmsd:cmk:${meta.PrimaryKeyVersion}`);
    expect(objects).toHaveLength(1);
    expect(objects[0].access).toMatch(/\bsensitive\b/);
    expect(objects[0].access.replace(/never extractable/g, '')).not.toMatch(/\bextractable\b/);
    const blob = (await k.client.encrypt(summary.KeyId, Buffer.from('x'))).CiphertextBlob;
    expect((await k.client.decrypt(blob)).Plaintext.toString()).toBe('x');
  });

  it('reports an API error as {"Code","Message"} on stderr with exit 1', async () => {
    const r = await run(process.execPath, [EXAMPLE, '--protection-level', 'NOT_A_LEVEL'], { KMS_ENDPOINT: k.endpoint });
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stderr.trim())).toMatchObject({ Code: 'InvalidParameter', Message: expect.stringMatching(/^ProtectionLevel: /) });
  });
});
