// The opencryptoki soft token (Debian `opencryptoki`, slot 3, libpkcs11_sw) for tests: a second,
// independent PKCS#11 implementation beside SoftHSM. It is machine-wide (pkcsslotd and
// /var/lib/opencryptoki/swtok), so the suites that use it run one file at a time in their own vitest
// project (vitest.config.ts) and each re-initialises the token, which destroys every object on it.
//
// pkcsslotd is started only when it is not already running, and then stopped by its pid in
// cleanup(); a daemon someone else started is left alone.

import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const OPENCRYPTOKI_MODULE = '/usr/lib/x86_64-linux-gnu/opencryptoki/libopencryptoki.so.0';
const PKCSSLOTD = '/usr/sbin/pkcsslotd';
const PKCSCONF = '/usr/sbin/pkcsconf';
/** The soft token's slot in Debian's /etc/opencryptoki/opencryptoki.conf. */
export const OPENCRYPTOKI_SLOT = 3;
/** pkcsconf's default SO PIN of a fresh soft token (re-initialising keeps whatever SO PIN is set). */
const DEFAULT_SO_PIN = '87654321';
const RUN_DIR = '/run/opencryptoki';

export interface OpencryptokiToken {
  label: string;
  /** opencryptoki's soft token takes 4..8-character PINs. */
  pin: string;
  pinFile: string;
  modulePath: string;
  /** kmsd arguments that select this token. */
  args: string[];
  /** pkcs11-tool access for test helpers (SOFTHSM2_CONF is irrelevant to opencryptoki). */
  tokenEnv(): { SOFTHSM2_CONF: string; pin: string; module: string; label: string };
  /** Wipes the token again (every object gone) and gives it a new label. */
  reset(label?: string): void;
  /** Removes the PIN file; stops pkcsslotd by pid if this helper started it. */
  cleanup(): void;
}

function slotdPid(): number | null {
  const r = spawnSync('pgrep', ['-x', 'pkcsslotd'], { encoding: 'utf8' });
  const pid = Number(r.stdout.trim().split('\n')[0]);
  return r.status === 0 && pid > 0 ? pid : null;
}

/**
 * Starts pkcsslotd unless one runs already; returns the pid of the one it started (the caller stops
 * it), or null when one was running.
 */
export function startPkcsslotd(): number | null {
  if (!opencryptokiInstalled()) throw new Error(`opencryptoki is not installed (${OPENCRYPTOKI_MODULE}); run scripts/setup.sh`);
  if (slotdPid() !== null) return null;
  // pkcsslotd needs the pkcs11 group and its run directory; the Debian package makes the group.
  fs.mkdirSync(RUN_DIR, { recursive: true });
  spawnSync('chgrp', ['pkcs11', RUN_DIR]);
  fs.chmodSync(RUN_DIR, 0o770);
  execFileSync(PKCSSLOTD, [], { stdio: 'ignore' }); // daemonises itself
  const pid = slotdPid();
  if (pid === null) throw new Error('pkcsslotd did not start');
  return pid;
}

/** Whether the machine has opencryptoki at all (scripts/setup.sh installs it). */
export function opencryptokiInstalled(): boolean {
  return fs.existsSync(OPENCRYPTOKI_MODULE) && fs.existsSync(PKCSSLOTD) && fs.existsSync(PKCSCONF);
}

const NVTOK = '/var/lib/opencryptoki/swtok/NVTOK.DAT';

function initToken(label: string, pin: string): void {
  // opencryptoki 3.8 rewrites NVTOK.DAT in place: a process killed mid-write leaves it empty, and the
  // slot is gone (C_GetSlotList finds 0 slots) until the token's files are removed by hand.
  if (fs.existsSync(NVTOK) && fs.statSync(NVTOK).size === 0) {
    throw new Error(`${NVTOK} is empty (a process was killed while opencryptoki rewrote it): stop pkcsslotd, remove /var/lib/opencryptoki/swtok/NVTOK.DAT, MK_* and TOK_OBJ/*, and start pkcsslotd again`);
  }
  // --init-token wipes every object of the token; the SO PIN is the one pkcsconf was shipped with.
  execFileSync(PKCSCONF, ['-c', String(OPENCRYPTOKI_SLOT), '-I', '-S', DEFAULT_SO_PIN], { input: `${label}\n`, stdio: ['pipe', 'ignore', 'pipe'] });
  execFileSync(PKCSCONF, ['-c', String(OPENCRYPTOKI_SLOT), '-u', '-S', DEFAULT_SO_PIN, '-n', pin], { stdio: ['ignore', 'ignore', 'pipe'] });
}

/** Where a token's PIN file is kept: a temp directory of this prefix (test/global/pkcsslotd.ts removes those of its run). */
export const OPENCRYPTOKI_PIN_DIR_PREFIX = 'kmsd-ock-';

/**
 * Starts pkcsslotd when needed and initialises the slot-3 token fresh with `label`. Throws (never
 * skips) when opencryptoki is not installed.
 */
export function createOpencryptokiToken(label = 'kmsd-ock'): OpencryptokiToken {
  if (!opencryptokiInstalled()) throw new Error(`opencryptoki is not installed (${OPENCRYPTOKI_MODULE}); run scripts/setup.sh`);
  let started = startPkcsslotd();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), OPENCRYPTOKI_PIN_DIR_PREFIX));
  const pin = String(10_000_000 + (process.pid % 89_999_999)).slice(0, 8);
  const pinFile = path.join(dir, 'user.pin');
  fs.writeFileSync(pinFile, pin + '\n', { mode: 0o600 });
  let current = label;
  initToken(current, pin);
  return {
    get label() {
      return current;
    },
    pin,
    pinFile,
    modulePath: OPENCRYPTOKI_MODULE,
    get args() {
      return ['--pkcs11-module', OPENCRYPTOKI_MODULE, '--token-label', current, '--pin-file', pinFile];
    },
    tokenEnv: () => ({ SOFTHSM2_CONF: '/dev/null', pin, module: OPENCRYPTOKI_MODULE, label: current }),
    reset(newLabel = current) {
      current = newLabel;
      initToken(current, pin);
    },
    cleanup() {
      fs.rmSync(dir, { recursive: true, force: true });
      if (started !== null) {
        try {
          process.kill(started, 'SIGTERM');
        } catch {
          /* already gone */
        }
        started = null;
      }
    },
  };
}
