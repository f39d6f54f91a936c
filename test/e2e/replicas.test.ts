// Replicas: several kmsd processes on one PostgreSQL store (a real cluster, test/helpers/postgres.ts)
// and one SoftHSM token directory (createExternalToken), each with its own data directory. What must
// hold across them: a change made on one is in force on the others within a second; two imports of
// different material into one CMK on two replicas have exactly one winner, and the CMK decrypts with
// the winner's material only; scheduled work runs once; a replica killed at any moment loses no
// acknowledged write and leaves every token object accounted for; PostgreSQL stopped under load
// makes calls fail as retryable, and everything recovers without a restart.

import crypto from 'node:crypto';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient, KmsClientError } from '../../src/client/client';
import { KmsdClient } from '../../src/client/kmsd-client';
import { ExternalToken, Kmsd, createExternalToken, makeTempDir, startKmsd } from '../helpers/daemon';
import { custodianKeys } from '../helpers/ceremony';
import { healthOf } from '../helpers/health';
import { within } from '../helpers/poll';
import { offlineDecrypt } from '../helpers/offline';
import { poolOn, startPostgres, type PgCluster, type PgDatabase } from '../helpers/postgres';

/* eslint-disable @typescript-eslint/no-explicit-any */
type J = any;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let cluster: PgCluster;
let db: PgDatabase;
let token: ExternalToken;
const dataDirs: string[] = [];
const replicas: Kmsd[] = [];

const ports: number[] = [];

function replicaOptions(dataDir: string, port?: number) {
  return {
    dataDir,
    // A restarted replica keeps its port, so clients that list the replicas reach it again.
    listen: port ? `127.0.0.1:${port}` : undefined,
    keep: true,
    args: [...token.args, '--store', db.url, '--store-password-file', db.passwordFile],
    env: { ...token.env, KMS_WRAPPING_KEY_POOL_SIZE: '4', KMS_SCHEDULER_INTERVAL_MS: '200' },
  };
}

/** Starts (or restarts, same data directory) replica i. */
async function startReplica(i: number): Promise<Kmsd> {
  dataDirs[i] ??= makeTempDir(`kmsd-replica-${i}-`);
  const k = await startKmsd(replicaOptions(dataDirs[i], ports[i]));
  ports[i] = k.port;
  replicas[i] = k;
  return k;
}

beforeAll(async () => {
  cluster = await startPostgres();
  db = await cluster.createDatabase();
  token = createExternalToken('kmsd-replicas');
  // One after the other: the first binds the store and the token, the others find them bound.
  for (let i = 0; i < 3; i++) await startReplica(i);
}, 180_000);

afterAll(async () => {
  for (const k of replicas) await k?.stop().catch(() => undefined);
  for (const d of dataDirs) if (d) fs.rmSync(d, { recursive: true, force: true });
  await cluster?.stop();
  token?.cleanup();
}, 120_000);

function wrapOaepSha1(publicKeyB64: string, material: Buffer): string {
  const key = crypto.createPublicKey({ key: Buffer.from(publicKeyB64, 'base64'), format: 'der', type: 'spki' });
  return crypto.publicEncrypt({ key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, material).toString('base64');
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof KmsClientError) return e.code;
    throw e;
  }
}

/** codeOf, repeating the call while it fails as retryable (ServiceUnavailable.*), as a client should. */
async function settledCodeOf(call: () => Promise<unknown>): Promise<string> {
  for (let i = 0; ; i++) {
    const code = await codeOf(call());
    if (!code.startsWith('ServiceUnavailable') || i === 10) return code;
    await sleep(200);
  }
}

/** The call's answer, repeating it while it fails as retryable (for calls safe to repeat here). */
async function retried<T>(call: () => Promise<T>): Promise<T> {
  for (let i = 0; ; i++) {
    try {
      return await call();
    } catch (e) {
      if (!(e instanceof KmsClientError && e.code.startsWith('ServiceUnavailable')) || i === 10) throw e;
      await sleep(200);
    }
  }
}

