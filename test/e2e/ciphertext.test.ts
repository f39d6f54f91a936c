// CiphertextBlob against the real kmsd (DESIGN §5, docs/ciphertext.md): the byte layout, that any
// change to a blob (every byte of a short blob, a sample over a long one), another EncryptionContext,
// a relabelled or truncated blob is rejected with the documented error and never crashes the daemon;
// and that a blob decrypts OFFLINE from the documented format with the raw material, which the test
// reads for SOFTWARE keys through the token's root key once the daemon has stopped.

import crypto from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/client';
import { HsmToken } from '../../src/hsm/token';
import { ROOT_KEY_ID } from '../../src/kms/keyring';
import { Kmsd, startKmsd } from '../helpers/daemon';

let k: Kmsd;
const keys: Record<string, any> = {};

beforeAll(async () => {
  k = await startKmsd({ keep: true });
  for (const [name, level] of [
    ['hsm', 'HSM'],
    ['sw', 'SOFTWARE'],
    ['sw2', 'SOFTWARE'],
    ['hsm2', 'HSM'],
  ]) {
    keys[name] = (await k.client.call('CreateKey', { ProtectionLevel: level })).KeyMetadata;
  }
});

afterAll(async () => {
  await k?.stop();
  k?.cleanup();
});

const uuidBytes = (id: string) => Buffer.from(id.replace(/-/g, ''), 'hex');
const NOWHERE = '00000000-0000-4000-8000-0000000000ff';

async function decryptError(blob: Buffer | string, ctx?: Record<string, string>, keyId?: string): Promise<KmsClientError | null> {
  const b = typeof blob === 'string' ? blob : blob.toString('base64');
  return k.client.call('Decrypt', { CiphertextBlob: b, EncryptionContext: ctx ?? {}, KeyId: keyId ?? '' }).then(
    () => null,
    (e: KmsClientError) => e,
  );
}

async function expectRejected(blob: Buffer, code: 'InvalidCiphertext' | 'Forbidden.KeyNotFound', ctx?: Record<string, string>, what = ''): Promise<KmsClientError> {
  const e = await decryptError(blob, ctx);
  expect(e, `${what} was accepted`).not.toBeNull();
  expect(e!.code, `${what}: ${e!.message}`).toBe(code);
  expect(e!.grpcCode).toBe(code === 'InvalidCiphertext' ? grpc.status.INVALID_ARGUMENT : grpc.status.NOT_FOUND);
  expect(e!.message).toMatch(/CiphertextBlob/);
  return e!;
}

/** Fails the test if the daemon died or answered INTERNAL to anything so far. */
async function stillServing(): Promise<void> {
  expect(() => process.kill(k.pid, 0)).not.toThrow();
  expect(k.logs()).not.toContain('internal error');
  const r = await k.client.encrypt(keys.sw.KeyId, Buffer.from('alive'));
  expect((await k.client.decrypt(r.CiphertextBlob)).Plaintext.toString()).toBe('alive');
}

describe('layout', () => {
  for (const name of ['hsm', 'sw']) {
    it(`is magic, version, CMK id, key version id, IV, ciphertext, tag (${name})`, async () => {
      const m = keys[name];
      const pt = Buffer.from('layout check, 29 bytes long!!');
      const r = await k.client.encrypt(m.KeyId, pt, { x: 'y' });
      const blob = Buffer.from(r.CiphertextBlob, 'base64');
      expect(blob.length).toBe(48 + pt.length + 16);
      expect(blob.subarray(0, 3).toString('ascii')).toBe('KMS');
      expect(blob[3]).toBe(1);
      expect(blob.subarray(4, 20).equals(uuidBytes(m.KeyId))).toBe(true);
      expect(blob.subarray(20, 36).equals(uuidBytes(r.KeyVersionId))).toBe(true);
      expect(r.KeyVersionId).toBe(m.PrimaryKeyVersion);
      // Fresh IV per encryption; the plaintext does not appear.
      const again = Buffer.from((await k.client.encrypt(m.KeyId, pt, { x: 'y' })).CiphertextBlob, 'base64');
      expect(again.subarray(36, 48).equals(blob.subarray(36, 48))).toBe(false);
      expect(blob.includes(pt)).toBe(false);
    });
  }
});

