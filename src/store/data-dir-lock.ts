// One kmsd per data directory. Two daemons on one directory would run the scheduler twice, race
// on the development token and read each other's rows from a stale cache (src/store/store.ts
// caches CMK rows because it assumes it is the only writer). The lock is a file holding the
// owner's pid; a lock whose process is gone (a crash, SIGKILL) is taken over, so a crash never
// needs a manual clean-up.

import fs from 'node:fs';
import path from 'node:path';

export const LOCK_FILE = 'kmsd.lock';

export class DataDirInUseError extends Error {
  constructor(
    readonly dataDir: string,
    readonly pid: number,
  ) {
    super(`data directory ${dataDir} is in use by another kmsd (pid ${pid}); stop it first, or give this one another --data-dir (if no kmsd runs there, remove ${LOCK_FILE} in it)`);
    this.name = 'DataDirInUseError';
  }
}

/** Is `pid` a live process that could be a kmsd? (EPERM: alive, owned by someone else.) */
function alive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  // After a crash and a reboot the old pid may belong to anything; on Linux, only a node process counts.
  try {
    const cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmdline.includes('node') || cmdline.includes('kmsd');
  } catch {
    return true; // no /proc: liveness is all we can know
  }
}

export interface DataDirLock {
  release(): void;
}

/** Takes the data directory's lock or throws DataDirInUseError. */
export function lockDataDir(dataDir: string): DataDirLock {
  const file = path.join(dataDir, LOCK_FILE);
  for (let attempt = 0; ; attempt++) {
    try {
      const fd = fs.openSync(file, 'wx', 0o600);
      fs.writeSync(fd, `${process.pid}\n`);
      fs.fsyncSync(fd);
      fs.closeSync(fd);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      let owner = NaN;
      try {
        owner = Number.parseInt(fs.readFileSync(file, 'utf8').trim(), 10);
      } catch {
        /* removed meanwhile, or unreadable: treat as stale */
      }
      // A second failure means another kmsd took over the stale lock at the same moment.
      if ((owner !== process.pid && alive(owner)) || attempt > 0) throw new DataDirInUseError(dataDir, owner);
      fs.rmSync(file, { force: true }); // stale: its kmsd is gone
    }
  }
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      try {
        if (Number.parseInt(fs.readFileSync(file, 'utf8').trim(), 10) === process.pid) fs.rmSync(file, { force: true });
      } catch {
        /* already gone */
      }
    },
  };
}
