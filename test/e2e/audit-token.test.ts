// The token auditor (npm run audit-token) against a real kmsd's development SoftHSM token: a clean
// token exits 0, and every kind of finding, made for real (pkcs11-tool objects, store rows removed
// through src/store), exits 1 naming the object. Each finding is made on a copy of the stopped
// daemon's data directory (store and token together), so the cases do not leak into each other.

import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, ROOT, makeTempDir, startKmsd } from '../helpers/daemon';
import { SqliteDb } from '../../src/store/store';
import { AuditRun, auditToken } from '../helpers/audit-token';

const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const audit = auditToken;
type Run = AuditRun;

let k: Kmsd;
let dataDir: string;
const copies: string[] = [];
let hsmVersion = '';
let importedVersion = '';
let pooledWrapId = '';

/** A copy of the stopped daemon's data directory whose development token is its own. */
function copyDataDir(): string {
  const dir = makeTempDir('kmsd-audit-copy-');
  copies.push(dir);
  fs.cpSync(dataDir, dir, { recursive: true });
  const conf = path.join(dir, 'softhsm', 'softhsm2.conf');
  fs.writeFileSync(conf, fs.readFileSync(conf, 'utf8').replaceAll(path.join(dataDir, 'softhsm'), path.join(dir, 'softhsm')));
  return dir;
}

