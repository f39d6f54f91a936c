// `npm run bench` (issue 4): one run, one process tree, a table on stdout and bench/results/latest.json.
// Every figure is shown with its ratio to a baseline measured in the same run, on the same machine:
//
//   1. per operation, in this process, on a throwaway SoftHSM token, for 256 B, 4 KiB and 64 KiB:
//      node:crypto AES-256-GCM, pkcs11js sync (HsmToken.encryptGcm, the daemon's fallback path),
//      the addon one call per operation (64 in flight), the addon in batches of 256 (with the
//      daemon's default thread count, one per core, and with 1 thread to show what the pool adds);
//      baseline: pkcs11js sync of the same size. All methods of one size run in interleaved windows.
//   2. gRPC on loopback against the real kmsd (bin/kmsd.js as a child process) with a 256 B
//      payload, at concurrency 1 and 64: a bare grpc-js echo service in its own child process
//      (the transport ceiling; baseline), unary Encrypt on an HSM key and on a SOFTWARE key,
//      EncryptBatch (256 items per call) and EncryptStream (256 items per message); requests/s,
//      items/s, p50/p99 latency, and kmsd's own event-loop delay p99 (DescribeRuntime). Echo and
//      the two unary workloads run in interleaved windows (6 rounds of 1 s each) so that a noisy
//      neighbour on a shared machine weighs on the baseline and on kmsd alike. EncryptStream at
//      concurrency 64 alternates its windows with the native addon's in-process batch of 256 on a
//      throwaway token of the same kind (the token's own batch ceiling; its baseline).
//   3. RSA wrapping: GetParametersForImport p50 with the wrapping-key pool warm and with pool
//      size 0 (a key pair generated on demand; baseline), ImportKeyMaterial p50.
//   4. the AWS dialect: Encrypt on an HSM key over HTTP/1.1 keep-alive, signed with SigV4 by the AWS
//      SDK's signer, at concurrency 1 and 64, against a bare node:http JSON echo getting the same
//      signed requests (baseline), in interleaved windows; and SigV4 verification cost per call.
//   5. the Alibaba dialect: the same, signed with signature V2 (HMAC-SHA1) by the Alibaba SDK's own
//      signer, form-encoded as @alicloud/kms20160120 sends it; and V2 verification cost per call.
//   6. The AWS external key store proxy: XKS Encrypt of 4 KiB on an HSM key at concurrency 64 (and
//      with the CDIV), against unary gRPC Encrypt of the same plaintext (baseline), p50/p99.
//   7. kmsctl start-up: wall time of one `kmsctl ListKeys` against a running kmsd and of
//      `kmsctl --help`, against `node -e 0` (baseline), interleaved runs; goal: a call <= 0.25 s.
//   8. replicas, on a throwaway PostgreSQL cluster started here: unary gRPC Encrypt on an HSM key at
//      concurrency 64 against kmsd on PostgreSQL and against kmsd on SQLite (baseline; goal >= 0.9),
//      and two replicas on that database and one shared SoftHSM token behind KmsClient's round robin
//      against one replica (baseline), same total concurrency, in interleaved windows; CPU per call.
//
// Options: --quick (shorter phases, for a smoke run), --out FILE. Children are stopped by pid.
// --scale N is a separate run: kmsd with N HSM keys (scripts/bench-scale.ts).

import { ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { loadApi } from '../src/api/proto';
import { DEFAULT_NATIVE_THREADS } from '../src/config';
import { ensureDevToken } from '../src/hsm/dev-token';
import { loadNativeAddon, nativeAddonLoadError, type NativeAesGcm } from '../src/hsm/native-addon';
import { HsmToken } from '../src/hsm/token';
import { KmsClient } from '../src/client/client';
import { SqliteDb } from '../src/store/store';
import { runScale } from './bench-scale';
import { startPostgres } from './throwaway/postgres';
import { createExternalToken, type ExternalToken } from './throwaway/softhsm-token';

const ROOT = path.resolve(__dirname, '..', ...(__dirname.includes(`${path.sep}dist${path.sep}`) ? ['..'] : []));
const QUICK = process.argv.includes('--quick');
const OUT = (() => {
  const i = process.argv.indexOf('--out');
  return i > 0 ? path.resolve(process.argv[i + 1]) : path.join(ROOT, 'bench', 'results', 'latest.json');
})();

/** --cpu-prof DIR: every kmsd child runs with node --cpu-prof and writes its profile to DIR on exit. */
const CPU_PROF_DIR = (() => {
  const i = process.argv.indexOf('--cpu-prof');
  return i > 0 ? path.resolve(process.argv[i + 1]) : undefined;
})();

/** --only per-op|grpc|rsa|aws-http|alibaba-http|xks|kmsctl|replicas (repeatable): run just those sections (the targets table shows what was run). */
const ONLY = process.argv.flatMap((a, i) => (a === '--only' ? [process.argv[i + 1]] : []));
const want = (section: string) => ONLY.length === 0 || ONLY.includes(section);

const OP_MS = QUICK ? 400 : 2000;
/** Per-operation rows: OP_ROUNDS interleaved windows per method, OP_MS in all. */
const OP_ROUNDS = QUICK ? 2 : 5;
const GRPC_WARM_MS = QUICK ? 300 : 1000;
/** Unary rows: GRPC_ROUNDS interleaved windows of GRPC_WINDOW_MS per workload. */
const GRPC_WINDOW_MS = QUICK ? 500 : 1000;
const GRPC_ROUNDS = QUICK ? 2 : 6;
const RSA_SAMPLES = QUICK ? 3 : 9;
const SIZES = [256, 4096, 65536];
const BATCH = 256;
const GRPC_PAYLOAD = 256;

/* eslint-disable @typescript-eslint/no-explicit-any */
type Json = Record<string, any>;

const children: ChildProcess[] = [];
const tmpDirs: string[] = [];

function cleanup(): void {
  for (const c of children) {
    if (c.exitCode === null && c.pid) {
      try {
        process.kill(c.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
    }
  }
  for (const d of tmpDirs) fs.rmSync(d, { recursive: true, force: true });
}

function tmpDir(prefix: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  tmpDirs.push(d);
  return d;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now();

function percentile(sorted: Float64Array | number[], p: number): number {
  if (sorted.length === 0) return 0;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}

function sortedOf(xs: number[]): Float64Array {
  return Float64Array.from(xs).sort();
}

const r2 = (x: number) => Math.round(x * 100) / 100;
const r0 = (x: number) => Math.round(x);

// ================================================================== 1. per operation

interface OpRow {
  size: number;
  method: string;
  opsPerSec: number;
  mibPerSec: number;
  baseline: string;
  ratio: number;
}

/** Calls `step` (which does `n` operations) until `ms` have passed; returns operations per second. */
function syncRate(ms: number, step: () => number): number {
  const end = now() + ms;
  let ops = 0;
  const t0 = now();
  while (now() < end) ops += step();
  return (ops * 1000) / (now() - t0);
}

/** Keeps `inFlight` calls of `step` going for `ms`; each resolves to the operations it did. */
async function asyncRate(ms: number, inFlight: number, step: () => Promise<number>): Promise<number> {
  const t0 = now();
  const end = t0 + ms;
  let ops = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (now() < end) {
        const n = await step(); // not `ops += await step()`: that reads `ops` before the await
        ops += n;
      }
    }),
  );
  return (ops * 1000) / (now() - t0);
}

async function perOperation(): Promise<{ rows: OpRow[]; threads: number }> {
  const dir = tmpDir('kmsd-bench-token-');
  const opts = ensureDevToken(dir);
  const token = HsmToken.open(opts);
  const addon = loadNativeAddon();
  if (!addon) throw new Error(`the native addon is not built: ${nativeAddonLoadError()} (npm run build)`);
  const keyId = crypto.randomUUID();
  token.generateAesKey('cmk', keyId);
  const handle = token.numericHandle('cmk', keyId);
  const soft = crypto.randomBytes(32);
  const aad = crypto.randomBytes(64);
  const iv = crypto.randomBytes(12);
  const rows: OpRow[] = [];
  const pools: { threads: number; aes: NativeAesGcm }[] = [];
  // The default (one worker per core), and one worker to show what the pool adds.
  const threadChoices = [...new Set([DEFAULT_NATIVE_THREADS, 1])];
  try {
    for (const t of threadChoices) pools.push({ threads: t, aes: addon.open({ modulePath: token.modulePath, slotId: token.slotId, threads: t }) });
    for (const size of SIZES) {
      const pt = crypto.randomBytes(size);
      const items = Array.from({ length: BATCH }, () => ({ handle, iv, aad, data: pt }));
      // Each method is a measurement; all of them run in interleaved windows (OP_ROUNDS rounds of
      // OP_MS / OP_ROUNDS each, the order reversed every other round), so a noisy neighbour or a
      // bad stretch of lock contention in the module lands on every row instead of one.
      const methods: { method: string; run: (ms: number) => Promise<{ ops: number; ms: number }> }[] = [];
      const timedSync = async (ms: number, step: () => number) => {
        const t0 = now();
        const rate = syncRate(ms, step);
        return { ops: (rate * (now() - t0)) / 1000, ms: now() - t0 };
      };
      const timedAsync = async (ms: number, inFlight: number, step: () => Promise<number>) => {
        const t0 = now();
        const rate = await asyncRate(ms, inFlight, step);
        return { ops: (rate * (now() - t0)) / 1000, ms: now() - t0 };
      };
      methods.push({
        method: 'node:crypto AES-256-GCM',
        run: (ms) =>
          timedSync(ms, () => {
            const c = crypto.createCipheriv('aes-256-gcm', soft, iv);
            c.setAAD(aad);
            c.update(pt);
            c.final();
            c.getAuthTag();
            return 1;
          }),
      });
      methods.push({
        method: 'pkcs11js sync',
        run: (ms) =>
          timedSync(ms, () => {
            token.encryptGcm('cmk', keyId, iv, aad, pt);
            return 1;
          }),
      });
      for (const { threads, aes } of pools) {
        const label = `${threads} thread${threads > 1 ? 's' : ''}${threads === DEFAULT_NATIVE_THREADS ? ', default' : ''}`;
        methods.push({ method: `addon single, 64 in flight (${label})`, run: (ms) => timedAsync(ms, 64, async () => (await aes.encrypt(handle, iv, aad, pt), 1)) });
        methods.push({
          method: `addon batch of ${BATCH} (${label})`,
          run: (ms) =>
            timedAsync(ms, 2, async () => {
              const out = await aes.encryptBatch(items);
              if (out.some((x) => x instanceof Error)) throw new Error('a batch item failed');
              return out.length;
            }),
        });
      }
      const totals = methods.map(() => ({ ops: 0, ms: 0 }));
      for (let round = 0; round < OP_ROUNDS; round++) {
        const order = methods.map((_, i) => i);
        if (round % 2 === 1) order.reverse();
        for (const i of order) {
          const w = await methods[i].run(OP_MS / OP_ROUNDS);
          totals[i].ops += w.ops;
          totals[i].ms += w.ms;
        }
      }
      const results = methods.map((m, i) => ({ method: m.method, opsPerSec: (totals[i].ops * 1000) / totals[i].ms }));
      const baseline = results[1].opsPerSec;
      for (const r of results) rows.push({ size, method: r.method, opsPerSec: r0(r.opsPerSec), mibPerSec: r2((r.opsPerSec * size) / 1048576), baseline: 'pkcs11js sync', ratio: r2(r.opsPerSec / baseline) });
      process.stderr.write(`[bench] per-operation ${size} B done\n`);
    }
  } finally {
    for (const p of pools) p.aes.close();
    token.destroy('cmk', keyId);
    token.close();
  }
  return { rows, threads: DEFAULT_NATIVE_THREADS };
}

// ================================================================== 2. gRPC

/** The Encrypt method's (de)serializers: the echo service speaks the same messages. */
function encryptCodec() {
  const def = loadApi().definition['kms.v1.KeyManagementService'] as unknown as Record<string, grpc.MethodDefinition<Json, Json>>;
  return def.Encrypt;
}

/** `--echo-server`: a bare grpc-js service answering EncryptRequest with an EncryptResponse carrying the payload back. */
async function echoServer(): Promise<void> {
  const m = encryptCodec();
  const server = new grpc.Server();
  server.addService(
    { Encrypt: { ...m, path: '/bench.Echo/Encrypt' } } as grpc.ServiceDefinition,
    {
      Encrypt: (call: grpc.ServerUnaryCall<Json, Json>, cb: grpc.sendUnaryData<Json>) => cb(null, { KeyId: call.request.KeyId, KeyVersionId: '', CiphertextBlob: call.request.Plaintext }),
    },
  );
  const port = await new Promise<number>((res, rej) => server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))));
  process.stdout.write(`listening on 127.0.0.1:${port}\n`);
  process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
}

