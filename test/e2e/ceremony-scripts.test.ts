// Issue 5 acceptance: split backups of key material (3-of-5 Shamir shares) and the ceremony
// scripts under scripts/ceremony, run from dist/ against the real kmsd and SoftHSM token.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, makeTempDir } from '../helpers/daemon';
import { CustodianKeyFiles, client, custodianKeys, opensslSign, refused, run, runScript, startCeremonyDaemon, transcriptValue } from '../helpers/ceremony';
import type { KmsdClient } from '../../src/client/kmsd-client';

/* eslint-disable @typescript-eslint/no-explicit-any */
type J = Record<string, any>;

let k: Kmsd;
let c: KmsdClient;
let dir: string;
let keys: Record<string, CustodianKeyFiles>;
const rsa: Record<string, { pem: string; pub: string }> = {};

function config(name: string, body: J): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, JSON.stringify(body, null, 2));
  return f;
}

/** alice signs with node's crypto, bob with plain openssl; then anyone executes. */
async function approveAndExecute(proposalId: string): Promise<J> {
  const p = (await c.call('GetProposal', { ProposalId: proposalId })) as J;
  const doc = path.join(dir, `doc-${proposalId}.json`);
  fs.writeFileSync(doc, Buffer.from(p.Document, 'base64'));
  await c.call('ApproveProposal', { ProposalId: proposalId, CustodianId: 'alice', Signature: crypto.sign(null, fs.readFileSync(doc), crypto.createPrivateKey(fs.readFileSync(keys.alice.pem))).toString('base64') });
  await c.call('ApproveProposal', { ProposalId: proposalId, CustodianId: 'bob', Signature: opensslSign(keys.bob.pem, doc) });
  return c.call('ExecuteProposal', { ProposalId: proposalId });
}

async function state(keyId: string): Promise<string> {
  return ((await c.call('DescribeKey', { KeyId: keyId })) as J).KeyMetadata.KeyState;
}

beforeAll(async () => {
  dir = makeTempDir('kmsd-ceremony-scripts-');
  keys = custodianKeys(dir, ['alice', 'bob', 'carol', 'dave']);
  for (const id of ['alice', 'bob']) {
    rsa[id] = { pem: path.join(dir, `${id}-rsa.pem`), pub: path.join(dir, `${id}-rsa.pub`) };
    run('openssl', ['genpkey', '-algorithm', 'rsa', '-pkeyopt', 'rsa_keygen_bits:2048', '-out', rsa[id].pem]);
    run('openssl', ['pkey', '-in', rsa[id].pem, '-pubout', '-out', rsa[id].pub]);
  }
  k = await startCeremonyDaemon();
  c = client(k);
  await c.call('InitCeremony', { Custodians: ['alice', 'bob', 'carol'].map((id) => ({ CustodianId: id, PublicKey: fs.readFileSync(keys[id].pub, 'utf8') })), Threshold: 2 });
});

