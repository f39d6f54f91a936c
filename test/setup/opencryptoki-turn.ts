// The opencryptoki soft token is one slot for the whole machine, so two files that use it must not
// run at once. Its files run alongside the other projects' (test/setup/sequencer.ts spreads them
// out) and take turns here: a lock file, held from before the file's own beforeAll until after its
// last afterAll, naming the process that holds it so a lock left by a killed worker is taken over.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll } from 'vitest';

const LOCK = path.join(os.tmpdir(), 'kmsd-opencryptoki-token.lock');

function holderAlive(): boolean {
  let pid: number;
  try {
    pid = Number(fs.readFileSync(LOCK, 'utf8'));
  } catch {
    return false; // released meanwhile
  }
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

beforeAll(async () => {
  for (;;) {
    try {
      fs.writeFileSync(LOCK, String(process.pid), { flag: 'wx' });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    if (!holderAlive()) fs.rmSync(LOCK, { force: true });
    else await new Promise((r) => setTimeout(r, 200));
  }
}, 600_000);

afterAll(() => {
  try {
    if (Number(fs.readFileSync(LOCK, 'utf8')) === process.pid) fs.rmSync(LOCK, { force: true });
  } catch {
    /* not ours, or gone */
  }
});
