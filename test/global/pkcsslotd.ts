// The opencryptoki project's slot daemon, started once for the project and stopped by its pid when
// the project ends. The per-file helpers stop one they started from an exit hook, but vitest ends
// its worker processes by signal, so those hooks do not run and pkcsslotd outlived the test run;
// with this in place the helpers find it running and leave it alone.

import { startPkcsslotd } from '../helpers/opencryptoki';

export default function setup(): () => void {
  const pid = startPkcsslotd();
  return () => {
    if (pid === null) return; // it ran before the tests: not ours to stop
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
  };
}
