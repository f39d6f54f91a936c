// Issue 4: the daemon's native data path under the conditions that matter. With the addon running
// HSM operations on its worker threads, key material can be destroyed while requests for it are
// queued or running there: those requests must fail with a clear error (never INTERNAL), the
// daemon must stay up, and the counters must show that the addon did the work. Also: the
// KMS_NATIVE_THREADS setting.

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/client';
import { Kmsd, startKmsd } from '../helpers/daemon';
import { spawnSync } from 'node:child_process';
import { KMSD, makeTempDir } from '../helpers/daemon';
import fs from 'node:fs';

/* eslint-disable @typescript-eslint/no-explicit-any */

let k: Kmsd;

beforeAll(async () => {
  // A "day" of PendingWindowInDays is 1 s here, and the scheduler looks every 200 ms.
  k = await startKmsd({ env: { KMS_PENDING_WINDOW_DAY_SECONDS: '1', KMS_SCHEDULER_INTERVAL_MS: '200' } });
});

afterAll(async () => {
  if (k) expect(await k.stop()).toBe(0);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Outcome codes of a storm: 'ok' or the API error code; anything that is not a KmsClientError is rethrown. */
type Tally = Map<string, number>;
const add = (t: Tally, code: string, n = 1) => t.set(code, (t.get(code) ?? 0) + n);

/**
 * Unary Encrypt loops and EncryptBatch loops (256 items each) on one CMK until every loop has seen
 * one of `stopOn` or `maxMs` passes.
 */
async function storm(keyId: string, stopOn: string[], maxMs: number, unaryLoops = 24, batchLoops = 3): Promise<Tally> {
  const t: Tally = new Map();
  const end = Date.now() + maxMs;
  const pt = crypto.randomBytes(256);
  const unaryLoop = async () => {
    while (Date.now() < end) {
      try {
        await k.client.encrypt(keyId, pt);
        add(t, 'ok');
      } catch (e) {
        if (!(e instanceof KmsClientError)) throw e;
        add(t, e.code);
        if (stopOn.includes(e.code)) return;
      }
    }
  };
  const batchLoop = async () => {
    const items = Array.from({ length: 256 }, () => ({ KeyId: keyId, Plaintext: pt }));
    while (Date.now() < end) {
      const r = await k.client.encryptBatch(items);
      for (const x of r.Results) add(t, x.Code || 'ok');
      if (r.Results.some((x) => stopOn.includes(x.Code))) return;
    }
  };
  await Promise.all([...Array.from({ length: unaryLoops }, unaryLoop), ...Array.from({ length: batchLoops }, batchLoop)]);
  return t;
}

async function stillServing(): Promise<void> {
  expect(() => process.kill(k.pid, 0)).not.toThrow();
  expect(k.logs()).not.toContain('internal error');
  const other = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  const r = await k.client.encrypt(other, Buffer.from('still here'));
  expect((await k.client.decrypt(r.CiphertextBlob)).Plaintext.toString()).toBe('still here');
}

/** An EXTERNAL HSM CMK with imported material (RSAES_OAEP_SHA_1, unwrapped in the token). */
async function importedHsmKey(material: Buffer): Promise<string> {
  const keyId = (await k.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  await importInto(keyId, material);
  return keyId;
}

async function importInto(keyId: string, material: Buffer): Promise<void> {
  const p = await k.client.call('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
  const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
  const wrapped = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, material);
  await k.client.call('ImportKeyMaterial', { KeyId: keyId, EncryptedKeyMaterial: wrapped.toString('base64'), ImportToken: p.ImportToken, KeyMaterialExpireUnix: 0 });
}

describe('key material destroyed while requests are in flight on the addon', () => {
  it('DeleteKeyMaterial in the middle of a storm: every request succeeds or fails cleanly, the daemon stays up', async () => {
    const material = crypto.randomBytes(32);
    const keyId = await importedHsmKey(material);
    const before = (await k.client.call('DescribeHsm')).Counters;
    const running = storm(keyId, ['Rejected.PendingImport'], 15_000);
    await sleep(400); // the storm is under way: requests are queued on the workers
    await k.client.call('DeleteKeyMaterial', { KeyId: keyId });
    const t = await running;
    // Accepted before the deletion, or refused because the material is gone (by state, or because
    // the token object vanished under a request that had already passed the state check).
    expect([...t.keys()].sort()).toEqual(expect.arrayContaining(['Rejected.PendingImport', 'ok']));
    for (const code of t.keys()) expect(['ok', 'Rejected.PendingImport', 'Rejected.KeyMaterialMissing']).toContain(code);
    expect((await k.client.describeKey(keyId)).KeyMetadata.KeyState).toBe('PendingImport');
    await stillServing();
    // The same material imported again is used through a fresh handle.
    await importInto(keyId, material);
    const r = await k.client.encrypt(keyId, Buffer.from('back'));
    expect((await k.client.decrypt(r.CiphertextBlob)).Plaintext.toString()).toBe('back');
    const after = (await k.client.call('DescribeHsm')).Counters;
    expect(after.hsmEncryptNative - before.hsmEncryptNative).toBeGreaterThanOrEqual(t.get('ok')!);
    expect(after.hsmEncryptPkcs11js).toBe(0);
  });

  it('batches already queued on the worker threads when the material is destroyed: their items fail with Rejected.KeyMaterialMissing', async () => {
    const keyId = await importedHsmKey(crypto.randomBytes(32));
    const items = Array.from({ length: 256 }, (_, i) => ({ KeyId: keyId, Plaintext: Buffer.from([i]) }));
    // Eight batches of tiny items at once: checking an item on the event loop takes a fraction of
    // what the token takes to encrypt it, so all eight are queued on the (one) worker long before it
    // is through them. The material goes as soon as the first batch is back, the rest still queued.
    const batches = Array.from({ length: 32 }, (_, b) => k.client.encryptBatch(items, `b${b}`));
    const first = await Promise.race(batches);
    await k.client.call('DeleteKeyMaterial', { KeyId: keyId });
    const all = await Promise.all(batches);
    const t: Tally = new Map();
    for (const r of all) for (const x of r.Results) add(t, x.Code || 'ok');
    expect(first.ErrorCount).toBe(0);
    for (const code of t.keys()) expect(['ok', 'Rejected.KeyMaterialMissing', 'Rejected.PendingImport']).toContain(code);
    expect(t.get('Rejected.KeyMaterialMissing') ?? 0, JSON.stringify([...t])).toBeGreaterThan(0);
    const missing = all.flatMap((r) => r.Results).find((x) => x.Code === 'Rejected.KeyMaterialMissing')!;
    expect(missing.Message).toMatch(/the token no longer holds key version [0-9a-f-]{36}/);
    await stillServing();
  });

  it('ScheduleKeyDeletion (7 "days" of 1 s) during a storm: ok, then PendingDeletion, then KeyNotFound once destroyed', async () => {
    const keyId = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
    const running = storm(keyId, ['Forbidden.KeyNotFound'], 20_000, 8, 1);
    await sleep(300);
    await k.client.call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 7 });
    const t = await running;
    expect([...t.keys()].sort()).toEqual(expect.arrayContaining(['Forbidden.KeyNotFound', 'Rejected.PendingDeletion', 'ok']));
    for (const code of t.keys()) expect(['ok', 'Rejected.PendingDeletion', 'Forbidden.KeyNotFound', 'Rejected.KeyMaterialMissing']).toContain(code);
    await stillServing();
  }, 40_000);
});

describe('KMS_NATIVE_THREADS', () => {
  it('sets the addon worker count; a bad value is a one-line start-up error', async () => {
    const two = await startKmsd({ env: { KMS_NATIVE_THREADS: '2' } });
    try {
      expect((await two.client.call('DescribeRuntime', {})).NativeThreads).toBe(2);
      expect(two.logs()).toMatch(/"threads":2[,}].*native AES-GCM addon loaded/);
      const keyId = (await two.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
      const r = await two.client.encryptBatch(Array.from({ length: 64 }, (_, i) => ({ KeyId: keyId, Plaintext: Buffer.from(`t${i}`) })));
      expect(r.ErrorCount).toBe(0);
    } finally {
      expect(await two.stop()).toBe(0);
    }
    const dir = makeTempDir();
    try {
      const bad = spawnSync(process.execPath, [KMSD, '--data-dir', dir, '--listen', '127.0.0.1:0'], { env: { ...process.env, KMS_NATIVE_THREADS: '0' }, encoding: 'utf8', timeout: 30_000 });
      expect(bad.status).not.toBe(0);
      expect(bad.stderr).toMatch(/nativeThreads must be an integer from 1 to 256 \(got 0\)/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
