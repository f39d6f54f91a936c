// Issue 4, acceptance: `npm run bench` prints every figure the issue lists with its ratio to a
// baseline from the same run. This runs the real script in --quick mode (real SoftHSM token, real
// kmsd children, real gRPC) and checks that every figure is there and is a number; it asserts no
// speed (the machines are shared: speed is read from full `npm run bench` runs, README Performance).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, makeTempDir } from '../helpers/daemon';

const dir = makeTempDir('kmsd-bench-smoke-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/* eslint-disable @typescript-eslint/no-explicit-any */
const positive = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x > 0;

describe('npm run bench (--quick)', () => {
  it('prints and writes every issue 4 figure with its ratio, and kmsd encrypts through the addon', () => {
    const out = path.join(dir, 'bench.json');
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'scripts', 'bench.js'), '--quick', '--out', out], { encoding: 'utf8', timeout: 240_000 });
    expect(r.status, r.stderr.slice(-2000)).toBe(0);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));

    // 1. Per operation: 4 methods (the addon ones at the default worker count and at 1) x 3 sizes.
    for (const size of [256, 4096, 65536]) {
      const rows = j.perOperation.filter((x: any) => x.size === size);
      const methods = rows.map((x: any) => x.method);
      expect(methods).toEqual(expect.arrayContaining(['node:crypto AES-256-GCM', 'pkcs11js sync']));
      expect(methods.filter((m: string) => m.startsWith('addon single, 64 in flight'))).toHaveLength(j.nativeThreads.daemonDefault === 1 ? 1 : 2);
      expect(methods.filter((m: string) => m.startsWith('addon batch of 256'))).toHaveLength(j.nativeThreads.daemonDefault === 1 ? 1 : 2);
      for (const x of rows) expect(positive(x.opsPerSec) && positive(x.ratio), `${size} ${x.method}`).toBe(true);
      expect(rows.find((x: any) => x.method === 'pkcs11js sync').ratio).toBe(1);
    }

    // 2. gRPC: echo baseline, unary HSM and SOFTWARE, batch and stream, at concurrency 1 and 64.
    const workloads = ['echo', 'Encrypt, HSM key', 'Encrypt, SOFTWARE key', 'EncryptBatch', 'EncryptStream'];
    for (const w of workloads) {
      for (const c of [1, 64]) {
        const row = j.grpc.rows.find((x: any) => x.workload.startsWith(w) && x.concurrency === c);
        expect(row, `${w} c=${c}`).toBeDefined();
        expect([row.requestsPerSec, row.itemsPerSec, row.ratio, row.p50Ms, row.p99Ms].every(positive), `${w} c=${c}`).toBe(true);
        if (w === 'echo') expect(row.eventLoopDelayP99Ms).toBeNull();
        else expect(positive(row.eventLoopDelayP99Ms), `${w} c=${c} event-loop delay`).toBe(true);
      }
    }
    expect(j.grpc.kmsdCounters.hsmEncryptNative).toBeGreaterThan(0);
    expect(j.grpc.kmsdCounters.hsmEncryptPkcs11js).toBe(0);

    // 3. RSA wrapping: on-demand baseline, warm pool, ImportKeyMaterial.
    expect(j.rsaWrapping.map((x: any) => x.figure)).toEqual([expect.stringMatching(/pool size 0/), expect.stringMatching(/pool warm/), expect.stringMatching(/^ImportKeyMaterial/)]);
    for (const x of j.rsaWrapping) expect(positive(x.p50Ms) && positive(x.speedup), x.figure).toBe(true);

    // 5. The Alibaba dialect over HTTP: echo baseline and Encrypt (V2) at concurrency 1 and 64, and V2 verification cost.
    for (const w of ['echo', 'Encrypt, HSM key, Alibaba V2']) {
      for (const c of [1, 64]) {
        const row = j.alibabaHttp.rows.find((x: any) => x.workload.startsWith(w) && x.concurrency === c);
        expect(row, `alibaba ${w} c=${c}`).toBeDefined();
        expect([row.requestsPerSec, row.ratio, row.p50Ms, row.p99Ms].every(positive), `alibaba ${w} c=${c}`).toBe(true);
      }
    }
    expect(positive(j.alibabaHttp.verifyMicros)).toBe(true);
    expect(r.stdout).toContain('5. Alibaba dialect over HTTP/1.1 keep-alive');

    // 8. Replicas: kmsd on a throwaway PostgreSQL against kmsd on SQLite, and two replicas behind
    // KmsClient's round robin against one, each with its ratio to its baseline and CPU per call.
    const rep = j.replicas;
    expect(rep.store.map((x: any) => x.workload)).toEqual([expect.stringMatching(/SQLite store \(baseline\)$/), expect.stringMatching(/PostgreSQL store$/)]);
    expect(rep.replicas.map((x: any) => x.workload)).toEqual([expect.stringMatching(/1 replica \(baseline\)$/), expect.stringMatching(/2 replicas round robin$/)]);
    for (const x of [...rep.store, ...rep.replicas]) {
      expect(x.concurrency, x.workload).toBe(64);
      expect([x.requestsPerSec, x.p50Ms, x.p99Ms, x.cpuMicrosPerCall.kmsdMain, x.cpuMicrosPerCall.kmsdAll, x.cpuMicrosPerCall.client].every(positive), x.workload).toBe(true);
    }
    expect(rep.postgresVsSqlite).toBe(Math.round((rep.store[1].requestsPerSec / rep.store[0].requestsPerSec) * 100) / 100);
    expect(rep.twoVsOne).toBe(Math.round((rep.replicas[1].requestsPerSec / rep.replicas[0].requestsPerSec) * 100) / 100);
    expect(r.stdout).toContain('8. Replicas: the PostgreSQL store against SQLite');

    // The seven targets, each with what was achieved; and the printed tables.
    expect(j.targets.map((t: any) => t.goal)).toEqual([0.85, 20, 0.9, 0.8, 0.8, 20, 0.9]);
    expect(j.targets[6].target).toMatch(/PostgreSQL store vs SQLite store >= 0\.9$/);
    expect(j.targets[6].achieved).toBe(rep.postgresVsSqlite);
    expect(j.targets[2].target).toMatch(/^EncryptStream .* >= 0\.9 x the addon's in-process batch of 256$/);
    expect(j.targets[3].target).toMatch(/AWS SigV4.* >= 0\.8 x node:http echo$/);
    expect(j.targets[4].target).toMatch(/Alibaba V2.* >= 0\.8 x node:http echo$/);
    expect([j.grpc.streamVsAddon.streamItemsPerSec, j.grpc.streamVsAddon.addonItemsPerSec, j.grpc.streamVsAddon.ratio].every(positive)).toBe(true);
    for (const t of j.targets) expect(positive(t.achieved) && typeof t.met === 'boolean', t.target).toBe(true);
    for (const heading of ['1. Per operation', '2. gRPC on loopback', '3. RSA wrapping', 'Targets']) expect(r.stdout).toContain(heading);
  }, 300_000);
});
