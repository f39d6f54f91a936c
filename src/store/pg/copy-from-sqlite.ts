// `kmsd migrate`'s store half: every row of a single-node SQLite store (DATA_DIR/kmsd.sqlite) copied
// into an empty PostgreSQL store, column for column, in one PostgreSQL transaction (all or nothing).
// Both schemas are the same versions (src/store/pg/migrations.ts mirrors src/store/migrations.ts),
// so the settings (instance id, token sequence: the store/token binding), the audit chain and every
// blob arrive byte for byte. The caller holds the data directory's lock, so no kmsd writes the
// source meanwhile.

import fs from 'node:fs';
import Database from 'better-sqlite3';
import { MIGRATIONS } from '../migrations';
import { PG_MIGRATIONS } from './migrations';
import type { PoolClient } from 'pg';
import type { PgStore } from './pg-store';

export interface CopyReport {
  /** Rows per table, in copy order (equal in source and target, checked before COMMIT). */
  tables: { table: string; rows: number }[];
  schemaVersion: number;
}

/** A refusal of `kmsd migrate` (a non-empty target, a source of another schema version): nothing was written. */
export class MigrateRefusedError extends Error {}

// Rows per INSERT: PostgreSQL takes at most 65535 parameters in one statement.
const MAX_PARAMS = 30_000;
// The copy holds this lock as migrations do: no replica migrates or copies into the database meanwhile.
const LOCK_COPY = 0x6b6d7364_0001n;

function quoteIdent(name: string): string {
  if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`unexpected table or column name ${JSON.stringify(name)} in the SQLite store`);
  return `"${name}"`;
}

/** The audit log in the target, record by record and column by column, is the source's. */
async function sameAuditLog(lite: Database.Database, client: PoolClient): Promise<void> {
  const columns = ['seq', 'time', 'request_id', 'principal', 'action', 'key_id', 'proposal_id', 'outcome', 'details', 'prev_hash', 'hash'];
  const page = 2000;
  const src = lite.prepare(`SELECT ${columns.join(', ')} FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?`);
  let after = 0;
  for (;;) {
    const a = src.all(after, page) as Record<string, unknown>[];
    const b = (await client.query(`SELECT ${columns.join(', ')} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2`, [after, page])).rows as Record<string, unknown>[];
    if (a.length !== b.length) throw new Error(`the copied audit log differs from the source after record ${after}`);
    for (let i = 0; i < a.length; i++) {
      for (const c of columns) if (a[i][c] !== b[i][c]) throw new Error(`the copied audit record ${String(a[i].seq)} differs from the source in ${c}`);
    }
    if (a.length < page) return;
    after = a[a.length - 1].seq as number;
  }
}

export async function copySqliteToPostgres(sqliteFile: string, target: PgStore): Promise<CopyReport> {
  if (!fs.existsSync(sqliteFile)) throw new MigrateRefusedError(`no SQLite store at ${sqliteFile}`);
  const lite = new Database(sqliteFile, { readonly: true, fileMustExist: true });
  try {
    const latest = Math.max(...MIGRATIONS.map((m) => m.version));
    const pgLatest = Math.max(...PG_MIGRATIONS.map((m) => m.version));
    let version = 0;
    try {
      version = (lite.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null }).v ?? 0;
    } catch {
      throw new MigrateRefusedError(`${sqliteFile} is not a kmsd store (no schema_migrations table)`);
    }
    if (version !== latest || latest !== pgLatest) {
      throw new MigrateRefusedError(`${sqliteFile} has schema version ${version}; this build migrates version ${latest}: start this build's kmsd on it once (it migrates the SQLite store), stop it, then migrate`);
    }
    // Creation order: a table another references (xks_key_stores) comes before it.
    const tables = (lite.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migrations' ORDER BY rowid").all() as { name: string }[]).map(
      (t) => t.name,
    );
    const client = await target.pool.connect();
    let broken: Error | undefined;
    try {
      await client.query('BEGIN');
      await client.query('SELECT pg_advisory_xact_lock($1)', [LOCK_COPY.toString()]);
      const pgColumns = new Map<string, Set<string>>();
      for (const r of (await client.query<{ table_name: string; column_name: string }>("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()")).rows) {
        if (!pgColumns.has(r.table_name)) pgColumns.set(r.table_name, new Set());
        pgColumns.get(r.table_name)!.add(r.column_name);
      }
      // Refuse any target that holds anything: a merge could not keep two audit chains or two bindings.
      const occupied: string[] = [];
      for (const t of tables) {
        if (!pgColumns.has(t)) throw new MigrateRefusedError(`the PostgreSQL store has no table ${t}: it is not this build's schema`);
        const n = (await client.query<{ n: number }>(`SELECT COUNT(*) AS n FROM ${quoteIdent(t)}`)).rows[0].n;
        if (n > 0) occupied.push(`${t}: ${n}`);
      }
      if (occupied.length > 0) throw new MigrateRefusedError(`the target store is not empty (${occupied.join(', ')} rows): migrate copies only into an empty database`);
      const report: CopyReport = { tables: [], schemaVersion: version };
      for (const t of tables) {
        const columns = (lite.prepare(`PRAGMA table_info(${quoteIdent(t)})`).all() as { name: string }[]).map((c) => c.name);
        for (const c of columns) if (!pgColumns.get(t)!.has(c)) throw new MigrateRefusedError(`the PostgreSQL table ${t} has no column ${c}: it is not this build's schema`);
        const perBatch = Math.max(1, Math.floor(MAX_PARAMS / columns.length));
        const select = lite.prepare(`SELECT rowid AS kmsd_rowid, ${columns.map(quoteIdent).join(', ')} FROM ${quoteIdent(t)} WHERE rowid > ? ORDER BY rowid LIMIT ?`);
        let after = Number.MIN_SAFE_INTEGER;
        let copied = 0;
        for (;;) {
          const rows = select.all(after, perBatch) as Record<string, unknown>[];
          if (rows.length === 0) break;
          const params: unknown[] = [];
          const tuples = rows.map((r) => `(${columns.map((c) => {
            params.push(r[c] ?? null);
            return `$${params.length}`;
          }).join(', ')})`);
          await client.query(`INSERT INTO ${quoteIdent(t)} (${columns.map(quoteIdent).join(', ')}) VALUES ${tuples.join(', ')}`, params);
          copied += rows.length;
          after = rows[rows.length - 1].kmsd_rowid as number;
          if (rows.length < perBatch) break;
        }
        const inTarget = (await client.query<{ n: number }>(`SELECT COUNT(*) AS n FROM ${quoteIdent(t)}`)).rows[0].n;
        const inSource = (lite.prepare(`SELECT COUNT(*) AS n FROM ${quoteIdent(t)}`).get() as { n: number }).n;
        if (inTarget !== inSource || copied !== inSource) throw new Error(`copying ${t}: ${inSource} rows in the source, ${copied} read, ${inTarget} in the target`);
        report.tables.push({ table: t, rows: inSource });
      }
      await sameAuditLog(lite, client);
      await client.query('COMMIT');
      return report;
    } catch (e) {
      await client.query('ROLLBACK').catch((r: Error) => (broken = r));
      throw e;
    } finally {
      client.release(broken);
    }
  } finally {
    lite.close();
  }
}
