// A throwaway SoftHSM2 token for tests (DESIGN.md §7.9): its own softhsm2.conf and token directory
// in a fresh temp dir, initialized with `softhsm2-util --init-token --free`.
//
// SoftHSM reads SOFTHSM2_CONF once, in C_Initialize, and keeps it until C_Finalize. So create the
// token before the first C_Initialize in the process (or worker), and keep one token directory per
// process; further tokens for the same process go into the same directory via `addToken`.

import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** The PKCS#11 module under test: KMS_PKCS11_MODULE, else the Debian SoftHSM2 path. */
export const SOFTHSM_MODULE = process.env['KMS_PKCS11_MODULE'] ?? '/usr/lib/softhsm/libsofthsm2.so';

export interface TokenInit {
  label?: string;
  userPin?: string;
  soPin?: string;
}

export interface SoftHsmTokenInfo {
  label: string;
  userPin: string;
  soPin: string;
  /** The slot id SoftHSM reassigned the token to (stable for the token's lifetime). */
  slotId: number;
}

export interface SoftHsmToken extends SoftHsmTokenInfo {
  /** Temp dir holding softhsm2.conf and tokens/. */
  dir: string;
  confPath: string;
  modulePath: string;
  /** Initializes one more token in the same token directory (before or after C_Initialize:
   * SoftHSM rescans the directory on C_GetSlotList). */
  addToken(init: TokenInit): SoftHsmTokenInfo;
  /** Removes the temp dir and restores SOFTHSM2_CONF. Finalize PKCS#11 first. Idempotent. */
  cleanup(): void;
}

function initToken(confPath: string, init: TokenInit): SoftHsmTokenInfo {
  const label = init.label ?? 'T';
  const userPin = init.userPin ?? '1234';
  const soPin = init.soPin ?? '1234';
  // PINs on the command line are fine for a throwaway test token; never do this with real ones.
  const out = execFileSync(
    'softhsm2-util',
    ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', userPin],
    { env: { ...process.env, SOFTHSM2_CONF: confPath }, encoding: 'utf8' },
  );
  const m = /reassigned to slot (\d+)/.exec(out);
  if (!m) throw new Error(`softhsm2-util did not report a slot: ${out.trim()}`);
  return { label, userPin, soPin, slotId: Number(m[1]) };
}

/** Creates the temp dir, the config and one initialized token, and points SOFTHSM2_CONF at it. */
export function createSoftHsmToken(init: TokenInit = {}): SoftHsmToken {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-softhsm-'));
  const tokenDir = path.join(dir, 'tokens');
  fs.mkdirSync(tokenDir, { mode: 0o700 });
  const confPath = path.join(dir, 'softhsm2.conf');
  fs.writeFileSync(
    confPath,
    [`directories.tokendir = ${tokenDir}`, 'objectstore.backend = file', 'log.level = ERROR', ''].join('\n'),
  );
  const previousConf = process.env['SOFTHSM2_CONF'];
  let info: SoftHsmTokenInfo;
  try {
    info = initToken(confPath, init);
  } catch (e) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  process.env['SOFTHSM2_CONF'] = confPath;
  let cleaned = false;
  return {
    ...info,
    dir,
    confPath,
    modulePath: SOFTHSM_MODULE,
    addToken: (more) => initToken(confPath, more),
    cleanup() {
      if (cleaned) return;
      cleaned = true;
      if (process.env['SOFTHSM2_CONF'] === confPath) {
        if (previousConf === undefined) delete process.env['SOFTHSM2_CONF'];
        else process.env['SOFTHSM2_CONF'] = previousConf;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}
