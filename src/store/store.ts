// Metadata persistence: SQLite in WAL mode with synchronous=FULL, so a committed change survives a
// crash or power loss. The only module that imports better-sqlite3. Key material is never stored
// here in the clear: HSM-level material lives in the token, SOFTWARE-level material only as an
// RFC 5649 wrap under the token-resident root key.

import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { MIGRATIONS } from './migrations';
import { StoreConflictError } from './api';
import type { CmkRow, KeyVersionRow, AliasRow, WrappingKeyRow, TokenObjectKind, TokenIntentRow, TokenDestroyRow, AccessKeyRow, MetadataOps } from './api';
import type { Sync } from './sync';

export type { CmkRow, KeyVersionRow, AliasRow, WrappingKeyRow, TokenObjectKind, TokenIntentRow, TokenDestroyRow, AccessKeyRow } from './api';

/** The store's half of the store/token binding (the token's half is its kmsd:instance object). */
const INSTANCE_ID_SETTING = 'instance.id';
const TOKEN_SEQUENCE_SETTING = 'token.sequence';

/** `insert`, with a violated unique key reported as StoreConflictError (the same from every backend). */
export function unique<T>(table: string, message: string, insert: () => T): T {
  try {
    return insert();
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || code === 'SQLITE_CONSTRAINT_UNIQUE') throw new StoreConflictError(table, message);
    throw e;
  }
}

/** Cached CMK or key-version rows before the cache starts over. */
const ROW_CACHE_LIMIT = 10_000;

/**
 * The SQLite store's synchronous core: one better-sqlite3 connection, its prepared statements and
 * the CMK and key-version row caches. kmsd reaches it through SqliteStore (src/store/sqlite.ts),
 * which serializes its transactions; read-only tools (the token auditor, the bench) may use it directly.
 */
export class SqliteDb implements Sync<MetadataOps> {
  readonly db: Database.Database;
  /** Owner of the intents this process opens (SqliteStore.replicaId). */
  owner: string | null = null;

  /**
   * `readOnly` is for tools that inspect a store kmsd owns (the token auditor): nothing is created,
   * migrated or written, and a store whose schema is not this build's is refused rather than read
   * with the wrong meaning.
   */
  constructor(
    readonly dataDir: string,
    opts: { readOnly?: boolean } = {},
  ) {
    const file = path.join(dataDir, 'kmsd.sqlite');
    this.readOnly = Boolean(opts.readOnly);
    if (opts.readOnly) {
      if (!fs.existsSync(file)) throw new Error(`no metadata store at ${file}`);
      this.db = new Database(file, { readonly: true, fileMustExist: true });
      this.db.pragma('busy_timeout = 5000');
      this.requireCurrentSchema(file);
      return;
    }
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    this.db = new Database(file);
    fs.chmodSync(file, 0o600);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('foreign_keys = ON');
    this.db.pragma('busy_timeout = 5000');
    this.migrate();
  }

  readonly readOnly: boolean;
  private readonly rollbackListeners: (() => void)[] = [];

  /** Called after any rollback, so that state kept in memory about rows is read again. */
  onRollback(fn: () => void): void {
    this.rollbackListeners.push(fn);
  }

  /** Every rollback ends here: the caches and whatever listeners keep about rows start over. */
  rolledBack(): void {
    this.forgetRows();
    for (const fn of this.rollbackListeners) fn();
  }

