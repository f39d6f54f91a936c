// Sustained load on kmsd (issue 6, item 6): N concurrent clients, each on its own gRPC connection,
// doing a realistic mix (mostly Encrypt / Decrypt / GenerateDataKey on HSM and SOFTWARE CMKs, some
// ReEncrypt and metadata reads, a trickle of CreateKey, CreateKeyVersion and deletions) for a while,
// checking every answer. Prints requests, errors by code, latency percentiles, and the daemon's RSS,
// open file descriptors and threads at the start (after warm-up) and the end.
//
//   node dist/scripts/soak.js [--seconds 300] [--clients 64] [--endpoint HOST:PORT] [--json]
//                             [--daemon-heap-mb N] [--max-rss-growth-mb N] [--steady]
//
// Without --endpoint it starts its own kmsd (bin/kmsd.js, a fresh data directory and development
// token, stopped and removed at the end) so it can read the daemon's /proc figures. Exit code 1 when
// any request failed unexpectedly or RSS grew by more than --max-rss-growth-mb (default 128).
// --daemon-heap-mb caps the daemon's V8 old space (--max-old-space-size): V8 grows its heap lazily,
// so RSS rises for minutes without a leak; with a small cap a leak ends in errors or an OOM crash.
// The realistic mix keeps creating CMKs and versions (the token and SQLite grow with them);
// --steady leaves those out, so RSS should level off (the clean leak check).
// Token sessions: kmsd holds one pkcs11js session plus one per native worker thread, a fixed number
// (SoftHSM itself reports no session count: CK_UNAVAILABLE_INFORMATION); DescribeRuntime gives the
// worker count and how many worker sessions had to be reopened, printed at the start and the end.

import { ChildProcess, spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { KmsClient, KmsClientError } from '../src/client/client';
import { serviceConstructor } from '../src/api/proto';

/**
 * A client on its own HTTP/2 connection: grpc-js shares one connection among channels to the same
 * target unless told otherwise, and a soak of 64 clients over one connection would test less.
 */
class OwnConnectionClient {
  private readonly stub: grpc.Client & Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  constructor(endpoint: string) {
    const Ctor = serviceConstructor('KeyManagementService');
    this.stub = new Ctor(endpoint, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as grpc.Client & Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  }
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  call(action: string, req: object): Promise<any> {
    return new Promise((resolve, reject) =>
      this.stub[action](req, new grpc.Metadata(), { deadline: Date.now() + 30_000 }, (err: grpc.ServiceError | null, res: unknown) => {
        if (!err) return resolve(res);
        reject(new KmsClientError(err.metadata?.get('kms-error-code')?.[0]?.toString() ?? grpc.status[err.code], err.details, err.code));
      }),
    );
  }
  encrypt(keyId: string, plaintext: Buffer, ctx?: Record<string, string>) {
    return this.call('Encrypt', { KeyId: keyId, Plaintext: plaintext.toString('base64'), EncryptionContext: ctx ?? {} });
  }
  async decrypt(blob: string, ctx?: Record<string, string>) {
    const r = await this.call('Decrypt', { CiphertextBlob: blob, EncryptionContext: ctx ?? {} });
    return { ...r, Plaintext: Buffer.from(r.Plaintext, 'base64') };
  }
  describeKey(keyId: string) {
    return this.call('DescribeKey', { KeyId: keyId });
  }
  createKey(req: object) {
    return this.call('CreateKey', req);
  }
  close() {
    this.stub.close();
  }
}

export interface SoakOptions {
  seconds: number;
  clients: number;
  endpoint?: string;
  /** Extra environment for the kmsd this starts. */
  env?: Record<string, string>;
  warmupSeconds?: number;
  /** No CreateKey / CreateKeyVersion: a fixed working set, so memory should be flat (a leak check). */
  steady?: boolean;
  log?: (line: string) => void;
}

export interface ProcFigures {
  rssMb: number;
  fds: number;
  threads: number;
}

export interface SoakReport {
  seconds: number;
  clients: number;
  requests: number;
  requestsPerSecond: number;
  errors: number;
  errorsByCode: Record<string, number>;
  byAction: Record<string, number>;
  latencyMs: { p50: number; p95: number; p99: number; max: number };
  /** Before the clients connect. */
  baseline?: ProcFigures;
  /** After warm-up. */
  start?: ProcFigures;
  end?: ProcFigures;
  maxRssMb?: number;
  /** RSS every tenth of the run, MB: whether it levels off. */
  rssTrendMb?: number[];
  /** After the load, idle for a moment: fds and threads back to where they were. */
  settled?: ProcFigures;
  hsmCounters?: Record<string, number>;
  /** From DescribeRuntime when the daemon has it: native worker sessions and how many were reopened. */
  sessions?: { start?: { pkcs11js: number; native: number; reopened: number }; end?: { pkcs11js: number; native: number; reopened: number } };
  firstErrors: string[];
}

function procFigures(pid: number): ProcFigures | undefined {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0);
    const threads = Number(/Threads:\s+(\d+)/.exec(status)?.[1] ?? 0);
    return { rssMb: Math.round((rss / 1024) * 10) / 10, fds: fs.readdirSync(`/proc/${pid}/fd`).length, threads };
  } catch {
    return undefined;
  }
}