describe('altered blobs', () => {
  for (const name of ['hsm', 'sw']) {
    it(`rejects a flipped bit and a flipped byte at every position of a short blob (${name})`, async () => {
      const r = await k.client.encrypt(keys[name].KeyId, Buffer.from('A'));
      const blob = Buffer.from(r.CiphertextBlob, 'base64');
      expect(blob.length).toBe(65);
      for (let i = 0; i < blob.length; i++) {
        for (const mask of [0x01, 0xff]) {
          const bad = Buffer.from(blob);
          bad[i] ^= mask;
          // Bytes 4..19 name the CMK: a changed id names a CMK that does not exist.
          const code = i >= 4 && i < 20 ? 'Forbidden.KeyNotFound' : 'InvalidCiphertext';
          await expectRejected(bad, code, undefined, `byte ${i} ^ ${mask}`);
        }
      }
      // The untouched blob still decrypts.
      expect((await k.client.decrypt(r.CiphertextBlob)).Plaintext.toString()).toBe('A');
      await stillServing();
    });
  }

  it('rejects changes sampled over header, IV, ciphertext and tag of a long blob, with a context', async () => {
    const pt = crypto.randomBytes(3000);
    const ctx = { order: '42', tenant: 'acme' };
    const r = await k.client.encrypt(keys.hsm.KeyId, pt, ctx);
    const blob = Buffer.from(r.CiphertextBlob, 'base64');
    const positions = [0, 2, 3, 20, 27, 35, 36, 41, 47, 48, 49, 500, 1500, 2999, 3047, 3048, 3055, 3063];
    expect(positions.at(-1)).toBe(blob.length - 1);
    await Promise.all(
      positions.map(async (i) => {
        const bad = Buffer.from(blob);
        bad[i] ^= 0x80;
        await expectRejected(bad, 'InvalidCiphertext', ctx, `byte ${i}`);
      }),
    );
    expect((await k.client.decrypt(r.CiphertextBlob, ctx)).Plaintext.equals(pt)).toBe(true);
  });

  it('names the reason for a bad magic and an unknown format version', async () => {
    const blob = Buffer.from((await k.client.encrypt(keys.sw.KeyId, Buffer.from('m'))).CiphertextBlob, 'base64');
    const magic = Buffer.from(blob);
    magic[0] = 0x58;
    expect((await expectRejected(magic, 'InvalidCiphertext')).message).toMatch(/magic/);
    const version = Buffer.from(blob);
    version[3] = 2;
    expect((await expectRejected(version, 'InvalidCiphertext')).message).toMatch(/format version 2/);
  });

  it('rejects truncated and extended blobs', async () => {
    const r = await k.client.encrypt(keys.sw.KeyId, Buffer.from('truncate me, please'));
    const blob = Buffer.from(r.CiphertextBlob, 'base64');
    for (const len of [1, 3, 4, 20, 36, 47, 48, 63, 64, blob.length - 16, blob.length - 1]) {
      const e = await expectRejected(blob.subarray(0, len), 'InvalidCiphertext', undefined, `first ${len} bytes`);
      if (len < 64) expect(e.message).toMatch(/too short/);
    }
    // The tail cut instead of the head, and one byte too many.
    await expectRejected(blob.subarray(1), 'InvalidCiphertext', undefined, 'without the first byte');
    await expectRejected(Buffer.concat([blob, Buffer.from([0])]), 'InvalidCiphertext', undefined, 'one extra byte');
    await expectRejected(Buffer.concat([blob, blob]), 'InvalidCiphertext', undefined, 'doubled');
    // Empty is a missing parameter.
    const empty = await decryptError('');
    expect(empty?.code).toBe('MissingParameter');
    await stillServing();
  });
});

