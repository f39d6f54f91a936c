// The short soak of issue 6, item 6, in CI: 64 concurrent clients, each on its own connection, doing
// a realistic mix for ~20 s against a kmsd of its own (scripts/soak.ts, which is also the long-run
// tool). The daemon's V8 heap is capped (--max-old-space-size=96) so that a leak would end in errors
// or an out-of-memory crash within the run. Zero unexpected errors; RSS growth after warm-up bounded;
// file descriptors and threads back to their baseline once the clients are gone (no connection, file
// or worker leak); no token session lost and reopened.
// SOAK_SECONDS and SOAK_CLIENTS change the run.

import { describe, expect, it } from 'vitest';
import { runSoak } from '../../scripts/soak';

const SECONDS = Number(process.env.SOAK_SECONDS ?? 20);
const CLIENTS = Number(process.env.SOAK_CLIENTS ?? 64);

describe('short soak', () => {
  it(`${CLIENTS} clients for ${SECONDS} s: no errors, bounded memory, no leaks`, async () => {
    const r = await runSoak({ seconds: SECONDS, clients: CLIENTS, warmupSeconds: Math.min(5, SECONDS / 4), env: { NODE_OPTIONS: '--max-old-space-size=96' } });
    console.log('soak:', JSON.stringify({ requests: r.requests, rps: r.requestsPerSecond, errors: r.errors, latencyMs: r.latencyMs, baseline: r.baseline, start: r.start, end: r.end, maxRssMb: r.maxRssMb, settled: r.settled, sessions: r.sessions }));
    expect(r.firstErrors).toEqual([]);
    expect(r.errors).toBe(0);
    expect(r.requests).toBeGreaterThan(CLIENTS * 10);
    for (const a of ['Encrypt', 'Decrypt', 'GenerateDataKey', 'ReEncrypt', 'DescribeKey']) expect(r.byAction[a], a).toBeGreaterThan(0);
    expect(r.baseline && r.start && r.end && r.settled).toBeTruthy();
    // Memory: the heap settles after warm-up; growth beyond this would be a leak at this request count.
    expect(r.end!.rssMb - r.start!.rssMb).toBeLessThan(96);
    expect(r.maxRssMb!).toBeLessThan(400);
    // Connections: one per client during the run, all closed afterwards.
    expect(r.settled!.fds).toBeLessThanOrEqual(r.baseline!.fds + 2);
    expect(r.settled!.threads).toBeLessThanOrEqual(r.baseline!.threads + 1);
    expect(r.hsmCounters!.hsmEncryptNative + r.hsmCounters!.hsmEncryptPkcs11js).toBeGreaterThan(0);
    if (r.sessions?.start && r.sessions.end) expect(r.sessions.end).toEqual(r.sessions.start);
  }, 120_000);
});