async function startOwnKmsd(env: Record<string, string>): Promise<{ endpoint: string; pid: number; child: ChildProcess; dataDir: string; exited: Promise<number | null> }> {
  const root = path.resolve(__dirname, '..', ...(__dirname.includes(`${path.sep}dist${path.sep}`) ? ['..'] : []));
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-soak-'));
  const child = spawn(process.execPath, [path.join(root, 'bin', 'kmsd.js'), '--data-dir', dataDir, '--listen', '127.0.0.1:0'], {
    env: { ...process.env, KMS_LOG_LEVEL: 'info', KMS_RATE_LIMIT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let tail = '';
  // The daemon logs every call; keep only what is needed to find the port and report a failure.
  child.stdout!.on('data', (d: Buffer) => {
    if (out.length < 65536) out += d.toString();
    tail = (tail + d.toString()).slice(-4096);
  });
  child.stderr!.on('data', (d: Buffer) => (tail = (tail + d.toString()).slice(-4096)));
  const exited = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  for (let i = 0; i < 1200; i++) {
    const m = /listening on (127\.0\.0\.1:\d+)/.exec(out);
    if (m) return { endpoint: m[1], pid: child.pid!, child, dataDir, exited };
    if (child.exitCode !== null) throw new Error(`kmsd exited during start-up:\n${tail}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error(`kmsd did not start:\n${tail}`);
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return Math.round(sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] * 10) / 10;
}

export async function runSoak(o: SoakOptions): Promise<SoakReport> {
  const log = o.log ?? (() => undefined);
  const own = o.endpoint ? null : await startOwnKmsd(o.env ?? {});
  const endpoint = o.endpoint ?? own!.endpoint;
  const admin = new KmsClient({ endpoint, deadlineMs: 30_000 });
  const report: SoakReport = { seconds: o.seconds, clients: o.clients, requests: 0, requestsPerSecond: 0, errors: 0, errorsByCode: {}, byAction: {}, latencyMs: { p50: 0, p95: 0, p99: 0, max: 0 }, firstErrors: [] };
  try {
    // The working set: HSM and SOFTWARE CMKs, some with aliases and context-bound data.
    const keys: string[] = [];
    for (let i = 0; i < 8; i++) keys.push((await admin.createKey({ ProtectionLevel: i % 2 ? 'HSM' : 'SOFTWARE', Description: `soak ${i}` })).KeyMetadata.KeyId);
    for (let i = 0; i < 4; i++) await admin.call('CreateAlias', { AliasName: `alias/soak-${i}-${crypto.randomUUID().slice(0, 8)}`, KeyId: keys[i] });
    if (own) report.baseline = procFigures(own.pid);
    const sessions = async () => {
      try {
        const r = await admin.call('DescribeRuntime', {});
        return { pkcs11js: 1, native: Number(r.NativeThreads ?? 0), reopened: Number(r.NativeSessionsReopened ?? 0) };
      } catch {
        return undefined; // an older daemon without DescribeRuntime
      }
    };
    report.sessions = { start: await sessions() };
    const latencies: number[] = [];
    const deadline = Date.now() + o.seconds * 1000;
    const warmupEnd = Date.now() + (o.warmupSeconds ?? Math.min(3, o.seconds / 5)) * 1000;
    let maxRss = 0;
    const trendEvery = Math.max(1, Math.round((o.seconds * 1000) / 10 / 250));
    let ticks = 0;
    report.rssTrendMb = [];
    const sampler = setInterval(() => {
      if (!own) return;
      const f = procFigures(own.pid);
      if (!f) return;
      maxRss = Math.max(maxRss, f.rssMb);
      if (++ticks % trendEvery === 0) report.rssTrendMb!.push(f.rssMb);
      if (!report.start && Date.now() >= warmupEnd) report.start = f;
    }, 250);
    sampler.unref();

    const fail = (action: string, e: unknown) => {
      const code = e instanceof KmsClientError ? e.code : 'ClientCheck';
      report.errors++;
      report.errorsByCode[code] = (report.errorsByCode[code] ?? 0) + 1;
      if (report.firstErrors.length < 10) report.firstErrors.push(`${action}: ${code} ${(e as Error).message}`);
    };

    const worker = async (n: number) => {
      const c = new OwnConnectionClient(endpoint);
      const mine: { keyId: string; blob: string; plaintext: string; ctx: Record<string, string> }[] = [];
      try {
        while (Date.now() < deadline) {
          const r = o.steady ? Math.random() * 0.985 : Math.random();
          const keyId = keys[Math.floor(Math.random() * keys.length)];
          const ctx = { tenant: `t${n % 8}`, purpose: 'soak' };
          const t0 = performance.now();
          let action = '';
          try {
            if (r < 0.3) {
              action = 'Encrypt';
              const plaintext = crypto.randomBytes(32 + Math.floor(Math.random() * 512)).toString('base64');
              const e = await c.encrypt(keyId, Buffer.from(plaintext), ctx);
              if (mine.length < 32) mine.push({ keyId, blob: e.CiphertextBlob, plaintext, ctx });
              else mine[Math.floor(Math.random() * mine.length)] = { keyId, blob: e.CiphertextBlob, plaintext, ctx };
            } else if (r < 0.55) {
              action = 'Decrypt';
              const item = mine[Math.floor(Math.random() * mine.length)];
              if (!item) continue;
              const d = await c.decrypt(item.blob, item.ctx);
              if (d.Plaintext.toString() !== item.plaintext) throw new Error('Decrypt returned other bytes');
            } else if (r < 0.7) {
              action = 'GenerateDataKey';
              const g = await c.call('GenerateDataKey', { KeyId: keyId, KeySpec: 'AES_256', EncryptionContext: ctx });
              if (Buffer.from(g.Plaintext, 'base64').length !== 32) throw new Error('GenerateDataKey returned a key of the wrong size');
            } else if (r < 0.75) {
              action = 'GenerateDataKeyWithoutPlaintext';
              await c.call('GenerateDataKeyWithoutPlaintext', { KeyId: keyId, NumberOfBytes: 64 });
            } else if (r < 0.8) {
              action = 'ReEncrypt';
              const item = mine[Math.floor(Math.random() * mine.length)];
              if (!item) continue;
              const re = await c.call('ReEncrypt', { CiphertextBlob: item.blob, SourceEncryptionContext: item.ctx, DestinationKeyId: keyId, DestinationEncryptionContext: item.ctx });
              Object.assign(item, { keyId, blob: re.CiphertextBlob });
            } else if (r < 0.9) {
              action = 'DescribeKey';
              await c.describeKey(keyId);
            } else if (r < 0.94) {
              action = 'ListKeys';
              await c.call('ListKeys', { PageSize: 20 });
            } else if (r < 0.97) {
              action = 'ListAliases';
              await c.call('ListAliases', { PageSize: 20 });
            } else if (r < 0.985) {
              action = 'DescribeKeyVersion/ListKeyVersions';
              await c.call('ListKeyVersions', { KeyId: keyId });
            } else if (r < 0.993) {
              action = 'CreateKey+ScheduleKeyDeletion';
              const k = (await c.createKey({ ProtectionLevel: Math.random() < 0.5 ? 'HSM' : 'SOFTWARE' })).KeyMetadata.KeyId;
              const e = await c.encrypt(k, Buffer.from('short-lived'));
              if ((await c.decrypt(e.CiphertextBlob)).Plaintext.toString() !== 'short-lived') throw new Error('round trip failed');
              await c.call('ScheduleKeyDeletion', { KeyId: k, PendingWindowInDays: 7 });
            } else if (r < 0.996) {
              action = 'CreateKeyVersion';
              await c.call('CreateKeyVersion', { KeyId: keyId });
            } else {
              action = 'DescribeHsm';
              await c.call('DescribeHsm', {});
            }
            report.requests++;
            report.byAction[action] = (report.byAction[action] ?? 0) + 1;
            latencies.push(performance.now() - t0);
          } catch (e) {
            report.requests++;
            fail(action, e);
          }
        }
      } finally {
        c.close();
      }
    };
    log(`soak: ${o.clients} clients for ${o.seconds} s against ${endpoint}${own ? ` (kmsd pid ${own.pid})` : ''}`);
    const started = Date.now();
    await Promise.all(Array.from({ length: o.clients }, (_, i) => worker(i)));
    const took = (Date.now() - started) / 1000;
    clearInterval(sampler);
    if (own) {
      report.end = procFigures(own.pid);
      report.maxRssMb = Math.max(maxRss, report.end?.rssMb ?? 0);
      await new Promise((r) => setTimeout(r, 1500)); // connections closed, idle
      report.settled = procFigures(own.pid);
    }
    report.sessions.end = await sessions();
    const hsm = await admin.call('DescribeHsm', {});
    report.hsmCounters = hsm.Counters;
    latencies.sort((a, b) => a - b);
    report.latencyMs = { p50: percentile(latencies, 50), p95: percentile(latencies, 95), p99: percentile(latencies, 99), max: percentile(latencies, 100) };
    report.requestsPerSecond = Math.round(report.requests / took);
    return report;
  } finally {
    admin.close();
    if (own) {
      own.child.kill('SIGTERM');
      const code = await own.exited;
      if (code !== 0) log(`kmsd exited with ${code} on SIGTERM`);
      fs.rmSync(own.dataDir, { recursive: true, force: true });
    }
  }
}

function sessionLine(r: SoakReport): string {
  const s = (x?: { pkcs11js: number; native: number; reopened: number }) => (x ? `${x.pkcs11js + x.native} (1 pkcs11js + ${x.native} native workers, ${x.reopened} reopened)` : 'n/a');
  return `start ${s(r.sessions?.start)}, end ${s(r.sessions?.end)}`;
}

function parseArgs(argv: string[]): SoakOptions & { json: boolean; maxRssGrowthMb: number } {
  const o = { seconds: 300, clients: 64, json: false, maxRssGrowthMb: 128 } as SoakOptions & { json: boolean; maxRssGrowthMb: number };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--seconds') o.seconds = Number(next());
    else if (a === '--clients') o.clients = Number(next());
    else if (a === '--endpoint') o.endpoint = next();
    else if (a === '--max-rss-growth-mb') o.maxRssGrowthMb = Number(next());
    else if (a === '--daemon-heap-mb') o.env = { ...(o.env ?? {}), NODE_OPTIONS: `--max-old-space-size=${Number(next())}` };
    else if (a === '--json') o.json = true;
    else if (a === '--steady') o.steady = true;
    else throw new Error(`unknown argument ${a} (usage: soak [--seconds N] [--clients N] [--endpoint HOST:PORT] [--daemon-heap-mb N] [--max-rss-growth-mb N] [--steady] [--json])`);
  }
  if (!(o.seconds > 0) || !(o.clients > 0)) throw new Error('--seconds and --clients must be positive');
  return o;
}

if (require.main === module) {
  const o = parseArgs(process.argv.slice(2));
  runSoak({ ...o, log: (l) => process.stderr.write(l + '\n') }).then(
    (r) => {
      if (o.json) process.stdout.write(JSON.stringify(r, null, 2) + '\n');
      else {
        const f = (p?: ProcFigures) => (p ? `${p.rssMb} MB RSS, ${p.fds} fds, ${p.threads} threads` : 'n/a');
        process.stdout.write(
          [
            `requests   ${r.requests} in ${r.seconds} s (${r.requestsPerSecond}/s) by ${r.clients} clients`,
            `errors     ${r.errors}${r.errors ? ' ' + JSON.stringify(r.errorsByCode) : ''}`,
            `latency    p50 ${r.latencyMs.p50} ms, p95 ${r.latencyMs.p95} ms, p99 ${r.latencyMs.p99} ms, max ${r.latencyMs.max} ms`,
            `baseline   ${f(r.baseline)} (before the clients connect)`,
            `start      ${f(r.start)} (after warm-up)`,
            `end        ${f(r.end)} (max RSS ${r.maxRssMb ?? 'n/a'} MB)`,
            `settled    ${f(r.settled)} (clients gone, 1.5 s idle)`,
            `rss trend  ${(r.rssTrendMb ?? []).join(' ')} MB (every tenth of the run)`,
            `sessions   ${sessionLine(r)}`,
            `hsm calls  ${JSON.stringify(r.hsmCounters)}`,
            `mix        ${JSON.stringify(r.byAction)}`,
            ...r.firstErrors.map((e) => `error      ${e}`),
          ].join('\n') + '\n',
        );
      }
      const growth = r.start && r.end ? r.end.rssMb - r.start.rssMb : 0;
      if (r.errors > 0 || growth > o.maxRssGrowthMb) process.exit(1);
    },
    (e) => {
      process.stderr.write(`soak: ${(e as Error).message}\n`);
      process.exit(1);
    },
  );
}
