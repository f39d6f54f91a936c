// The opencryptoki project's slot daemon, started once for the project and stopped by its pid when
// the project ends. The per-file helpers stop one they started from an exit hook, but vitest ends
// its worker processes by signal, so those hooks do not run and pkcsslotd outlived the test run;
// with this in place the helpers find it running and leave it alone. For the same reason the
// directories holding each worker's PIN file (test/helpers/opencryptoki.ts) are removed here, when
// the project ends: those made since it started (the token is machine-wide, so no other run of
// this project shares the machine with it).

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OPENCRYPTOKI_PIN_DIR_PREFIX, startPkcsslotd } from '../helpers/opencryptoki';

export default function setup(): () => void {
  const started = Date.now() - 1000;
  const pid = startPkcsslotd();
  return () => {
    for (const name of fs.readdirSync(os.tmpdir())) {
      if (!name.startsWith(OPENCRYPTOKI_PIN_DIR_PREFIX)) continue;
      const dir = path.join(os.tmpdir(), name);
      try {
        const st = fs.statSync(dir);
        if ((st.birthtimeMs || st.mtimeMs) >= started) fs.rmSync(dir, { recursive: true, force: true });
      } catch {
        /* removed meanwhile */
      }
    }
    if (pid === null) return; // it ran before the tests: not ours to stop
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
  };
}
