// Crash safety (issue 6, item 4): kmsd is killed with SIGKILL at random points while a stream of
// CreateKey (HSM and SOFTWARE), CreateKeyVersion, GetParametersForImport + ImportKeyMaterial,
// DeleteKeyMaterial, ScheduleKeyDeletion (whose window ends, so the scheduler destroys CMKs while
// we kill) and Encrypt runs on several lanes; sometimes it is killed during start-up reconciliation.
// After each restart, before any new work, the invariants are checked:
//   - every CMK the API reports has its material where its protection level says (HSM: a
//     kmsd:cmk:<version> token object for each version that has material; SOFTWARE: none), and
//     every Enabled CMK encrypts and decrypts;
//   - no Enabled CMK without material, and no state the acknowledged requests cannot explain;
//   - no kmsd:cmk:* token object that no CMK version claims: an interrupted creation is destroyed by
//     reconciliation through its write-ahead intent, an interrupted destroy finished through its
//     pending-destroy row; and reconciliation never reports an unknown object (one the store cannot
//     explain, which kmsd keeps rather than destroys);
//   - every ciphertext returned before a kill still decrypts, unless a request that was sent
//     (deletion of the CMK or of its material) explains why not;
//   - the audit chain verifies.
// Besides the random kills, a failpoint phase loads kmsd's token through a pass-through PKCS#11
// module (crash-failpoints.c, compiled here) that SIGKILLs kmsd right after a token object is
// created (C_GenerateKey, C_GenerateKeyPair, C_CopyObject) or right before one is destroyed
// (C_DestroyObject): exactly the windows between token and metadata, which random kills hit rarely.
// CRASH_KILLS (default 34 random kills) and CRASH_FAILPOINT_ROUNDS (default 4 per point) set the
// number of kills; CRASH_SEED makes the random choices repeatable.

import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient, KmsClientError } from '../../src/client/client';
import { serviceConstructor } from '../../src/api/proto';
import { KMSD, TEST_TOKEN, listTokenObjects, makeTempDir, opencryptokiTestToken } from '../helpers/daemon';
import { OPENCRYPTOKI_MODULE } from '../helpers/opencryptoki';
import { auditArgsFor, auditToken, describeFindings } from '../helpers/audit-token';

// CRASH_FAILPOINTS_ONLY=1 (the opencryptoki project): kmsd is killed only by a failpoint, with one
// request at a time, so no other PKCS#11 call is in flight when it dies; a missed failpoint ends in
// SIGTERM, not a kill. opencryptoki 3.8 rewrites its token files in place, and a kill during one of
// its writes loses objects or the whole slot (docs/security.md §9): that is not kmsd's to survive.
const FAILPOINTS_ONLY = process.env.CRASH_FAILPOINTS_ONLY === '1';
const KILLS = FAILPOINTS_ONLY ? 0 : Number(process.env.CRASH_KILLS ?? 34);
const FAILPOINT_ROUNDS = Number(process.env.CRASH_FAILPOINT_ROUNDS ?? 4);
const FAILPOINTS = (process.env.CRASH_FAILPOINTS ?? 'C_GenerateKey,C_GenerateKeyPair,C_CopyObject,C_DestroyObject').split(',');
const SEED = Number(process.env.CRASH_SEED ?? Date.now() % 1_000_000);
const LANES = FAILPOINTS_ONLY ? 1 : 5;
const MAX_LIVE_KEYS = 16;

