// `npm run bench` section 4 (the AWS dialect over HTTP): the real script in --quick mode, only that
// section, against a real kmsd and the bare node:http echo. It checks that every figure is printed
// and written with its ratio to the echo baseline, and asserts no speed (shared machines).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, makeTempDir } from '../helpers/daemon';

const dir = makeTempDir('kmsd-bench-aws-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const positive = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x > 0;

describe('npm run bench --only aws-http (--quick)', () => {
  it('prints and writes Encrypt over SigV4 against the echo at concurrency 1 and 64, and the verification cost', () => {
    const out = path.join(dir, 'bench.json');
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'scripts', 'bench.js'), '--quick', '--only', 'aws-http', '--out', out], { encoding: 'utf8', timeout: 240_000 });
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));
    for (const w of ['echo', 'Encrypt, HSM key, AWS SigV4']) {
      for (const c of [1, 64]) {
        const row = j.awsHttp.rows.find((x: { workload: string; concurrency: number }) => x.workload.startsWith(w) && x.concurrency === c);
        expect(row, `${w} c=${c}`).toBeDefined();
        expect([row.requestsPerSec, row.ratio, row.p50Ms, row.p99Ms].every(positive), `${w} c=${c}`).toBe(true);
        if (w === 'echo') expect(row.ratio).toBe(1);
        // The serving process's CPU per request, from /proc (these tests run on Linux).
        expect(positive(row.cpuMicrosPerCall.main) && row.cpuMicrosPerCall.all >= row.cpuMicrosPerCall.main, `${w} c=${c}: ${JSON.stringify(row.cpuMicrosPerCall)}`).toBe(true);
      }
    }
    expect(positive(j.awsHttp.verifyMicros.warm) && positive(j.awsHttp.verifyMicros.cold)).toBe(true);
    expect(r.stdout).toContain('4. AWS dialect over HTTP/1.1 keep-alive');
    expect(r.stdout).toContain('CPU µs/req main/all');
    expect(r.stdout).toMatch(/SigV4 verification per call \(in process\): [\d.]+ µs with the signing key cached, [\d.]+ µs deriving it; goal at c=64: >= 0.8 x echo, achieved [\d.]+/);
  }, 300_000);
});