  private requireCurrentSchema(file: string): void {
    const latest = Math.max(...MIGRATIONS.map((m) => m.version));
    let applied = 0;
    try {
      applied = (this.db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null }).v ?? 0;
    } catch {
      /* no schema table: not a kmsd store */
    }
    if (applied !== latest) {
      this.db.close();
      throw new Error(`the metadata store ${file} has schema version ${applied}, this build reads ${latest}: ${applied < latest ? 'start this kmsd once to migrate it' : 'use the kmsd build that wrote it'}`);
    }
  }

  close(): void {
    this.statements.clear();
    if (this.db.open) this.db.close();
  }

  // Prepared once, reused: preparing on every lookup cost ~10% of a unary Encrypt (measured by the bench).
  private readonly statements = new Map<string, Database.Statement>();

  stmt(sql: string): Database.Statement {
    let s = this.statements.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.statements.set(sql, s);
    }
    return s;
  }

  private migrate(): void {
    this.db.exec('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
    const applied = new Set((this.stmt('SELECT version FROM schema_migrations').all() as { version: number }[]).map((r) => r.version));
    for (const m of MIGRATIONS) {
      if (applied.has(m.version)) continue;
      this.db.transaction(() => {
        this.db.exec(m.sql);
        this.stmt('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(m.version, Date.now());
      })();
    }
  }

  /** `fn` atomically: a transaction of its own, or a savepoint in the one already open. */
  tx<T>(fn: () => T): T {
    try {
      return this.db.transaction(fn)();
    } catch (e) {
      // A row read inside the transaction may be one that was rolled back.
      this.rolledBack();
      throw e;
    }
  }

  // CMK and key-version rows are read on every Encrypt and Decrypt; the SQLite lookups were ~12% of
  // a unary call. The daemon is the only writer of these tables (it holds the
  // data directory's lock, src/store/data-dir-lock.ts), so rows are cached here: a write drops the
  // row it touches, a rolled-back transaction drops them all. Cached rows are frozen, so no caller
  // can change the cache by accident. Absent ids are not cached (unknown ids would fill memory).
  private readonly cmkRows = new Map<string, Readonly<CmkRow>>();
  private readonly versionRows = new Map<string, Readonly<KeyVersionRow>>();

  // A row read inside a transaction is not cached: it may be one that transaction wrote and has not
  // committed, which a reader outside the transaction must not see.
  private remember<R extends object>(cache: Map<string, Readonly<R>>, id: string, row: R | undefined): R | undefined {
    if (!row) return undefined;
    if (this.db.inTransaction) return row;
    if (cache.size >= ROW_CACHE_LIMIT) cache.clear();
    const frozen = Object.freeze(row);
    cache.set(id, frozen);
    return frozen;
  }

  cachedCmk(keyId: string): Readonly<CmkRow> | undefined {
    return this.cmkRows.get(keyId);
  }

  cachedVersion(versionId: string): Readonly<KeyVersionRow> | undefined {
    return this.versionRows.get(versionId);
  }

  /** The row as the table holds it, never from the cache (a read that decides a rule). */
  getCmkForUpdate(keyId: string): CmkRow | undefined {
    return this.stmt('SELECT * FROM cmks WHERE key_id = ?').get(keyId) as CmkRow | undefined;
  }

  getAliasForUpdate(name: string): AliasRow | undefined {
    return this.getAlias(name);
  }

  getWrappingKeyForUpdate(wrapId: string): WrappingKeyRow | undefined {
    return this.getWrappingKey(wrapId);
  }

  private forgetRows(): void {
    this.cmkRows.clear();
    this.versionRows.clear();
  }

  // ------------------------------------------------------------------ settings

  getSetting(name: string): string | undefined {
    const row = this.stmt('SELECT value FROM settings WHERE name = ?').get(name) as { value: string } | undefined;
    return row?.value;
  }

  setSetting(name: string, value: string): void {
    this.stmt('INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value').run(name, value);
  }

  // ------------------------------------------------------------------ store/token binding

  /** The instance id this store is bound to (also the audit log's instance id); undefined for a new store. */
  instanceId(): string | undefined {
    return this.getSetting(INSTANCE_ID_SETTING);
  }

  setInstanceId(id: string): void {
    this.setSetting(INSTANCE_ID_SETTING, id);
  }

  /** The last token-object creation sequence this store committed (0 before the first). */
  tokenSequence(): number {
    return Number(this.getSetting(TOKEN_SEQUENCE_SETTING) ?? 0);
  }

  /** Raises the committed sequence (adoption of a token whose sequence is ahead); never lowers it. */
  raiseTokenSequence(seq: number): void {
    if (seq > this.tokenSequence()) this.setSetting(TOKEN_SEQUENCE_SETTING, String(seq));
  }

  /** True when the store records nothing yet: no CMK, wrapping key, audit record or custodian. */
  isEmpty(): boolean {
    const n = (table: string) => (this.stmt(`SELECT EXISTS (SELECT 1 FROM ${table}) AS n`).get() as { n: number }).n;
    return n('cmks') === 0 && n('wrapping_keys') === 0 && n('audit_log') === 0 && n('ceremony_custodians') === 0;
  }

  /**
   * Write-ahead intent for a token object about to be created, committed on its own before the
   * object exists: takes the next creation sequence, or `reserved` from a block
   * reserveTokenSequence gave, and returns it.
   */
  openIntent(kind: TokenObjectKind, objectId: string, now: number, reserved?: number): number {
    return this.tx(() => {
      let seq = reserved;
      if (seq === undefined) {
        seq = this.tokenSequence() + 1;
        this.setSetting(TOKEN_SEQUENCE_SETTING, String(seq));
      } else if (!Number.isSafeInteger(seq) || seq < 1 || seq > this.tokenSequence()) {
        throw new Error(`token creation sequence ${seq} was never reserved (the store's is ${this.tokenSequence()})`);
      }
      this.stmt('INSERT INTO token_intents (seq, kind, object_id, created, owner) VALUES (?, ?, ?, ?, ?)').run(seq, kind, objectId, now, this.owner);
      return seq;
    });
  }

  /** See Store.reserveTokenSequence. */
  reserveTokenSequence(count: number): number {
    if (!Number.isSafeInteger(count) || count < 1) throw new Error(`reserveTokenSequence: count must be a positive integer, not ${count}`);
    return this.tx(() => {
      const top = this.tokenSequence() + count;
      this.setSetting(TOKEN_SEQUENCE_SETTING, String(top));
      return top;
    });
  }

  /** Closes an intent (in the transaction that commits the object's metadata, or after a failed creation). */
  clearIntent(seq: number): void {
    this.stmt('DELETE FROM token_intents WHERE seq = ?').run(seq);
  }

  claimIntent(seq: number): boolean {
    return this.stmt('DELETE FROM token_intents WHERE seq = ?').run(seq).changes === 1;
  }

  allIntents(): TokenIntentRow[] {
    return this.stmt('SELECT * FROM token_intents ORDER BY seq').all() as TokenIntentRow[];
  }

  /** Records a token object to destroy (in the transaction that removes the metadata that claimed it). */
  addPendingDestroy(kind: TokenObjectKind, objectId: string, keyId: string | null, reason: string, now: number): void {
    this.stmt('INSERT INTO token_destroys (kind, object_id, key_id, reason, since) VALUES (?, ?, ?, ?, ?) ON CONFLICT(kind, object_id) DO NOTHING').run(kind, objectId, keyId, reason, now);
  }

  getPendingDestroy(kind: TokenObjectKind, objectId: string): TokenDestroyRow | undefined {
    return this.stmt('SELECT * FROM token_destroys WHERE kind = ? AND object_id = ?').get(kind, objectId) as TokenDestroyRow | undefined;
  }

  pendingDestroys(): TokenDestroyRow[] {
    return this.stmt('SELECT * FROM token_destroys ORDER BY since, object_id').all() as TokenDestroyRow[];
  }

  /** Counts a failed attempt; returns the attempts so far. */
  notePendingDestroyFailure(kind: TokenObjectKind, objectId: string, error: string): number {
    const r = this.stmt('UPDATE token_destroys SET attempts = attempts + 1, last_error = ? WHERE kind = ? AND object_id = ? RETURNING attempts').get(error, kind, objectId) as { attempts: number } | undefined;
    return r?.attempts ?? 0;
  }

  deletePendingDestroy(kind: TokenObjectKind, objectId: string): boolean {
    return this.stmt('DELETE FROM token_destroys WHERE kind = ? AND object_id = ?').run(kind, objectId).changes === 1;
  }

  // ------------------------------------------------------------------ CMKs

  insertCmk(row: CmkRow): void {
    this.db
      .prepare(
        `INSERT INTO cmks (key_id, origin, key_spec, key_usage, protection_level, description, key_state, creation_date,
          delete_date, material_expire_time, automatic_rotation, rotation_interval_s, next_rotation_date, last_rotation_date,
          primary_key_version, material_fingerprint, state_before_deletion, import_path, state_after_import)
         VALUES (@key_id, @origin, @key_spec, @key_usage, @protection_level, @description, @key_state, @creation_date,
          @delete_date, @material_expire_time, @automatic_rotation, @rotation_interval_s, @next_rotation_date, @last_rotation_date,
          @primary_key_version, @material_fingerprint, @state_before_deletion, @import_path, @state_after_import)`,
      )
      // Every column the row gives is stored (the store contract suite holds both backends to it).
      .run({ state_after_import: null, ...row });
  }

  getCmk(keyId: string): CmkRow | undefined {
    return this.cmkRows.get(keyId) ?? this.remember(this.cmkRows, keyId, this.stmt('SELECT * FROM cmks WHERE key_id = ?').get(keyId) as CmkRow | undefined);
  }

  /** Updates the named columns of one CMK. */
  updateCmk(keyId: string, fields: Partial<Omit<CmkRow, 'key_id'>>): void {
    const names = Object.keys(fields);
    if (names.length === 0) return;
    const set = names.map((n) => `${n} = @${n}`).join(', ');
    this.cmkRows.delete(keyId);
    this.stmt(`UPDATE cmks SET ${set} WHERE key_id = @key_id`).run({ ...fields, key_id: keyId });
  }

  deleteCmk(keyId: string): void {
    this.cmkRows.delete(keyId);
    for (const [id, v] of this.versionRows) if (v.key_id === keyId) this.versionRows.delete(id);
    this.stmt('DELETE FROM aliases WHERE key_id = ?').run(keyId);
    this.stmt('DELETE FROM key_versions WHERE key_id = ?').run(keyId);
    this.stmt('UPDATE wrapping_keys SET key_id = NULL WHERE key_id = ?').run(keyId);
    this.stmt('DELETE FROM cmks WHERE key_id = ?').run(keyId);
  }

  countCmks(): number {
    return (this.stmt('SELECT COUNT(*) AS n FROM cmks').get() as { n: number }).n;
  }

  listCmks(offset: number, limit: number): CmkRow[] {
    return this.stmt('SELECT * FROM cmks ORDER BY creation_date, key_id LIMIT ? OFFSET ?').all(limit, offset) as CmkRow[];
  }

  allCmks(): CmkRow[] {
    return this.stmt('SELECT * FROM cmks').all() as CmkRow[];
  }

  cmksDue(now: number): { deletions: CmkRow[]; rotations: CmkRow[]; expiries: CmkRow[] } {
    return {
      deletions: this.stmt("SELECT * FROM cmks WHERE key_state = 'PendingDeletion' AND delete_date <= ?").all(now) as CmkRow[],
      // Each answered from its partial index (migration 7): asked every second, whatever the key count.
      rotations: this.stmt("SELECT * FROM cmks WHERE automatic_rotation = 'Enabled' AND key_state = 'Enabled' AND next_rotation_date IS NOT NULL AND next_rotation_date <= ?").all(now) as CmkRow[],
      expiries: this.stmt("SELECT * FROM cmks WHERE material_expire_time IS NOT NULL AND material_expire_time <= ? AND key_state <> 'PendingImport'").all(now) as CmkRow[],
    };
  }

  // ------------------------------------------------------------------ key versions

  insertVersion(row: KeyVersionRow): void {
    this.db
      .prepare('INSERT INTO key_versions (version_id, key_id, creation_date, software_wrapped, material_state) VALUES (@version_id, @key_id, @creation_date, @software_wrapped, @material_state)')
      .run(row);
  }

  getVersion(versionId: string): KeyVersionRow | undefined {
    return this.versionRows.get(versionId) ?? this.remember(this.versionRows, versionId, this.stmt('SELECT * FROM key_versions WHERE version_id = ?').get(versionId) as KeyVersionRow | undefined);
  }

  listVersions(keyId: string): KeyVersionRow[] {
    return this.stmt('SELECT * FROM key_versions WHERE key_id = ? ORDER BY creation_date, version_id').all(keyId) as KeyVersionRow[];
  }

  allVersions(): KeyVersionRow[] {
    return this.stmt('SELECT * FROM key_versions').all() as KeyVersionRow[];
  }

  updateVersion(versionId: string, fields: Partial<Pick<KeyVersionRow, 'software_wrapped' | 'material_state'>>): void {
    const names = Object.keys(fields);
    if (names.length === 0) return;
    const set = names.map((n) => `${n} = @${n}`).join(', ');
    this.versionRows.delete(versionId);
    this.stmt(`UPDATE key_versions SET ${set} WHERE version_id = @version_id`).run({ ...fields, version_id: versionId });
  }

  // ------------------------------------------------------------------ aliases

  insertAlias(row: AliasRow): void {
    unique('aliases', `alias ${row.alias_name} already exists`, () =>
      this.stmt('INSERT INTO aliases (alias_name, key_id, creation_date, update_date) VALUES (@alias_name, @key_id, @creation_date, @update_date)').run(row),
    );
  }

  getAlias(name: string): AliasRow | undefined {
    return this.stmt('SELECT * FROM aliases WHERE alias_name = ?').get(name) as AliasRow | undefined;
  }

  updateAlias(name: string, keyId: string, now: number): void {
    this.stmt('UPDATE aliases SET key_id = ?, update_date = ? WHERE alias_name = ?').run(keyId, now, name);
  }

  deleteAlias(name: string): void {
    this.stmt('DELETE FROM aliases WHERE alias_name = ?').run(name);
  }

  countAliases(keyId?: string): number {
    const row = keyId
      ? this.stmt('SELECT COUNT(*) AS n FROM aliases WHERE key_id = ?').get(keyId)
      : this.stmt('SELECT COUNT(*) AS n FROM aliases').get();
    return (row as { n: number }).n;
  }

  listAliases(offset: number, limit: number, keyId?: string): AliasRow[] {
    return keyId
      ? (this.stmt('SELECT * FROM aliases WHERE key_id = ? ORDER BY alias_name LIMIT ? OFFSET ?').all(keyId, limit, offset) as AliasRow[])
      : (this.stmt('SELECT * FROM aliases ORDER BY alias_name LIMIT ? OFFSET ?').all(limit, offset) as AliasRow[]);
  }

  // ------------------------------------------------------------------ access keys (HTTP dialects)

  insertAccessKey(row: AccessKeyRow): void {
    this.stmt('INSERT INTO access_keys (access_key_id, principal, status, sealed_secret, creation_date, update_date) VALUES (@access_key_id, @principal, @status, @sealed_secret, @creation_date, @update_date)').run(row);
  }

  getAccessKey(id: string): AccessKeyRow | undefined {
    return this.stmt('SELECT * FROM access_keys WHERE access_key_id = ?').get(id) as AccessKeyRow | undefined;
  }

  listAccessKeys(): AccessKeyRow[] {
    return this.stmt('SELECT * FROM access_keys ORDER BY creation_date, access_key_id').all() as AccessKeyRow[];
  }

  countAccessKeys(): number {
    return (this.stmt('SELECT COUNT(*) AS n FROM access_keys').get() as { n: number }).n;
  }

  updateAccessKeyStatus(id: string, status: string, now: number): void {
    this.stmt('UPDATE access_keys SET status = ?, update_date = ? WHERE access_key_id = ?').run(status, now, id);
  }

  deleteAccessKey(id: string): void {
    this.stmt('DELETE FROM access_keys WHERE access_key_id = ?').run(id);
  }

  // ------------------------------------------------------------------ wrapping keys

  insertWrappingKey(row: WrappingKeyRow): void {
    this.db
      .prepare(
        'INSERT INTO wrapping_keys (wrap_id, key_spec, raw_decrypt, public_key, created, key_id, algorithm, expires) VALUES (@wrap_id, @key_spec, @raw_decrypt, @public_key, @created, @key_id, @algorithm, @expires)',
      )
      .run(row);
  }

  getWrappingKey(wrapId: string): WrappingKeyRow | undefined {
    return this.stmt('SELECT * FROM wrapping_keys WHERE wrap_id = ?').get(wrapId) as WrappingKeyRow | undefined;
  }

  /** Takes one pooled (unissued) key pair of this spec and binds it to a CMK, atomically. */
  issuePooledWrappingKey(spec: string, rawDecrypt: boolean, keyId: string, algorithm: string, expires: number): WrappingKeyRow | undefined {
    return this.tx(() => {
      const row = this.db
        .prepare('SELECT * FROM wrapping_keys WHERE key_id IS NULL AND expires IS NULL AND key_spec = ? AND raw_decrypt = ? ORDER BY created LIMIT 1')
        .get(spec, rawDecrypt ? 1 : 0) as WrappingKeyRow | undefined;
      if (!row) return undefined;
      this.stmt('UPDATE wrapping_keys SET key_id = ?, algorithm = ?, expires = ? WHERE wrap_id = ?').run(keyId, algorithm, expires, row.wrap_id);
      return { ...row, key_id: keyId, algorithm, expires };
    });
  }

  countPooledWrappingKeys(spec: string, rawDecrypt: boolean): number {
    return (
      this.stmt('SELECT COUNT(*) AS n FROM wrapping_keys WHERE key_id IS NULL AND expires IS NULL AND key_spec = ? AND raw_decrypt = ?').get(spec, rawDecrypt ? 1 : 0) as {
        n: number;
      }
    ).n;
  }

  expiredWrappingKeys(now: number): WrappingKeyRow[] {
    return this.stmt('SELECT * FROM wrapping_keys WHERE expires IS NOT NULL AND expires <= ?').all(now) as WrappingKeyRow[];
  }

  allWrappingKeys(): WrappingKeyRow[] {
    return this.stmt('SELECT * FROM wrapping_keys').all() as WrappingKeyRow[];
  }

  /** Counts one failed import under a wrapping key; returns the failures so far. */
  countFailedImport(wrapId: string): number {
    const r = this.stmt('UPDATE wrapping_keys SET failed_imports = failed_imports + 1 WHERE wrap_id = ? RETURNING failed_imports').get(wrapId) as { failed_imports: number } | undefined;
    return r?.failed_imports ?? 0;
  }

  deleteWrappingKey(wrapId: string): void {
    this.stmt('DELETE FROM wrapping_keys WHERE wrap_id = ?').run(wrapId);
  }
}
