// The development token: a SoftHSM2 token inside the data directory, created once with
// softhsm2-util and random PINs kept in files readable only by the owner. Never used when an
// existing (production) token is configured.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { HsmError } from './errors';
import { useSoftHsmConf } from '../config';

export const DEV_TOKEN_LABEL = 'kmsd-dev';

const SOFTHSM_MODULES = ['/usr/lib/softhsm/libsofthsm2.so', '/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so', '/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so', '/usr/local/lib/softhsm/libsofthsm2.so'];

export function findSoftHsmModule(): string {
  const found = SOFTHSM_MODULES.find((p) => fs.existsSync(p));
  if (!found) throw new HsmError(`SoftHSM2 is not installed (looked for ${SOFTHSM_MODULES[0]}); run scripts/setup.sh or apt-get install softhsm2`, 'MODULE_LOAD_FAILED');
  return found;
}

/**
 * Makes sure DATA_DIR/softhsm holds an initialized token and returns how to open it. Sets
 * SOFTHSM2_CONF for this process, which SoftHSM reads at C_Initialize.
 */
/** Where the development token of a data directory lives; creates nothing. */
export function devTokenPaths(dataDir: string): { dir: string; tokens: string; conf: string; pinFile: string; soPinFile: string } {
  const dir = path.join(dataDir, 'softhsm');
  return { dir, tokens: path.join(dir, 'tokens'), conf: path.join(dir, 'softhsm2.conf'), pinFile: path.join(dir, 'user.pin'), soPinFile: path.join(dir, 'so.pin') };
}

export function ensureDevToken(dataDir: string): { modulePath: string; tokenLabel: string; pin: string; pinFile: string; pinLooseMode: number | null } {
  const { tokens, conf, pinFile, soPinFile } = devTokenPaths(dataDir);
  fs.mkdirSync(tokens, { recursive: true, mode: 0o700 });
  fs.chmodSync(dataDir, 0o700);
  if (!fs.existsSync(conf)) {
    const template = path.resolve(__dirname, '..', '..', ...(__dirname.includes(`${path.sep}dist${path.sep}`) ? ['..'] : []), 'softhsm', 'softhsm2.conf.template');
    const text = fs.existsSync(template)
      ? fs.readFileSync(template, 'utf8').replaceAll('@TOKENDIR@', tokens)
      : `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`;
    fs.writeFileSync(conf, text, { mode: 0o600 });
  } else {
    // A data directory moved or copied elsewhere keeps its own token: the configuration kmsd wrote
    // names the token directory by its absolute path (SoftHSM answers a missing one only with
    // CKR_GENERAL_ERROR, and a copy would share the original's). Only kmsd's own layout is followed;
    // a configuration naming any other place is left as it is.
    const text = fs.readFileSync(conf, 'utf8');
    const fixed = text.replace(/^directories\.tokendir\s*=\s*(\S*)\s*$/m, (line, dir: string) => (dir !== tokens && dir.endsWith(`${path.sep}softhsm${path.sep}tokens`) ? `directories.tokendir = ${tokens}` : line));
    if (fixed !== text) fs.writeFileSync(conf, fixed, { mode: 0o600 });
  }
  useSoftHsmConf(conf);
  const modulePath = findSoftHsmModule();
  if (!fs.existsSync(pinFile)) {
    const pin = crypto.randomBytes(16).toString('hex');
    const soPin = crypto.randomBytes(16).toString('hex');
    // PINs are written before the token exists, so a crash can never leave a token nobody can open.
    fs.writeFileSync(soPinFile, soPin + '\n', { mode: 0o600 });
    fs.writeFileSync(`${pinFile}.new`, pin + '\n', { mode: 0o600 });
    try {
      execFileSync('softhsm2-util', ['--init-token', '--free', '--label', DEV_TOKEN_LABEL, '--so-pin', soPin, '--pin', pin], {
        // The environment is inherited, with SOFTHSM2_CONF set just above.
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    } catch (e) {
      fs.rmSync(`${pinFile}.new`, { force: true });
      const stderr = (e as { stderr?: Buffer }).stderr?.toString().trim();
      throw new HsmError(`cannot create the development token: ${stderr || (e as Error).message}`, 'TOKEN_INIT_FAILED');
    }
    fs.renameSync(`${pinFile}.new`, pinFile);
  }
  // kmsd made it 0600; someone loosened it since: warned about (the development token is not refused).
  const read = readPinFile(pinFile, true);
  return { modulePath, tokenLabel: DEV_TOKEN_LABEL, pin: read.pin, pinFile, pinLooseMode: read.looseMode };
}

/** A PIN read from a file, and whether the file was open to others. */
export interface PinFileRead {
  file: string;
  pin: string;
  /** The file's permission bits when group or others have any access to it; null when owner-only. */
  looseMode: number | null;
}

/**
 * Reads a PIN file. One that group or others may access is refused unless `allowLoose` (then the
 * caller warns): anyone who can read it can log in to the token. Mode and content come from the
 * same open file, so a swap between the check and the read cannot slip a looser file in.
 */
export function readPinFile(file: string, allowLoose: boolean): PinFileRead {
  let pin: string;
  let mode: number;
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    mode = fs.fstatSync(fd).mode & 0o777;
    pin = fs.readFileSync(fd, 'utf8').trim();
  } catch (e) {
    throw new HsmError(`cannot read PIN file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'PIN_FILE');
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
  // An empty file holds no secret, whoever may read it: say what is really wrong with it.
  if (!pin) throw new HsmError(`PIN file ${file} is empty`, 'PIN_FILE');
  const looseMode = (mode & 0o077) !== 0 ? mode : null;
  if (looseMode !== null && !allowLoose) {
    throw new HsmError(
      `PIN file ${file} is accessible to group or others (mode ${octal(looseMode)}): run chmod 600 ${file} (or chmod go-rwx), or accept it with --allow-insecure-pin-file 1 / KMS_ALLOW_INSECURE_PIN_FILE=1`,
      'PIN_FILE',
    );
  }
  return { file, pin, looseMode };
}

export function octal(mode: number): string {
  return `0${mode.toString(8).padStart(3, '0')}`;
}