/** Starts a child (kmsd or the echo server) with output to a file; resolves with its port. */
async function startChild(args: string[], env: Record<string, string>, logFile: string): Promise<{ child: ChildProcess; port: number }> {
  const fd = fs.openSync(logFile, 'w');
  const profile = CPU_PROF_DIR && args[0]?.endsWith('kmsd.js') ? ['--cpu-prof', '--cpu-prof-dir', CPU_PROF_DIR] : [];
  const child = spawn(process.execPath, [...profile, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  children.push(child);
  const deadline = Date.now() + 60_000;
  for (;;) {
    const text = fs.readFileSync(logFile, 'utf8');
    const m = /listening on 127\.0\.0\.1:(\d+)/.exec(text);
    if (m) return { child, port: Number(m[1]) };
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${args.join(' ')} did not start:\n${text.slice(-2000)}`);
    await sleep(50);
  }
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || !child.pid) return;
  const exited = new Promise((r) => child.once('exit', r));
  process.kill(child.pid, 'SIGTERM');
  await exited;
}

async function startKmsd(name: string, env: Record<string, string>): Promise<{ child: ChildProcess; port: number; dataDir: string; client: grpc.Client }> {
  const dataDir = tmpDir(`kmsd-bench-${name}-`);
  const { child, port } = await startChild([path.join(ROOT, 'bin', 'kmsd.js'), '--data-dir', dataDir, '--listen', '127.0.0.1:0'], env, path.join(dataDir, 'kmsd.log'));
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  return { child, port, dataDir, client };
}

const KMS = loadApi().definition['kms.v1.KeyManagementService'] as unknown as Record<string, grpc.MethodDefinition<Json, Json>>;

function unary(client: grpc.Client, m: grpc.MethodDefinition<Json, Json>, req: Json, pathOverride?: string): Promise<Json> {
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(pathOverride ?? m.path, m.requestSerialize, m.responseDeserialize, req, (err, res) => (err ? reject(new Error(`${m.path}: ${err.details || err.message}`)) : resolve(res as Json))),
  );
}

const kms = (client: grpc.Client, action: string, req: Json = {}) => unary(client, KMS[action], req);

/** A bidirectional stream whose answers come back in request order. */
function openStream(client: grpc.Client, action: string) {
  const m = KMS[action];
  const call = client.makeBidiStreamRequest(m.path, m.requestSerialize, m.responseDeserialize);
  const waiting: { resolve: (v: Json) => void; reject: (e: Error) => void }[] = [];
  call.on('data', (msg: Json) => waiting.shift()?.resolve(msg));
  call.on('error', (e: Error) => {
    for (const w of waiting.splice(0)) w.reject(e);
  });
  return {
    send(req: Json): Promise<Json> {
      return new Promise((resolve, reject) => {
        waiting.push({ resolve, reject });
        call.write(req);
      });
    },
    end: () => call.end(),
  };
}

interface GrpcRow {
  workload: string;
  concurrency: number;
  requestsPerSec: number;
  itemsPerSec: number;
  ratio: number;
  p50Ms: number;
  p99Ms: number;
  eventLoopDelayP99Ms: number | null;
}

/** What one load window measured. */
interface Window {
  requests: number;
  items: number;
  secs: number;
  lat: number[];
}

/** Runs `concurrency` loops of `once` (resolving to items done) for `ms`; latencies in ms. */
async function load(concurrency: number, ms: number, once: (worker: number) => Promise<number>): Promise<Window> {
  const lat: number[] = [];
  let items = 0;
  let requests = 0;
  const t0 = now();
  const end = t0 + ms;
  await Promise.all(
    Array.from({ length: concurrency }, async (_, w) => {
      while (now() < end) {
        const s = now();
        const n = await once(w);
        items += n;
        lat.push(now() - s);
        requests++;
      }
    }),
  );
  return { requests, items, secs: (now() - t0) / 1000, lat };
}

/** Several windows of one workload as one figure. */
function summed(ws: Window[]) {
  const secs = ws.reduce((a, w) => a + w.secs, 0);
  const sorted = sortedOf(ws.flatMap((w) => w.lat));
  return { requestsPerSec: ws.reduce((a, w) => a + w.requests, 0) / secs, itemsPerSec: ws.reduce((a, w) => a + w.items, 0) / secs, p50: percentile(sorted, 50), p99: percentile(sorted, 99) };
}

/**
 * The token's own batch ceiling as kmsd's data path would see it: the addon's encryptBatch of 256
 * items of GRPC_PAYLOAD bytes (48 bytes of AAD, a blob header's worth) with the daemon's default
 * worker count, in this process on a throwaway SoftHSM token. Run in windows interleaved with
 * EncryptStream's, so both see the same machine.
 */
function addonBatchWindows(): { run: (ms: number) => Promise<Window>; close: () => void } {
  const dir = tmpDir('kmsd-bench-stream-token-');
  const token = HsmToken.open(ensureDevToken(dir));
  const keyId = crypto.randomUUID();
  token.generateAesKey('cmk', keyId);
  const addon = loadNativeAddon();
  if (!addon) throw new Error(`the native addon is not built: ${nativeAddonLoadError()} (npm run build)`);
  const aes = addon.open({ modulePath: token.modulePath, slotId: token.slotId, threads: DEFAULT_NATIVE_THREADS });
  const handle = token.numericHandle('cmk', keyId);
  const items = Array.from({ length: BATCH }, () => ({ handle, iv: crypto.randomBytes(12), aad: crypto.randomBytes(48), data: crypto.randomBytes(GRPC_PAYLOAD) }));
  return {
    run: (ms) =>
      load(2, ms, async () => {
        const out = await aes.encryptBatch(items);
        if (out.some((x) => x instanceof Error)) throw new Error('an addon batch item failed');
        return out.length;
      }),
    close: () => {
      aes.close();
      token.destroy('cmk', keyId);
      token.close();
    },
  };
}

async function grpcSection(): Promise<{ rows: GrpcRow[]; kmsdThreads: number; nativeAddon: boolean; counters: Json; streamVsAddon: { streamItemsPerSec: number; addonItemsPerSec: number; ratio: number } | null }> {
  const payload = crypto.randomBytes(GRPC_PAYLOAD).toString('base64');
  const echoLog = path.join(tmpDir('kmsd-bench-echo-'), 'echo.log');
  const echo = await startChild([__filename, '--echo-server'], {}, echoLog);
  const echoClient = new grpc.Client(`127.0.0.1:${echo.port}`, grpc.credentials.createInsecure());
  const k = await startKmsd('grpc', { KMS_WRAPPING_KEY_POOL_SIZE: '0' });
  const rows: GrpcRow[] = [];
  try {
    const hsmKey = (await kms(k.client, 'CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const swKey = (await kms(k.client, 'CreateKey', { ProtectionLevel: 'SOFTWARE' })).KeyMetadata.KeyId as string;
    const encReq = (keyId: string) => ({ KeyId: keyId, Plaintext: payload, EncryptionContext: {} });
    const batchReq = { Items: Array.from({ length: BATCH }, () => encReq(hsmKey)) };
    const checkBatch = (r: Json) => {
      if (r.Code || r.ErrorCount) throw new Error(`batch failed: ${r.Code || r.Results.find((x: Json) => x.Code)?.Message}`);
      return r.Results.length as number;
    };
    const runtime = (reset: boolean) => kms(k.client, 'DescribeRuntime', { ResetEventLoopDelay: reset });
    const m = encryptCodec();

    const workloads: { name: string; kmsd: boolean; setup?: (c: number) => Promise<{ once: (w: number) => Promise<number>; done: () => void }> }[] = [
      {
        name: 'echo (grpc-js, no work; baseline)',
        kmsd: false,
        setup: async () => ({ once: async () => (await unary(echoClient, m, encReq(hsmKey), '/bench.Echo/Encrypt'), 1), done: () => undefined }),
      },
      { name: 'Encrypt, HSM key', kmsd: true, setup: async () => ({ once: async () => (await kms(k.client, 'Encrypt', encReq(hsmKey)), 1), done: () => undefined }) },
      { name: 'Encrypt, SOFTWARE key', kmsd: true, setup: async () => ({ once: async () => (await kms(k.client, 'Encrypt', encReq(swKey)), 1), done: () => undefined }) },
      { name: `EncryptBatch, HSM key, ${BATCH} items/call`, kmsd: true, setup: async () => ({ once: async () => checkBatch(await kms(k.client, 'EncryptBatch', batchReq)), done: () => undefined }) },
      {
        name: `EncryptStream, HSM key, ${BATCH} items/message`,
        kmsd: true,
        // Concurrency = messages in flight: up to 8 streams, each pipelining its share.
        setup: async (c) => {
          const streams = Array.from({ length: Math.min(c, 8) }, () => openStream(k.client, 'EncryptStream'));
          return { once: async (w) => checkBatch(await streams[w % streams.length].send(batchReq)), done: () => streams.forEach((s) => s.end()) };
        },
      },
    ];
    // The baseline and the workloads compared with it run in interleaved windows (echo, kmsd, kmsd,
    // echo, ...), so a neighbour that slows this shared machine for a while slows both sides alike
    // instead of one row. Batches and streams are measured after, against the same echo figure.
    const baseline = new Map<number, number>();
    const rowFor = (wl: (typeof workloads)[number], c: number, ws: Window[], eld: number[]) => {
      const r = summed(ws);
      if (!wl.kmsd) baseline.set(c, r.requestsPerSec);
      rows.push({
        workload: wl.name,
        concurrency: c,
        requestsPerSec: r0(r.requestsPerSec),
        itemsPerSec: r0(r.itemsPerSec),
        ratio: r2(r.itemsPerSec / (baseline.get(c) as number)),
        p50Ms: r2(r.p50),
        p99Ms: r2(r.p99),
        // The worst window's p99: one bad window is what a caller would feel.
        eventLoopDelayP99Ms: wl.kmsd ? Math.max(...eld) : null,
      });
      process.stderr.write(`[bench] gRPC ${wl.name} c=${c}: ${r0(r.itemsPerSec)} items/s\n`);
    };
    const interleaved = workloads.slice(0, 3);
    for (const c of [1, 64]) {
      const runs = await Promise.all(interleaved.map((wl) => wl.setup!(c)));
      for (const r of runs) await load(c, GRPC_WARM_MS, r.once);
      const windows = interleaved.map(() => [] as Window[]);
      const eld = interleaved.map(() => [] as number[]);
      for (let round = 0; round < GRPC_ROUNDS; round++) {
        // Alternate the order too, so neither side always runs right after the other.
        const order = round % 2 === 0 ? [0, 1, 2] : [2, 1, 0];
        for (const w of order) {
          if (interleaved[w].kmsd) await runtime(true);
          windows[w].push(await load(c, GRPC_WINDOW_MS, runs[w].once));
          if (interleaved[w].kmsd) eld[w].push((await runtime(true)).EventLoopDelayP99Ms as number);
        }
      }
      runs.forEach((r) => r.done());
      interleaved.forEach((wl, w) => rowFor(wl, c, windows[w], eld[w]));
    }
    let streamVsAddon: { streamItemsPerSec: number; addonItemsPerSec: number; ratio: number } | null = null;
    for (const wl of workloads.slice(3)) {
      for (const c of [1, 64]) {
        const { once, done } = await wl.setup!(c);
        await load(c, GRPC_WARM_MS, once);
        if (wl.name.startsWith('EncryptStream') && c === 64) {
          // Against the addon's in-process batch, window for window (order alternating).
          const addon = addonBatchWindows();
          try {
            await addon.run(GRPC_WARM_MS);
            const ws: Window[] = [];
            const as: Window[] = [];
            const eld: number[] = [];
            for (let round = 0; round < GRPC_ROUNDS; round++) {
              if (round % 2 === 1) as.push(await addon.run(GRPC_WINDOW_MS));
              await runtime(true);
              ws.push(await load(c, GRPC_WINDOW_MS, once));
              eld.push((await runtime(true)).EventLoopDelayP99Ms as number);
              if (round % 2 === 0) as.push(await addon.run(GRPC_WINDOW_MS));
            }
            done();
            rowFor(wl, c, ws, eld);
            const st = summed(ws).itemsPerSec;
            const ad = summed(as).itemsPerSec;
            streamVsAddon = { streamItemsPerSec: r0(st), addonItemsPerSec: r0(ad), ratio: r2(st / ad) };
            process.stderr.write(`[bench] addon batch of ${BATCH} in process, interleaved with EncryptStream c=64: ${r0(ad)} items/s\n`);
          } finally {
            addon.close();
          }
          continue;
        }
        await runtime(true);
        const w = await load(c, GRPC_WINDOW_MS * 2, once);
        const eld = (await runtime(true)).EventLoopDelayP99Ms as number;
        done();
        rowFor(wl, c, [w], [eld]);
      }
    }
    rows.sort((a, b) => workloads.findIndex((w) => w.name === a.workload) - workloads.findIndex((w) => w.name === b.workload) || a.concurrency - b.concurrency);
    const rt = await runtime(false);
    return { rows, kmsdThreads: rt.NativeThreads, nativeAddon: rt.NativeAddon, counters: rt.Counters, streamVsAddon };
  } finally {
    echoClient.close();
    k.client.close();
    await stopChild(echo.child);
    await stopChild(k.child);
  }
}

// ================================================================== 3. RSA wrapping

interface RsaRow {
  figure: string;
  samples: number;
  p50Ms: number;
  baseline: string;
  /** baseline p50 / this p50: how many times faster. */
  speedup: number;
}

async function timed<T>(f: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const s = now();
  const value = await f();
  return { ms: now() - s, value };
}

function pooledCount(dataDir: string): number {
  const store = new SqliteDb(dataDir, { readOnly: true });
  try {
    return store.countPooledWrappingKeys('RSA_2048', false);
  } finally {
    store.close();
  }
}

async function rsaSection(): Promise<RsaRow[]> {
  const alg = 'RSAES_OAEP_SHA_1'; // in-token on SoftHSM 2.6.1 (pooled keys without CKA_DECRYPT)
  const pool = RSA_SAMPLES + 3;
  // Cold: no pool, every GetParametersForImport generates its RSA-2048 pair in the token.
  const cold = await startKmsd('rsa-cold', { KMS_WRAPPING_KEY_POOL_SIZE: '0' });
  const coldMs: number[] = [];
  try {
    for (let i = 0; i < RSA_SAMPLES; i++) {
      const keyId = (await kms(cold.client, 'CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
      coldMs.push((await timed(() => kms(cold.client, 'GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: alg, WrappingKeySpec: 'RSA_2048' }))).ms);
    }
  } finally {
    cold.client.close();
    await stopChild(cold.child);
  }
  // Warm: the scheduler has filled the pool; the samples are taken back to back between its ticks.
  const warm = await startKmsd('rsa-warm', { KMS_WRAPPING_KEY_POOL_SIZE: String(pool), KMS_SCHEDULER_INTERVAL_MS: '250', KMS_ALLOW_HOST_ASSISTED_UNWRAP: '0' });
  const warmMs: number[] = [];
  const importMs: number[] = [];
  try {
    const keyIds: string[] = [];
    for (let i = 0; i < RSA_SAMPLES; i++) keyIds.push((await kms(warm.client, 'CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId);
    const deadline = Date.now() + 120_000;
    while (pooledCount(warm.dataDir) < pool) {
      if (Date.now() > deadline) throw new Error('the wrapping-key pool did not fill in 120 s');
      await sleep(100);
    }
    await sleep(300); // let a tick pass: the pool is full, so it has nothing to do
    const params: Json[] = [];
    for (const keyId of keyIds) {
      const t = await timed(() => kms(warm.client, 'GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: alg, WrappingKeySpec: 'RSA_2048' }));
      warmMs.push(t.ms);
      params.push(t.value);
    }
    for (let i = 0; i < keyIds.length; i++) {
      const material = crypto.randomBytes(32);
      const pub = crypto.createPublicKey({ key: Buffer.from(params[i].PublicKey, 'base64'), format: 'der', type: 'spki' });
      const wrapped = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, material);
      material.fill(0);
      importMs.push((await timed(() => kms(warm.client, 'ImportKeyMaterial', { KeyId: keyIds[i], EncryptedKeyMaterial: wrapped.toString('base64'), ImportToken: params[i].ImportToken, KeyMaterialExpireUnix: 0 }))).ms);
    }
  } finally {
    warm.client.close();
    await stopChild(warm.child);
  }
  const p50 = (xs: number[]) => percentile(sortedOf(xs), 50);
  const base = p50(coldMs);
  const row = (figure: string, xs: number[]): RsaRow => ({ figure, samples: xs.length, p50Ms: r2(p50(xs)), baseline: 'GetParametersForImport, pool size 0', speedup: r2(base / p50(xs)) });
  process.stderr.write('[bench] RSA wrapping done\n');
  return [row('GetParametersForImport, pool size 0 (RSA-2048 generated on demand; baseline)', coldMs), row(`GetParametersForImport, pool warm (size ${pool})`, warmMs), row(`ImportKeyMaterial (${alg}, in-token unwrap)`, importMs)];
}

// ================================================================== report

// ================================================================== 4. AWS SigV4 over HTTP

interface AwsHttpRow {
  workload: string;
  concurrency: number;
  requestsPerSec: number;
  ratio: number;
  p50Ms: number;
  p99Ms: number;
  /**
   * CPU time of the serving process per request over its windows, µs: its main thread (the event
   * loop) and all its threads (with kmsd's addon workers and GC threads); null where /proc is not
   * there. Less dependent on what else the machine runs than requests/s.
   */
  cpuMicrosPerCall: { main: number; all: number } | null;
}

/** CPU time (user + system) of a process's main thread and of all its threads, ms; null without /proc. */
function processCpuMs(pid: number | undefined): { main: number; all: number } | null {
  if (!pid) return null;
  try {
    const hz = 100; // USER_HZ, what /proc's clock ticks are in on Linux
    let main = 0;
    let all = 0;
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      let stat: string;
      try {
        stat = fs.readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
      } catch {
        continue; // the thread ended between the listing and the read
      }
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      const ms = ((Number(f[11]) + Number(f[12])) * 1000) / hz;
      all += ms;
      if (Number(tid) === pid) main = ms;
    }
    return { main, all };
  } catch {
    return null;
  }
}

// ================================================================== the AWS external key store proxy

interface XksRow {
  workload: string;
  concurrency: number;
  requestsPerSec: number;
  /** requests/s over the same run's unary gRPC Encrypt of the same plaintext. */
  ratio: number;
  p50Ms: number;
  p99Ms: number;
}

/**
 * A bare node:http JSON echo (the HTTP ceiling; baseline): reads the body in the request's own
 * format (JSON for the AWS dialect, a form for the Alibaba one) and answers its Plaintext back as
 * JSON, so both dialects' baselines parse what kmsd parses and answer about as many bytes.
 */
const HTTP_ECHO_SCRIPT = `
const http = require('node:http');
const s = http.createServer({ keepAlive: true }, (q, r) => {
  const c = [];
  q.on('data', (d) => c.push(d));
  q.on('end', () => {
    const text = Buffer.concat(c).toString('utf8');
    let b = {};
    if (String(q.headers['content-type']).startsWith('application/x-www-form-urlencoded')) b = Object.fromEntries(new URLSearchParams(text));
    else try { b = JSON.parse(text); } catch {}
    const out = JSON.stringify({ KeyId: b.KeyId, CiphertextBlob: b.Plaintext, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' });
    r.writeHead(200, { 'content-type': 'application/x-amz-json-1.1', 'content-length': Buffer.byteLength(out) });
    r.end(out);
  });
});
s.listen(0, '127.0.0.1', () => console.log('listening on 127.0.0.1:' + s.address().port));
process.on('SIGTERM', () => s.close(() => process.exit(0)));
`;

/** One POST on the keep-alive agent: 1 on a 200, otherwise an error with the start of the answer. */
function postOnce(agent: http.Agent, port: number, headers: Record<string, string>, body: string, what: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/', agent, headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => (res.statusCode === 200 ? resolve(1) : reject(new Error(`${what}: ${res.statusCode} ${Buffer.concat(chunks).toString().slice(0, 300)}`))));
      res.on('error', reject);
    });
    r.on('error', reject);
    r.end(body);
  });
}

/** The echo (first) and kmsd sides at concurrency 1 and 64, in interleaved windows: a row per side and concurrency. */
async function echoVersusKmsd(sides: { name: string; pid?: number; once: () => Promise<number> }[]): Promise<AwsHttpRow[]> {
  const rows: AwsHttpRow[] = [];
  for (const c of [1, 64]) {
    for (const side of sides) await load(c, GRPC_WARM_MS, side.once);
    const windows = sides.map(() => [] as Window[]);
    const cpu = sides.map(() => ({ main: 0, all: 0, known: true }));
    for (let round = 0; round < GRPC_ROUNDS; round++) {
      for (const i of round % 2 === 0 ? [0, 1] : [1, 0]) {
        const before = processCpuMs(sides[i].pid);
        windows[i].push(await load(c, GRPC_WINDOW_MS, sides[i].once));
        const after = processCpuMs(sides[i].pid);
        if (before && after) {
          cpu[i].main += after.main - before.main;
          cpu[i].all += after.all - before.all;
        } else cpu[i].known = false;
      }
    }
    const base = summed(windows[0]).requestsPerSec;
    sides.forEach((side, i) => {
      const r = summed(windows[i]);
      const n = windows[i].reduce((a, w) => a + w.requests, 0);
      const cpuMicrosPerCall = cpu[i].known && n > 0 ? { main: r2((cpu[i].main * 1000) / n), all: r2((cpu[i].all * 1000) / n) } : null;
      rows.push({ workload: side.name, concurrency: c, requestsPerSec: r0(r.requestsPerSec), ratio: r2(r.requestsPerSec / base), p50Ms: r2(r.p50), p99Ms: r2(r.p99), cpuMicrosPerCall });
      process.stderr.write(`[bench] HTTP ${side.name} c=${c}: ${r0(r.requestsPerSec)} req/s\n`);
    });
  }
  return rows;
}

/**
 * Encrypt on an HSM key through the AWS dialect (the AWS SDK's own SigV4 signer on the client, HTTP/1.1
 * keep-alive) against the bare node:http JSON echo receiving the same signed requests, at concurrency
 * 1 and 64 in interleaved windows; and what verifying one signature costs kmsd (in process: warm,
 * with the signing key cached; cold, deriving it).
 */
async function awsHttpSection(): Promise<{ rows: AwsHttpRow[]; verifyMicros: { warm: number; cold: number } }> {
  const { SignatureV4 } = await import('@smithy/signature-v4');
  const { Sha256 } = await import('@smithy/core/checksum');
  const { SigningKeyCache, verifySigV4 } = await import('../src/api/http/aws/sigv4');
  const payload = crypto.randomBytes(GRPC_PAYLOAD).toString('base64');

  // Verification cost, in process, on one signed request (no I/O).
  const secret = 'bench-secret-bench-secret-bench-secret-1234';
  const signer = (accessKeyId: string, secretAccessKey: string) => new SignatureV4({ credentials: { accessKeyId, secretAccessKey }, region: 'us-east-1', service: 'kms', sha256: Sha256 });
  const sample = (await signer('KMSDBENCH', secret).sign({
    method: 'POST', protocol: 'http:', hostname: '127.0.0.1', port: 1, path: '/', query: {},
    headers: { host: '127.0.0.1:1', 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.Encrypt' },
    body: JSON.stringify({ KeyId: 'alias/bench', Plaintext: payload }),
  } as never)) as unknown as { headers: Record<string, string> };
  const call = { method: 'POST', path: '/', rawQuery: '', headers: sample.headers, body: Buffer.from(JSON.stringify({ KeyId: 'alias/bench', Plaintext: payload })), receivedAt: Date.now() };
  const secretBuf = Buffer.from(secret);
  const record = { accessKeyId: 'KMSDBENCH', principal: 'bench', status: 'Active' as const, secret: () => secretBuf };
  const opts = { service: 'kms', lookupAccessKey: () => record };
  const perCall = (n: number, f: () => void) => {
    for (let i = 0; i < 1000; i++) f(); // compiled before it is timed
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < n; i++) f();
    return r2(Number(process.hrtime.bigint() - t0) / 1000 / n);
  };
  const warmCache = new SigningKeyCache();
  const verifyMicros = { warm: perCall(QUICK ? 2000 : 20000, () => verifySigV4(call, opts, warmCache)), cold: perCall(QUICK ? 2000 : 20000, () => verifySigV4(call, opts, new SigningKeyCache())) };

  const echoLog = path.join(tmpDir('kmsd-bench-http-echo-'), 'echo.log');
  const echo = await startChild(['-e', HTTP_ECHO_SCRIPT], {}, echoLog);
  const dataDir = tmpDir('kmsd-bench-aws-');
  const logFile = path.join(dataDir, 'kmsd.log');
  const k = await startChild([path.join(ROOT, 'bin', 'kmsd.js'), '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], { KMS_WRAPPING_KEY_POOL_SIZE: '0' }, logFile);
  const client = new grpc.Client(`127.0.0.1:${k.port}`, grpc.credentials.createInsecure());
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  try {
    let httpPort = 0;
    for (let i = 0; !httpPort; i++) {
      const m = /http listening on 127\.0\.0\.1:(\d+)/.exec(fs.readFileSync(logFile, 'utf8'));
      if (m) httpPort = Number(m[1]);
      else if (i > 600) throw new Error('kmsd printed no "http listening on" line');
      else await sleep(50);
    }
    const key = await kms(client, 'CreateAccessKey', { Principal: 'bench' });
    const hsmKey = (await kms(client, 'CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const sign = signer(key.AccessKeyId as string, key.AccessKeySecret as string);
    const body = JSON.stringify({ KeyId: hsmKey, Plaintext: payload });
    const post = async (port: number): Promise<number> => {
      const req = (await sign.sign({
        method: 'POST', protocol: 'http:', hostname: '127.0.0.1', port, path: '/', query: {},
        headers: { host: `127.0.0.1:${port}`, 'content-type': 'application/x-amz-json-1.1', 'x-amz-target': 'TrentService.Encrypt' },
        body,
      } as never)) as unknown as { headers: Record<string, string> };
      return postOnce(agent, port, req.headers, body, 'Encrypt over HTTP (AWS)');
    };
    const sides = [
      { name: 'echo (node:http JSON, no work; baseline)', pid: echo.child.pid, once: () => post(echo.port) },
      { name: 'Encrypt, HSM key, AWS SigV4', pid: k.child.pid, once: () => post(httpPort) },
    ];
    return { rows: await echoVersusKmsd(sides), verifyMicros };
  } finally {
    agent.destroy();
    client.close();
    await stopChild(echo.child);
    await stopChild(k.child);
  }
}

/**
 * Encrypt on an HSM key through the Alibaba dialect (signature V2 by the SDK's own signer, a form
 * body, HTTP/1.1 keep-alive) against the bare node:http echo receiving the same signed requests, at
 * concurrency 1 and 64 in interleaved windows; and what checking one V2 signature costs kmsd (in
 * process: reading the parameters and the HMAC-SHA1 over the canonical query).
 */
async function alibabaHttpSection(): Promise<{ rows: AwsHttpRow[]; verifyMicros: number }> {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const rpcUtil = require('@alicloud/rpc-util').default as { getSignatureV1(q: Record<string, string>, method: string, secret: string): string; getTimestamp(): string };
  const { readParams } = await import('../src/api/http/alibaba');
  const { v2Signature } = await import('../src/api/http/alibaba/signature');
  const payload = crypto.randomBytes(GRPC_PAYLOAD).toString('base64');
  const form = (q: Record<string, string>) => Object.entries(q).map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
  const signed = (id: string, secret: string, keyId: string) => {
    const q: Record<string, string> = { Action: 'Encrypt', Format: 'json', Timestamp: rpcUtil.getTimestamp(), Version: '2016-01-20', SignatureNonce: crypto.randomUUID(), KeyId: keyId, Plaintext: payload, SignatureMethod: 'HMAC-SHA1', SignatureVersion: '1.0', AccessKeyId: id };
    q.Signature = rpcUtil.getSignatureV1(q, 'POST', secret);
    return form(q);
  };

  // Verification cost, in process, on one signed request (no I/O).
  const secret = 'bench-secret-bench-secret-bench-secret-1234';
  const sample = { method: 'POST', path: '/', rawQuery: '', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: Buffer.from(signed('KMSDBENCH', secret, 'alias/bench')), requestId: '', peer: '', receivedAt: Date.now() };
  const secretBuf = Buffer.from(secret);
  const verify = () => {
    const { all } = readParams(sample);
    return v2Signature(secretBuf, 'POST', all);
  };
  const n = QUICK ? 2000 : 20000;
  for (let i = 0; i < 1000; i++) verify(); // compiled before it is timed
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) verify();
  const verifyMicros = r2(Number(process.hrtime.bigint() - t0) / 1000 / n);

  const echoLog = path.join(tmpDir('kmsd-bench-http-echo-'), 'echo.log');
  const echo = await startChild(['-e', HTTP_ECHO_SCRIPT], {}, echoLog);
  const dataDir = tmpDir('kmsd-bench-alibaba-');
  const logFile = path.join(dataDir, 'kmsd.log');
  const k = await startChild([path.join(ROOT, 'bin', 'kmsd.js'), '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], { KMS_WRAPPING_KEY_POOL_SIZE: '0' }, logFile);
  const client = new grpc.Client(`127.0.0.1:${k.port}`, grpc.credentials.createInsecure());
  const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  try {
    let httpPort = 0;
    for (let i = 0; !httpPort; i++) {
      const m = /http listening on 127\.0\.0\.1:(\d+)/.exec(fs.readFileSync(logFile, 'utf8'));
      if (m) httpPort = Number(m[1]);
      else if (i > 600) throw new Error('kmsd printed no "http listening on" line');
      else await sleep(50);
    }
    const key = await kms(client, 'CreateAccessKey', { Principal: 'bench' });
    const hsmKey = (await kms(client, 'CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const post = (port: number): Promise<number> => {
      const body = signed(key.AccessKeyId as string, key.AccessKeySecret as string, hsmKey);
      return postOnce(agent, port, { 'content-type': 'application/x-www-form-urlencoded' }, body, 'Encrypt over HTTP (Alibaba)');
    };
    const sides = [
      { name: 'echo (node:http JSON, no work; baseline)', pid: echo.child.pid, once: () => post(echo.port) },
      { name: 'Encrypt, HSM key, Alibaba V2', pid: k.child.pid, once: () => post(httpPort) },
    ];
    return { rows: await echoVersusKmsd(sides), verifyMicros };
  } finally {
    agent.destroy();
    client.close();
    await stopChild(echo.child);
    await stopChild(k.child);
  }
}

const XKS_PLAINTEXT = 4096;
const XKS_CONCURRENCY = 64;

/**
 * SigV4 for service kms-xks-proxy over host and x-amz-date, as AWS KMS signs XKS requests (the
 * spec's Appendix A), with node:crypto so the load generator costs about what a gRPC client does.
 */
function xksSigned(cred: { AccessKeyId: string; SecretAccessKey: string }, host: string, urlPath: string, body: string): Record<string, string> {
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}Z$/, 'Z');
  const day = amzDate.slice(0, 8);
  const scope = `${day}/us-east-1/kms-xks-proxy/aws4_request`;
  const sha = (x: string) => crypto.createHash('sha256').update(x).digest('hex');
  const creq = `POST\n${urlPath}\n\nhost:${host}\nx-amz-date:${amzDate}\n\nhost;x-amz-date\n${sha(body)}`;
  let key: Buffer = crypto.createHmac('sha256', `AWS4${cred.SecretAccessKey}`).update(day).digest();
  for (const part of ['us-east-1', 'kms-xks-proxy', 'aws4_request']) key = crypto.createHmac('sha256', key).update(part).digest();
  const signature = crypto.createHmac('sha256', key).update(`AWS4-HMAC-SHA256\n${amzDate}\n${scope}\n${sha(creq)}`).digest('hex');
  return {
    host,
    'content-type': 'application/json',
    'x-amz-date': amzDate,
    authorization: `AWS4-HMAC-SHA256 Credential=${cred.AccessKeyId}/${scope}, SignedHeaders=host;x-amz-date, Signature=${signature}`,
  };
}

/**
 * XKS Encrypt of 4 KiB on an HSM key at concurrency 64 over HTTP keep-alive (plain, and with the
 * Ciphertext Data Integrity Value, which adds a decrypt), against unary gRPC Encrypt of the same
 * plaintext on the same kmsd, in interleaved windows. AWS KMS expects an answer within 250 ms.
 */
async function xksSection(): Promise<XksRow[]> {
  const dataDir = tmpDir('kmsd-bench-xks-');
  const logFile = path.join(dataDir, 'kmsd.log');
  const { child, port } = await startChild([path.join(ROOT, 'bin', 'kmsd.js'), '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], { KMS_WRAPPING_KEY_POOL_SIZE: '0' }, logFile);
  const client = new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  const agent = new http.Agent({ keepAlive: true, maxSockets: XKS_CONCURRENCY });
  try {
    let httpPort = 0;
    for (let i = 0; i < 200 && !httpPort; i++) {
      const m = /http listening on 127\.0\.0\.1:(\d+)/.exec(fs.readFileSync(logFile, 'utf8'));
      if (m) httpPort = Number(m[1]);
      else await sleep(50);
    }
    if (!httpPort) throw new Error('kmsd did not print its HTTP address');
    const keyId = (await kms(client, 'CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const cred = (await kms(client, 'CreateXksKeyStore', { UriPathPrefix: 'bench' })) as { AccessKeyId: string; SecretAccessKey: string };
    await kms(client, 'CreateXksKey', { UriPathPrefix: 'bench', KeyId: keyId, ExternalKeyId: 'bench-key', Operations: 'ENCRYPT,DECRYPT' });
    const plaintext = crypto.randomBytes(XKS_PLAINTEXT).toString('base64');
    const host = `127.0.0.1:${httpPort}`;
    const urlPath = '/bench/kms/xks/v1/keys/bench-key/encrypt';
    const xks = (cdiv: boolean) => async () => {
      const body = JSON.stringify({
        requestMetadata: { awsPrincipalArn: 'arn:aws:iam::123456789012:user/bench', kmsKeyArn: 'arn:aws:kms:us-east-1:123456789012:key/bench', kmsOperation: 'Encrypt', kmsRequestId: crypto.randomUUID() },
        plaintext,
        encryptionAlgorithm: 'AES_GCM',
        ...(cdiv ? { ciphertextDataIntegrityValueAlgorithm: 'SHA_256' } : {}),
      });
      await new Promise<void>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port: httpPort, method: 'POST', path: urlPath, headers: xksSigned(cred, host, urlPath, body), agent }, (res) => {
          res.resume();
          res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`XKS Encrypt answered ${res.statusCode}`))));
        });
        req.on('error', reject);
        req.end(body);
      });
      return 1;
    };
    const runs = [
      { workload: `unary gRPC Encrypt, HSM key, ${XKS_PLAINTEXT} B (baseline)`, once: async () => (await kms(client, 'Encrypt', { KeyId: keyId, Plaintext: plaintext, EncryptionContext: {} }), 1) },
      { workload: `XKS Encrypt, HSM key, ${XKS_PLAINTEXT} B`, once: xks(false) },
      { workload: `XKS Encrypt with CDIV, HSM key, ${XKS_PLAINTEXT} B`, once: xks(true) },
    ];
    for (const r of runs) await load(XKS_CONCURRENCY, GRPC_WARM_MS, r.once);
    const windows: Window[][] = runs.map(() => []);
    for (let round = 0; round < GRPC_ROUNDS; round++) {
      const order = round % 2 === 0 ? [0, 1, 2] : [2, 1, 0];
      for (const w of order) windows[w].push(await load(XKS_CONCURRENCY, GRPC_WINDOW_MS, runs[w].once));
    }
    const sums = windows.map(summed);
    return runs.map((r, i) => {
      process.stderr.write(`[bench] ${r.workload} c=${XKS_CONCURRENCY}: ${r0(sums[i].requestsPerSec)} req/s, p99 ${r2(sums[i].p99)} ms\n`);
      return { workload: r.workload, concurrency: XKS_CONCURRENCY, requestsPerSec: r0(sums[i].requestsPerSec), ratio: r2(sums[i].requestsPerSec / sums[0].requestsPerSec), p50Ms: r2(sums[i].p50), p99Ms: r2(sums[i].p99) };
    });
  } finally {
    agent.destroy();
    client.close();
    await stopChild(child);
  }
}

interface KmsctlRow {
  command: string;
  runs: number;
  minMs: number;
  p50Ms: number;
  ratio: number;
}

/** Section 7: whole kmsctl processes, each command once per round so that load weighs on all alike. */
async function kmsctlStartupSection(): Promise<KmsctlRow[]> {
  const k = await startKmsd('kmsctl', {});
  try {
    const kmsctl = path.join(ROOT, 'bin', 'kmsctl.js');
    const commands: [string, string[]][] = [
      ['node -e 0', ['-e', '0']],
      ['kmsctl ListKeys', [kmsctl, '--endpoint', `127.0.0.1:${k.port}`, 'ListKeys']],
      ['kmsctl --help', [kmsctl, '--help']],
    ];
    const runs = QUICK ? 5 : 15;
    const times = commands.map(() => [] as number[]);
    for (let round = -1; round < runs; round++) {
      commands.forEach(([name, args], i) => {
        const t0 = process.hrtime.bigint();
        const r = spawnSync(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        if (r.status !== 0) throw new Error(`${name} exited ${r.status}: ${r.stderr?.toString().slice(0, 500)}`);
        if (round >= 0) times[i].push(ms); // round -1 warms the file cache
      });
    }
    const p50 = times.map((t) => percentile(sortedOf(t), 50));
    return commands.map(([name], i) => ({ command: name, runs, minMs: r2(Math.min(...times[i])), p50Ms: r2(p50[i]), ratio: r2(p50[i] / p50[0]) }));
  } finally {
    k.client.close();
    await stopChild(k.child);
  }
}

// ================================================================== 8. replicas

interface ReplicaRow {
  workload: string;
  concurrency: number;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU per call, µs: kmsd's main threads (the event loop), all kmsd threads, and this bench process (the client). */
  cpuMicrosPerCall: { kmsdMain: number; kmsdAll: number; client: number } | null;
}

interface ReplicasResult {
  concurrency: number;
  /** Unary Encrypt on an HSM key, raw grpc-js client as in section 2: SQLite store (baseline), PostgreSQL store. */
  store: ReplicaRow[];
  postgresVsSqlite: number;
  /** KmsClient round robin on one replica (baseline) and on two, same PostgreSQL store and token, same total concurrency. */
  replicas: ReplicaRow[];
  twoVsOne: number;
}

/**
 * Alternates windows of each side (order reversed every other round) and sums them, with the CPU
 * the given kmsd processes and this process spent in them.
 */
async function alternated(concurrency: number, sides: { workload: string; pids: (number | undefined)[]; once: () => Promise<number> }[]): Promise<ReplicaRow[]> {
  for (let i = 0; i < 3; i++) for (const side of sides) await load(concurrency, GRPC_WARM_MS, side.once);
  const windows = sides.map(() => [] as Window[]);
  const cpu = sides.map(() => ({ main: 0, all: 0, client: 0, known: true }));
  for (let round = 0; round < GRPC_ROUNDS; round++) {
    const order = sides.map((_, i) => i);
    if (round % 2 === 1) order.reverse();
    for (const i of order) {
      const before = sides[i].pids.map(processCpuMs);
      const client = process.cpuUsage();
      windows[i].push(await load(concurrency, GRPC_WINDOW_MS, sides[i].once));
      const used = process.cpuUsage(client);
      cpu[i].client += (used.user + used.system) / 1000;
      sides[i].pids.forEach((pid, j) => {
        const after = processCpuMs(pid);
        const b = before[j];
        if (b && after) {
          cpu[i].main += after.main - b.main;
          cpu[i].all += after.all - b.all;
        } else cpu[i].known = false;
      });
    }
  }
  return sides.map((side, i) => {
    const r = summed(windows[i]);
    const n = windows[i].reduce((a, w) => a + w.requests, 0);
    const perCall = (ms: number) => r2((ms * 1000) / n);
    process.stderr.write(`[bench] replicas: ${side.workload} c=${concurrency}: ${r0(r.requestsPerSec)} req/s\n`);
    return {
      workload: side.workload,
      concurrency,
      requestsPerSec: r0(r.requestsPerSec),
      p50Ms: r2(r.p50),
      p99Ms: r2(r.p99),
      cpuMicrosPerCall: cpu[i].known && n > 0 ? { kmsdMain: perCall(cpu[i].main), kmsdAll: perCall(cpu[i].all), client: perCall(cpu[i].client) } : null,
    };
  });
}

/**
 * Section 8: kmsd on a throwaway PostgreSQL cluster (scripts/throwaway/postgres.ts, as the tests
 * start it) against kmsd on SQLite, each on its own SoftHSM token given as a production token; then
 * two replicas on that PostgreSQL database sharing one token, behind KmsClient's round robin, against
 * one of them alone. Everything runs on this machine's cores, bench client included.
 */
async function replicasSection(): Promise<ReplicasResult> {
  const c = 64;
  const payload = crypto.randomBytes(GRPC_PAYLOAD).toString('base64');
  const cluster = await startPostgres();
  const tokens: ExternalToken[] = [];
  const started: ChildProcess[] = [];
  const closers: (() => void)[] = [];
  try {
    const db = await cluster.createDatabase();
    const sqliteToken = createExternalToken('kmsd-bench-sqlite');
    const sharedToken = createExternalToken('kmsd-bench-replicas');
    tokens.push(sqliteToken, sharedToken);
    // Also removed by cleanup() when the run is interrupted (the cluster has its own exit hook).
    tmpDirs.push(sqliteToken.dir, sharedToken.dir);
    const start = async (name: string, token: ExternalToken, store: string[]) => {
      const dataDir = tmpDir(`kmsd-bench-${name}-`);
      const k = await startChild([path.join(ROOT, 'bin', 'kmsd.js'), '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...token.args, ...store], { ...token.env, KMS_WRAPPING_KEY_POOL_SIZE: '0' }, path.join(dataDir, 'kmsd.log'));
      started.push(k.child);
      const client = new grpc.Client(`127.0.0.1:${k.port}`, grpc.credentials.createInsecure());
      closers.push(() => client.close());
      return { ...k, client, endpoint: `127.0.0.1:${k.port}` };
    };
    const pgStore = ['--store', db.url, '--store-password-file', db.passwordFile];
    const lite = await start('sqlite', sqliteToken, []);
    const a = await start('replica-a', sharedToken, pgStore);
    // CreateKey waits for the token: once it answers, replica a has bound the store and the token,
    // and the second replica finds them bound (replicas start one at a time).
    const pgKey = (await kms(a.client, 'CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const liteKey = (await kms(lite.client, 'CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const b = await start('replica-b', sharedToken, pgStore);
    await kms(b.client, 'Encrypt', { KeyId: pgKey, Plaintext: payload, EncryptionContext: {} });

    // A kmsd's first seconds are not its steady state (the start-up token walk, then the JIT on the
    // data path; the PostgreSQL store's code is more of it): without this wait and a longer warm-up
    // (alternated's) the first pair measured PostgreSQL at 0.7-0.9 of SQLite, and the same pair run
    // again right after at 0.9-1.1.
    for (const k of [lite, a, b]) {
      for (let i = 0; (await kms(k.client, 'DescribeHsm')).ReconciliationRunning; i++) {
        if (i > 600) throw new Error(`kmsd on ${k.endpoint} did not finish its start-up reconciliation`);
        await sleep(50);
      }
    }
    const encReq = (keyId: string) => ({ KeyId: keyId, Plaintext: payload, EncryptionContext: {} });
    const store = await alternated(c, [
      { workload: 'Encrypt, HSM key, SQLite store (baseline)', pids: [lite.child.pid], once: async () => (await kms(lite.client, 'Encrypt', encReq(liteKey)), 1) },
      { workload: 'Encrypt, HSM key, PostgreSQL store', pids: [a.child.pid], once: async () => (await kms(a.client, 'Encrypt', encReq(pgKey)), 1) },
    ]);
    // The SQLite kmsd is idle from here on; stopped so that it holds nothing of the two cores.
    await stopChild(lite.child);

    const one = new KmsClient({ endpoint: [a.endpoint] });
    const two = new KmsClient({ endpoint: [a.endpoint, b.endpoint] });
    closers.push(() => one.close(), () => two.close());
    const plaintext = crypto.randomBytes(GRPC_PAYLOAD);
    const replicas = await alternated(c, [
      { workload: 'KmsClient Encrypt, HSM key, 1 replica (baseline)', pids: [a.child.pid], once: async () => (await one.encrypt(pgKey, plaintext), 1) },
      { workload: 'KmsClient Encrypt, HSM key, 2 replicas round robin', pids: [a.child.pid, b.child.pid], once: async () => (await two.encrypt(pgKey, plaintext), 1) },
    ]);
    return {
      concurrency: c,
      store,
      postgresVsSqlite: r2(store[1].requestsPerSec / store[0].requestsPerSec),
      replicas,
      twoVsOne: r2(replicas[1].requestsPerSec / replicas[0].requestsPerSec),
    };
  } finally {
    for (const close of closers) close();
    for (const child of started) await stopChild(child);
    await cluster.stop();
    for (const t of tokens) t.cleanup();
  }
}

function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map((c) => String(c)))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(cells[0]), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

async function main(): Promise<void> {
  const started = Date.now();
  process.on('SIGINT', () => {
    cleanup();
    process.exit(130);
  });
  // Output piped into a reader that went away: stop the children and remove the temp dirs instead
  // of dying on the unhandled EPIPE with both left behind.
  for (const out of [process.stdout, process.stderr]) {
    out.on('error', () => {
      cleanup();
      process.exit(1);
    });
  }
  const loadBefore = os.loadavg().map(r2);
  const ops = want('per-op') ? await perOperation() : { rows: [] as OpRow[], threads: DEFAULT_NATIVE_THREADS };
  const g = want('grpc') ? await grpcSection() : { rows: [] as GrpcRow[], kmsdThreads: 0, nativeAddon: false, counters: {}, streamVsAddon: null };
  const rsa = want('rsa') ? await rsaSection() : [];
  const awsHttp = want('aws-http') ? await awsHttpSection() : null;
  const alibabaHttp = want('alibaba-http') ? await alibabaHttpSection() : null;
  const xks = want('xks') ? await xksSection() : [];
  const kmsctl = want('kmsctl') ? await kmsctlStartupSection() : [];
  const replicas = want('replicas') ? await replicasSection() : null;
  const loadAfter = os.loadavg().map(r2);

  const hsm64 = g.rows.find((r) => r.workload.startsWith('Encrypt, HSM') && r.concurrency === 64);
  const warm = rsa[1];
  const targets = [
    ...(hsm64
      ? [
          { target: 'unary Encrypt (HSM key) req/s at concurrency 64 >= 0.85 x echo', achieved: hsm64.ratio, goal: 0.85, met: hsm64.ratio >= 0.85 },
          { target: 'kmsd event-loop delay p99 under that load (unary Encrypt HSM, c=64) < 20 ms', achieved: hsm64.eventLoopDelayP99Ms as number, goal: 20, met: (hsm64.eventLoopDelayP99Ms as number) < 20 },
        ]
      : []),
    // kmsd's whole stream path against the token's own batch ceiling (the addon-vs-pkcs11js ratio it
    // replaces measured SoftHSM's serialization, not kmsd).
    ...(g.streamVsAddon
      ? [{ target: `EncryptStream (HSM, ${BATCH} items/message, c=64) items/s >= 0.9 x the addon's in-process batch of ${BATCH}`, achieved: g.streamVsAddon.ratio, goal: 0.9, met: g.streamVsAddon.ratio >= 0.9 }]
      : []),
    // Issue 10: Encrypt on an HSM key over each HTTP dialect at c=64 against the node:http echo.
    ...[
      { name: 'AWS SigV4', rows: awsHttp?.rows },
      { name: 'Alibaba V2', rows: alibabaHttp?.rows },
    ].flatMap(({ name, rows }) => {
      const r = rows?.find((x) => x.workload.startsWith('Encrypt') && x.concurrency === 64);
      return r ? [{ target: `Encrypt (HSM key) over HTTP, ${name}, keep-alive, req/s at concurrency 64 >= 0.8 x node:http echo`, achieved: r.ratio, goal: 0.8, met: r.ratio >= 0.8 }] : [];
    }),
    ...(warm ? [{ target: 'GetParametersForImport p50: warm pool >= 20 x faster than on demand', achieved: warm.speedup, goal: 20, met: warm.speedup >= 20 }] : []),
    // The data path reads CMK metadata from the replica's cache, not from the store.
    ...(replicas ? [{ target: 'unary Encrypt (HSM key, c=64): PostgreSQL store vs SQLite store >= 0.9', achieved: replicas.postgresVsSqlite, goal: 0.9, met: replicas.postgresVsSqlite >= 0.9 }] : []),
  ];
  const result = {
    when: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? '', node: process.version, platform: `${os.platform()} ${os.release()}`, loadAverageBefore: loadBefore, loadAverageAfter: loadAfter },
    quick: QUICK,
    nativeThreads: { daemonDefault: ops.threads, kmsdRunning: g.kmsdThreads, kmsdNativeAddon: g.nativeAddon },
    perOperation: ops.rows,
    grpc: { payloadBytes: GRPC_PAYLOAD, rows: g.rows, kmsdCounters: g.counters, streamVsAddon: g.streamVsAddon },
    rsaWrapping: rsa,
    awsHttp,
    alibabaHttp,
    xksProxy: xks,
    kmsctlStartup: kmsctl,
    replicas,
    targets,
    seconds: Math.round((Date.now() - started) / 1000),
  };
  fs.mkdirSync(path.dirname(OUT), { recursive: true });
  fs.writeFileSync(OUT, JSON.stringify(result, null, 2) + '\n');

  const httpTable = (rows: AwsHttpRow[]) =>
    table(
      ['workload', 'conc', 'req/s', 'x echo', 'p50 ms', 'p99 ms', 'CPU µs/req main/all'],
      rows.map((r) => [r.workload, r.concurrency, r.requestsPerSec, r.ratio.toFixed(2), r.p50Ms, r.p99Ms, r.cpuMicrosPerCall ? `${r.cpuMicrosPerCall.main} / ${r.cpuMicrosPerCall.all}` : '-']),
    );
  const out: string[] = [];
  out.push(`kmsd benchmark, ${result.when}, ${result.machine.cpus} CPUs (${result.machine.cpuModel}), node ${process.version}${QUICK ? ', QUICK run' : ''}`);
  out.push(`load average (1/5/15 min) before: ${loadBefore.join(' ')}, after: ${loadAfter.join(' ')}; a 1-minute figure near or above ${result.machine.cpus} means other processes shared these CPUs`);
  if (ops.rows.length) out.push('', `1. Per operation (in process, SoftHSM token; baseline: pkcs11js sync of the same size; daemon default addon threads: ${ops.threads})`);
  if (ops.rows.length) out.push(table(['size', 'method', 'ops/s', 'MiB/s', 'x baseline'], ops.rows.map((r) => [r.size, r.method, r.opsPerSec, r.mibPerSec, r.ratio.toFixed(2)])));
  if (g.rows.length) out.push('', `2. gRPC on loopback, ${GRPC_PAYLOAD} B payload (baseline: echo req/s at the same concurrency; ratio = items/s / baseline; kmsd addon threads: ${g.kmsdThreads}, addon loaded: ${g.nativeAddon})`);
  if (g.rows.length) out.push(table(['workload', 'conc', 'req/s', 'items/s', 'x echo', 'p50 ms', 'p99 ms', 'kmsd ELD p99 ms'], g.rows.map((r) => [r.workload, r.concurrency, r.requestsPerSec, r.itemsPerSec, r.ratio.toFixed(2), r.p50Ms, r.p99Ms, r.eventLoopDelayP99Ms ?? '-'])));
  if (rsa.length) out.push('', '3. RSA wrapping (baseline: on-demand p50; x = baseline / p50, i.e. times faster)');
  if (rsa.length) out.push(table(['figure', 'n', 'p50 ms', 'x baseline'], rsa.map((r) => [r.figure, r.samples, r.p50Ms, r.speedup.toFixed(2)])));
  if (awsHttp) {
    const aws64 = awsHttp.rows.find((r) => r.workload.startsWith('Encrypt') && r.concurrency === 64);
    out.push('', `4. AWS dialect over HTTP/1.1 keep-alive, ${GRPC_PAYLOAD} B payload (baseline: node:http JSON echo req/s at the same concurrency, same signed requests)`);
    out.push(httpTable(awsHttp.rows));
    out.push(`SigV4 verification per call (in process): ${awsHttp.verifyMicros.warm} µs with the signing key cached, ${awsHttp.verifyMicros.cold} µs deriving it; goal at c=64: >= 0.8 x echo, achieved ${aws64?.ratio ?? '-'}`);
  }
  if (alibabaHttp) {
    const ali64 = alibabaHttp.rows.find((r) => r.workload.startsWith('Encrypt') && r.concurrency === 64);
    out.push('', `5. Alibaba dialect over HTTP/1.1 keep-alive, ${GRPC_PAYLOAD} B payload, signature V2 (baseline: node:http JSON echo req/s at the same concurrency, same signed requests)`);
    out.push(httpTable(alibabaHttp.rows));
    out.push(`V2 verification per call (in process, parameters read and HMAC-SHA1): ${alibabaHttp.verifyMicros} µs; goal at c=64: >= 0.8 x echo, achieved ${ali64?.ratio ?? '-'}`);
  }
  if (xks.length) out.push('', `6. AWS external key store proxy (XKS Encrypt over HTTP keep-alive, SigV4; baseline: unary gRPC Encrypt of the same ${XKS_PLAINTEXT} B at the same concurrency, interleaved; goal >= 0.8, AWS KMS times out at 250 ms)`);
  if (xks.length) out.push(table(['workload', 'conc', 'req/s', 'x gRPC', 'p50 ms', 'p99 ms'], xks.map((r) => [r.workload, r.concurrency, r.requestsPerSec, r.ratio.toFixed(2), r.p50Ms, r.p99Ms])));
  if (kmsctl.length) out.push('', `7. kmsctl start-up, whole process, wall time (baseline: node -e 0 in the same rounds; goal: kmsctl ListKeys p50 <= 250 ms, achieved ${kmsctl[1].p50Ms} ms)`);
  if (kmsctl.length) out.push(table(['command', 'runs', 'min ms', 'p50 ms', 'x node -e 0'], kmsctl.map((r) => [r.command, r.runs, r.minMs, r.p50Ms, r.ratio.toFixed(2)])));
  if (replicas) {
    const replicaTable = (rows: ReplicaRow[]) =>
      table(
        ['workload', 'conc', 'req/s', 'x baseline', 'p50 ms', 'p99 ms', 'CPU µs/req kmsd main/all, client'],
        rows.map((r) => [r.workload, r.concurrency, r.requestsPerSec, r2(r.requestsPerSec / rows[0].requestsPerSec).toFixed(2), r.p50Ms, r.p99Ms, r.cpuMicrosPerCall ? `${r.cpuMicrosPerCall.kmsdMain} / ${r.cpuMicrosPerCall.kmsdAll}, ${r.cpuMicrosPerCall.client}` : '-']),
      );
    out.push('', `8. Replicas: the PostgreSQL store against SQLite (unary gRPC Encrypt as in 2, ${GRPC_PAYLOAD} B, each kmsd on its own SoftHSM token; goal >= 0.9, achieved ${replicas.postgresVsSqlite})`);
    out.push(replicaTable(replicas.store));
    out.push(`Two replicas (one PostgreSQL database, one SoftHSM token) behind KmsClient's round robin against one, same total concurrency, on these ${result.machine.cpus} CPUs: x ${replicas.twoVsOne} (no goal: it shows the overhead)`);
    out.push(replicaTable(replicas.replicas));
  }
  out.push('', 'Targets');
  out.push(table(['target', 'achieved', 'goal', 'met'], targets.map((t) => [t.target, t.achieved, t.goal, t.met ? 'yes' : 'NO'])));
  out.push('', `Wrote ${path.relative(process.cwd(), OUT) || OUT} in ${result.seconds} s.`);
  process.stdout.write(out.join('\n') + '\n');
}

if (process.argv.includes('--scale')) {
  // Its own run (scripts/bench-scale.ts): N HSM keys, start-up, reconciliation, cold and warm Encrypt.
  runScale(Number(process.argv[process.argv.indexOf('--scale') + 1])).then(
    () => process.exit(0),
    (e) => {
      process.stderr.write(`bench --scale failed: ${(e as Error).stack ?? e}\n`);
      process.exit(1);
    },
  );
} else if (process.argv.includes('--echo-server')) {
  echoServer().catch((e) => {
    process.stderr.write(`echo server: ${(e as Error).message}\n`);
    process.exit(1);
  });
} else {
  main().then(
    () => {
      cleanup();
      process.exit(0);
    },
    (e) => {
      process.stderr.write(`bench failed: ${(e as Error).stack ?? e}\n`);
      cleanup();
      process.exit(1);
    },
  );
}