function tool(dir: string, args: string[]): string {
  const pin = fs.readFileSync(path.join(dir, 'softhsm', 'user.pin'), 'utf8').trim();
  const r = spawnSync('pkcs11-tool', ['--module', MODULE, '--token-label', 'kmsd-dev', '--login', '--pin', pin, ...args], {
    encoding: 'utf8',
    env: { ...process.env, SOFTHSM2_CONF: path.join(dir, 'softhsm', 'softhsm2.conf') },
  });
  if (r.status !== 0) throw new Error(`pkcs11-tool ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

const hex = (s: string) => Buffer.from(s, 'utf8').toString('hex');

function findings(run: Run, kind: string): { kind: string; object: string; detail: string }[] {
  return (run.report.findings as { kind: string; object: string; detail: string }[]).filter((f) => f.kind === kind);
}

beforeAll(async () => {
  k = await startKmsd({ keep: true });
  dataDir = k.dataDir;
  hsmVersion = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.PrimaryKeyVersion as string;
  await k.client.createKey({ ProtectionLevel: 'SOFTWARE' });
  // An imported HSM CMK: its material entered the token through an unwrap.
  const ext = (await k.client.createKey({ ProtectionLevel: 'HSM', Origin: 'EXTERNAL' })).KeyMetadata.KeyId as string;
  const p = (await k.client.call('GetParametersForImport', { KeyId: ext, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' })) as { ImportToken: string; PublicKey: string };
  const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
  const material = crypto.randomBytes(32);
  const wrapped = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, material);
  await k.client.call('ImportKeyMaterial', { KeyId: ext, EncryptedKeyMaterial: wrapped.toString('base64'), ImportToken: p.ImportToken, KeyMaterialExpireUnix: 0 });
  importedVersion = (await k.client.describeKey(ext)).KeyMetadata.PrimaryKeyVersion as string;
  // The pool is filled in the background once start-up reconciliation is done: wait for a pooled
  // key pair (read through the store's read-only view, as the auditor reads it) before stopping.
  const pooled = (): string => {
    const store = new SqliteDb(dataDir, { readOnly: true });
    try {
      return store.allWrappingKeys().find((w) => w.key_id === null)?.wrap_id ?? '';
    } finally {
      store.close();
    }
  };
  for (const until = Date.now() + 90_000; !pooledWrapId && Date.now() < until; ) {
    pooledWrapId = pooled();
    if (!pooledWrapId) await new Promise((r) => setTimeout(r, 250));
  }
  expect(await k.stop()).toBe(0);
  expect(pooledWrapId).not.toBe('');
  expect(pooled()).toBe(pooledWrapId);
}, 180_000);

afterAll(() => {
  k?.cleanup();
  for (const d of copies) fs.rmSync(d, { recursive: true, force: true });
});

describe('audit-token on a clean token', () => {
  it('exits 0 with a JSON report of every object, each checked against its role', () => {
    const sqlite = path.join(dataDir, 'kmsd.sqlite');
    const before = crypto.createHash('sha256').update(fs.readFileSync(sqlite)).digest('hex');
    const run = audit(['--data-dir', dataDir]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.report.clean).toBe(true);
    expect(run.report.findings).toEqual([]);
    expect(run.report.token.label).toBe('kmsd-dev');
    // Two HSM CMK versions (generated and imported), the per-token keys, and the pool's and the import's wrapping pairs.
    expect(run.report.summary.byRole).toMatchObject({ cmk: 2, root: 1, mac: 1, 'sign-private': 1, 'sign-public': 1, instance: 1 });
    expect(run.report.summary.byRole['wrap-private']).toBeGreaterThanOrEqual(2);
    const byLabel = new Map((run.report.objects as { label: string; attributes: Record<string, unknown> }[]).map((o) => [o.label, o]));
    expect(byLabel.get(`kmsd:cmk:${hsmVersion}`)?.attributes).toMatchObject({ sensitive: true, extractable: false, modifiable: false, neverExtractable: true });
    // Imported material came in through an unwrap: never extractable now, but not "never" extractable.
    expect(byLabel.get(`kmsd:cmk:${importedVersion}`)?.attributes).toMatchObject({ sensitive: true, extractable: false, modifiable: false });
    // The store was opened read-only: not a byte of it changed.
    expect(crypto.createHash('sha256').update(fs.readFileSync(sqlite)).digest('hex')).toBe(before);
  });

  it('reads an existing token through --pkcs11-module, --token-label and --pin-file as well', () => {
    const pinFile = path.join(dataDir, 'softhsm', 'user.pin');
    const run = audit(['--data-dir', dataDir, '--pkcs11-module', MODULE, '--token-label', 'kmsd-dev', '--pin-file', pinFile], { SOFTHSM2_CONF: path.join(dataDir, 'softhsm', 'softhsm2.conf') });
    expect(run.code).toBe(0);
    expect(run.report.clean).toBe(true);
  });
});

describe('audit-token findings, each made for real', () => {
  it('a stray object that is not kmsd\'s (pkcs11-tool) is a foreign-object finding, unless the token is declared shared', () => {
    const dir = copyDataDir();
    tool(dir, ['--keygen', '--key-type', 'AES:32', '--label', 'someone-else', '--id', hex('x')]);
    const run = audit(['--data-dir', dir]);
    expect(run.code).toBe(1);
    expect(findings(run, 'foreign-object').map((f) => f.object)).toEqual(['someone-else']);
    expect(run.stderr).toMatch(/1 finding\(s\): foreign-object/);
    expect(audit(['--data-dir', dir, '--allow-foreign-objects']).code).toBe(0);
  });

  it('an extractable, readable key under a kmsd label is an attributes finding naming each attribute, and an orphan', () => {
    const dir = copyDataDir();
    tool(dir, ['--keygen', '--key-type', 'AES:32', '--label', 'kmsd:cmk:stray', '--id', hex('stray'), '--extractable']);
    const run = audit(['--data-dir', dir]);
    expect(run.code).toBe(1);
    const attrs = findings(run, 'attributes');
    expect(attrs.map((f) => f.object)).toEqual(['kmsd:cmk:stray']);
    expect(attrs[0].detail).toMatch(/extractable is true, its role \(cmk\) requires false/);
    expect(attrs[0].detail).toMatch(/sensitive is false/);
    expect(findings(run, 'orphan').map((f) => f.object)).toEqual(['kmsd:cmk:stray']);
  });

  it('a CMK key version whose material was removed from the token is a missing finding', () => {
    const dir = copyDataDir();
    tool(dir, ['--delete-object', '--type', 'secrkey', '--label', `kmsd:cmk:${hsmVersion}`]);
    const run = audit(['--data-dir', dir]);
    expect(run.code).toBe(1);
    expect(findings(run, 'missing').map((f) => f.object)).toEqual([`kmsd:cmk:${hsmVersion}`]);
  });

  it('a wrapping key whose store row is gone is an orphan (both halves)', () => {
    const dir = copyDataDir();
    const store = new SqliteDb(dir);
    try {
      store.deleteWrappingKey(pooledWrapId);
    } finally {
      store.close();
    }
    const run = audit(['--data-dir', dir]);
    expect(run.code).toBe(1);
    expect(findings(run, 'orphan').map((f) => f.object)).toEqual([`kmsd:wrap:${pooledWrapId}`, `kmsd:wrap:${pooledWrapId}`]);
  });

  it('a key whose CKA_ID is not the id of its label is a label-id-mismatch', () => {
    const dir = copyDataDir();
    const store = new SqliteDb(dir);
    try {
      // Explained by an open intent, so the only findings are about the object itself.
      store.openIntent('cmk', 'mismatch', Date.now());
    } finally {
      store.close();
    }
    tool(dir, ['--keygen', '--key-type', 'AES:32', '--label', 'kmsd:cmk:mismatch', '--id', hex('other'), '--sensitive']);
    const run = audit(['--data-dir', dir]);
    expect(run.code).toBe(1);
    expect(findings(run, 'label-id-mismatch')).toEqual([{ kind: 'label-id-mismatch', object: 'kmsd:cmk:mismatch', detail: 'CKA_ID is "other", the label names "mismatch"' }]);
    expect(findings(run, 'orphan')).toEqual([]);
    expect(run.report.explained).toEqual([{ object: 'kmsd:cmk:mismatch', reason: 'open-intent', present: true }]);
  });

  it('an open intent without an object is explained, not a finding (kmsd clears it at its next start)', () => {
    const dir = copyDataDir();
    const store = new SqliteDb(dir);
    try {
      store.openIntent('cmk', 'in-flight', Date.now());
    } finally {
      store.close();
    }
    const run = audit(['--data-dir', dir]);
    expect(run.code).toBe(0);
    expect(run.report.explained).toEqual([{ object: 'kmsd:cmk:in-flight', reason: 'open-intent', present: false }]);
  });

  it('a second kmsd:instance object is an instance finding', () => {
    const dir = copyDataDir();
    tool(dir, ['--write-object', writeTemp(dir, 'x'), '--type', 'data', '--label', 'kmsd:instance:0', '--application-label', 'kmsd:instance', '--private']);
    const run = audit(['--data-dir', dir]);
    expect(run.code).toBe(1);
    expect(findings(run, 'instance').map((f) => f.detail).join('\n')).toMatch(/2 kmsd:instance objects/);
  });
});

function writeTemp(dir: string, content: string): string {
  const f = path.join(dir, 'object.bin');
  fs.writeFileSync(f, content);
  return f;
}

describe('audit-token usage errors exit 2 before opening anything; unreadable token exits 3', () => {
  it.each([
    [['--data-dir'], /--data-dir needs a value/],
    [[], /--data-dir is required/],
    [['--data-dir', '/nonexistent-kmsd-dir'], /holds no kmsd\.sqlite/],
    [['--store', 'postgres://kmsd@localhost/kmsd'], /--data-dir is required/],
    [['--data-dir', '.', '--store', 'postgres://kmsd:hunter2@localhost/kmsd'], /--store must not hold a password/],
    [['--data-dir', '.', '--store-password-file', '/nonexistent-password'], /--store-password-file is for a PostgreSQL store/],
    [['--data-dir', '/nonexistent-kmsd-dir', '--store', 'postgres://kmsd@localhost/kmsd'], /--data-dir \/nonexistent-kmsd-dir is not a directory/],
    [['--bogus', '1'], /unknown argument "--bogus"/],
    [['--data-dir', '.', '--pkcs11-module', MODULE], /needs all of --pkcs11-module, --token-label and --pin-file/],
  ])('%j', (args, message) => {
    const run = audit(args.map((a) => (a === '.' ? dataDir : a)));
    expect(run.code).toBe(2);
    expect(run.stderr).toMatch(message);
    expect(run.stdout).toBe('');
  });

  it('a module path that is no file, and an overlong label, are refused by name', () => {
    const pinFile = path.join(dataDir, 'softhsm', 'user.pin');
    const r1 = audit(['--data-dir', dataDir, '--pkcs11-module', '/nonexistent.so', '--token-label', 'x', '--pin-file', pinFile]);
    expect(r1.code).toBe(2);
    expect(r1.stderr).toMatch(/--pkcs11-module \/nonexistent\.so is not a file/);
    const r2 = audit(['--data-dir', dataDir, '--pkcs11-module', MODULE, '--token-label', 'x'.repeat(33), '--pin-file', pinFile]);
    expect(r2.code).toBe(2);
    expect(r2.stderr).toMatch(/--token-label must be at most 32 bytes/);
  });

  it('a PostgreSQL store that cannot be reached exits 3 naming it', () => {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    const run = audit(['--data-dir', dataDir, '--store', 'postgres://kmsd@127.0.0.1:1/kmsd'], { PGPASSWORD: 'unused' });
    expect(run.code).toBe(3);
    expect(run.stderr).toMatch(/cannot read the metadata store: the PostgreSQL store is unreachable: .*ECONNREFUSED/);
    expect(run.stdout).toBe('');
  });

  it('a wrong PIN exits 3 naming the CKR, never the PIN', () => {
    const dir = makeTempDir('kmsd-audit-pin-');
    copies.push(dir);
    const pinFile = path.join(dir, 'wrong.pin');
    fs.writeFileSync(pinFile, 'not-the-pin-4711\n', { mode: 0o600 });
    const run = audit(['--data-dir', dataDir, '--pkcs11-module', MODULE, '--token-label', 'kmsd-dev', '--pin-file', pinFile], { SOFTHSM2_CONF: path.join(dataDir, 'softhsm', 'softhsm2.conf') });
    expect(run.code).toBe(3);
    expect(run.stderr).toMatch(/login to token "kmsd-dev" failed: CKR_PIN_INCORRECT/);
    expect(run.stderr + run.stdout).not.toContain('not-the-pin-4711');
  });
});