describe('EncryptionContext', () => {
  it('must be exactly the one used to encrypt (changed, missing, extra); key order does not matter', async () => {
    for (const name of ['hsm', 'sw']) {
      const ctx = { a: '1', b: '2' };
      const r = await k.client.encrypt(keys[name].KeyId, Buffer.from('ctx'), ctx);
      const blob = Buffer.from(r.CiphertextBlob, 'base64');
      const wrongs: Record<string, string>[] = [{}, { a: '1' }, { b: '2' }, { a: '1', b: '2', c: '3' }, { a: '1', b: '3' }, { a: '1', B: '2' }, { a: '1 ', b: '2' }, { a: '12' }];
      for (const wrong of wrongs) {
        const e = await expectRejected(blob, 'InvalidCiphertext', wrong, `${name} ${JSON.stringify(wrong)}`);
        expect(e.message).toMatch(/EncryptionContext/);
      }
      expect((await k.client.decrypt(r.CiphertextBlob, { b: '2', a: '1' })).Plaintext.toString()).toBe('ctx');
      // A blob made without a context refuses one.
      const plain = Buffer.from((await k.client.encrypt(keys[name].KeyId, Buffer.from('none'))).CiphertextBlob, 'base64');
      await expectRejected(plain, 'InvalidCiphertext', { a: '1' }, 'context where there was none');
      expect((await k.client.decrypt(plain.toString('base64'), {})).Plaintext.toString()).toBe('none');
    }
  });

  it('through kmsctl: exit 1 and InvalidCiphertext on stderr', () => {
    const enc = k.kmsctl(['Encrypt', '--KeyId', keys.hsm.KeyId, '--Plaintext', Buffer.from('cli').toString('base64'), '--EncryptionContext', '{"k":"v"}']);
    expect(enc.code).toBe(0);
    const bad = k.kmsctl(['Decrypt', '--CiphertextBlob', enc.json.CiphertextBlob, '--EncryptionContext', '{"k":"w"}']);
    expect(bad.code).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.json).toMatchObject({ Code: 'InvalidCiphertext', Message: expect.stringContaining('EncryptionContext') });
    const good = k.kmsctl(['Decrypt', '--CiphertextBlob', enc.json.CiphertextBlob, '--EncryptionContext', '{"k":"v"}']);
    expect(good.code).toBe(0);
    expect(Buffer.from(good.json.Plaintext, 'base64').toString()).toBe('cli');
  });
});

