// Process hygiene of a real kmsd: core dumps are off from the start (a core would hold the PIN and
// key material), and the log says so or warns; a PIN file others may read is refused for an existing
// token unless explicitly allowed, and warned about.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { KMSD, Kmsd, makeTempDir, startKmsd } from '../helpers/daemon';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token';

const dirs: string[] = [];
const daemons: Kmsd[] = [];
let softhsm: SoftHsmToken | undefined;

afterAll(async () => {
  for (const d of [...daemons].reverse()) {
    await d.stop();
    d.cleanup();
  }
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  softhsm?.cleanup();
});

/** Log lines (JSON) whose msg starts with `prefix`. */
function logEntries(k: Kmsd, prefix: string): Record<string, unknown>[] {
  return k
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .filter((e) => typeof e.msg === 'string' && e.msg.startsWith(prefix));
}

/** An existing ("production") token of its own, and kmsd's flags for it with a PIN file of this mode. */
function productionToken(mode: number): { args: string[]; env: Record<string, string>; pinFile: string; pin: string } {
  softhsm ??= createSoftHsmToken({ label: 'hygiene-0', userPin: 'Hyg-PIN-0' });
  const label = `hygiene-${crypto.randomUUID().slice(0, 8)}`;
  const pin = `Hyg-PIN-${crypto.randomUUID().slice(0, 8)}`;
  softhsm.addToken({ label, userPin: pin });
  const pinFile = path.join(softhsm.dir, `${label}.pin`);
  fs.writeFileSync(pinFile, `${pin}\n`);
  fs.chmodSync(pinFile, mode);
  return { args: ['--pkcs11-module', softhsm.modulePath, '--token-label', label, '--pin-file', pinFile], env: { SOFTHSM2_CONF: softhsm.confPath }, pinFile, pin };
}

function tempDir(prefix: string): string {
  const d = makeTempDir(prefix);
  dirs.push(d);
  return d;
}

/** Core files the kernel wrote into a directory (core_pattern "core" or "core.%p" and the like). */
function cores(dir: string): string[] {
  return fs.readdirSync(dir).filter((f) => f.startsWith('core'));
}

/** /proc/PID/limits "Max core file size": [soft, hard]. */
function coreLimits(pid: number): [string, string] {
  const line = fs.readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max core file size'));
  if (!line) throw new Error(`no core limit in /proc/${pid}/limits`);
  const [soft, hard] = line.slice('Max core file size'.length).trim().split(/\s+/);
  return [soft, hard];
}

// Processes under test run as nobody: /proc has no field for the dumpable flag, but the kernel makes
// /proc/PID/* of a process that is not dumpable owned by root (proc(5)), which shows only when the
// process itself is not root.
const NOBODY = 65534;

function requireRoot(): void {
  expect(process.getuid?.(), 'these tests start processes as nobody and must run as root').toBe(0);
}

/** A temp directory owned by nobody. */
function nobodyDir(prefix: string): string {
  const d = tempDir(prefix);
  fs.chownSync(d, NOBODY, NOBODY);
  return d;
}

/** Owner of /proc/PID/status (root for a process that is not dumpable), and the process's real uid. */
function procOwnership(pid: number): { owner: number; uid: number } {
  const uidLine = fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').find((l) => l.startsWith('Uid:'));
  return { owner: fs.statSync(`/proc/${pid}/status`).uid, uid: Number(uidLine?.split(/\s+/)[1]) };
}

