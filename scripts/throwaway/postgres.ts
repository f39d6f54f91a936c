// A throwaway PostgreSQL 15 cluster for tests and `npm run bench` (never a mock): Debian's binaries, a data directory in
// a fresh temp dir, a free loopback port, its unix socket in the temp dir, fsync on. Stopped by the
// pid we spawned, and the temp dir removed, in `stop()`; also on process exit if a test forgot.
//
// The server refuses to run as root, so when the tests run as root (CI, this machine) initdb and
// postgres run as the `postgres` user (spawn's uid/gid, which also drops root's groups); otherwise as
// the current user.
//
// initdb costs ~3 s on a loaded two-core machine, most of a test file's budget, so it runs once per
// machine into a template directory (os.tmpdir()/kmsd-pg-template-15-<uid>) that each cluster copies
// (~0.5 s); the template has no password in it: each cluster sets a random one for its superuser
// over the unix socket (trusted locally), and TCP clients must give it (scram-sha-256), as kmsd's
// `--store-password-file` does in production. Administration (the password, new databases) goes
// through the real `psql` on that socket: SQL of kmsd's own lives in src/store only.

import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const PG_BIN = process.env['KMSD_TEST_PG_BIN'] ?? '/usr/lib/postgresql/15/bin';
const SUPERUSER = 'postgres';

export interface PgDatabase {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
  /** postgres://USER@127.0.0.1:PORT/DB: no password in it (kmsd refuses one there). */
  url: string;
  /** A file holding the password alone, for `--store-password-file`. */
  passwordFile: string;
}

export interface PgCluster {
  dir: string;
  port: number;
  pid: number;
  user: string;
  password: string;
  /**
   * A new empty database; names are generated unless given. `icuLocale` (e.g. 'en-US') gives it a
   * linguistic collation, as production databases often have, instead of the cluster's C.UTF-8.
   */
  createDatabase(name?: string, opts?: { icuLocale?: string }): Promise<PgDatabase>;
  /** Stops the server (fast shutdown) and waits for its exit, keeping the data dir (then `start()` again). */
  halt(): Promise<void>;
  /** Starts the server again on the same port and data dir after `halt()`. */
  start(): Promise<void>;
  /** Stops the server by pid and removes the temp dir. Idempotent. */
  stop(): Promise<void>;
}

function pgOwner(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
  const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
  return { uid, gid };
}

function chownTree(dir: string, owner: { uid: number; gid: number } | undefined): void {
  if (owner) execFileSync('chown', ['-R', `${owner.uid}:${owner.gid}`, dir]);
}

/** The template data directory, made by initdb once per machine (atomic rename, so racing workers are fine). */
function templateDir(owner: { uid: number; gid: number } | undefined): string {
  // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": a new minor version gets a new template.
  const out = execFileSync(path.join(PG_BIN, 'postgres'), ['--version'], { encoding: 'utf8' });
  const version = /\d+\.\d+/.exec(out)?.[0] ?? 'unknown';
  const dir = path.join(os.tmpdir(), `kmsd-pg-template-${version}-${process.getuid?.() ?? 'u'}`);
  if (fs.existsSync(path.join(dir, 'PG_VERSION'))) return dir;
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-pg-initdb-'));
  try {
    chownTree(work, owner);
    const data = path.join(work, 'data');
    execFileSync(
      path.join(PG_BIN, 'initdb'),
      // --no-sync: a template is rebuilt if lost; every cluster made from it runs with fsync on.
      ['-D', data, '-U', SUPERUSER, '--auth-local=trust', '--auth-host=scram-sha-256', '--no-sync', '-E', 'UTF8', '--locale=C.UTF-8'],
      { stdio: ['ignore', 'ignore', 'pipe'], cwd: work, ...(owner ?? {}) },
    );
    try {
      fs.renameSync(data, dir);
    } catch (e) {
      // Another worker won the race: use its template.
      if (!fs.existsSync(path.join(dir, 'PG_VERSION'))) throw e;
    }
    return dir;
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

const live = new Set<ChildProcess>();
let exitHookInstalled = false;
const dirsToRemove = new Set<string>();

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // A test file that threw before its afterAll must not leave a server behind.
  process.on('exit', () => {
    for (const child of live) {
      try {
        child.kill('SIGQUIT'); // immediate shutdown: nothing of a throwaway cluster is worth keeping
      } catch {
        /* already gone */
      }
    }
    for (const d of dirsToRemove) fs.rmSync(d, { recursive: true, force: true });
  });
}

function launch(dataDir: string, sockDir: string, port: number, owner: { uid: number; gid: number } | undefined): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      path.join(PG_BIN, 'postgres'),
      [
        '-D', dataDir,
        '-c', `port=${port}`,
        '-c', 'listen_addresses=127.0.0.1',
        '-c', `unix_socket_directories=${sockDir}`,
        '-c', 'fsync=on',
        '-c', 'synchronous_commit=on',
        '-c', 'full_page_writes=on',
        '-c', 'max_connections=200',
        '-c', 'shared_buffers=32MB',
        // Test clusters are many and short-lived: no background jobs competing for the two cores.
        '-c', 'autovacuum=off',
        '-c', 'log_min_messages=warning',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'], cwd: dataDir, ...(owner ?? {}) },
    );
    let log = '';
    let settled = false;
    const onData = (b: Buffer) => {
      log = (log + b.toString('utf8')).slice(-8000);
      if (!settled && log.includes('database system is ready to accept connections')) {
        settled = true;
        resolve(child);
      }
    };
    child.stderr!.on('data', onData);
    child.once('error', (e) => {
      if (!settled) {
        settled = true;
        reject(e);
      }
    });
    child.once('exit', (code, signal) => {
      live.delete(child);
      if (!settled) {
        settled = true;
        reject(new Error(`postgres exited (${code ?? signal}) before accepting connections:\n${log}`));
      }
    });
    live.add(child);
  });
}

