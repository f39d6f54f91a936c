// A throwaway SoftHSM token in its own directory (softhsm2-util, a PIN file readable by the owner
// only), given to kmsd as a production token: what the tests and `npm run bench` use when several
// kmsd processes must share one token. cleanup() removes the directory.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** How to reach a SoftHSM token from outside kmsd (pkcs11-tool, softhsm2-util). */
export interface TokenEnv {
  SOFTHSM2_CONF: string;
  pin: string;
  module: string;
  /** The token label (the development token's when absent). */
  label?: string;
}

/**
 * An existing ("production") SoftHSM token outside any data directory, used by kmsd through
 * --pkcs11-module/--token-label/--pin-file, so several data directories can meet the same token.
 */
export interface ExternalToken {
  dir: string;
  label: string;
  /** kmsd arguments that select this token. */
  args: string[];
  /** Environment kmsd needs to find it (SOFTHSM2_CONF). */
  env: Record<string, string>;
  tokenEnv(): TokenEnv;
  cleanup(): void;
}

export function createExternalToken(label = 'kmsd-prod'): ExternalToken {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-ext-token-'));
  const tokens = path.join(dir, 'tokens');
  fs.mkdirSync(tokens, { mode: 0o700 });
  const conf = path.join(dir, 'softhsm2.conf');
  fs.writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const pin = '1234-' + process.pid;
  const pinFile = path.join(dir, 'user.pin');
  fs.writeFileSync(pinFile, pin + '\n', { mode: 0o600 });
  // PINs on the command line are fine for a throwaway test token.
  const r = spawnSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', 'so-' + pin, '--pin', pin], { encoding: 'utf8', env: { ...process.env, SOFTHSM2_CONF: conf } });
  if (r.status !== 0) throw new Error(`softhsm2-util failed: ${r.stderr}`);
  const module = '/usr/lib/softhsm/libsofthsm2.so';
  return {
    dir,
    label,
    args: ['--pkcs11-module', module, '--token-label', label, '--pin-file', pinFile],
    env: { SOFTHSM2_CONF: conf },
    tokenEnv: () => ({ SOFTHSM2_CONF: conf, pin, module, label }),
    cleanup: () => fs.rmSync(dir, { recursive: true, force: true }),
  };
}