describe('core dumps', () => {
  it('an ordinary process here is dumpable and writes a core into its working directory when it aborts (so the checks below mean something)', async () => {
    const pattern = fs.readFileSync('/proc/sys/kernel/core_pattern', 'utf8').trim();
    expect(pattern, 'core_pattern must name a file in the working directory for these tests').toMatch(/^[^|/]/);
    requireRoot();
    const dir = nobodyDir('kmsd-core-control-');
    // Soft core limit raised to the hard one (which kmsd, below, inherits too), as `ulimit -c` would.
    const script = `ulimit -S -c "$(ulimit -H -c)" && exec "${process.execPath}" -e 'process.stdout.write("ready\\n"); setInterval(() => {}, 1000)'`;
    const child = spawn('sh', ['-c', script], { cwd: dir, uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'pipe', 'ignore'] });
    const exited = new Promise((resolve) => child.on('exit', resolve));
    await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
    expect(procOwnership(child.pid!)).toEqual({ owner: NOBODY, uid: NOBODY });
    expect(coreLimits(child.pid!)[0]).not.toBe('0');
    child.kill('SIGABRT');
    await exited;
    expect(cores(dir).length).toBeGreaterThan(0);
  });

  it('kmsd sets RLIMIT_CORE to 0 (soft and hard), is not dumpable, leaves no core when it aborts, and logs it', async () => {
    requireRoot();
    const cwd = nobodyDir('kmsd-core-');
    const dataDir = nobodyDir('kmsd-core-data-');
    expect(coreLimits(process.pid)[1], 'kmsd inherits this hard limit').not.toBe('0');
    const k = await startKmsd({ cwd, dataDir, uid: NOBODY, gid: NOBODY, keep: true });
    daemons.push(k);
    expect(coreLimits(k.pid)).toEqual(['0', '0']);
    expect(procOwnership(k.pid)).toEqual({ owner: 0, uid: NOBODY });
    const line = k
      .logs()
      .split('\n')
      .find((l) => l.includes('"coreDumps"'));
    expect(line, k.logs()).toBeDefined();
    expect(JSON.parse(line!)).toMatchObject({ level: 30, coreDumps: 'disabled', msg: 'core dumps disabled (RLIMIT_CORE 0, not dumpable)' });
    await k.signal('SIGABRT');
    k.cleanup();
    expect(cores(cwd)).toEqual([]);
  });

  it('without the native addon kmsd warns that core dumps are NOT disabled', async () => {
    // A file that is no addon: the loader fails as it does on a machine where the build is broken (a
    // KMSD_NATIVE_ADDON naming no file at all is refused at start-up, like any bad setting).
    const notAnAddon = path.join(tempDir('kmsd-no-addon-'), 'broken.node');
    fs.writeFileSync(notAnAddon, 'not a shared object');
    const k = await startKmsd({ env: { KMSD_NATIVE_ADDON: notAnAddon } });
    daemons.push(k);
    const line = k
      .logs()
      .split('\n')
      .find((l) => l.includes('"coreDumps"'));
    expect(line, k.logs()).toBeDefined();
    const entry = JSON.parse(line!);
    expect(entry).toMatchObject({ level: 40, coreDumps: 'enabled' });
    expect(entry.msg).toMatch(/^core dumps are NOT disabled/);
    expect(entry.reason).toMatch(/cannot load .*broken\.node/);
  });
});

describe('PIN file permissions', () => {
  it('an existing token: a --pin-file group or others may read is refused in one line naming the file, its mode and the way out', () => {
    for (const mode of [0o644, 0o640, 0o604]) {
      const prod = productionToken(mode);
      const dataDir = tempDir('kmsd-pin-refused-');
      const r = spawnSync(process.execPath, [KMSD, '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...prod.args], {
        encoding: 'utf8',
        env: { ...process.env, ...prod.env },
        timeout: 60_000,
        killSignal: 'SIGKILL', // a kmsd that did start must not hold the test up
      });
      expect(r.status, r.stdout + r.stderr).toBe(1);
      const lines = r.stderr.trim().split('\n');
      expect(lines).toHaveLength(1);
      expect(lines[0]).toBe(
        `kmsd: PIN file ${prod.pinFile} is accessible to group or others (mode 0${mode.toString(8)}): run chmod 600 ${prod.pinFile} (or chmod go-rwx), or accept it with --allow-insecure-pin-file 1 / KMS_ALLOW_INSECURE_PIN_FILE=1`,
      );
      expect(r.stdout + r.stderr).not.toContain(prod.pin);
      expect(r.stdout).not.toContain('listening on');
    }
  });

  it('an existing token: accepted with KMS_ALLOW_INSECURE_PIN_FILE=1 or --allow-insecure-pin-file 1, and warned about', async () => {
    for (const how of ['env', 'flag'] as const) {
      const prod = productionToken(0o644);
      const k = await startKmsd({
        args: [...prod.args, ...(how === 'flag' ? ['--allow-insecure-pin-file', '1'] : [])],
        env: { ...prod.env, ...(how === 'env' ? { KMS_ALLOW_INSECURE_PIN_FILE: '1' } : {}) },
      });
      daemons.push(k);
      expect(logEntries(k, 'PIN file is accessible to group or others')).toEqual([
        expect.objectContaining({ level: 40, pinFile: prod.pinFile, mode: '0644', msg: 'PIN file is accessible to group or others: anyone who can read it can log in to the token (chmod 600 it)' }),
      ]);
      expect(k.logs()).not.toContain(prod.pin);
      const created = await k.client.createKey({ ProtectionLevel: 'HSM' });
      expect(created.KeyMetadata.KeyId).toMatch(/^[0-9a-f-]{36}$/);
    }
  });

  it('an owner-only --pin-file starts without a warning', async () => {
    const prod = productionToken(0o600);
    const k = await startKmsd({ args: prod.args, env: prod.env });
    daemons.push(k);
    expect(logEntries(k, 'PIN file is accessible')).toEqual([]);
  });

  it('the development token: a user.pin loosened since kmsd made it is warned about, not refused', async () => {
    const first = await startKmsd({ keep: true });
    daemons.push(first);
    await first.stop();
    const pinFile = path.join(first.dataDir, 'softhsm', 'user.pin');
    expect(fs.statSync(pinFile).mode & 0o777).toBe(0o600);
    fs.chmodSync(pinFile, 0o644);
    const k = await startKmsd({ dataDir: first.dataDir });
    daemons.push(k);
    expect(logEntries(k, 'PIN file is accessible to group or others')).toEqual([expect.objectContaining({ level: 40, pinFile, mode: '0644' })]);
  });
});
