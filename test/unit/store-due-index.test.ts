// The scheduler asks the store every second which CMKs are due (store.cmksDue). With 10,000 keys a
// full scan of cmks took 2-30 ms of the event loop each second, in the p99 of every call; partial
// indexes (migration 7) answer from the few rows that can be due. Checked: each of the three
// questions is answered by its index, and the answers are right for a mix of rows.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { SqliteDb, type CmkRow } from '../../src/store/store';
import { cmkRow } from '../helpers/store-rows';

let dir: string;
let store: SqliteDb;

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-store-due-'));
  store = new SqliteDb(dir);
});

afterEach(() => {
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

function cmk(over: Partial<CmkRow>): CmkRow {
  return cmkRow(crypto.randomUUID(), { protection_level: 'SOFTWARE', description: '', creation_date: 1, ...over });
}

it('answers which CMKs are due from partial indexes, not a scan of every CMK', () => {
  const now = 1_000_000;
  const rows = {
    deleteDue: cmk({ key_state: 'PendingDeletion', delete_date: now - 1 }),
    deleteLater: cmk({ key_state: 'PendingDeletion', delete_date: now + 1 }),
    rotateDue: cmk({ automatic_rotation: 'Enabled', next_rotation_date: now }),
    rotateDisabledKey: cmk({ automatic_rotation: 'Enabled', key_state: 'Disabled', next_rotation_date: now - 1 }),
    expireDue: cmk({ origin: 'EXTERNAL', material_expire_time: now - 5 }),
    expirePendingImport: cmk({ origin: 'EXTERNAL', key_state: 'PendingImport', material_expire_time: now - 5 }),
  };
  store.tx(() => {
    for (const r of Object.values(rows)) store.insertCmk(r);
    for (let i = 0; i < 500; i++) store.insertCmk(cmk({}));
  });
  const due = store.cmksDue(now);
  expect(due.deletions.map((r) => r.key_id)).toEqual([rows.deleteDue.key_id]);
  expect(due.rotations.map((r) => r.key_id)).toEqual([rows.rotateDue.key_id]);
  expect(due.expiries.map((r) => r.key_id)).toEqual([rows.expireDue.key_id]);

  // The statements cmksDue runs, as SQLite plans them on this store.
  const db = new Database(path.join(dir, 'kmsd.sqlite'), { readonly: true });
  const plan = (sql: string) => (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(now) as { detail: string }[]).map((r) => r.detail).join('; ');
  try {
    expect(plan("SELECT * FROM cmks WHERE key_state = 'PendingDeletion' AND delete_date <= ?")).toMatch(/USING INDEX cmks_deletion_due/);
    expect(plan("SELECT * FROM cmks WHERE automatic_rotation = 'Enabled' AND key_state = 'Enabled' AND next_rotation_date IS NOT NULL AND next_rotation_date <= ?")).toMatch(/USING INDEX cmks_rotation_due/);
    expect(plan("SELECT * FROM cmks WHERE material_expire_time IS NOT NULL AND material_expire_time <= ? AND key_state <> 'PendingImport'")).toMatch(/USING INDEX cmks_expiry_due/);
  } finally {
    db.close();
  }
});
