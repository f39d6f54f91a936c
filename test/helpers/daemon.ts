// Runs the real kmsd (dist/, as `npm start` does) on a loopback port with its own data directory
// and development SoftHSM token, and the real kmsctl against it. Every process started here is
// stopped by its pid in stop(); the temp directory is removed.
//
// With KMSD_TEST_TOKEN=opencryptoki (the vitest project of that name) the same suites run on
// opencryptoki's soft token instead: a fresh start re-initialises the machine-wide slot-3 token
// (every object gone) and passes it to kmsd as a production token, with host-assisted unwrap
// allowed as on the development token. One kmsd at a time: the project runs files one by one.
//
// With KMSD_TEST_STORE=postgres (the vitest project of that name) kmsd keeps its metadata in
// PostgreSQL instead of SQLite: the project's one cluster (test/global/postgres.ts) gives each new
// data directory a new database, and a restart on the same data directory finds the same database.

import { spawn, spawnSync, ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { inject } from 'vitest';
import { KmsClient } from '../../src/client/client';
import { createOpencryptokiToken, type OpencryptokiToken } from './opencryptoki';
import { createDatabaseOn, type PgDatabase } from './postgres';
import { type TokenEnv } from '../../scripts/throwaway/softhsm-token';
export { createExternalToken, type ExternalToken, type TokenEnv } from '../../scripts/throwaway/softhsm-token';

/** The PKCS#11 implementation this test process runs kmsd on. */
export const TEST_TOKEN: 'softhsm' | 'opencryptoki' = process.env['KMSD_TEST_TOKEN'] === 'opencryptoki' ? 'opencryptoki' : 'softhsm';

/** The metadata store this test process runs kmsd on. */
export const TEST_STORE: 'sqlite' | 'postgres' = process.env['KMSD_TEST_STORE'] === 'postgres' ? 'postgres' : 'sqlite';

/**
 * Every kmsd this test process started and has not stopped on purpose (one that exited on its own
 * stays, so the dump says so): a failing test prints what they logged (test/setup/daemon-logs.ts).
 */
export const runningDaemons = new Set<Kmsd>();

/** The database of each data directory kmsd started in, on the postgres project: a restart reuses it. */
const storeDatabases = new Map<string, PgDatabase>();

/** Where a data directory's kmsd keeps its metadata: its SQLite file, or its PostgreSQL database. */
export type TestStoreLocation = { kind: 'sqlite'; file: string } | { kind: 'postgres'; db: PgDatabase };

export function testStoreOf(dataDir: string): TestStoreLocation {
  if (TEST_STORE === 'sqlite') return { kind: 'sqlite', file: path.join(dataDir, 'kmsd.sqlite') };
  const db = storeDatabases.get(path.resolve(dataDir));
  if (!db) throw new Error(`no kmsd has started in ${dataDir} in this test process: it has no PostgreSQL database yet`);
  return { kind: 'postgres', db };
}

/** Whether kmsd has started in this data directory before (its store exists). */
function storeExists(dataDir: string): boolean {
  return TEST_STORE === 'postgres' ? storeDatabases.has(path.resolve(dataDir)) : fs.existsSync(path.join(dataDir, 'kmsd.sqlite'));
}

/** kmsd's --store arguments for a data directory on the postgres project (none on SQLite, or when the test picks its own store). */
async function storeArgs(dataDir: string, args: string[]): Promise<string[]> {
  if (TEST_STORE === 'sqlite' || args.includes('--store')) return [];
  const key = path.resolve(dataDir);
  let db = storeDatabases.get(key);
  if (!db) {
    const server = inject('kmsdTestPostgres');
    if (!server) throw new Error('KMSD_TEST_STORE=postgres needs the cluster of the postgres project (test/global/postgres.ts): run npx vitest run --project postgres FILE');
    db = await createDatabaseOn(server);
    storeDatabases.set(key, db);
  }
  return ['--store', db.url, '--store-password-file', db.passwordFile];
}

let ock: OpencryptokiToken | null = null;

/** The opencryptoki token of this process, set up on first use and cleaned up (pkcsslotd stopped by pid if we started it) at exit. */
export function opencryptokiTestToken(): OpencryptokiToken {
  if (!ock) {
    ock = createOpencryptokiToken('kmsd-ock');
    process.once('exit', () => ock?.cleanup());
  }
  return ock;
}

export const ROOT = path.resolve(__dirname, '..', '..');
export const KMSD = path.join(ROOT, 'bin', 'kmsd.js');
export const KMSCTL = path.join(ROOT, 'bin', 'kmsctl.js');

export interface KmsctlResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Parsed stdout on success, parsed stderr ({Code, Message}) on an API failure. */
  json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export interface Kmsd {
  endpoint: string;
  port: number;
  dataDir: string;
  pid: number;
  logs(): string;
  /** How the process ended when it ended without stop(), kill() or signal() ("exited with 1", "killed by SIGABRT"); null otherwise. */
  unexpectedExit(): string | null;
  client: KmsClient;
  kmsctl(args: string[], opts?: { cwd?: string }): KmsctlResult;
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL (crash) and wait. */
  kill(): Promise<void>;
  /** Sends a signal and waits for the exit; returns the exit code (null when a signal ended it). */
  signal(sig: NodeJS.Signals): Promise<number | null>;
  /** Environment for pkcs11-tool / softhsm2-util against this daemon's development token. */
  tokenEnv(): TokenEnv;
  /** Removes the data directory (after stop). */
  cleanup(): void;
}

export interface StartOptions {
  dataDir?: string;
  /** HOST:PORT to listen on (default 127.0.0.1:0, a free port); a restart can keep its port. */
  listen?: string;
  env?: Record<string, string>;
  args?: string[];
  /** Keep the data dir on stop (for restart tests); cleanup() removes it. */
  keep?: boolean;
  /** Working directory of the kmsd process (default: the test's). */
  cwd?: string;
  /** Run kmsd as this user and group (the test must be root); dataDir and cwd must be theirs. */
  uid?: number;
  gid?: number;
  /** Called once, the moment kmsd says it listens: before it has opened the token. */
  onListening?: () => void;
}

export function makeTempDir(prefix = 'kmsd-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** The log line that ends start-up reconciliation (or says why it will not run in this process). */
export const RECONCILED = /"msg":"(start-up reconciliation done|start-up token walk failed[^"]*)"/;

