// Group commit of the store (src/store/group-commit.ts) and the audit log on top of it, on a real
// SQLite file: units submitted in one turn of the event loop share one transaction; a unit that
// throws is rolled back alone; a unit's promise settles only once its transaction has committed;
// the audit chain stays one line and verifies whatever mix of grouped and immediate records, and
// whatever unit is rolled back. The checkpoint key is a node:crypto P-256 key standing in for the
// token's (the e2e tests use the token).

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite';
import { AuditLog, DEFAULT_AUDIT_CONFIG } from '../../src/audit/audit';

let dir: string;
let store: SqliteStore;
let signFails = false;

function auditLog(checkpointEveryRecords = 1_000_000): Promise<AuditLog> {
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return new AuditLog(
    store,
    {
      publicKeyDer: () => publicKey.export({ type: 'spki', format: 'der' }),
      sign: (d) => {
        if (signFails) throw new Error('the token is gone');
        return crypto.sign('sha256', d, { key: privateKey, dsaEncoding: 'ieee-p1363' });
      },
    },
    'unit-instance',
    { ...DEFAULT_AUDIT_CONFIG, checkpointEveryRecords },
  ).init();
}

/** What another connection (another process, or kmsd after a crash) sees committed: one column, in order. */
function committedColumn(sql: string): number[] {
  const db = new Database(path.join(dir, 'kmsd.sqlite'), { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).pluck().all() as number[];
  } finally {
    db.close();
  }
}
const committedSeqs = () => committedColumn('SELECT seq FROM audit_log ORDER BY seq');

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-group-commit-'));
  store = new SqliteStore(dir);
  signFails = false;
});

afterEach(async () => {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('group commit', () => {
  it('commits the units of one turn in one transaction, and nothing before the promises settle', async () => {
    store.core.db.exec('CREATE TABLE t (n INTEGER)');
    const committed = () => committedColumn('SELECT n FROM t ORDER BY n');
    const seen: number[][] = [];
    const ps = [1, 2, 3, 4, 5].map((n) => store.grouped(async () => store.core.db.prepare('INSERT INTO t (n) VALUES (?)').run(n)).then(() => seen.push(committed())));
    // Submitted, not yet run: another connection sees nothing.
    expect(committed()).toEqual([]);
    await Promise.all(ps);
    expect(store.groupStats).toMatchObject({ commits: 1, units: 5, largest: 5 });
    // Every caller, when told, finds all five on disk.
    expect(seen).toEqual([1, 2, 3, 4, 5].map(() => [1, 2, 3, 4, 5]));
  });

  it('rolls back a unit that throws, alone; the others commit and its caller gets its error', async () => {
    store.core.db.exec('CREATE TABLE t (n INTEGER)');
    const ins = (n: number) => async () => store.core.db.prepare('INSERT INTO t (n) VALUES (?)').run(n);
    const results = await Promise.allSettled([
      store.grouped(ins(1)),
      store.grouped(async () => {
        await ins(2)();
        throw new Error('unit two fails after its insert');
      }),
      store.grouped(ins(3)),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect((results[1] as PromiseRejectedResult).reason.message).toBe('unit two fails after its insert');
    expect((store.core.db.prepare('SELECT n FROM t ORDER BY n').all() as { n: number }[]).map((r) => r.n)).toEqual([1, 3]);
    expect(store.groupStats.commits).toBe(1);
  });

  it('starts a new transaction for units submitted after a flush', async () => {
    await Promise.all([store.grouped(async () => 1), store.grouped(async () => 2)]);
    await store.grouped(async () => 3);
    expect(store.groupStats).toMatchObject({ commits: 2, units: 3, largest: 2 });
  });

  it('commits waiting units when the store closes', async () => {
    const log = await auditLog();
    const p = log.appendCommitted({ principal: 'p', action: 'XksEncrypt', outcome: 'ok' });
    await store.close();
    await expect(p).resolves.toMatchObject({ Seq: 1 });
    expect(committedSeqs()).toEqual([1]);
    store = new SqliteStore(dir);
  });
});

describe('audit records by group commit', () => {
  it('keep one chain, in order, across grouped and immediate appends, and VerifyAudit holds', async () => {
    const log = await auditLog(10);
    const ps: Promise<unknown>[] = [];
    const immediate: Promise<unknown>[] = [];
    for (let i = 0; i < 40; i++) {
      ps.push(log.appendCommitted({ requestId: `r${i}`, principal: 'p', action: 'XksEncrypt', outcome: 'ok' }));
      if (i % 7 === 0) immediate.push(log.append({ requestId: `now${i}`, principal: 'admin', action: 'CreateKey', outcome: 'ok' }));
    }
    const recs = (await Promise.all(ps)) as { Seq: number; RequestId: string }[];
    await Promise.all(immediate);
    // Grouped records take their place when their transaction runs: after the immediate ones.
    expect(recs.map((r) => r.Seq)).toEqual([...recs.map((r) => r.Seq)].sort((a, b) => a - b));
    const v = await log.VerifyAudit();
    expect(v).toMatchObject({ Valid: true, Problem: '' });
    // 40 grouped, 6 immediate, and the checkpoints every 10 records.
    expect(v.RecordsChecked).toBeGreaterThanOrEqual(46 + 4);
    expect(v.CheckpointsChecked).toBeGreaterThanOrEqual(4);
    expect(committedSeqs()).toEqual(Array.from({ length: v.RecordsChecked }, (_, i) => i + 1));
  });

  it('link past a unit that was rolled back after its record was inserted (the checkpoint signature failed)', async () => {
    const log = await auditLog(3);
    await Promise.all([1, 2, 3].map((i) => log.appendCommitted({ requestId: `a${i}`, principal: 'p', action: 'XksEncrypt', outcome: 'ok' })));
    // The fourth record crosses the checkpoint threshold; signing it fails, so that unit rolls back.
    signFails = true;
    const results = await Promise.allSettled([4, 5].map((i) => log.appendCommitted({ requestId: `b${i}`, principal: 'p', action: 'XksEncrypt', outcome: 'ok' })));
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    signFails = false;
    const after = await log.appendCommitted({ requestId: 'c', principal: 'p', action: 'XksEncrypt', outcome: 'ok' });
    expect(after.Seq).toBe(4);
    const v = await log.VerifyAudit();
    expect(v).toMatchObject({ Valid: true, Problem: '' });
    expect(committedSeqs()).toEqual(Array.from({ length: v.RecordsChecked }, (_, i) => i + 1));
  });
});
