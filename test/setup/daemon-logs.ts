// When a test fails, what the kmsd processes it talked to logged at warn level and above is the
// evidence: an "internal error (request id …)" answer says nothing without the daemon's line for that
// request, and the daemon's log is gone with its temp directory once the file ends. Printed to the
// test's stderr, the last lines per daemon, so a CI log alone explains a failure.

import { beforeEach } from 'vitest';
import { runningDaemons } from '../helpers/daemon';

const MAX_LINES = 60;

function noteworthy(line: string): boolean {
  const m = /"level":(\d+)/.exec(line);
  if (m) return Number(m[1]) >= 40;
  // Not pino's JSON: a crash, a Node warning, a native abort.
  return line.trim() !== '';
}

beforeEach(({ onTestFailed }) => {
  onTestFailed(() => {
    for (const d of runningDaemons) {
      const lines = d.logs().split('\n').filter(noteworthy);
      const shown = lines.slice(-MAX_LINES);
      const ended = d.unexpectedExit();
      process.stderr.write(`--- kmsd ${d.endpoint} (pid ${d.pid}${ended ? `, ${ended} without being stopped` : ''}): ${lines.length} warn/error lines${lines.length > shown.length ? `, the last ${shown.length}` : ''}\n${shown.join('\n')}\n`);
    }
  });
});