describe('replicas on one PostgreSQL store and one token', () => {
  it('a key made on one replica is used on the others; a DisableKey on one is in force on every other within 1 s', async () => {
    const [a, b, c] = replicas;
    const key = (await a.client.call<J>('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const blob = (await b.client.call<J>('Encrypt', { KeyId: key, Plaintext: Buffer.from('across replicas').toString('base64') })).CiphertextBlob;
    expect(Buffer.from((await c.client.call<J>('Decrypt', { CiphertextBlob: blob })).Plaintext, 'base64').toString()).toBe('across replicas');
    // Warm on b and c (their caches hold the CMK), then disabled on a.
    await b.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' });
    await c.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' });
    await a.client.call('DisableKey', { KeyId: key });
    expect(await codeOf(a.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }))).toBe('Rejected.Disabled');
    for (const r of [b, c]) {
      const took = await within(1000, async () => (await codeOf(r.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }))) === 'Rejected.Disabled');
      expect(took).toBeGreaterThanOrEqual(0);
    }
    await c.client.call('EnableKey', { KeyId: key });
    const back = await within(1000, async () => (await codeOf(a.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }))) === 'ok');
    expect(back).toBeGreaterThanOrEqual(0);
  });

  it('ScheduleKeyDeletion and a new key version made on one replica are in force on every other within 1 s', async () => {
    const [a, b, c] = replicas;
    const key = (await a.client.call<J>('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    for (const r of replicas) await r.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }); // cached everywhere
    const rotated = (await a.client.call<J>('CreateKeyVersion', { KeyId: key })).KeyVersion.KeyVersionId as string;
    for (const r of [b, c]) {
      const took = await within(1000, async () => (await r.client.call<J>('Encrypt', { KeyId: key, Plaintext: 'AA==' })).KeyVersionId === rotated);
      expect(took, r.endpoint).toBeGreaterThanOrEqual(0);
    }
    await a.client.call('ScheduleKeyDeletion', { KeyId: key, PendingWindowInDays: 7 });
    for (const r of [b, c]) {
      const took = await within(1000, async () => (await codeOf(r.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }))) === 'Rejected.PendingDeletion');
      expect(took, r.endpoint).toBeGreaterThanOrEqual(0);
    }
    await b.client.call('CancelKeyDeletion', { KeyId: key });
    const back = await within(1000, async () => (await codeOf(c.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }))) === 'ok');
    expect(back).toBeGreaterThanOrEqual(0);
  });

  it('material deleted on one replica is missing on the others at once: never an internal error, even from a cached token handle', async () => {
    const [a, b, c] = replicas;
    const key = (await a.client.call<J>('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const p = await b.client.call<J>('GetParametersForImport', { KeyId: key, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
    const material = crypto.randomBytes(32);
    await c.client.call('ImportKeyMaterial', { KeyId: key, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapOaepSha1(p.PublicKey, material) });
    // Each replica uses the material once: its handle is cached.
    for (const r of replicas) await r.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' });
    await a.client.call('DeleteKeyMaterial', { KeyId: key });
    for (const r of [b, c]) {
      const seen = new Set<string>();
      const took = await within(1000, async () => {
        const code = await codeOf(r.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }));
        seen.add(code);
        return code === 'Rejected.PendingImport';
      });
      expect(took).toBeGreaterThanOrEqual(0);
      // Between the destroy and the notification: the material is missing, not an internal error.
      for (const code of seen) expect(['ok', 'Rejected.KeyMaterialMissing', 'Rejected.PendingImport']).toContain(code);
    }
  });

  it('two replicas importing different material into one CMK at the same moment: exactly one wins, 200 times, and the CMK decrypts with the winner only', async () => {
    const [a, b] = replicas;
    const rounds = 200;
    const wins = { a: 0, b: 0 };
    const round = async () => {
      const key = (await a.client.call<J>('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
      const p = await retried(() => b.client.call<J>('GetParametersForImport', { KeyId: key, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' }));
      const m = [crypto.randomBytes(32), crypto.randomBytes(32)];
      const outcomes = await Promise.all(
        [a, b].map((r, i) => settledCodeOf(() => r.client.call('ImportKeyMaterial', { KeyId: key, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapOaepSha1(p.PublicKey, m[i]) }))),
      );
      const winner = outcomes.indexOf('ok');
      expect(outcomes.filter((o) => o === 'ok')).toHaveLength(1);
      expect(outcomes[1 - winner]).toBe('Rejected.KeyMaterialMismatch');
      wins[winner === 0 ? 'a' : 'b']++;
      const blob = (await [a, b][1 - winner].client.call<J>('Encrypt', { KeyId: key, Plaintext: Buffer.from(key).toString('base64') })).CiphertextBlob;
      expect(offlineDecrypt(m[winner], blob, {}).toString()).toBe(key);
      expect(() => offlineDecrypt(m[1 - winner], blob, {})).toThrow();
    };
    for (let done = 0; done < rounds; done += 4) await Promise.all([round(), round(), round(), round()]);
    expect(wins.a + wins.b).toBe(rounds);
  }, 600_000);

  it('scheduled work runs on one replica: material that expires is expired once, with one audit record', async () => {
    const [a, b] = replicas;
    const key = (await a.client.call<J>('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const p = await b.client.call<J>('GetParametersForImport', { KeyId: key, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
    const expire = Math.floor(Date.now() / 1000) + 2;
    await a.client.call('ImportKeyMaterial', { KeyId: key, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrapOaepSha1(p.PublicKey, crypto.randomBytes(32)), KeyMaterialExpireUnix: expire });
    const took = await within(15_000, async () => (await a.client.call<J>('DescribeKey', { KeyId: key })).KeyMetadata.KeyState === 'PendingImport');
    expect(took).toBeGreaterThanOrEqual(0);
    await sleep(1000); // time for a second replica to expire it again, were it to
    const audit = new KmsdClient({ endpoint: b.endpoint });
    const events = await audit.call<J>('ListAuditEvents', { KeyId: key, Action: 'KeyMaterialExpired', PageSize: 10 }).finally(() => audit.close());
    expect(events.Events).toHaveLength(1);
  });
});

describe('failures', () => {
  it('SIGKILL of one replica every few seconds under load, 30 rounds: no acknowledged write lost, every state explained, every token object accounted for, the audit chain valid', async () => {
    const endpoints = () => replicas.map((r) => r.endpoint);
    // What the clients were told: keys created, blobs encrypted, and per key the state transitions
    // acknowledged (and those attempted without an answer, which may or may not have happened).
    const created = new Set<string>();
    const blobs: { key: string; blob: string; plain: string }[] = [];
    const history = new Map<string, { acked: string; since: string[] }>();
    const unexpected: string[] = [];
    let stop = false;

    const client = () => new KmsClient({ endpoint: endpoints(), deadlineMs: 20_000 });
    const expected = (e: unknown) => e instanceof KmsClientError && ['UNAVAILABLE', 'ServiceUnavailable.Store', 'ServiceUnavailable.Hsm', 'DEADLINE_EXCEEDED', 'CANCELLED'].some((c) => e.code.startsWith(c) || String(e.grpcCode) === c);
    const worker = async (w: number) => {
      const c = client();
      const mine: string[] = [];
      try {
        while (!stop) {
          const r = Math.random();
          try {
            if (r < 0.25 || mine.length === 0) {
              const key = (await c.call<J>('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
              created.add(key);
              mine.push(key);
              history.set(key, { acked: 'Enabled', since: [] });
            } else if (r < 0.7) {
              const key = mine[Math.floor(Math.random() * mine.length)];
              const h = history.get(key)!;
              if (h.acked !== 'Enabled' || h.since.length) continue;
              const plain = crypto.randomBytes(8).toString('hex');
              const blob = (await c.call<J>('Encrypt', { KeyId: key, Plaintext: Buffer.from(plain).toString('base64') })).CiphertextBlob;
              blobs.push({ key, blob, plain });
            } else {
              const key = mine[Math.floor(Math.random() * mine.length)];
              const h = history.get(key)!;
              const to = h.acked === 'Enabled' ? 'Disabled' : 'Enabled';
              h.since.push(to);
              await c.call(to === 'Disabled' ? 'DisableKey' : 'EnableKey', { KeyId: key });
              h.acked = to;
              h.since = [];
            }
          } catch (e) {
            if (!expected(e)) unexpected.push(`worker ${w}: ${(e as Error).message}`);
            await sleep(50);
          }
        }
      } finally {
        c.close();
      }
    };
    const workers = [0, 1, 2, 3].map(worker);
    const rounds = 30;
    // A replica restarts while the next one is killed; it is up again before its own next turn.
    const restarting: Promise<Kmsd>[] = [];
    try {
      for (let i = 0; i < rounds; i++) {
        await sleep(500 + Math.random() * 1000);
        const victim = i % replicas.length;
        await restarting[victim];
        await replicas[victim].kill();
        restarting[victim] = startReplica(victim);
      }
      await Promise.all(restarting);
    } finally {
      stop = true;
      await Promise.all(workers);
    }
    expect(unexpected).toEqual([]);
    expect(created.size).toBeGreaterThan(10);

    const c = new KmsClient({ endpoint: endpoints() });
    try {
      // Every acknowledged key is there, in a state its history explains.
      for (const key of created) {
        const h = history.get(key)!;
        const state = (await c.call<J>('DescribeKey', { KeyId: key })).KeyMetadata.KeyState;
        expect([h.acked, ...h.since], `CMK ${key}`).toContain(state);
        if (state === 'Disabled') await c.call('EnableKey', { KeyId: key });
      }
      // Every acknowledged ciphertext decrypts.
      for (const b of blobs) {
        const out = await c.call<J>('Decrypt', { CiphertextBlob: b.blob });
        expect(Buffer.from(out.Plaintext, 'base64').toString()).toBe(b.plain);
      }
    } finally {
      c.close();
    }
    // Every token object accounted for: a replica started now reconciles the whole token.
    await replicas[0].stop();
    const fresh = await startReplica(0);
    const hsm = await fresh.client.call<J>('DescribeHsm', {});
    expect(hsm.UnknownTokenObjects).toEqual([]);
    expect(fresh.logs()).not.toMatch(/"missing":\["/);
    const pool = poolOn(db);
    try {
      const missing = (await pool.query("SELECT version_id FROM key_versions WHERE material_state = 'Missing'")).rows;
      expect(missing).toEqual([]);
      const intents = (await pool.query('SELECT seq, owner FROM token_intents')).rows;
      expect(intents).toEqual([]);
    } finally {
      await pool.end();
    }
    // The audit chain is one valid line, and every replica says so.
    for (const r of replicas) {
      const audit = new KmsdClient({ endpoint: r.endpoint });
      const v = await audit.call<J>('VerifyAudit', {}).finally(() => audit.close());
      expect(v, r.endpoint).toMatchObject({ Valid: true, FirstBadSeq: 0 });
    }
  }, 600_000);

  it('PostgreSQL stopped for 10 s under load: calls fail as retryable ServiceUnavailable.Store, health says NOT_SERVING, no replica exits, and all recover without a restart', async () => {
    const key = (await replicas[0].client.call<J>('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const pids = replicas.map((r) => r.pid);
    const codes = new Map<string, number>();
    let stop = false;
    const load = replicas.map(async (r) => {
      while (!stop) {
        const code = await codeOf(r.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }));
        codes.set(code, (codes.get(code) ?? 0) + 1);
        await sleep(20);
      }
    });
    try {
      await sleep(500);
      await cluster.halt();
      const down = Date.now();
      await sleep(2000);
      for (const r of replicas) expect(await healthOf(r.port)).toBe('NOT_SERVING');
      await sleep(Math.max(0, 10_000 - (Date.now() - down)));
      await cluster.start();
      for (const r of replicas) {
        const took = await within(15_000, async () => (await healthOf(r.port)) === 'SERVING' && (await codeOf(r.client.call('Encrypt', { KeyId: key, Plaintext: 'AA==' }))) === 'ok');
        expect(took, r.endpoint).toBeGreaterThanOrEqual(0);
      }
    } finally {
      stop = true;
      await Promise.all(load);
    }
    expect([...codes.keys()].sort()).toEqual(['ServiceUnavailable.Store', 'ok']);
    expect(replicas.map((r) => r.pid)).toEqual(pids);
    for (const r of replicas) expect(process.kill(r.pid, 0)).toBe(true);
    // A write works again on every replica.
    for (const r of replicas) await r.client.call('DisableKey', { KeyId: key }).then(() => r.client.call('EnableKey', { KeyId: key }));
  }, 120_000);
});

// Last: once a ceremony exists, guarded actions need proposals on every replica.
describe('ceremony across replicas', () => {
  it('InitCeremony on one replica guards DisableKey on every other within 1 s', async () => {
    const [a, b, c] = replicas;
    const key = (await b.client.call<J>('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    // Each replica has the CMK's row cached.
    for (const r of replicas) await r.client.call('DescribeKey', { KeyId: key });
    const dir = makeTempDir('kmsd-replica-custodians-');
    try {
      const keys = custodianKeys(dir, ['alice']);
      const init = a.kmsctl(['InitCeremony', '--Custodians', `alice=${keys.alice.pub}`, '--Threshold', '1']);
      expect(init.code, init.stderr).toBe(0);
      for (const r of [b, c]) {
        const took = await within(1000, async () => {
          const code = await codeOf(r.client.call('DisableKey', { KeyId: key }));
          if (code === 'ok') await r.client.call('EnableKey', { KeyId: key });
          return code === 'Rejected.QuorumRequired';
        });
        expect(took, r.endpoint).toBeGreaterThanOrEqual(0);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