// A small deterministic PRNG (mulberry32) so a failing run can be replayed with CRASH_SEED.
let rngState = SEED >>> 0;
function rnd(): number {
  rngState = (rngState + 0x6d2b79f5) >>> 0;
  let t = rngState;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = <T>(xs: T[]): T | undefined => (xs.length ? xs[Math.floor(rnd() * xs.length)] : undefined);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface ModelKey {
  keyId: string;
  origin: 'Aliyun_KMS' | 'EXTERNAL';
  level: 'HSM' | 'SOFTWARE';
  /** ScheduleKeyDeletion acknowledged, or in flight at a kill. */
  scheduled: boolean;
  /** EXTERNAL: the material (one piece for life), the import parameters, and what was asked of it. */
  material?: Buffer;
  importToken?: string;
  wrapped?: string;
  /** Some DeleteKeyMaterial was sent (acknowledged or in flight) since the last acknowledged import. */
  materialDeleteSent: boolean;
  /** Some ImportKeyMaterial was sent (acknowledged or in flight) since the last acknowledged delete. */
  importSent: boolean;
  /** Last acknowledged material operation. */
  lastMaterialAck?: 'import' | 'delete';
  /** Versions acknowledged by CreateKeyVersion (and the first). */
  versions: Set<string>;
  /**
   * A material operation (import or delete) is in flight from some lane. Two at once on one key
   * could be acknowledged out of the order the daemon ran them in, and the model would then expect
   * the wrong end state, so lanes never overlap material operations on the same key.
   */
  materialBusy?: boolean;
}

interface Ciphertext {
  keyId: string;
  blob: string;
  plaintext: string;
  /** Checked after at least one kill already. */
  checked?: boolean;
}

const model = new Map<string, ModelKey>();
let ciphertexts: Ciphertext[] = [];
const stats = {
  kills: 0,
  killsDuringStartup: 0,
  restarts: 0,
  acked: {} as Record<string, number>,
  inFlightAtKill: {} as Record<string, number>,
  expectedErrors: {} as Record<string, number>,
  orphansDestroyed: 0,
  pendingDestroysFinished: 0,
  wrappingKeysDestroyed: 0,
  versionsMarkedMissing: 0,
  cmksDestroyedByScheduler: 0,
  failpointKills: {} as Record<string, number>,
  failpointMisses: 0,
  checks: 0,
  restartMs: 0,
  checkMs: 0,
  workMs: 0,
  pkcs11ToolMs: 0,
  verifyAuditMs: 0,
  drainMs: 0,
  auditRecords: 0,
  decryptsChecked: 0,
};
const bump = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);

// ------------------------------------------------------------------ the daemon

const dataDir = makeTempDir('kmsd-crash-');
const env = {
  ...process.env,
  KMS_LOG_LEVEL: 'info',
  KMS_WRAPPING_KEY_POOL_SIZE: '0',
  KMS_PENDING_WINDOW_DAY_SECONDS: '1', // PendingWindowInDays 7 = 7 s: deletions come due during the run
  KMS_SCHEDULER_INTERVAL_MS: '100',
  KMS_RATE_LIMIT: '0',
};

interface Proc {
  child: ChildProcess;
  out: string;
  exited: Promise<void>;
}

let allLogs = '';
/** Every kmsd this file started, so afterAll can make sure none outlives the test. */
const spawned = new Set<Proc>();

let failpointModule = '';

/** kmsd on its development token, or (with a failpoint) on the same token through crash-failpoints.so. */
function spawnKmsd(failpoint?: string, dir = dataDir): Proc {
  const softhsm = path.join(dir, 'softhsm');
  let args = failpoint ? ['--pkcs11-module', failpointModule, '--token-label', 'kmsd-dev', '--pin-file', path.join(softhsm, 'user.pin')] : [];
  let procEnv = failpoint ? { ...env, SOFTHSM2_CONF: path.join(softhsm, 'softhsm2.conf'), KMSD_FAILPOINT: failpoint, KMSD_REAL_PKCS11: '/usr/lib/softhsm/libsofthsm2.so' } : env;
  if (TEST_TOKEN === 'opencryptoki') {
    // The machine-wide token: wiped for a data directory kmsd has not started in, kept across restarts.
    const t = opencryptokiTestToken();
    if (!fs.existsSync(path.join(dir, 'kmsd.sqlite'))) t.reset();
    args = failpoint ? ['--pkcs11-module', failpointModule, '--token-label', t.label, '--pin-file', t.pinFile] : t.args;
    procEnv = failpoint ? { ...env, KMSD_FAILPOINT: failpoint, KMSD_REAL_PKCS11: OPENCRYPTOKI_MODULE } : env;
  }
  const child = spawn(process.execPath, [KMSD, '--data-dir', dir, '--listen', '127.0.0.1:0', ...args], { env: procEnv, stdio: ['ignore', 'pipe', 'pipe'] });
  const p: Proc = { child, out: '', exited: new Promise((r) => child.on('exit', () => r())) };
  child.stdout!.on('data', (d) => (p.out += d.toString()));
  child.stderr!.on('data', (d) => (p.out += d.toString()));
  spawned.add(p);
  return p;
}

