// Direct access to a daemon's audit_log table, as someone with the disk or the database's owner role
// would have, for tests that tamper with records and check that VerifyAudit names them. The same
// calls on either store the test process runs kmsd on (TEST_STORE): the SQLite file in the data
// directory, or the data directory's PostgreSQL database.

import Database from 'better-sqlite3';
import pg from 'pg';
import type { AuditRow } from '../../src/store/api';
import { testStoreOf } from './daemon';

const COLUMNS = ['seq', 'time', 'request_id', 'principal', 'action', 'key_id', 'proposal_id', 'outcome', 'details', 'prev_hash', 'hash'] as const;

export interface AuditLogAccess {
  /** Drops the append-only triggers, the first thing a tamperer does. */
  dropAppendOnlyTriggers(): Promise<void>;
  row(seq: number): Promise<AuditRow>;
  /** Records from `seq` on, in order. */
  rowsFrom(seq: number): Promise<AuditRow[]>;
  /** The seq of the first record with this action. */
  firstSeqOf(action: string): Promise<number>;
  /** Every record's action, in order. */
  actions(): Promise<string[]>;
  setOutcome(seq: number, outcome: string): Promise<void>;
  delete(seq: number): Promise<void>;
  /** Writes these records over whatever has their seq, in one transaction. */
  put(rows: AuditRow[]): Promise<void>;
  close(): Promise<void>;
}

export async function openAuditLog(dataDir: string): Promise<AuditLogAccess> {
  const where = testStoreOf(dataDir);
  return where.kind === 'sqlite' ? sqliteAuditLog(where.file) : postgresAuditLog(where.db);
}

function sqliteAuditLog(file: string): AuditLogAccess {
  const db = new Database(file);
  const put = db.prepare(`INSERT OR REPLACE INTO audit_log (${COLUMNS.join(', ')}) VALUES (${COLUMNS.map((c) => `@${c}`).join(', ')})`);
  return {
    async dropAppendOnlyTriggers() {
      db.exec('DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;');
    },
    async row(seq) {
      return db.prepare('SELECT * FROM audit_log WHERE seq = ?').get(seq) as AuditRow;
    },
    async rowsFrom(seq) {
      return db.prepare('SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq').all(seq) as AuditRow[];
    },
    async firstSeqOf(action) {
      return (db.prepare('SELECT seq FROM audit_log WHERE action = ? ORDER BY seq LIMIT 1').get(action) as { seq: number }).seq;
    },
    async actions() {
      return (db.prepare('SELECT action FROM audit_log ORDER BY seq').all() as { action: string }[]).map((r) => r.action);
    },
    async setOutcome(seq, outcome) {
      db.prepare('UPDATE audit_log SET outcome = ? WHERE seq = ?').run(outcome, seq);
    },
    async delete(seq) {
      db.prepare('DELETE FROM audit_log WHERE seq = ?').run(seq);
    },
    async put(rows) {
      db.transaction(() => rows.forEach((r) => put.run(r)))();
    },
    async close() {
      db.close();
    },
  };
}

async function postgresAuditLog(where: { host: string; port: number; user: string; password: string; database: string }): Promise<AuditLogAccess> {
  const client = new pg.Client({ host: where.host, port: where.port, user: where.user, password: where.password, database: where.database });
  await client.connect();
  // BIGINT columns arrive as strings; the records are compared and re-hashed as kmsd's numbers.
  const asRow = (r: Record<string, unknown>): AuditRow => ({ ...(r as unknown as AuditRow), seq: Number(r['seq']), time: Number(r['time']) });
  const upsert = `INSERT INTO audit_log (${COLUMNS.join(', ')}) VALUES (${COLUMNS.map((_, i) => `$${i + 1}`).join(', ')})
    ON CONFLICT (seq) DO UPDATE SET ${COLUMNS.filter((c) => c !== 'seq').map((c) => `${c} = EXCLUDED.${c}`).join(', ')}`;
  return {
    async dropAppendOnlyTriggers() {
      await client.query('DROP TRIGGER audit_log_no_update ON audit_log; DROP TRIGGER audit_log_no_delete ON audit_log;');
    },
    async row(seq) {
      return asRow((await client.query('SELECT * FROM audit_log WHERE seq = $1', [seq])).rows[0]);
    },
    async rowsFrom(seq) {
      return (await client.query('SELECT * FROM audit_log WHERE seq >= $1 ORDER BY seq', [seq])).rows.map(asRow);
    },
    async firstSeqOf(action) {
      return Number((await client.query('SELECT seq FROM audit_log WHERE action = $1 ORDER BY seq LIMIT 1', [action])).rows[0].seq);
    },
    async actions() {
      return (await client.query<{ action: string }>('SELECT action FROM audit_log ORDER BY seq')).rows.map((r) => r.action);
    },
    async setOutcome(seq, outcome) {
      await client.query('UPDATE audit_log SET outcome = $1 WHERE seq = $2', [outcome, seq]);
    },
    async delete(seq) {
      await client.query('DELETE FROM audit_log WHERE seq = $1', [seq]);
    },
    async put(rows) {
      await client.query('BEGIN');
      try {
        for (const r of rows) await client.query(upsert, COLUMNS.map((c) => r[c]));
        await client.query('COMMIT');
      } catch (e) {
        await client.query('ROLLBACK');
        throw e;
      }
    },
    async close() {
      await client.end();
    },
  };
}
