// Persistence of the audit trail: the append-only, hash-chained audit_log table and the
// data-plane usage counters. The chain rules live in src/audit.

import type Database from 'better-sqlite3';
import type { SqliteDb } from './store';
import type { AuditFilter, AuditOps, AuditRow, CounterRow } from './api';
import type { Sync } from './sync';

export type { AuditRow, CounterRow, AuditFilter } from './api';

function where(f: AuditFilter): { sql: string; args: string[] } {
  const parts: string[] = [];
  const args: string[] = [];
  if (f.keyId) {
    parts.push('key_id = ?');
    args.push(f.keyId);
  }
  if (f.action) {
    parts.push('action = ?');
    args.push(f.action);
  }
  if (f.proposalId) {
    parts.push('proposal_id = ?');
    args.push(f.proposalId);
  }
  return { sql: parts.length ? `WHERE ${parts.join(' AND ')}` : '', args };
}

/** The SQLite audit log's synchronous core (reached through SqliteStore). */
export class SqliteAudit implements Sync<AuditOps> {
  constructor(readonly store: SqliteDb) {}

  private get db() {
    return this.store.db;
  }

  tx<T>(fn: () => T): T {
    return this.store.tx(fn);
  }

  last(): AuditRow | undefined {
    return this.db.prepare('SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1').get() as AuditRow | undefined;
  }

  // Prepared once: one insert per audited call.
  private insertStmt: Database.Statement | undefined;

  insert(row: AuditRow): void {
    this.insertStmt ??= this.db.prepare(
      `INSERT INTO audit_log (seq, time, request_id, principal, action, key_id, proposal_id, outcome, details, prev_hash, hash)
       VALUES (@seq, @time, @request_id, @principal, @action, @key_id, @proposal_id, @outcome, @details, @prev_hash, @hash)`,
    );
    this.insertStmt.run(row);
  }

  count(f: AuditFilter = {}): number {
    const w = where(f);
    return (this.db.prepare(`SELECT COUNT(*) AS n FROM audit_log ${w.sql}`).get(...w.args) as { n: number }).n;
  }

  page(offset: number, limit: number, f: AuditFilter = {}): AuditRow[] {
    const w = where(f);
    return this.db.prepare(`SELECT * FROM audit_log ${w.sql} ORDER BY seq LIMIT ? OFFSET ?`).all(...w.args, limit, offset) as AuditRow[];
  }

  /** Records with afterSeq < seq <= upToSeq, in order (export pages). */
  range(afterSeq: number, upToSeq: number, limit: number): AuditRow[] {
    return this.db.prepare('SELECT * FROM audit_log WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?').all(afterSeq, upToSeq, limit) as AuditRow[];
  }

  /**
   * Every record in seq order, a page at a time: no statement stays open between pages, so the
   * connection is free for other calls while a long log is verified.
   */
  *iterate(): IterableIterator<AuditRow> {
    let after = 0;
    for (;;) {
      const rows = this.db.prepare('SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT 512').all(after) as AuditRow[];
      if (rows.length === 0) return;
      yield* rows;
      after = rows[rows.length - 1].seq;
    }
  }

  lastOfAction(action: string): AuditRow | undefined {
    return this.db.prepare('SELECT * FROM audit_log WHERE action = ? ORDER BY seq DESC LIMIT 1').get(action) as AuditRow | undefined;
  }

  // ------------------------------------------------------------------ usage counters

  addCounters(rows: CounterRow[]): void {
    if (rows.length === 0) return;
    this.tx(() => {
      const stmt = this.db.prepare(
        `INSERT INTO usage_counters (key_id, principal, action, ok, errors, first_at, last_at) VALUES (@key_id, @principal, @action, @ok, @errors, @first_at, @last_at)
         ON CONFLICT(key_id, principal, action) DO UPDATE SET ok = ok + excluded.ok, errors = errors + excluded.errors,
           first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)`,
      );
      for (const r of rows) stmt.run(r);
    });
  }

  counters(keyId?: string): CounterRow[] {
    return keyId
      ? (this.db.prepare('SELECT * FROM usage_counters WHERE key_id = ? ORDER BY key_id, principal, action').all(keyId) as CounterRow[])
      : (this.db.prepare('SELECT * FROM usage_counters ORDER BY key_id, principal, action').all() as CounterRow[]);
  }
}