async function waitListening(p: Proc): Promise<number> {
  for (let i = 0; i < 600; i++) {
    const m = /listening on 127\.0\.0\.1:(\d+)/.exec(p.out);
    // Reconciliation may finish after kmsd listens (the token walk runs then): wait for its outcome.
    if (m && /"msg":"start-up reconciliation done"/.test(p.out)) {
      // Metadata must never point at material the token does not have: in this test the token loses
      // nothing on its own, so a version reconciliation marks Missing is an ordering bug.
      const rec = /\{[^\n]*"msg":"start-up reconciliation done"\}/.exec(p.out);
      if (rec && JSON.parse(rec[0]).missing.length > 0) throw new Error(`reconciliation found metadata without material (seed ${SEED}): ${rec[0]}`);
      // Every object a crash can leave behind is named by an intent or a pending destroy.
      if (rec && JSON.parse(rec[0]).unknown !== 0) throw new Error(`reconciliation found token objects the store cannot explain (seed ${SEED}): ${rec[0]}`);
      return Number(m[1]);
    }
    if (p.child.exitCode !== null) throw new Error(`kmsd exited with ${p.child.exitCode} during start-up:\n${p.out}`);
    await sleep(20);
  }
  throw new Error(`kmsd did not start:\n${p.out}`);
}

async function kill(p: Proc): Promise<void> {
  p.child.kill('SIGKILL');
  await p.exited;
  allLogs += p.out;
  for (const line of p.out.split('\n')) {
    if (line.includes('"msg":"start-up reconciliation done"')) {
      const j = JSON.parse(line);
      stats.orphansDestroyed += j.destroyedOrphans.length;
      stats.pendingDestroysFinished += j.pendingDestroys?.destroyed.length ?? 0;
      stats.versionsMarkedMissing += j.missing.length;
      stats.wrappingKeysDestroyed += j.wrappingKeys?.destroyed ?? 0;
    }
    if (line.includes('CMK deleted at the end of its deletion window')) stats.cmksDestroyedByScheduler++;
  }
}

afterAll(async () => {
  for (const p of spawned) {
    if (p.child.exitCode === null && p.child.signalCode === null) {
      p.child.kill('SIGKILL');
      await p.exited;
    }
  }
  fs.rmSync(dataDir, { recursive: true, force: true });
});

// ------------------------------------------------------------------ the workload

/** Errors that the state of the moment explains (another lane raced us), never a crash symptom. */
const EXPECTED = new Set([
  'Rejected.PendingDeletion',
  'Rejected.PendingImport',
  'Forbidden.KeyNotFound',
  'Rejected.ImportTokenExpired', // the wrapping key of a token whose GetParametersForImport was not committed
  'Rejected.ExternalKey',
]);

function liveKeys(): ModelKey[] {
  return [...model.values()].filter((k) => !k.scheduled);
}

/** In the failpoint phase: HSM work that reaches the token-object windows quickly. */
function hsmHeavyAction(live: ModelKey[]): string {
  const r = rnd();
  if (live.length > MAX_LIVE_KEYS && r < 0.2) return 'ScheduleKeyDeletion';
  if (r < 0.2) return 'CreateKey:HSM';
  if (r < 0.3) return 'CreateKey:EXTERNAL';
  if (r < 0.45) return 'CreateKeyVersion';
  if (r < 0.7) return 'Import';
  if (r < 0.88) return 'DeleteKeyMaterial';
  return 'Encrypt';
}