describe('relabelled blobs', () => {
  it('a blob relabelled to another existing CMK is InvalidCiphertext; to a missing CMK, Forbidden.KeyNotFound', async () => {
    for (const [from, to] of [
      ['sw', 'sw2'],
      ['hsm', 'hsm2'],
      ['hsm', 'sw'],
      ['sw', 'hsm'],
    ]) {
      const r = await k.client.encrypt(keys[from].KeyId, Buffer.from('relabel'));
      const blob = Buffer.from(r.CiphertextBlob, 'base64');
      // CMK id only (bytes 4..20).
      const cmkOnly = Buffer.from(blob);
      uuidBytes(keys[to].KeyId).copy(cmkOnly, 4);
      await expectRejected(cmkOnly, 'InvalidCiphertext', undefined, `${from}→${to} CMK id`);
      // CMK id and key version id (bytes 4..36): the version exists, so only the AAD can catch it.
      const both = Buffer.from(blob);
      uuidBytes(keys[to].KeyId).copy(both, 4);
      uuidBytes(keys[to].PrimaryKeyVersion).copy(both, 20);
      const e = await expectRejected(both, 'InvalidCiphertext', undefined, `${from}→${to} CMK and version`);
      expect(e.message).toMatch(/authentication failed/);
      // Relabelled to a CMK that does not exist.
      const nowhere = Buffer.from(blob);
      uuidBytes(NOWHERE).copy(nowhere, 4);
      const nf = await expectRejected(nowhere, 'Forbidden.KeyNotFound', undefined, `${from}→nowhere`);
      expect(nf.message).toContain(NOWHERE);
      // Another version id of the same CMK that does not exist.
      const badVersion = Buffer.from(blob);
      uuidBytes(NOWHERE).copy(badVersion, 20);
      await expectRejected(badVersion, 'InvalidCiphertext', undefined, `${from} unknown version`);
    }
  });

  it('Decrypt with a KeyId checks it against the blob (IncorrectKeyId)', async () => {
    const r = await k.client.encrypt(keys.sw.KeyId, Buffer.from('mine'));
    const e = await decryptError(r.CiphertextBlob, {}, keys.sw2.KeyId);
    expect(e?.code).toBe('IncorrectKeyId');
    expect(e?.grpcCode).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await k.client.decrypt(r.CiphertextBlob, {}, keys.sw.KeyId)).Plaintext.toString()).toBe('mine');
  });

  it('a burst of bad blobs in parallel leaves the daemon serving', async () => {
    const blob = Buffer.from((await k.client.encrypt(keys.hsm.KeyId, Buffer.from('burst'))).CiphertextBlob, 'base64');
    const bad = Array.from({ length: 60 }, (_, i) => {
      const b = Buffer.from(blob.subarray(0, 20 + ((i * 7) % (blob.length - 20))));
      if (b.length > 40) b[b.length - 1] ^= 1;
      return b.toString('base64');
    });
    const results = await Promise.all(bad.map((b) => decryptError(b)));
    for (const e of results) {
      expect(e).not.toBeNull();
      expect(['InvalidCiphertext', 'Forbidden.KeyNotFound']).toContain(e!.code);
    }
    await stillServing();
  });
});