afterAll(async () => {
  c?.close();
  await k?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

const FIVE = ['alice', 'bob', 'carol', 'dave', 'erin'];

describe('ceremony configs', () => {
  it('are validated completely before anything is touched, and outputs are never overwritten', () => {
    const out = path.join(dir, 'never');
    const cases: [J, RegExp][] = [
      [{ Label: 'x', Threshold: 6, Custodians: FIVE.map((id) => ({ CustodianId: id })), OutputDir: out }, /Threshold: must be an integer from 2 to 5/],
      [{ Label: 'x', Threshold: 1, Custodians: FIVE.map((id) => ({ CustodianId: id })), OutputDir: out }, /Threshold/],
      [{ Label: 'x', Threshold: 2, Custodians: FIVE.map((id) => ({ CustodianId: id })), OutputDir: out, Shares: 5 }, /unknown member "Shares"/],
      [{ Label: 'x', Threshold: 2, Custodians: [{ CustodianId: 'a' }, { CustodianId: 'a' }], OutputDir: out }, /listed twice/],
      [{ Label: 'x', Threshold: 2, Custodians: [{ CustodianId: 'a', EncryptionPublicKey: 'nope.pub' }, { CustodianId: 'b' }], OutputDir: out }, /does not exist/],
      [{ Label: 'x', Threshold: 2, Custodians: [{ CustodianId: 'a', EncryptionPublicKey: keys.alice.pub }, { CustodianId: 'b' }], OutputDir: out }, /must be an RSA public key/],
      [{ Label: 'x', Threshold: 2, Custodians: [{ CustodianId: 'a' }, { CustodianId: 'b' }], RandomSource: 'dice', OutputDir: out }, /RandomSource/],
    ];
    for (const [body, msg] of cases) {
      const r = runScript('split-key-material', config('bad.json', body));
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(msg);
      expect(fs.existsSync(out)).toBe(false);
    }
    const dry = runScript('split-key-material', config('dry.json', { Label: 'x', Threshold: 2, Custodians: [{ CustodianId: 'a' }, { CustodianId: 'b' }], OutputDir: out }), ['--dry-run']);
    expect(dry.code, dry.stderr).toBe(0);
    expect(fs.existsSync(out)).toBe(false);
    const bad = runScript('restore-key-material', config('bad-restore.json', { Endpoint: k.endpoint, KeyId: 'not-a-key', Shares: [], Requester: 'ops', OutputDir: out }));
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/KeyId/);
  });
});

describe('split backups of key material', () => {
  let split: string;
  let keyId: string;
  let kcv: string;
  let oldBlob: string;

  it('splits new material 3-of-5, one file per custodian, two encrypted to their RSA keys', () => {
    split = path.join(dir, 'split');
    const cfg = config('split.json', {
      Label: 'payments CMK backup',
      Threshold: 3,
      Custodians: FIVE.map((id) => (rsa[id] ? { CustodianId: id, EncryptionPublicKey: rsa[id].pub } : { CustodianId: id })),
      RandomSource: 'openssl',
      OutputDir: split,
    });
    const r = runScript('split-key-material', cfg);
    expect(r.code, r.stderr).toBe(0);
    kcv = transcriptValue(r.stdout, 'KeyCheckValue');
    expect(kcv).toMatch(/^[0-9A-F]{6}$/);
    expect(fs.readFileSync(path.join(split, 'transcript.txt'), 'utf8')).toContain(`KeyCheckValue = ${kcv}`);
    for (const [i, id] of FIVE.entries()) {
      const f = path.join(split, `share-${id}.json`);
      expect(fs.statSync(f).mode & 0o777).toBe(0o600);
      const s = JSON.parse(fs.readFileSync(f, 'utf8'));
      expect(s).toMatchObject({ Format: 'kmsd-key-share/v1', CustodianId: id, ShareIndex: i + 1, Threshold: 3, Shares: 5, KeyCheckValue: kcv });
      expect(Boolean(s.EncryptedShare)).toBe(Boolean(rsa[id]));
    }
    // An encrypted share opens with plain openssl and the custodian's RSA key: no kmsd software needed.
    const enc = path.join(dir, 'alice-share.bin');
    fs.writeFileSync(enc, Buffer.from(JSON.parse(fs.readFileSync(path.join(split, 'share-alice.json'), 'utf8')).EncryptedShare, 'base64'));
    const opened = run('openssl', ['pkeyutl', '-decrypt', '-inkey', rsa.alice.pem, '-in', enc, '-pkeyopt', 'rsa_padding_mode:oaep', '-pkeyopt', 'rsa_oaep_md:sha256', '-pkeyopt', 'rsa_mgf1_md:sha256']).stdout;
    expect(opened.length).toBe(33);
    // Running the same ceremony again never overwrites its outputs.
    const again = runScript('split-key-material', cfg);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/refusing to overwrite/);
  });

  it('refuses to restore from 2 shares of a 3-of-5 split', async () => {
    keyId = ((await c.call('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM', Description: 'restored from shares' })) as J).KeyMetadata.KeyId;
    const out = path.join(dir, 'restore-2');
    const r = runScript('restore-key-material', config('restore-2.json', { Endpoint: k.endpoint, KeyId: keyId, Shares: [{ File: path.join(split, 'share-carol.json') }, { File: path.join(split, 'share-dave.json') }], Requester: 'ops', OutputDir: out }));
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/2 shares given, but this material was split 3-of-5/);
    expect(fs.existsSync(out)).toBe(false);
    expect(await state(keyId)).toBe('PendingImport');
  });

  it('refuses a corrupted share by its key check value, before anything is imported', async () => {
    const bad = JSON.parse(fs.readFileSync(path.join(split, 'share-carol.json'), 'utf8'));
    const bytes = Buffer.from(bad.Share, 'base64');
    bytes[0] ^= 0xff;
    bad.Share = bytes.toString('base64');
    const badFile = path.join(dir, 'share-carol-corrupt.json');
    fs.writeFileSync(badFile, JSON.stringify(bad));
    const r = runScript('restore-key-material', config('restore-bad.json', { Endpoint: k.endpoint, KeyId: keyId, Shares: [{ File: badFile }, { File: path.join(split, 'share-dave.json') }, { File: path.join(split, 'share-erin.json') }], Requester: 'ops', OutputDir: path.join(dir, 'restore-bad') }));
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/key check value .* not .*nothing was imported/);
    expect(((await c.call('ListProposals', { State: 'Open' })) as J).TotalCount).toBe(0);
  });

  it('restores 3 shares into the CMK through a 2-of-3 proposal', async () => {
    const out = path.join(dir, 'restore-1');
    const r = runScript(
      'restore-key-material',
      config('restore-1.json', {
        Endpoint: k.endpoint,
        KeyId: keyId,
        Shares: [{ File: path.join(split, 'share-alice.json'), DecryptionKey: rsa.alice.pem }, { File: path.join(split, 'share-carol.json') }, { File: path.join(split, 'share-erin.json') }],
        ExpectedKeyCheckValue: kcv,
        WrappingAlgorithm: 'RSAES_OAEP_SHA_256',
        Requester: 'restore-ops',
        OutputDir: out,
      }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(transcriptValue(r.stdout, 'KeyCheckValue')).toBe(kcv);
    const pid = transcriptValue(r.stdout, 'ProposalId');
    expect(fs.existsSync(path.join(out, `proposal-${pid}.json`))).toBe(true);
    const transcript = fs.readFileSync(path.join(out, 'transcript.txt'), 'utf8');
    for (const id of FIVE) expect(transcript).not.toContain(JSON.parse(fs.readFileSync(path.join(split, `share-${id}.json`), 'utf8')).Share ?? 'no-plain-share');
    expect(await state(keyId)).toBe('PendingImport');
    const ex = await approveAndExecute(pid);
    expect(ex.Outcome).toBe('Succeeded');
    expect(await state(keyId)).toBe('Enabled');
    oldBlob = (await k.client.encrypt(keyId, Buffer.from('encrypted before the material was deleted'))).CiphertextBlob;
  });

  it('re-imports the restored material into the same CMK after DeleteKeyMaterial: old ciphertexts decrypt', async () => {
    await refused(c.call('DeleteKeyMaterial', { KeyId: keyId }), 'Rejected.QuorumRequired');
    const del = (await c.call('CreateProposal', { Action: 'DeleteKeyMaterial', Parameters: { KeyId: keyId }, Requester: 'ops' })) as J;
    await approveAndExecute(del.ProposalId);
    expect(await state(keyId)).toBe('PendingImport');
    await refused(k.client.decrypt(oldBlob), 'Rejected.PendingImport');

    // Three other shares (bob's encrypted) restore the same material.
    const r = runScript(
      'restore-key-material',
      config('restore-2nd.json', {
        Endpoint: k.endpoint,
        KeyId: keyId,
        Shares: [{ File: path.join(split, 'share-bob.json'), DecryptionKey: rsa.bob.pem }, { File: path.join(split, 'share-dave.json') }, { File: path.join(split, 'share-erin.json') }],
        WrappingAlgorithm: 'RSAES_OAEP_SHA_1',
        Requester: 'restore-ops',
        OutputDir: path.join(dir, 'restore-2nd'),
      }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(transcriptValue(r.stdout, 'KeyCheckValue')).toBe(kcv);
    await approveAndExecute(transcriptValue(r.stdout, 'ProposalId'));
    expect(await state(keyId)).toBe('Enabled');
    expect((await k.client.decrypt(oldBlob)).Plaintext.toString()).toBe('encrypted before the material was deleted');
  });
});

describe('import-external-key', () => {
  it('runs the seed walkthrough with m-of-n approval, a 2-of-3 backup and material from the token RNG', async () => {
    const out = path.join(dir, 'import');
    const env = k.tokenEnv();
    const r = runScript(
      'import-external-key',
      config('import.json', {
        Endpoint: k.endpoint,
        Description: 'External key',
        ProtectionLevel: 'HSM',
        WrappingAlgorithm: 'RSAES_OAEP_SHA_1',
        WrappingKeySpec: 'RSA_2048',
        RandomSource: 'pkcs11',
        Pkcs11: { Module: env.module, TokenLabel: 'kmsd-dev', PinFile: path.join(k.dataDir, 'softhsm', 'user.pin') },
        Backup: { Label: 'external key backup', Threshold: 2, Custodians: [{ CustodianId: 'alice', EncryptionPublicKey: rsa.alice.pub }, { CustodianId: 'bob' }, { CustodianId: 'carol' }] },
        Requester: 'ops',
        OutputDir: out,
      }),
      [],
      { ...process.env, SOFTHSM2_CONF: env.SOFTHSM2_CONF },
    );
    expect(r.code, r.stderr).toBe(0);
    const keyId = transcriptValue(r.stdout, 'KeyId');
    const kcv = transcriptValue(r.stdout, 'KeyCheckValue');
    for (const f of [`publickey_${keyId}.bin`, `publickey_${keyId}.pem`, `token_${keyId}.txt`, 'encrypted-key-material.bin', 'share-alice.json', 'share-bob.json', 'share-carol.json']) {
      expect(fs.existsSync(path.join(out, f)), f).toBe(true);
    }
    expect(JSON.parse(fs.readFileSync(path.join(out, 'share-bob.json'), 'utf8')).KeyCheckValue).toBe(kcv);
    expect(await state(keyId)).toBe('PendingImport');
    await approveAndExecute(transcriptValue(r.stdout, 'ProposalId'));
    expect(await state(keyId)).toBe('Enabled');
    const blob = (await k.client.encrypt(keyId, Buffer.from('hello'))).CiphertextBlob;
    expect((await k.client.decrypt(blob)).Plaintext.toString()).toBe('hello');
  });
});

describe('rotate-custodians', () => {
  it('proposes a new set, shows the changes, and takes effect once the current custodians approve', async () => {
    const out = path.join(dir, 'rotate');
    const r = runScript(
      'rotate-custodians',
      config('rotate.json', {
        Endpoint: k.endpoint,
        Custodians: ['alice', 'bob', 'dave'].map((id) => ({ CustodianId: id, PublicKey: keys[id].pub })),
        Threshold: 2,
        Requester: 'ops',
        OutputDir: out,
      }),
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/Custodian dave = ADDED/);
    expect(r.stdout).toMatch(/Custodian carol = REMOVED/);
    await approveAndExecute(transcriptValue(r.stdout, 'ProposalId'));
    const d = (await c.call('DescribeCeremony', {})) as J;
    expect(d.Custodians.map((x: J) => x.CustodianId)).toEqual(['alice', 'bob', 'dave']);
    const shared = runScript('rotate-custodians', config('rotate-bad.json', { Endpoint: k.endpoint, Custodians: [{ CustodianId: 'alice', PublicKey: keys.alice.pub }, { CustodianId: 'bob', PublicKey: keys.alice.pub }], Threshold: 1, Requester: 'ops', OutputDir: path.join(dir, 'rotate-bad') }));
    expect(shared.code).toBe(2);
    expect(shared.stderr).toMatch(/same key/);
  });
});
