// kmsd migrate: moves a single-node deployment's metadata (DATA_DIR/kmsd.sqlite) into an empty
// PostgreSQL store for replicas (src/store/pg/copy-from-sqlite.ts copies; this file checks the result
// as a replica would read it). The token is not opened: the copied settings keep the store bound to it.

import path from 'node:path';
import { GENESIS_HASH, recordHash } from '../audit/chain';
import { toRecord } from '../audit/audit';
import { ConfigError, MIGRATE_USAGE, loadMigrateDaemonConfig } from '../config';
import { lockDataDir } from '../store/data-dir-lock';
import { copySqliteToPostgres } from '../store/pg/copy-from-sqlite';
import { PgStore } from '../store/pg/pg-store';
import type { Store } from '../store/api';

export interface MigrateReport {
  from: string;
  store: string;
  schemaVersion: number;
  tables: { table: string; rows: number }[];
  audit: { records: number; lastSeq: number; lastHash: string };
}

/**
 * The audit chain as the target store returns it: sequence numbers from 1 without a gap, each record
 * linked to the one before and matching its hash. (Checkpoint signatures were copied byte for byte
 * with their records; VerifyAudit checks them against the token's key.)
 */
async function checkChain(store: Store): Promise<MigrateReport['audit']> {
  let expected = 1;
  let prev = GENESIS_HASH;
  for await (const row of store.audit.iterate()) {
    if (row.seq !== expected) throw new Error(`the migrated audit chain has record ${row.seq} where ${expected} was expected`);
    if (row.prev_hash !== prev) throw new Error(`the migrated audit record ${row.seq} does not link to record ${row.seq - 1}`);
    if (recordHash(toRecord(row)) !== row.hash) throw new Error(`the migrated audit record ${row.seq} does not match its hash`);
    prev = row.hash;
    expected++;
  }
  return { records: expected - 1, lastSeq: expected - 1, lastHash: prev };
}

export async function migrate(argv: string[]): Promise<MigrateReport> {
  const cfg = loadMigrateDaemonConfig(argv);
  // No kmsd may write the source while it is copied.
  const lock = lockDataDir(cfg.fromDataDir);
  try {
    const store = await PgStore.open({ ...cfg.store, password: cfg.store.password(), applicationName: 'kmsd migrate', maxConnections: 2 });
    try {
      const copied = await copySqliteToPostgres(path.join(cfg.fromDataDir, 'kmsd.sqlite'), store);
      let audit: MigrateReport['audit'];
      try {
        audit = await checkChain(store);
      } catch (e) {
        // The copy compared every audit record with the source's before it committed: the source's
        // chain is broken the same way, and the copy keeps that visible.
        throw new Error(`copied to ${cfg.store.url}, but the audit chain does not verify (nor does the source's: the records are identical): ${(e as Error).message}`);
      }
      return { from: cfg.fromDataDir, store: cfg.store.url, schemaVersion: copied.schemaVersion, tables: copied.tables, audit };
    } finally {
      await store.close();
    }
  } finally {
    lock.release();
  }
}

/** The `kmsd migrate` command: a JSON report on stdout, or one line on stderr and exit 1 (2 for usage). */
export async function migrateMain(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(MIGRATE_USAGE + '\n');
    return;
  }
  try {
    const report = await migrate(argv);
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  } catch (e) {
    process.stderr.write(`kmsd migrate: ${(e as Error).message.trim().replace(/\s*\n\s*/g, '; ')}\n`);
    process.exit(e instanceof ConfigError ? 2 : 1);
  }
}