describe('offline decryption with the documented format', () => {
  it('decrypts SOFTWARE-key blobs without kmsd, with the material read through the root key', async () => {
    // Blobs of several kinds, made while the daemon runs.
    const sw = keys.sw;
    // Integer-like keys and a key that sorts before the digits: the documented order is plain UTF-16
    // code-unit order, which is not the order JavaScript keeps object keys in.
    const ctx = { tenant: 'acme', 'ü-key': 'ß "quoted"\nline', Alpha: 'first?', a: '', '10': 'ten', '9': 'nine', ' ': 'space' };
    const made: { blob: string; ctx?: Record<string, string>; plaintext: Buffer; versionId: string }[] = [];
    const p1 = crypto.randomBytes(100);
    const e1 = await k.client.encrypt(sw.KeyId, p1);
    made.push({ blob: e1.CiphertextBlob, plaintext: p1, versionId: e1.KeyVersionId });
    const e2 = await k.client.encrypt(sw.KeyId, Buffer.from('with a context'), ctx);
    made.push({ blob: e2.CiphertextBlob, ctx, plaintext: Buffer.from('with a context'), versionId: e2.KeyVersionId });
    const dk = await k.client.call('GenerateDataKey', { KeyId: sw.KeyId, EncryptionContext: { purpose: 'dk' } });
    made.push({ blob: dk.CiphertextBlob, ctx: { purpose: 'dk' }, plaintext: Buffer.from(dk.Plaintext, 'base64'), versionId: dk.KeyVersionId });
    const hsmBlob = await k.client.encrypt(keys.hsm.KeyId, Buffer.from('moved from HSM'));
    const re = await k.client.call('ReEncrypt', { CiphertextBlob: hsmBlob.CiphertextBlob, DestinationKeyId: sw.KeyId, DestinationEncryptionContext: { via: 'reencrypt' } });
    made.push({ blob: re.CiphertextBlob, ctx: { via: 'reencrypt' }, plaintext: Buffer.from('moved from HSM'), versionId: re.KeyVersionId });
    const v2 = (await k.client.call('CreateKeyVersion', { KeyId: sw.KeyId })).KeyVersion.KeyVersionId;
    const e3 = await k.client.encrypt(sw.KeyId, Buffer.from('second version'), { v: '2' });
    expect(e3.KeyVersionId).toBe(v2);
    made.push({ blob: e3.CiphertextBlob, ctx: { v: '2' }, plaintext: Buffer.from('second version'), versionId: v2 });
    const empty = await k.client.encrypt(sw.KeyId, Buffer.from('empty ctx'), {});
    made.push({ blob: empty.CiphertextBlob, ctx: {}, plaintext: Buffer.from('empty ctx'), versionId: empty.KeyVersionId });

    expect(await k.stop()).toBe(0);

    // The version rows, from the store; the material, through the root key in the token.
    const env = k.tokenEnv();
    const db = new Database(path.join(k.dataDir, 'kmsd.sqlite'), { readonly: true, fileMustExist: true });
    const rows = db.prepare('SELECT version_id, software_wrapped FROM key_versions WHERE key_id = ?').all(sw.KeyId) as { version_id: string; software_wrapped: Buffer }[];
    db.close();
    expect(rows.map((r) => r.version_id).sort()).toEqual([sw.PrimaryKeyVersion, v2].sort());
    process.env.SOFTHSM2_CONF = env.SOFTHSM2_CONF;
    const token = HsmToken.open({ modulePath: env.module, tokenLabel: 'kmsd-dev', pin: env.pin });
    const material = new Map<string, Buffer>();
    try {
      for (const r of rows) material.set(r.version_id, token.unwrapFromRoot(ROOT_KEY_ID, r.software_wrapped));
    } finally {
      token.close();
    }

    // Exactly the recipe of docs/ciphertext.md, written out here independently of src/.
    const canonical = (c?: Record<string, string>) => {
      if (!c || Object.keys(c).length === 0) return Buffer.alloc(0);
      const members = Object.keys(c)
        .sort()
        .map((key) => `${JSON.stringify(key)}:${JSON.stringify(c[key])}`);
      return Buffer.from(`{${members.join(',')}}`, 'utf8');
    };
    const offline = (blobB64: string, key: Buffer, ctxBytes: Buffer): Buffer => {
      const blob = Buffer.from(blobB64, 'base64');
      const d = crypto.createDecipheriv('aes-256-gcm', key, blob.subarray(36, 48));
      d.setAAD(Buffer.concat([blob.subarray(0, 48), ctxBytes]));
      d.setAuthTag(blob.subarray(blob.length - 16));
      return Buffer.concat([d.update(blob.subarray(48, blob.length - 16)), d.final()]);
    };
    for (const m of made) {
      const blob = Buffer.from(m.blob, 'base64');
      expect(blob.subarray(20, 36).toString('hex')).toBe(m.versionId.replace(/-/g, ''));
      const key = material.get(m.versionId)!;
      expect(key).toHaveLength(32);
      expect(offline(m.blob, key, canonical(m.ctx)).equals(m.plaintext), m.versionId).toBe(true);
    }
    // The canonical form is precise: sorted keys, no whitespace. Anything else fails authentication.
    const withCtx = made[1];
    const key = material.get(withCtx.versionId)!;
    expect(canonical(ctx).toString()).toBe('{" ":"space","10":"ten","9":"nine","Alpha":"first?","a":"","tenant":"acme","ü-key":"ß \\"quoted\\"\\nline"}');
    expect(() => offline(withCtx.blob, key, Buffer.from(JSON.stringify(ctx)))).toThrow();
    expect(() => offline(withCtx.blob, key, Buffer.from(canonical(ctx).toString().replace(/,/g, ', ')))).toThrow();
    expect(() => offline(withCtx.blob, key, Buffer.alloc(0))).toThrow();
    // The empty context contributes nothing (not "{}").
    const emptyMade = made[made.length - 1];
    expect(() => offline(emptyMade.blob, material.get(emptyMade.versionId)!, Buffer.from('{}'))).toThrow();
    // The other version's material does not open it.
    const other = [...material.entries()].find(([id]) => id !== withCtx.versionId)![1];
    expect(() => offline(withCtx.blob, other, canonical(ctx))).toThrow();
    for (const m of material.values()) m.fill(0);
  });
});
