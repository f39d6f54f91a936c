// Persistence of the AWS external key store proxy: key stores (one per URI path prefix), their
// SigV4 credentials (secrets only sealed under the root key) and the external keys that expose
// CMKs. SQL lives here, as everywhere, in src/store; the rules live in src/kms/xks.ts.

import { unique, type SqliteDb } from './store';
import type { XksCredentialRow, XksKeyRow, XksKeyStoreRow, XksOps } from './api';
import type { Sync } from './sync';

/** What this file uses of a prepared statement (better-sqlite3's, through Store.db). */
interface Statement {
  run(...params: unknown[]): unknown;
  get(...params: unknown[]): unknown;
  all(...params: unknown[]): unknown[];
}

export type { XksKeyStoreRow, XksCredentialRow, XksKeyRow } from './api';

/** Cached credential or key rows before the cache starts over. */
const ROW_CACHE_LIMIT = 10_000;

/** The SQLite external key store tables' synchronous core (reached through SqliteStore). */
export class SqliteXks implements Sync<XksOps> {
  constructor(readonly store: SqliteDb) {
    store.onRollback(() => this.forgetRows());
  }

  // Every XKS request looks up its credential and its external key; those lookups were ~10% of an
  // XKS Encrypt. kmsd is the only writer of these tables (it holds the data directory's lock), so
  // rows are cached here: any write here drops the cache, and so does any rollback. Cached rows
  // are frozen. Absent rows are not cached (unknown ids would fill memory).
  private readonly credentialRows = new Map<string, Readonly<XksCredentialRow>>();
  private readonly keyRows = new Map<string, Readonly<XksKeyRow>>();

  private forgetRows(): void {
    this.credentialRows.clear();
    this.keyRows.clear();
  }

  // Not from inside a transaction: the row may be uncommitted (see SqliteDb.remember).
  private static remember<R extends object>(cache: Map<string, Readonly<R>>, k: string, row: R | undefined, inTransaction: boolean): R | undefined {
    if (!row || inTransaction) return row;
    if (cache.size >= ROW_CACHE_LIMIT) cache.clear();
    const frozen = Object.freeze(row);
    cache.set(k, frozen);
    return frozen;
  }

  /** A statement that writes: the cached rows go (after it ran, so no read in between sees a stale row). */
  private write(sql: string, ...params: unknown[]): void {
    try {
      this.prepare(sql).run(...params);
    } finally {
      this.forgetRows();
    }
  }

  /** Prepared once: the credential and key lookups run on every XKS request. */
  private readonly statements = new Map<string, Statement>();

  private prepare(sql: string): Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.store.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  tx<T>(fn: () => T): T {
    return this.store.tx(fn);
  }

  insertKeyStore(row: XksKeyStoreRow): void {
    unique('xks_key_stores', `external key store ${row.uri_path_prefix} already exists`, () => this.write('INSERT INTO xks_key_stores (uri_path_prefix, creation_date) VALUES (@uri_path_prefix, @creation_date)', row));
  }

  getKeyStore(prefix: string): XksKeyStoreRow | undefined {
    return this.prepare('SELECT * FROM xks_key_stores WHERE uri_path_prefix = ?').get(prefix) as XksKeyStoreRow | undefined;
  }

  listKeyStores(): XksKeyStoreRow[] {
    return this.prepare('SELECT * FROM xks_key_stores ORDER BY uri_path_prefix').all() as XksKeyStoreRow[];
  }

  deleteKeyStore(prefix: string): void {
    this.store.tx(() => {
      this.write('DELETE FROM xks_credentials WHERE uri_path_prefix = ?', prefix);
      this.write('DELETE FROM xks_key_stores WHERE uri_path_prefix = ?', prefix);
    });
  }

  insertCredential(row: XksCredentialRow): void {
    this.write('INSERT INTO xks_credentials (access_key_id, uri_path_prefix, sealed_secret, creation_date) VALUES (@access_key_id, @uri_path_prefix, @sealed_secret, @creation_date)', row);
  }

  getCredential(accessKeyId: string): XksCredentialRow | undefined {
    const cached = this.credentialRows.get(accessKeyId);
    if (cached) return cached;
    return SqliteXks.remember(this.credentialRows, accessKeyId, this.prepare('SELECT * FROM xks_credentials WHERE access_key_id = ?').get(accessKeyId) as XksCredentialRow | undefined, this.store.db.inTransaction);
  }

  listCredentials(prefix: string): XksCredentialRow[] {
    return this.prepare('SELECT * FROM xks_credentials WHERE uri_path_prefix = ? ORDER BY creation_date, access_key_id').all(prefix) as XksCredentialRow[];
  }

  deleteCredential(accessKeyId: string): void {
    this.write('DELETE FROM xks_credentials WHERE access_key_id = ?', accessKeyId);
  }

  insertKey(row: XksKeyRow): void {
    unique('xks_keys', `external key ${row.external_key_id} already exists in ${row.uri_path_prefix}`, () => this.write('INSERT INTO xks_keys (uri_path_prefix, external_key_id, key_id, operations, creation_date) VALUES (@uri_path_prefix, @external_key_id, @key_id, @operations, @creation_date)', row));
  }

  getKey(prefix: string, externalKeyId: string): XksKeyRow | undefined {
    const k = `${prefix}\n${externalKeyId}`;
    const cached = this.keyRows.get(k);
    if (cached) return cached;
    return SqliteXks.remember(this.keyRows, k, this.prepare('SELECT * FROM xks_keys WHERE uri_path_prefix = ? AND external_key_id = ?').get(prefix, externalKeyId) as XksKeyRow | undefined, this.store.db.inTransaction);
  }

  listKeys(prefix: string): XksKeyRow[] {
    return this.prepare('SELECT * FROM xks_keys WHERE uri_path_prefix = ? ORDER BY external_key_id').all(prefix) as XksKeyRow[];
  }

  countKeys(prefix: string): number {
    return (this.prepare('SELECT COUNT(*) AS n FROM xks_keys WHERE uri_path_prefix = ?').get(prefix) as { n: number }).n;
  }

  deleteKey(prefix: string, externalKeyId: string): void {
    this.write('DELETE FROM xks_keys WHERE uri_path_prefix = ? AND external_key_id = ?', prefix, externalKeyId);
  }
}
