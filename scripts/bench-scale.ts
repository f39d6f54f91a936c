// `npm run bench -- --scale N`: kmsd with N HSM keys. Creates the keys through kmsd (CreateKey,
// 8 calls in flight) into a data directory kept under bench/ (not in git), so a second run at the
// same N does not pay for them again; then reports
//   - the CreateKey (HSM) rate, against the token's own key-generation rate at the same object count
//     (one session, pkcs11js, C_GenerateKey of token AES keys, as the issue measured it) on a copy of
//     the token made for the windows, in interleaved windows of the same run so a busy machine weighs
//     on both;
//   - after a restart: time from spawn to listening, to start-up reconciliation done (the token walk
//     runs after kmsd listens), cold Encrypt (each key's first use since the restart, after the walk)
//     and warm Encrypt p50/p99, kmsd's RSS, and the token's object count.
//
// Options: --scale N, --scale-dir DIR (default bench/scale-N), --out FILE (default
// bench/results/scale-N.json), --sample K (keys per rate window; default from N), --cpu-prof DIR
// (each kmsd writes its V8 CPU profile there on exit).

import { ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as pkcs11js from 'pkcs11js';
import { loadApi } from '../src/api/proto';
import { useSoftHsmConf } from '../src/config';
import { devTokenPaths, ensureDevToken } from '../src/hsm/dev-token';
import { findObjects } from '../src/hsm/objects';
import { cmkKeyTemplate } from '../src/hsm/templates';
import { SqliteDb } from '../src/store/store';

/* eslint-disable @typescript-eslint/no-explicit-any */
type Json = Record<string, any>;

const ROOT = path.resolve(__dirname, '..', ...(__dirname.includes(`${path.sep}dist${path.sep}`) ? ['..'] : []));
const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();
const r2 = (x: number) => Math.round(x * 100) / 100;
const CONCURRENCY = 8;
const ROUNDS = 3;

function percentile(xs: number[], p: number): number {
  const s = Float64Array.from(xs).sort();
  if (s.length === 0) return 0;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

const KMS = loadApi().definition['kms.v1.KeyManagementService'] as unknown as Record<string, grpc.MethodDefinition<Json, Json>>;

function call(client: grpc.Client, action: string, req: Json = {}): Promise<Json> {
  const m = KMS[action];
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(m.path, m.requestSerialize, m.responseDeserialize, req, (err, res) => (err ? reject(new Error(`${action}: ${err.details || err.message}`)) : resolve(res as Json))),
  );
}

interface Kmsd {
  child: ChildProcess;
  client: grpc.Client;
  /** ms from spawn to the "listening" log line. */
  listenMs: number;
}

let running: ChildProcess | null = null;

async function startKmsd(dataDir: string, logFile: string): Promise<Kmsd> {
  const fd = fs.openSync(logFile, 'a');
  const t0 = now();
  const prof = arg('--cpu-prof');
  const child = spawn(process.execPath, [...(prof ? ['--cpu-prof', '--cpu-prof-dir', path.resolve(prof)] : []), path.join(ROOT, 'bin', 'kmsd.js'), '--data-dir', dataDir, '--listen', '127.0.0.1:0'], {
    env: { ...process.env, KMS_WRAPPING_KEY_POOL_SIZE: '0' },
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  running = child;
  const start = fs.statSync(logFile).size;
  for (;;) {
    const text = fs.readFileSync(logFile, 'utf8').slice(start);
    const m = /listening on 127\.0\.0\.1:(\d+)/.exec(text);
    if (m) {
      const listenMs = now() - t0;
      const client = new grpc.Client(`127.0.0.1:${m[1]}`, grpc.credentials.createInsecure());
      return { child, client, listenMs };
    }
    if (child.exitCode !== null) throw new Error(`kmsd did not start:\n${text.slice(-3000)}`);
    await sleep(5);
  }
}

async function stopKmsd(k: Kmsd): Promise<void> {
  k.client.close();
  if (k.child.exitCode !== null || !k.child.pid) return;
  const exited = new Promise((r) => k.child.once('exit', r));
  process.kill(k.child.pid, 'SIGTERM');
  await exited;
  running = null;
}

function hsmKeyIds(dataDir: string): string[] {
  const store = new SqliteDb(dataDir, { readOnly: true });
  try {
    return store
      .allCmks()
      .filter((c) => c.protection_level === 'HSM' && c.key_state === 'Enabled')
      .map((c) => c.key_id);
  } finally {
    store.close();
  }
}

/** Creates `n` HSM keys with CONCURRENCY calls in flight; returns keys/s. */
async function createKeys(client: grpc.Client, n: number, progress?: (done: number) => void): Promise<number> {
  let next = 0;
  let done = 0;
  const t0 = now();
  await Promise.all(
    Array.from({ length: CONCURRENCY }, async () => {
      while (next < n) {
        next++;
        await call(client, 'CreateKey', { ProtectionLevel: 'HSM' });
        done++;
        if (progress && done % 500 === 0) progress(done);
      }
    }),
  );
  return (n * 1000) / (now() - t0);
}

/**
 * The token's own rate: C_GenerateKey of `n` token AES-256 keys in one session, with kmsd's
 * template, on the copy of kmsd's token (tokenCopy), which grows by as many keys as kmsd's windows
 * add to the original. Not on kmsd's token itself: SoftHSM, in a process whose view of the token
 * another process changed, lists and stats every object file again on its next write (5 s at
 * 100,000 objects), so each side's window would open by paying for the other's writes, a cost that
 * only exists because a benchmark writes beside kmsd.
 */
function tokenOwnRate(p11: pkcs11js.PKCS11, s: Buffer, n: number): number {
  const t0 = now();
  for (let i = 0; i < n; i++) {
    const id = crypto.randomUUID();
    p11.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN, parameter: null as unknown as Buffer }, [
      ...cmkKeyTemplate(`bench:own-rate:${id}`, id, true),
      { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    ]);
  }
  return (n * 1000) / (now() - t0);
}

async function encryptLatencies(client: grpc.Client, keyIds: string[]): Promise<number[]> {
  const out: number[] = [];
  const plaintext = crypto.randomBytes(256);
  for (const KeyId of keyIds) {
    const t0 = now();
    await call(client, 'Encrypt', { KeyId, Plaintext: plaintext.toString('base64') });
    out.push(now() - t0);
  }
  return out;
}

/**
 * A copy of the development token of `dataDir` under `dir` (the same objects, PINs and label) with
 * a SoftHSM configuration of its own; removed by the caller when the windows are done.
 */
function tokenCopy(dataDir: string, dir: string): { conf: string; remove: () => void } {
  const from = devTokenPaths(dataDir);
  const root = path.join(dir, 'own-rate-token');
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(root, { mode: 0o700 });
  const tokens = path.join(root, 'tokens');
  fs.cpSync(from.tokens, tokens, { recursive: true, preserveTimestamps: true });
  const conf = path.join(root, 'softhsm2.conf');
  fs.writeFileSync(conf, fs.readFileSync(from.conf, 'utf8').replace(/^directories\.tokendir\s*=.*$/m, `directories.tokendir = ${tokens}`), { mode: 0o600 });
  return { conf, remove: () => fs.rmSync(root, { recursive: true, force: true }) };
}

/** Opens a logged-in read-write session on the token labelled `label` of an initialised module. */
function openSession(p11: pkcs11js.PKCS11, label: string, pin: string): Buffer {
  const slot = p11.C_GetSlotList(true).find((x) => p11.C_GetTokenInfo(x).label.trim() === label);
  if (!slot) throw new Error(`token ${label} not found`);
  const s = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p11.C_Login(s, pkcs11js.CKU_USER, pin);
  return s;
}

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Math.round(Number(m[1]) / 1024) : 0;
}

function shuffle<T>(xs: T[]): T[] {
  for (let i = xs.length - 1; i > 0; i--) {
    const j = crypto.randomInt(i + 1);
    [xs[i], xs[j]] = [xs[j], xs[i]];
  }
  return xs;
}

export async function runScale(n: number): Promise<Json> {
  if (!Number.isInteger(n) || n < 1 || n > 1_000_000) throw new Error(`--scale: give a whole number of keys from 1 to 1000000, not "${n}"`);
  const dir = path.resolve(arg('--scale-dir') ?? path.join(ROOT, 'bench', `scale-${n}`));
  const out = path.resolve(arg('--out') ?? path.join(ROOT, 'bench', 'results', `scale-${n}.json`));
  const sample = Number(arg('--sample') ?? Math.max(5, Math.min(100, Math.floor(n / 20))));
  const dataDir = path.join(dir, 'data');
  const logFile = path.join(dir, 'kmsd.log');
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const log = (msg: string) => process.stderr.write(`[scale ${n}] ${new Date().toISOString()} ${msg}\n`);
  const loadBefore = os.loadavg().map(r2);
  const started = Date.now();

  // 1. Fill up to N - (the keys the rate windows create), through kmsd.
  let k = await startKmsd(dataDir, logFile);
  // The rates are of a kmsd in its steady state: on a full token the start-up walk runs for tens of
  // seconds after kmsd listens, and windows measured meanwhile would weigh the walk, not CreateKey.
  while ((await call(k.client, 'DescribeHsm')).ReconciliationRunning) await sleep(100);
  let have = hsmKeyIds(dataDir).length;
  const fill = Math.max(0, n - ROUNDS * sample - have);
  log(`${have} HSM keys already; creating ${fill}`);
  const fillRate = fill > 0 ? await createKeys(k.client, fill, (d) => log(`created ${have + d}`)) : null;
  have += fill;

  // 2. CreateKey rate against the token's own rate, interleaved windows at the same object count:
  // the token's on a copy of kmsd's token (tokenCopy), opened by this process.
  const tok = ensureDevToken(dataDir);
  const realConf = devTokenPaths(dataDir).conf;
  const copy = tokenCopy(dataDir, dir);
  const p11 = new pkcs11js.PKCS11();
  p11.load(tok.modulePath);
  let initialized = false;
  const own: number[] = [];
  const kmsdRates: number[] = [];
  let tokenObjects = 0;
  try {
    useSoftHsmConf(copy.conf); // SoftHSM reads it at C_Initialize
    p11.C_Initialize();
    initialized = true;
    const s = openSession(p11, tok.tokenLabel, tok.pin);
    for (let r = 0; r < ROUNDS; r++) {
      if (r % 2 === 0) {
        own.push(tokenOwnRate(p11, s, sample));
        kmsdRates.push(await createKeys(k.client, sample));
      } else {
        kmsdRates.push(await createKeys(k.client, sample));
        own.push(tokenOwnRate(p11, s, sample));
      }
    }
    have += ROUNDS * sample;
    p11.C_Finalize();
    initialized = false;
    copy.remove();
    log(`rates: kmsd ${kmsdRates.map(r2).join(', ')} keys/s; token ${own.map(r2).join(', ')} keys/s`);

    // 3. Restart: listening, reconciliation done, cold and warm Encrypt, RSS.
    await stopKmsd(k);
    k = await startKmsd(dataDir, logFile);
    const t0 = now() - k.listenMs;
    let described: Json;
    // kmsd listens before it opens the token; DescribeHsm answers meanwhile with TokenState Opening.
    let readyMs = 0;
    for (;;) {
      described = await call(k.client, 'DescribeHsm');
      if (!readyMs && described.TokenState === 'Ready') readyMs = now() - t0;
      if (!described.ReconciliationRunning) break;
      await sleep(20);
    }
    const reconciledMs = now() - t0;
    log(`listening after ${r2(k.listenMs)} ms, token ready after ${r2(readyMs)} ms, reconciliation done after ${r2(reconciledMs)} ms`);
    const keys = shuffle(hsmKeyIds(dataDir)).slice(0, Math.min(1000, have));
    const cold = await encryptLatencies(k.client, keys);
    const warm = await encryptLatencies(k.client, keys);
    const rss = rssMiB(k.child.pid as number);
    await stopKmsd(k);
    useSoftHsmConf(realConf);
    p11.C_Initialize();
    initialized = true;
    const real = openSession(p11, tok.tokenLabel, tok.pin);
    tokenObjects = findObjects(p11, real, [{ type: pkcs11js.CKA_TOKEN, value: true }]).length;
    p11.C_CloseSession(real);
    const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
    // Rates over all windows: total keys / total time.
    const rate = (rs: number[]) => (rs.length * sample) / sum(rs.map((x) => sample / x));
    const result = {
      when: new Date().toISOString(),
      machine: { cpus: os.cpus().length, loadBefore, loadAfter: os.loadavg().map(r2) },
      keys: n,
      hsmKeys: have,
      tokenObjects,
      fill: { created: fill, keysPerSec: fillRate === null ? null : r2(fillRate) },
      createKey: { concurrency: CONCURRENCY, windows: ROUNDS, keysPerWindow: sample, keysPerSec: r2(rate(kmsdRates)), tokenOwnKeysPerSec: r2(rate(own)), ratio: r2(rate(kmsdRates) / rate(own)) },
      restart: {
        listenMs: r2(k.listenMs),
        tokenReadyMs: r2(readyMs),
        reconciliationDoneMs: r2(reconciledMs),
        reconciliationMillisReported: Number(described.ReconciliationMillis),
        unknownTokenObjects: (described.UnknownTokenObjects ?? []).length,
      },
      encrypt: {
        keys: keys.length,
        coldP50Ms: r2(percentile(cold, 50)),
        coldP99Ms: r2(percentile(cold, 99)),
        warmP50Ms: r2(percentile(warm, 50)),
        warmP99Ms: r2(percentile(warm, 99)),
      },
      rssMiB: rss,
      seconds: Math.round((Date.now() - started) / 1000),
    };
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
    const lines = [
      `kmsd at scale: ${result.hsmKeys} HSM keys, ${tokenObjects} token objects, ${result.machine.cpus} CPUs, load ${loadBefore.join(' ')} before, ${result.machine.loadAfter.join(' ')} after`,
      `CreateKey (HSM, ${CONCURRENCY} in flight): ${result.createKey.keysPerSec} keys/s; token's own C_GenerateKey: ${result.createKey.tokenOwnKeysPerSec} keys/s; ratio ${result.createKey.ratio} (goal >= 0.8)`,
      `restart: listening after ${result.restart.listenMs} ms (goal <= 3000), token ready (calls served) after ${result.restart.tokenReadyMs} ms, reconciliation done after ${result.restart.reconciliationDoneMs} ms`,
      `Encrypt over ${keys.length} keys: cold p50 ${result.encrypt.coldP50Ms} ms, p99 ${result.encrypt.coldP99Ms} ms (goal <= 20 at 10,000 keys); warm p50 ${result.encrypt.warmP50Ms} ms, p99 ${result.encrypt.warmP99Ms} ms`,
      `kmsd RSS ${rss} MiB; wrote ${out} in ${result.seconds} s`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
    return result;
  } finally {
    if (running?.pid && running.exitCode === null) process.kill(running.pid, 'SIGTERM');
    if (initialized) p11.C_Finalize();
    copy.remove();
  }
}
