// `npm run bench -- --scale N` at a small N: the real script (real SoftHSM token, real kmsd children,
// real gRPC) prints and writes every figure of the scale run. It asserts no speed (the machines are
// shared: speed is read from full runs, bench/README.md).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, makeTempDir } from '../helpers/daemon';

const dir = makeTempDir('kmsd-bench-scale-');
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const positive = (x: unknown) => typeof x === 'number' && Number.isFinite(x) && x > 0;

describe('npm run bench -- --scale', () => {
  it('creates the keys, then reports create rates, start-up, reconciliation, cold and warm Encrypt, RSS and object count', () => {
    const out = path.join(dir, 'scale.json');
    const args = [path.join(ROOT, 'dist', 'scripts', 'bench.js'), '--scale', '30', '--sample', '4', '--scale-dir', path.join(dir, 'scale'), '--out', out];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 300_000 });
    expect(r.status, r.stderr.slice(-3000)).toBe(0);
    const j = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(j.hsmKeys).toBe(30);
    // The 30 CMKs plus the root key, the MAC key, the signing key pair and the kmsd:instance object:
    // the token's own-rate windows wrote to a copy of the token, which is gone.
    expect(j.tokenObjects).toBe(35);
    expect(fs.readdirSync(path.join(dir, 'scale'))).not.toContain('own-rate-token');
    expect(j.fill.created).toBe(18);
    for (const x of [j.fill.keysPerSec, j.createKey.keysPerSec, j.createKey.tokenOwnKeysPerSec, j.createKey.ratio, j.restart.listenMs, j.restart.tokenReadyMs, j.restart.reconciliationDoneMs, j.restart.reconciliationMillisReported, j.rssMiB]) {
      expect(positive(x), JSON.stringify(j)).toBe(true);
    }
    expect(j.restart.reconciliationDoneMs).toBeGreaterThanOrEqual(j.restart.listenMs);
    // kmsd listens before its token is ready, and serves calls before reconciliation is done.
    expect(j.restart.tokenReadyMs).toBeGreaterThanOrEqual(j.restart.listenMs);
    expect(j.restart.reconciliationDoneMs).toBeGreaterThanOrEqual(j.restart.tokenReadyMs);
    expect(j.restart.unknownTokenObjects).toBe(0);
    expect(j.encrypt.keys).toBe(30);
    for (const k of ['coldP50Ms', 'coldP99Ms', 'warmP50Ms', 'warmP99Ms']) expect(positive(j.encrypt[k]), k).toBe(true);
    for (const line of [/CreateKey \(HSM, 8 in flight\): [\d.]+ keys\/s; token's own C_GenerateKey: [\d.]+ keys\/s; ratio [\d.]+/, /restart: listening after [\d.]+ ms .*reconciliation done after [\d.]+ ms/, /cold p50 [\d.]+ ms, p99 [\d.]+ ms.*warm p50 [\d.]+ ms, p99 [\d.]+ ms/, /kmsd RSS \d+ MiB/]) {
      expect(r.stdout).toMatch(line);
    }

    // A second run reuses the token: nothing to fill, only the rate windows add keys.
    const again = spawnSync(process.execPath, args, { encoding: 'utf8', timeout: 300_000 });
    expect(again.status, again.stderr.slice(-3000)).toBe(0);
    const j2 = JSON.parse(fs.readFileSync(out, 'utf8'));
    expect(j2.fill.created).toBe(0);
    expect(j2.hsmKeys).toBe(42);
    expect(j2.tokenObjects).toBe(47);
  });
});