/** One statement as the superuser over the cluster's unix socket (trusted locally). */
async function psql(sockDir: string, port: number, sql: string): Promise<void> {
  try {
    await promisify(execFile)(path.join(PG_BIN, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', sockDir, '-p', String(port), '-U', SUPERUSER, '-d', 'postgres', '-c', sql], { timeout: 60_000 });
  } catch (e) {
    const err = e as { stderr?: string; message?: string };
    throw new Error(`psql on the test cluster failed: ${(err.stderr || err.message || String(e)).trim()}`);
  }
}

function waitExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/**
 * What another process needs to make databases in a running cluster: the vitest `postgres` project
 * starts one cluster in its global setup and hands this to the test workers (test/global/postgres.ts).
 */
export interface PgServer {
  /** The cluster's temp dir, where password files are written (removed with the cluster). */
  dir: string;
  port: number;
  user: string;
  password: string;
}

let dbCount = 0;

/** A new empty database on a running cluster; names are generated (unique across processes) unless given. */
export async function createDatabaseOn(server: PgServer, name?: string, opts: { icuLocale?: string } = {}): Promise<PgDatabase> {
  const { dir, port, password } = server;
  const database = name ?? `kmsd_${++dbCount}_${crypto.randomBytes(3).toString('hex')}`;
  if (!/^[a-z_][a-z0-9_]*$/.test(database)) throw new Error(`test database name ${database} is not a plain identifier`);
  if (opts.icuLocale !== undefined && !/^[A-Za-z0-9-]+$/.test(opts.icuLocale)) throw new Error(`ICU locale ${opts.icuLocale} is not a plain tag`);
  await psql(path.join(dir, 'sock'), port, opts.icuLocale ? `CREATE DATABASE ${database} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE '${opts.icuLocale}'` : `CREATE DATABASE ${database}`);
  const passwordFile = path.join(dir, `${database}.password`);
  fs.writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
  return { host: '127.0.0.1', port, user: server.user, password, database, url: `postgres://${server.user}@127.0.0.1:${port}/${database}`, passwordFile };
}

/** Starts a throwaway cluster; call `stop()` in afterAll. */
export async function startPostgres(): Promise<PgCluster> {
  installExitHook();
  const owner = pgOwner();
  const template = templateDir(owner);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-pg-'));
  dirsToRemove.add(dir);
  const dataDir = path.join(dir, 'data');
  const sockDir = path.join(dir, 'sock');
  let child: ChildProcess | undefined;
  try {
    execFileSync('cp', ['-a', template, dataDir]);
    fs.mkdirSync(sockDir);
    fs.chmodSync(dataDir, 0o700);
    chownTree(dir, owner);
    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      try {
        child = await launch(dataDir, sockDir, port, owner);
        break;
      } catch (e) {
        // Another process took the port between our probe and postgres' bind: try another.
        if (attempt >= 3 || !/could not (bind|create listen)/i.test(String(e))) throw e;
      }
    }
    const password = crypto.randomBytes(18).toString('base64url');
    await psql(sockDir, port, `ALTER ROLE ${SUPERUSER} PASSWORD '${password}'`);
    let stopped = false;
    const cluster: PgCluster = {
      dir,
      port,
      /** The running postmaster's pid (-1 while halted). */
      get pid() {
        return child?.pid ?? -1;
      },
      user: SUPERUSER,
      password,
      createDatabase(name?: string, opts: { icuLocale?: string } = {}): Promise<PgDatabase> {
        return createDatabaseOn({ dir, port, user: SUPERUSER, password }, name, opts);
      },
      async halt(): Promise<void> {
        if (!child) return;
        const c = child;
        child = undefined;
        c.kill('SIGINT'); // fast shutdown: aborts sessions, checkpoints, exits
        await waitExit(c);
      },
      async start(): Promise<void> {
        if (child || stopped) throw new Error('the test cluster is running or removed');
        child = await launch(dataDir, sockDir, port, owner);
      },
      async stop(): Promise<void> {
        if (stopped) return;
        stopped = true;
        if (child) {
          // Immediate shutdown: the data directory is removed next, so no checkpoint is worth its fsyncs.
          const c = child;
          child = undefined;
          c.kill('SIGQUIT');
          await waitExit(c);
        }
        fs.rmSync(dir, { recursive: true, force: true });
        dirsToRemove.delete(dir);
      },
    };
    return cluster;
  } catch (e) {
    if (child) {
      child.kill('SIGQUIT');
      await waitExit(child);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    dirsToRemove.delete(dir);
    throw e;
  }
}