async function lane(client: KmsClient, stop: { stopped: boolean }, inFlight: Map<number, { action: string; key?: ModelKey }>, id: number, hsmHeavy = false): Promise<void> {
  while (!stop.stopped) {
    const live = liveKeys();
    const r = rnd();
    let action: string;
    let key: ModelKey | undefined;
    if (hsmHeavy) action = hsmHeavyAction(live);
    else if (live.length > MAX_LIVE_KEYS && r < 0.2) action = 'ScheduleKeyDeletion';
    else if (r < 0.14 || live.length < 3) action = 'CreateKey:SOFTWARE';
    else if (r < 0.28) action = 'CreateKey:HSM';
    else if (r < 0.34) action = 'CreateKey:EXTERNAL';
    else if (r < 0.5) action = 'Encrypt';
    else if (r < 0.6) action = 'CreateKeyVersion';
    else if (r < 0.75) action = 'Import';
    else if (r < 0.82) action = 'DeleteKeyMaterial';
    else if (r < 0.86) action = 'ScheduleKeyDeletion';
    else action = 'Encrypt';

    const started = { action, key: undefined as ModelKey | undefined, idle: false };
    inFlight.set(id, started);
    try {
      switch (action) {
        case 'CreateKey:SOFTWARE':
        case 'CreateKey:HSM':
        case 'CreateKey:EXTERNAL': {
          const external = action.endsWith('EXTERNAL');
          const level = external ? (hsmHeavy || rnd() < 0.5 ? 'HSM' : 'SOFTWARE') : (action.split(':')[1] as 'HSM' | 'SOFTWARE');
          const res = await client.createKey({ ProtectionLevel: level, Origin: external ? 'EXTERNAL' : 'Aliyun_KMS' });
          const m = res.KeyMetadata;
          model.set(m.KeyId, {
            keyId: m.KeyId,
            origin: m.Origin,
            level: m.ProtectionLevel,
            scheduled: false,
            material: external ? crypto.randomBytes(32) : undefined,
            materialDeleteSent: false,
            importSent: false,
            versions: new Set([m.PrimaryKeyVersion]),
          });
          break;
        }
        case 'Encrypt': {
          key = pick(live.filter((k) => k.origin === 'Aliyun_KMS' || k.lastMaterialAck === 'import'));
          if (!key) {
            started.idle = true;
            await sleep(2);
            break;
          }
          started.key = key;
          const plaintext = crypto.randomBytes(12).toString('hex');
          const res = await client.encrypt(key.keyId, Buffer.from(plaintext));
          const mine = ciphertexts.filter((c) => c.keyId === key!.keyId);
          if (mine.length >= 3) ciphertexts.splice(ciphertexts.indexOf(pick(mine)!), 1);
          ciphertexts.push({ keyId: key.keyId, blob: res.CiphertextBlob, plaintext });
          break;
        }
        case 'CreateKeyVersion': {
          key = pick(live.filter((k) => k.origin === 'Aliyun_KMS'));
          if (!key) {
            started.idle = true;
            await sleep(2);
            break;
          }
          started.key = key;
          const res = await client.call('CreateKeyVersion', { KeyId: key.keyId });
          key.versions.add(res.KeyVersion.KeyVersionId);
          break;
        }
        case 'Import': {
          key = pick(live.filter((k) => k.origin === 'EXTERNAL' && k.material && k.lastMaterialAck !== 'import' && !k.materialBusy));
          if (!key) {
            started.idle = true;
            await sleep(2);
            break;
          }
          started.key = key;
          if (!key.importToken) {
            started.action = 'GetParametersForImport';
            const p = await client.call('GetParametersForImport', { KeyId: key.keyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
            const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
            key.wrapped = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, key.material!).toString('base64');
            key.importToken = p.ImportToken;
          } else {
            started.action = 'ImportKeyMaterial';
            key.importSent = true;
            key.materialBusy = true;
            try {
              await client.call('ImportKeyMaterial', { KeyId: key.keyId, EncryptedKeyMaterial: key.wrapped, ImportToken: key.importToken, KeyMaterialExpireUnix: 0 });
            } finally {
              key.materialBusy = false;
            }
            key.lastMaterialAck = 'import';
            key.materialDeleteSent = false;
          }
          break;
        }
        case 'DeleteKeyMaterial': {
          key = pick(live.filter((k) => k.origin === 'EXTERNAL' && k.lastMaterialAck === 'import' && !k.materialBusy));
          if (!key) {
            started.idle = true;
            await sleep(2);
            break;
          }
          started.key = key;
          key.materialDeleteSent = true;
          key.materialBusy = true;
          try {
            await client.call('DeleteKeyMaterial', { KeyId: key.keyId });
          } finally {
            key.materialBusy = false;
          }
          key.lastMaterialAck = 'delete';
          key.importSent = false;
          break;
        }
        case 'ScheduleKeyDeletion': {
          key = pick(live);
          if (!key) {
            started.idle = true;
            await sleep(2);
            break;
          }
          started.key = key;
          key.scheduled = true; // sent: from now on its CMK may disappear
          await client.call('ScheduleKeyDeletion', { KeyId: key.keyId, PendingWindowInDays: 7 });
          break;
        }
      }
      if (!started.idle) bump(stats.acked, started.action);
    } catch (e) {
      const err = e as KmsClientError;
      if (err.grpcCode === grpc.status.UNAVAILABLE || err.grpcCode === grpc.status.CANCELLED || stop.stopped) return; // the kill
      if (err.code === 'Rejected.ImportTokenExpired' && started.key) started.key.importToken = undefined;
      if (!EXPECTED.has(err.code)) throw new Error(`${started.action} on ${started.key?.keyId ?? '-'} failed unexpectedly: ${err.code} ${err.message}`);
      bump(stats.expectedErrors, err.code);
    } finally {
      if (!stop.stopped) inFlight.delete(id);
    }
  }
}

// ------------------------------------------------------------------ invariants

function rawCall(endpoint: string, service: 'AuditService', method: string, req: object): Promise<any> {
  const Ctor = serviceConstructor(service);
  const stub = new Ctor(endpoint, grpc.credentials.createInsecure()) as grpc.Client & Record<string, any>;
  return new Promise((resolve, reject) =>
    stub[method](req, (err: Error | null, res: any) => {
      stub.close();
      return err ? reject(err) : resolve(res);
    }),
  );
}

async function checkInvariants(client: KmsClient, endpoint: string, final = false): Promise<void> {
  stats.checks++;
  // Everything the API reports.
  // The scheduler keeps running: a CMK whose deletion window ends during the check disappears.
  const gone = (e: unknown) => (e as KmsClientError).code === 'Forbidden.KeyNotFound';
  const reported = new Map<string, any>();
  const versionsOf = new Map<string, string[]>();
  for (let page = 1; ; page++) {
    const r = await client.call('ListKeys', { PageNumber: page, PageSize: 100 });
    for (const k of r.Keys) {
      try {
        const meta = (await client.describeKey(k.KeyId)).KeyMetadata;
        const vs = await client.call('ListKeyVersions', { KeyId: k.KeyId, PageSize: 100 });
        reported.set(k.KeyId, meta);
        versionsOf.set(k.KeyId, vs.KeyVersions.map((v: any) => v.KeyVersionId));
      } catch (e) {
        if (!gone(e)) throw e;
      }
    }
    if (page * 100 >= r.TotalCount) break;
  }
  const t0 = Date.now();
  const tokenCmks = new Set(listTokenObjects({ tokenEnv: () => tokenEnv() } as any).filter((o) => o.label.startsWith('kmsd:cmk:') && o.type.startsWith('Secret Key')).map((o) => o.label.slice('kmsd:cmk:'.length)));

  stats.pkcs11ToolMs += Date.now() - t0;
  const problems: string[] = [];
  const claimed = new Set<string>();
  for (const [keyId, meta] of reported) {
    let m = model.get(keyId);
    if (!m) {
      // A CreateKey that was in flight at a kill and committed: adopt it (its material is unknown to us).
      m = { keyId, origin: meta.Origin, level: meta.ProtectionLevel, scheduled: false, materialDeleteSent: false, importSent: false, versions: new Set(versionsOf.get(keyId)) };
      model.set(keyId, m);
    }
    const versions = versionsOf.get(keyId)!;
    for (const v of m.versions) if (!versions.includes(v)) problems.push(`CMK ${keyId}: acknowledged version ${v} is gone`);
    const state = meta.KeyState as string;
    if (state === 'Disabled') problems.push(`CMK ${keyId}: Disabled, but nobody disabled it`);
    if (state === 'PendingDeletion' && !m.scheduled) problems.push(`CMK ${keyId}: PendingDeletion without a ScheduleKeyDeletion`);
    if (m.origin === 'Aliyun_KMS' && state === 'PendingImport') problems.push(`CMK ${keyId}: an Aliyun_KMS CMK in PendingImport`);
    if (m.origin === 'EXTERNAL') {
      if (state === 'PendingImport' && m.lastMaterialAck === 'import' && !m.materialDeleteSent) problems.push(`CMK ${keyId}: imported material (acknowledged) is gone`);
      if (state === 'Enabled' && m.lastMaterialAck !== 'import' && !m.importSent) problems.push(`CMK ${keyId}: Enabled, but no import was ever sent since its material was deleted`);
    }
    // Material where the protection level says.
    const hasMaterial = m.origin === 'Aliyun_KMS' || state === 'Enabled' || state === 'Disabled';
    for (const v of versions) {
      claimed.add(v);
      const inToken = tokenCmks.has(v);
      if (meta.ProtectionLevel === 'SOFTWARE' && inToken) problems.push(`CMK ${keyId} (SOFTWARE): version ${v} has a token object`);
      if (meta.ProtectionLevel === 'HSM' && hasMaterial && !inToken) {
        // The scheduler may have destroyed the CMK after we listed it: then it is gone from the API too.
        const stillThere = await client.describeKey(keyId).then(() => true, (e) => (gone(e) ? false : Promise.reject(e)));
        if (stillThere) problems.push(`CMK ${keyId} (HSM, ${state}): version ${v} has no token object`);
      }
      if (meta.ProtectionLevel === 'HSM' && state === 'PendingImport' && inToken) problems.push(`CMK ${keyId} (HSM, PendingImport): version ${v} still has a token object after reconciliation`);
    }
    // No Enabled CMK without usable material.
    if (state === 'Enabled') {
      try {
        if (m.scheduled) continue; // may be PendingDeletion by now
        const e = await client.encrypt(keyId, Buffer.from('probe'));
        const d = await client.decrypt(e.CiphertextBlob);
        if (d.Plaintext.toString() !== 'probe') problems.push(`CMK ${keyId}: round trip returned other bytes`);
      } catch (e) {
        problems.push(`CMK ${keyId}: Enabled but Encrypt/Decrypt fails: ${(e as KmsClientError).code} ${(e as Error).message}`);
      }
    }
  }
  for (const id of tokenCmks) if (!claimed.has(id)) problems.push(`orphan token object kmsd:cmk:${id}`);
  for (const [keyId, m] of model) {
    if (!reported.has(keyId)) {
      if (!m.scheduled) problems.push(`CMK ${keyId} vanished without a ScheduleKeyDeletion`);
      model.delete(keyId);
    }
  }
  // Ciphertexts returned before a kill: all the new ones, and a sample of those checked before.
  const older = ciphertexts.filter((c) => c.checked);
  const sample = new Set(Array.from({ length: 12 }, () => pick(older)).filter(Boolean));
  for (const c of ciphertexts) {
    if (c.checked && !sample.has(c)) continue;
    c.checked = true;
    const meta = reported.get(c.keyId);
    const m = model.get(c.keyId);
    if (!meta) continue; // its CMK was deleted (checked above: only after a ScheduleKeyDeletion)
    if (meta.KeyState === 'PendingDeletion' || meta.KeyState === 'PendingImport') continue; // explained above
    stats.decryptsChecked++;
    try {
      const d = await client.decrypt(c.blob);
      if (d.Plaintext.toString() !== c.plaintext) problems.push(`ciphertext under ${c.keyId} decrypts to other bytes`);
    } catch (e) {
      if (m?.scheduled) continue;
      problems.push(`ciphertext under ${c.keyId} (${meta.KeyState}, ${m?.origin}) no longer decrypts: ${(e as KmsClientError).code} ${(e as Error).message}`);
    }
  }
  ciphertexts = ciphertexts.filter((c) => reported.has(c.keyId));
  // The audit chain (append-only, so checking it every few restarts and at the end covers every record).
  if (final || stats.checks % 4 === 1) {
    const t1 = Date.now();
    const v = await rawCall(endpoint, 'AuditService', 'VerifyAudit', {});
    stats.verifyAuditMs += Date.now() - t1;
    stats.auditRecords = v.RecordsChecked;
    if (!v.Valid) problems.push(`audit chain does not verify: first bad record ${v.FirstBadSeq}: ${v.Problem}`);
  }
  if (problems.length) throw new Error(`invariants broken after kill ${stats.kills} (seed ${SEED}):\n  ${problems.join('\n  ')}`);
}

function tokenEnv(dir = dataDir) {
  if (TEST_TOKEN === 'opencryptoki') return opencryptokiTestToken().tokenEnv();
  const softhsm = path.join(dir, 'softhsm');
  return { SOFTHSM2_CONF: path.join(softhsm, 'softhsm2.conf'), pin: fs.readFileSync(path.join(softhsm, 'user.pin'), 'utf8').trim(), module: '/usr/lib/softhsm/libsofthsm2.so' };
}

// ------------------------------------------------------------------ the run

describe('SIGKILL at random points', () => {
  let buildDir = '';
  beforeAll(() => {
    // The failpoint module, built from source with the system compiler (as the native addon is).
    buildDir = makeTempDir('kmsd-failpoints-');
    failpointModule = path.join(buildDir, 'failpoints.so');
    const cc = spawnSync('cc', ['-shared', '-fPIC', '-O1', '-I/usr/include/p11-kit-1', '-o', failpointModule, path.join(__dirname, 'crash-failpoints.c'), '-ldl'], { encoding: 'utf8' });
    expect(cc.status, `building crash-failpoints.so needs cc and p11-kit's pkcs11.h (apt-get install build-essential libp11-kit-dev): ${cc.stderr}`).toBe(0);
  });
  afterAll(() => fs.rmSync(buildDir, { recursive: true, force: true }));

  it(`keeps every invariant across ${KILLS} random kills and ${FAILPOINTS.length * FAILPOINT_ROUNDS} failpoint kills`, async () => {
    const started = Date.now();
    // Random kills first, then each failpoint FAILPOINT_ROUNDS times (interleaved).
    const plan: (string | null)[] = [...Array.from({ length: KILLS }, () => null), ...Array.from({ length: FAILPOINT_ROUNDS }, () => FAILPOINTS).flat()];
    for (let round = 0; round < plan.length; round++) {
      const point = plan[round];
      // The Nth matching call: destroying a CMK with several versions makes several C_DestroyObject calls.
      const failpoint = point ? `${point}:${1 + Math.floor(rnd() * (point === 'C_DestroyObject' ? 3 : 2))}` : undefined;
      const p = spawnKmsd(failpoint);
      if (!point && stats.kills > 0 && rnd() < 0.15) {
        // Kill during start-up (token login, reconciliation, audit set-up) now and then.
        await sleep(100 + rnd() * 400);
        if (!/listening on/.test(p.out)) stats.killsDuringStartup++;
        await kill(p);
        stats.kills++;
        continue;
      }
      let t = Date.now();
      let port: number;
      try {
        port = await waitListening(p);
      } catch (e) {
        // A failpoint may fire during start-up reconciliation (destroying an orphan): that is a kill too.
        if (point && /crash-failpoints: SIGKILL at/.test(p.out)) {
          await kill(p);
          bump(stats.failpointKills, `${point} (start-up)`);
          stats.kills++;
          continue;
        }
        throw e;
      }
      stats.restartMs += Date.now() - t;
      stats.restarts++;
      const endpoint = `127.0.0.1:${port}`;
      const client = new KmsClient({ endpoint, deadlineMs: 20_000 });
      t = Date.now();
      try {
        await checkInvariants(client, endpoint);
      } catch (e) {
        // The scheduler may reach a failpoint (destroying a CMK whose window ended) during the check.
        await sleep(100);
        if (!(point && /crash-failpoints: SIGKILL at/.test(p.out))) throw e;
        client.close();
        await kill(p);
        bump(stats.failpointKills, `${point} (scheduler)`);
        stats.kills++;
        continue;
      }
      stats.checkMs += Date.now() - t;
      t = Date.now();
      const stop = { stopped: false };
      const inFlight = new Map<number, { action: string; key?: ModelKey }>();
      const lanes = Array.from({ length: LANES }, (_, i) => lane(client, stop, inFlight, i, Boolean(point)));
      let laneError: unknown;
      const laneDone = Promise.all(lanes).catch((e) => (laneError = e));
      // Random: kill after a random time. Failpoint: wait for kmsd to kill itself (or give up after 5 s).
      await Promise.race([point ? Promise.race([p.exited, sleep(5000)]) : sleep(60 + rnd() * 500), laneDone]);
      stop.stopped = true;
      const fired = Boolean(point) && /crash-failpoints: SIGKILL at/.test(p.out);
      if (FAILPOINTS_ONLY && !fired) {
        // Not killed at a point of our choosing: stop it cleanly instead of killing it mid-call.
        await laneDone;
        p.child.kill('SIGTERM');
        await p.exited;
        allLogs += p.out;
      } else await kill(p);
      if (point) {
        if (fired) bump(stats.failpointKills, point);
        else stats.failpointMisses++;
      }
      stats.workMs += Date.now() - t;
      if (!(FAILPOINTS_ONLY && !fired)) stats.kills++;
      for (const f of inFlight.values()) bump(stats.inFlightAtKill, f.action);
      const t2 = Date.now();
      await laneDone;
      stats.drainMs += Date.now() - t2;
      client.close();
      if (laneError) {
        const internal = p.out.split('\n').filter((l) => l.includes('internal error')).join('\n');
        throw new Error(`${(laneError as Error).message} (seed ${SEED}, round ${round})\n${internal}`);
      }
    }
    // One last start: reconciliation after the last kill, the full check, and a clean stop.
    const p = spawnKmsd();
    const port = await waitListening(p);
    const client = new KmsClient({ endpoint: `127.0.0.1:${port}`, deadlineMs: 20_000 });
    await checkInvariants(client, `127.0.0.1:${port}`, true);
    client.close();
    p.child.kill('SIGTERM');
    await p.exited;
    allLogs += p.out;
    expect(p.child.exitCode).toBe(0);
    expect(allLogs).not.toMatch(/"msg":"internal error"/);
    // The independent auditor agrees: every object has its role's attributes, and store and token explain each other.
    const audit = auditToken(auditArgsFor(dataDir));
    expect(audit.code, `audit-token after the crash rounds (seed ${SEED}): ${describeFindings(audit)}`).toBe(0);
    expect(audit.report.summary.byRole.cmk).toBeGreaterThan(0);
    console.log(`crash harness: seed ${SEED}, ${((Date.now() - started) / 1000).toFixed(1)} s`, JSON.stringify(stats));
    expect(stats.kills).toBeGreaterThanOrEqual(KILLS + FAILPOINTS.length * FAILPOINT_ROUNDS);
    // Every failpoint fired at least once (or the harness is not testing what it says).
    for (const fp of FAILPOINTS) expect(Object.keys(stats.failpointKills).some((k) => k.startsWith(fp)), `failpoint ${fp} never fired`).toBe(true);
  }, 600_000);

  // Left to the full runs: it kills an idle kmsd once, and the failpoints-only set stays within its minute.
  it.skipIf(FAILPOINTS_ONLY)('a crash inside the end of a deletion window leaves pending destroys, never metadata without material', async () => {
    // A CMK with three HSM versions is scheduled for deletion; kmsd then runs through the failpoint
    // module and is killed before the 2nd C_DestroyObject of the scheduler's destroyCmk. Destroying
    // material before deleting metadata (the old order) left a PendingDeletion CMK with a version
    // whose token object was gone; now the metadata goes first, with a pending destroy per version in
    // the same transaction, and the next start finishes the two destroys the kill interrupted.
    const dir = makeTempDir('kmsd-crash-window-');
    try {
      let p = spawnKmsd(undefined, dir);
      let port = await waitListening(p);
      let client = new KmsClient({ endpoint: `127.0.0.1:${port}`, deadlineMs: 20_000 });
      const keyId = (await client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
      await client.call('CreateKeyVersion', { KeyId: keyId });
      await client.call('CreateKeyVersion', { KeyId: keyId });
      const versions: string[] = (await client.call('ListKeyVersions', { KeyId: keyId })).KeyVersions.map((v: any) => v.KeyVersionId);
      expect(versions).toHaveLength(3);
      const control = (await client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
      await client.call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 7 }); // 7 s here
      client.close();
      await kill(p);
      p = spawnKmsd('C_DestroyObject:2', dir);
      await waitListening(p);
      await Promise.race([p.exited, sleep(15_000)]);
      await kill(p);
      expect(p.out).toMatch(/crash-failpoints: SIGKILL at C_DestroyObject/);
      p = spawnKmsd(undefined, dir);
      port = await waitListening(p); // throws if reconciliation finds metadata without material
      const rec = JSON.parse(/\{[^\n]*"msg":"start-up reconciliation done"\}/.exec(p.out)![0]);
      expect(rec.pendingDestroys.destroyed.length).toBe(2);
      expect(rec.destroyedOrphans.length).toBe(0);
      expect(rec.unknown).toBe(0);
      client = new KmsClient({ endpoint: `127.0.0.1:${port}`, deadlineMs: 20_000 });
      await expect(client.describeKey(keyId)).rejects.toMatchObject({ code: 'Forbidden.KeyNotFound' });
      const left = listTokenObjects({ tokenEnv: () => tokenEnv(dir) } as any).map((o) => o.label);
      for (const v of versions) expect(left).not.toContain(`kmsd:cmk:${v}`);
      const e = await client.encrypt(control, Buffer.from('control'));
      expect((await client.decrypt(e.CiphertextBlob)).Plaintext.toString()).toBe('control');
      client.close();
      p.child.kill('SIGTERM');
      await p.exited;
      expect(p.child.exitCode).toBe(0);
      const audit = auditToken(auditArgsFor(dir));
      expect(audit.code, `audit-token after the interrupted deletion: ${describeFindings(audit)}`).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 120_000);
});
