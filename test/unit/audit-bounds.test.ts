// The bounds of the audit log (src/audit/audit.ts) on a real SQLite store: oversized values keep
// their length and SHA-256, refusal floods become one record per window with a count, and the
// number of open windows is bounded however many principals flood. The checkpoint key here is a
// node:crypto P-256 key standing in for the token's (the e2e tests use the token).

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite';
import { AuditLog, DEFAULT_AUDIT_CONFIG, MAX_AUDIT_COLUMN_CHARS, boundString } from '../../src/audit/audit';

let dir: string;
let store: SqliteStore;
let now: number;
let log: AuditLog;

beforeEach(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-audit-bounds-'));
  store = new SqliteStore(dir);
  const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  now = 1_700_000_000_000;
  log = await new AuditLog(
    store,
    { publicKeyDer: () => publicKey.export({ type: 'spki', format: 'der' }), sign: (d) => crypto.sign('sha256', d, { key: privateKey, dsaEncoding: 'ieee-p1363' }) },
    'unit-instance',
    { ...DEFAULT_AUDIT_CONFIG, checkpointEveryRecords: 1_000_000 },
    () => now,
  ).init();
});

afterEach(async () => {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

const sha256 = (s: string) => crypto.createHash('sha256').update(s, 'utf8').digest('hex');
const rows = () => store.core.db.prepare('SELECT * FROM audit_log ORDER BY seq').all() as { principal: string; key_id: string; outcome: string; details: string }[];

describe('boundString', () => {
  it('keeps short values and cuts long ones to the bound, naming their byte length and SHA-256', () => {
    expect(boundString('abc', 10)).toBe('abc');
    const long = 'é'.repeat(5000);
    const cut = boundString(long, 256);
    expect(cut.length).toBeLessThanOrEqual(256);
    expect(cut).toContain(`...[truncated: 10000 bytes, sha256 ${sha256(long)}]`);
    expect(cut.startsWith('éé')).toBe(true);
  });

  it('never ends on half a surrogate pair', () => {
    const long = '😀'.repeat(1000);
    for (const max of [200, 201, 202]) {
      const cut = boundString(long, max);
      expect(Buffer.from(cut, 'utf8').toString('utf8')).toBe(cut);
    }
  });
});

describe('records', () => {
  it('bound every column and Details, and the chain still verifies', async () => {
    const huge = 'x'.repeat(100_000);
    await log.append({ requestId: huge, principal: huge, action: 'DisableKey', keyId: huge, outcome: huge, details: { Reason: huge, List: Array.from({ length: 2000 }, (_, i) => `item-${i}`) } });
    const [r] = rows();
    expect(r.principal.length).toBe(MAX_AUDIT_COLUMN_CHARS);
    expect(r.outcome).toContain(`sha256 ${sha256(huge)}`);
    expect(r.key_id).toBe('');
    expect(r.details.length).toBeLessThanOrEqual(16 * 1024);
    expect(JSON.parse(r.details).DetailsTruncated).toMatch(/truncated: \d+ bytes, sha256 [0-9a-f]{64}\]$/);
    await log.checkpoint();
    expect(await log.VerifyAudit()).toMatchObject({ Valid: true, RecordsChecked: 2 });
  });
});

describe('refusals', () => {
  it('record the first of a window at once and the rest as one record with the count when it closes', async () => {
    const ev = { principal: 'app-1', action: 'Encrypt', outcome: 'Throttling', kind: 'RateLimit', error: 'over the limit' };
    for (let i = 0; i < 5; i++) {
      await log.refusal({ ...ev, requestId: `r${i}` }, true);
      now += 1000;
    }
    const refusals = () => rows().filter((r) => r.outcome === 'Throttling');
    expect(refusals().map((r) => JSON.parse(r.details).Count)).toEqual([1]);
    await log.tick(); // 5 s into a 60 s window: still open
    expect(refusals()).toHaveLength(1);
    now += DEFAULT_AUDIT_CONFIG.refusalWindowMs;
    await log.tick();
    const details = refusals().map((r) => JSON.parse(r.details));
    expect(details).toHaveLength(2);
    expect(details[1]).toMatchObject({ Refusal: 'RateLimit', Count: 4, Error: 'over the limit' });
    await log.refusal(ev, true); // a new window
    expect(refusals()).toHaveLength(3);
  });

  it('keep at most 1024 windows open: further principals share one window per action and reason', async () => {
    for (let i = 0; i < 1100; i++) {
      await log.refusal({ principal: `p${i}`, action: 'ListKeys', outcome: 'Throttling', kind: 'RateLimit', error: 'x' }, true);
      await log.refusal({ principal: `p${i}`, action: 'ListKeys', outcome: 'Throttling', kind: 'RateLimit', error: 'x' }, true);
    }
    expect(rows().length).toBe(1025);
    await log.close();
    const all = rows().filter((r) => r.outcome === 'Throttling');
    expect(all.reduce((n, r) => n + JSON.parse(r.details).Count, 0)).toBe(2200);
    expect(all.filter((r) => r.principal === '*').length).toBe(2);
  });
});