export async function startKmsd(opts: StartOptions = {}): Promise<Kmsd> {
  const dataDir = opts.dataDir ?? makeTempDir();
  let tokenArgs: string[] = [];
  let tokenDefaults: Record<string, string> = {};
  const onOck = TEST_TOKEN === 'opencryptoki' && !(opts.args ?? []).includes('--pkcs11-module');
  if (onOck) {
    const t = opencryptokiTestToken();
    // A data directory kmsd has not started in yet gets a fresh token; a restart keeps it.
    if (!storeExists(dataDir)) t.reset();
    tokenArgs = t.args;
    tokenDefaults = { KMS_ALLOW_HOST_ASSISTED_UNWRAP: '1' };
  }
  const store = await storeArgs(dataDir, opts.args ?? []);
  const child: ChildProcess = spawn(process.execPath, [KMSD, '--data-dir', dataDir, '--listen', opts.listen ?? '127.0.0.1:0', ...tokenArgs, ...store, ...(opts.args ?? [])], {
    env: { ...process.env, KMS_LOG_LEVEL: 'info', KMS_WRAPPING_KEY_POOL_SIZE: '1', ...tokenDefaults, ...(opts.env ?? {}) },
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: opts.cwd,
    uid: opts.uid,
    gid: opts.gid,
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d.toString()));
  child.stderr!.on('data', (d) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  let self: Kmsd;
  let endedAs: string | null = null;
  child.on('exit', (code, signal) => (endedAs = signal ? `killed by ${signal}` : `exited with ${code}`));
  const listening = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`kmsd did not start in 60 s\nstdout:\n${out}\nstderr:\n${err}`)), 60_000);
    // Start-up reconciliation may run after kmsd listens (the token walk): tests read its outcome, so
    // they start once it is done.
    let said = false;
    const check = () => {
      const m = /listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (m && !said) {
        said = true;
        opts.onListening?.();
      }
      if (m && RECONCILED.test(out)) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout!.on('data', check);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`kmsd exited with ${code} before listening\nstdout:\n${out}\nstderr:\n${err}`));
    });
  });
  let port: number;
  try {
    port = await listening;
  } catch (e) {
    // A daemon that never listened: make sure it is gone, and remove the directory we created.
    if (child.exitCode === null) child.kill('SIGKILL');
    if (!opts.dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
    throw e;
  }
  const endpoint = `127.0.0.1:${port}`;
  const client = new KmsClient({ endpoint });
  const softhsmDir = path.join(dataDir, 'softhsm');
  let stopped = false;
  self = {
    endpoint,
    port,
    dataDir,
    pid: child.pid!,
    client,
    logs: () => out + err,
    unexpectedExit: () => (stopped ? null : endedAs),
    kmsctl(args, o = {}) {
      const r = spawnSync(process.execPath, [KMSCTL, '--endpoint', endpoint, ...args], { encoding: 'utf8', cwd: o.cwd, timeout: 60_000 });
      let json: unknown;
      try {
        json = JSON.parse(r.status === 0 ? r.stdout : r.stderr);
      } catch {
        json = undefined;
      }
      return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr, json };
    },
    async stop() {
      if (stopped) return exited;
      // One that ended before it was asked to: its output is the only evidence of why (a failure in
      // a beforeAll prints no daemon logs, and the directory goes with cleanup below).
      if (endedAs) process.stderr.write(`--- kmsd ${endpoint} (pid ${child.pid}) ${endedAs} before it was stopped; its output:\n${(out + err).split('\n').slice(-80).join('\n')}\n`);
      stopped = true;
      runningDaemons.delete(self);
      client.close();
      child.kill('SIGTERM');
      const code = await exited;
      if (!opts.keep) self.cleanup();
      return code;
    },
    async kill() {
      stopped = true;
      runningDaemons.delete(self);
      client.close();
      child.kill('SIGKILL');
      await exited;
    },
    async signal(sig) {
      stopped = true;
      runningDaemons.delete(self);
      client.close();
      child.kill(sig);
      return exited;
    },
    tokenEnv() {
      if (onOck) return opencryptokiTestToken().tokenEnv();
      return {
        SOFTHSM2_CONF: path.join(softhsmDir, 'softhsm2.conf'),
        pin: fs.readFileSync(path.join(softhsmDir, 'user.pin'), 'utf8').trim(),
        module: '/usr/lib/softhsm/libsofthsm2.so',
      };
    },
    cleanup() {
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  if (child.exitCode === null) runningDaemons.add(self);
  return self;
}

/** pkcs11-tool --list-objects on a daemon's token, parsed into objects with their label and flags. */
export function listTokenObjects(k: Kmsd | { tokenEnv(): TokenEnv }): { type: string; label: string; usage: string; access: string; raw: string }[] {
  const env = k.tokenEnv();
  const r = spawnSync('pkcs11-tool', ['--module', env.module, '--token-label', env.label ?? 'kmsd-dev', '--login', '--pin', env.pin, '--list-objects'], {
    encoding: 'utf8',
    env: { ...process.env, SOFTHSM2_CONF: env.SOFTHSM2_CONF },
  });
  if (r.status !== 0) throw new Error(`pkcs11-tool failed: ${r.stderr}`);
  const blocks = r.stdout.split(/\n(?=\S)/).filter((b) => b.trim());
  return blocks.map((raw) => ({
    type: raw.split('\n')[0].split(';')[0].trim(),
    label: /label:\s*(.*)/.exec(raw)?.[1].trim() ?? '',
    usage: /Usage:\s*(.*)/.exec(raw)?.[1].trim() ?? '',
    access: /Access:\s*(.*)/.exec(raw)?.[1].trim() ?? '',
    raw,
  }));
}

/** The kmsd:cmk:* key objects (CMK key versions) a token holds, by key version id. */
export function tokenCmkObjects(k: Kmsd | { tokenEnv(): TokenEnv }): string[] {
  return listTokenObjects(k)
    .filter((o) => o.label.startsWith('kmsd:cmk:') && o.type.startsWith('Secret Key'))
    .map((o) => o.label.slice('kmsd:cmk:'.length))
    .sort();
}

/** Runs kmsd that is expected to refuse to start; returns its exit code and output (a start that listens is stopped and reported). */
export function runKmsdToExit(dataDir: string, args: string[] = [], env: Record<string, string> = {}): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [KMSD, '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...args], {
    encoding: 'utf8',
    env: { ...process.env, KMS_LOG_LEVEL: 'info', ...env },
    // A kmsd that does start never exits on its own: the timeout kills it, and the caller sees code null.
    timeout: 30_000,
    killSignal: 'SIGKILL',
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
