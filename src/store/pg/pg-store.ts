// The metadata store on PostgreSQL, shared by any number of kmsd replicas (src/store/api.ts is the
// contract; the SQLite store is the single-node default). The only module that imports pg.
//
// How each rule of the seed stays atomic across replicas (issue "replicas on PostgreSQL", rule 2).
// Transactions run at READ COMMITTED; a rule is decided either by one statement that checks and
// writes at once (PostgreSQL re-evaluates its WHERE on the newest row version after waiting for a
// concurrent writer's lock), or on a row the transaction holds with SELECT ... FOR UPDATE:
// - CMK state transitions and material import: StoreTx.getCmkForUpdate holds the CMK's row; a
//   second replica's transaction waits and then reads the first one's committed state, so of two
//   imports of different material one finds the fingerprint the other wrote and is refused.
// - Alias uniqueness (and key stores, credentials, external keys): the primary key; the loser's
//   insert fails with unique_violation, mapped to StoreConflictError. UpdateAlias/DeleteAlias hold the
//   alias row (getAliasForUpdate).
// - The failed-import counter: UPDATE ... SET failed_imports = failed_imports + 1 RETURNING, one
//   statement, so concurrent failures each count; getWrappingKeyForUpdate holds the row for an import.
// - Proposal approval and execution: getProposalForUpdate holds the proposal; transition() is a
//   compare-and-set UPDATE ... WHERE state = from, true for exactly one caller of all replicas.
// - Pooled wrapping keys: taken with FOR UPDATE SKIP LOCKED inside the UPDATE that binds one, so two
//   replicas never take the same key.
// - Token creation sequence (write-ahead intents): one upsert that increments the settings row and
//   returns the value, holding that row until the intent's transaction ends.
// - The audit chain: lastAuditForUpdate takes a transaction-scoped advisory lock (the chain head)
//   before reading the last record, so appends of all replicas are serialized and link in one line;
//   the primary key on seq refuses a fork even from a writer that skipped the lock. A row lock on the
//   last record would not do: a waiter would read the head of its statement's older snapshot.
// - The custodian set: an advisory lock for the replacement, which reads the set and bumps its version.
// A transaction that PostgreSQL aborts as a deadlock or serialization failure is run again (at most
// three times), which is why a transaction's function may await nothing but its StoreTx's calls.
//
// Caches. CMK and key-version rows are read on every Encrypt and Decrypt; the data path asks
// cachedCmk/cachedVersion first. Every table a replica caches (or whose rows other modules keep in
// memory) has a trigger that NOTIFYs `kmsd_rows` with the row's key when the writing transaction
// commits (src/store/pg/migrations.ts); one connection per replica LISTENs, drops those rows, and
// tells the onRollback listeners about writes of other replicas. Cached rows also expire after
// CACHE_TTL_MS, and nothing is cached while the listening connection is down. A replica's own writes
// drop the rows they touch when they commit or roll back.

import pg from 'pg';
import { PG_MIGRATIONS } from './migrations';
import crypto from 'node:crypto';
import {
  StoreConflictError,
  StoreUnavailableError,
  type AccessKeyRow,
  type AliasRow,
  type ApprovalRow,
  type AuditFilter,
  type AuditOps,
  type AuditRow,
  type CeremonyOps,
  type CmkRow,
  type CounterRow,
  type CustodianRow,
  type GroupCommitStats,
  type KeyVersionRow,
  type ProposalRow,
  type ProposalState,
  type Store,
  type StoreOps,
  type StoreTx,
  type TokenDestroyRow,
  type TokenIntentRow,
  type TokenObjectKind,
  type WrappingKeyRow,
  type XksCredentialRow,
  type XksKeyRow,
  type XksKeyStoreRow,
  type XksOps,
} from '../api';

export interface PgStoreOptions {
  host: string;
  port: number;
  user: string;
  database: string;
  /** Undefined: node-postgres looks in the standard .pgpass file. */
  password?: string;
  /** Pool size (default 10). */
  maxConnections?: number;
  /** Shown in pg_stat_activity. */
  applicationName?: string;
  /** How long a call waits for a row or lock another transaction holds before failing as unavailable (default 10 s). */
  lockTimeoutMs?: number;
  /** How long a call waits for a connection (a new one, or one of the full pool's coming free) before failing as unavailable (default 5 s). */
  connectTimeoutMs?: number;
  /** This process's id among the replicas (default: a new random one). */
  replicaId?: string;
}

export { StoreUnavailableError };

const INSTANCE_ID_SETTING = 'instance.id';
const TOKEN_SEQUENCE_SETTING = 'token.sequence';
const CEREMONY = {
  threshold: 'ceremony.threshold',
  policy: 'ceremony.policy',
  initializedAt: 'ceremony.initialized_at',
  setVersion: 'ceremony.custodian_set_version',
} as const;

// Advisory lock keys (per database): arbitrary constants, spelled out so they never collide.
const LOCK_MIGRATIONS = 0x6b6d7364_0001n;
const LOCK_AUDIT_HEAD = 0x6b6d7364_0002n;
const LOCK_CUSTODIAN_SET = 0x6b6d7364_0003n;
const LOCK_LEADER = 0x6b6d7364_0004n;
const LOCK_START = 0x6b6d7364_0005n;
// Presence: each replica holds the two-key advisory lock (PRESENCE_CLASS, its key) on its listening
// connection for as long as that connection lives. The two-key space is apart from the one-key one.
const PRESENCE_CLASS = 0x6b6d7370; // 'kmsp'

/** The presence lock's second key for a replica id (31 bits, so it reads the same as an oid in pg_locks). */
function presenceKey(replicaId: string): number {
  return crypto.createHash('sha256').update(replicaId).digest().readUInt32BE(0) & 0x7fffffff;
}

const CACHE_TTL_MS = 500;
const ROW_CACHE_LIMIT = 10_000;
const AUDIT_PAGE = 1000;
const TX_ATTEMPTS = 3;

const CMK_COLUMNS = [
  'origin', 'key_spec', 'key_usage', 'protection_level', 'description', 'key_state', 'creation_date', 'delete_date', 'material_expire_time',
  'automatic_rotation', 'rotation_interval_s', 'next_rotation_date', 'last_rotation_date', 'primary_key_version', 'material_fingerprint',
  'state_before_deletion', 'import_path', 'state_after_import',
] as const;
const VERSION_COLUMNS = ['software_wrapped', 'material_state'] as const;
const TRANSITION_COLUMNS = ['closed_at', 'outcome', 'result', 'parameters'] as const;

// BIGINT (int8) and COUNT(*) arrive as strings by default; every one of ours (milliseconds, sequence
// numbers, counts) is far below 2^53, and a value that is not is refused rather than rounded.
const INT8_OID = 20;
const types: pg.CustomTypesConfig = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') => {
    if (oid === INT8_OID && format !== 'binary') {
      return (v: string) => {
        const n = Number(v);
        if (!Number.isSafeInteger(n)) throw new Error(`a BIGINT of the store (${v}) is beyond 2^53`);
        return n;
      };
    }
    return pg.types.getTypeParser(oid, format as 'text');
  }) as pg.CustomTypesConfig['getTypeParser'],
};

/** SQLSTATEs after which the whole transaction is run again. */
const RETRYABLE = new Set(['40001', '40P01']);

function isConnectionError(e: unknown): boolean {
  const err = e as { code?: unknown; message?: unknown };
  if (typeof err?.code === 'string') {
    // Node's socket errors, and PostgreSQL's class 08 (connection exception) and 57P0x (shutdown).
    if (/^E[A-Z]+$/.test(err.code) || err.code.startsWith('08') || /^57P0[1-3]$/.test(err.code)) return true;
  }
  return typeof err?.message === 'string' && /Connection terminated|connection timeout|Client has encountered a connection error|Client was closed/i.test(err.message);
}

/** The connection itself failed (not a statement on it): it is dropped, not rolled back and reused. */
function connectionLost(e: unknown): boolean {
  return isConnectionError(e) || (e instanceof StoreUnavailableError && isConnectionError(e.cause));
}

/** PostgreSQL's errors in the store's terms: a taken key, an unreachable store, or as is. */
function mapError(e: unknown): unknown {
  const err = e as { code?: string; table?: string; constraint?: string; message?: string };
  if (err?.code === '23505') return new StoreConflictError(err.table ?? 'unknown', `${err.table ?? 'a row'}: the key is taken (${err.constraint ?? 'unique'})`);
  if (isConnectionError(e)) return new StoreUnavailableError(`the PostgreSQL store is unreachable: ${err?.message ?? String(e)}`, { cause: e });
  if (err?.code === '55P03') return new StoreUnavailableError(`the PostgreSQL store is busy: ${err.message ?? 'lock timeout'}`, { cause: e });
  // pg-pool's answer when every connection of the pool stayed in use for connectionTimeoutMillis:
  // the store is overloaded or slow (a disk stalling its commits), which the caller may retry.
  if (err?.message === 'timeout exceeded when trying to connect') return new StoreUnavailableError('the PostgreSQL store is busy: no connection of the pool came free in time', { cause: e });
  return e;
}

// Text keys sort by bytes (COLLATE "C"), as SQLite sorts them, whatever the database's locale: a
// listing pages through the same order on both backends.

// Each distinct statement gets a name once, so every connection parses and plans it once.
const statementNames = new Map<string, string>();
function statementName(sql: string): string {
  let n = statementNames.get(sql);
  if (!n) {
    n = `k${statementNames.size}`;
    statementNames.set(sql, n);
  }
  return n;
}

type Queryable = Pick<pg.Pool, 'query'> | pg.PoolClient;

async function run<R extends pg.QueryResultRow>(on: Queryable, sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
  try {
    return await on.query<R>({ name: statementName(sql), text: sql, values: params });
  } catch (e) {
    throw mapError(e);
  }
}

/** Control statements (no parameters), several per round trip where given together. */
async function simple(client: pg.PoolClient, sql: string): Promise<void> {
  try {
    await client.query(sql);
  } catch (e) {
    throw mapError(e);
  }
}

type RowKind = 'cmk' | 'version';

/** Cached CMK and key-version rows, see the top of this file. */
class RowCache {
  /** Bumped by every drop: a read that started before a drop of its row does not fill the cache. */
  epoch = 0;
  /** False while the listening connection is down: nothing is cached then. */
  enabled = false;
  private clearedAt = 0;
  /** The epoch at which each row was last dropped (forgotten with the rows when it grows too large). */
  private readonly droppedAt = new Map<string, number>();
  private readonly rows: Record<RowKind, Map<string, { row: Readonly<object>; at: number }>> = { cmk: new Map(), version: new Map() };

  get<R extends object>(kind: RowKind, id: string): Readonly<R> | undefined {
    if (!this.enabled) return undefined;
    const e = this.rows[kind].get(id);
    if (!e) return undefined;
    if (Date.now() - e.at > CACHE_TTL_MS) {
      this.rows[kind].delete(id);
      return undefined;
    }
    return e.row as Readonly<R>;
  }

  /** Freezes a row read at `epochAtRead`, and keeps it unless it was dropped since that read began. */
  fill<R extends object>(kind: RowKind, id: string, row: R | undefined, epochAtRead: number): R | undefined {
    if (!row) return undefined;
    const frozen = Object.freeze(row);
    if (this.enabled && this.clearedAt <= epochAtRead && (this.droppedAt.get(`${kind}:${id}`) ?? 0) <= epochAtRead) {
      const m = this.rows[kind];
      if (m.size >= ROW_CACHE_LIMIT) m.clear();
      m.set(id, { row: frozen, at: Date.now() });
    }
    return frozen;
  }

  drop(kind: RowKind, id: string): void {
    if (this.droppedAt.size >= ROW_CACHE_LIMIT) this.clear();
    this.droppedAt.set(`${kind}:${id}`, ++this.epoch);
    this.rows[kind].delete(id);
  }

  dropCmkVersions(keyId: string): void {
    for (const [id, e] of this.rows.version) if ((e.row as KeyVersionRow).key_id === keyId) this.drop('version', id);
  }

  clear(): void {
    this.clearedAt = ++this.epoch;
    this.droppedAt.clear();
    this.rows.cmk.clear();
    this.rows.version.clear();
  }
}

/** What the ops need from where they run: the store (autocommit, cached) or one transaction. */
interface Context {
  query<R extends pg.QueryResultRow>(sql: string, params?: unknown[]): Promise<pg.QueryResult<R>>;
  /** `fn` atomically: a transaction of its own on the store; the current one in a transaction. */
  atomically<T>(fn: (ops: Ops) => Promise<T>): Promise<T>;
  /** The row cache where reads may use and fill it (the store), undefined in a transaction. */
  readonly cache: RowCache | undefined;
  /** A row was written: dropped now, and again when the transaction ends. */
  wrote(kind: RowKind, id: string): void;
  wroteCmkVersions(keyId: string): void;
  /** Inside a transaction: takes an advisory lock until it ends. */
  lock(key: bigint): Promise<void>;
  /** The replica whose calls these are (owner of the intents they open). */
  readonly owner: string;
}

function insertSql(table: string, columns: readonly string[]): string {
  return `INSERT INTO ${table} (${columns.join(', ')}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(', ')})`;
}

function values<R extends object>(row: R, columns: readonly string[]): unknown[] {
  return columns.map((c) => (row as Record<string, unknown>)[c] ?? null);
}

const CMK_INSERT_COLUMNS = ['key_id', ...CMK_COLUMNS];
const CMK_INSERT = insertSql('cmks', CMK_INSERT_COLUMNS);
const VERSION_INSERT_COLUMNS = ['version_id', 'key_id', 'creation_date', 'software_wrapped', 'material_state'];
const ALIAS_COLUMNS = ['alias_name', 'key_id', 'creation_date', 'update_date'];
const ACCESS_KEY_COLUMNS = ['access_key_id', 'principal', 'status', 'sealed_secret', 'creation_date', 'update_date'];
const WRAPPING_KEY_INSERT_COLUMNS = ['wrap_id', 'key_spec', 'raw_decrypt', 'public_key', 'created', 'key_id', 'algorithm', 'expires'];
const AUDIT_COLUMNS = ['seq', 'time', 'request_id', 'principal', 'action', 'key_id', 'proposal_id', 'outcome', 'details', 'prev_hash', 'hash'];
const PROPOSAL_COLUMNS = ['proposal_id', 'revision', 'action', 'key_id', 'parameters', 'document', 'requester', 'created_at', 'expires_at', 'state', 'closed_at', 'outcome', 'result'];
const APPROVAL_COLUMNS = ['proposal_id', 'revision', 'custodian_id', 'key_fingerprint', 'signature', 'approved_at'];

function auditWhere(f: AuditFilter, first: number): { sql: string; args: string[] } {
  const parts: string[] = [];
  const args: string[] = [];
  const add = (col: string, v: string | undefined) => {
    if (!v) return;
    args.push(v);
    parts.push(`${col} = $${first + args.length - 1}`);
  };
  add('key_id', f.keyId);
  add('action', f.action);
  add('proposal_id', f.proposalId);
  return { sql: parts.length ? `WHERE ${parts.join(' AND ')}` : '', args };
}

/** StoreOps over a Context: the same SQL on the store and in a transaction. */
class Ops implements StoreOps {
  readonly audit: AuditOps;
  readonly ceremony: CeremonyOps;
  readonly xks: XksOps;

  /** Where the calls run (module-internal). */
  constructor(readonly ctx: Context) {
    this.audit = new PgAuditOps(ctx);
    this.ceremony = new PgCeremonyOps(ctx, this);
    this.xks = new PgXksOps(ctx);
  }

  private async one<R extends pg.QueryResultRow>(sql: string, params: unknown[]): Promise<R | undefined> {
    return (await this.ctx.query<R>(sql, params)).rows[0];
  }

  private async all<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    return (await this.ctx.query<R>(sql, params)).rows;
  }

  private async count(sql: string, params: unknown[] = []): Promise<number> {
    return (await this.one<{ n: number }>(sql, params))!.n;
  }

  // ------------------------------------------------------------------ settings

  async getSetting(name: string): Promise<string | undefined> {
    return (await this.one<{ value: string }>('SELECT value FROM settings WHERE name = $1', [name]))?.value;
  }

  async setSetting(name: string, value: string): Promise<void> {
    await this.ctx.query('INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value', [name, value]);
  }

  instanceId(): Promise<string | undefined> {
    return this.getSetting(INSTANCE_ID_SETTING);
  }

  setInstanceId(id: string): Promise<void> {
    return this.setSetting(INSTANCE_ID_SETTING, id);
  }

  async tokenSequence(): Promise<number> {
    return Number((await this.getSetting(TOKEN_SEQUENCE_SETTING)) ?? 0);
  }

  async raiseTokenSequence(seq: number): Promise<void> {
    // One statement: compare and raise, never lowering what another replica committed meanwhile.
    await this.ctx.query(
      `INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value
       WHERE settings.value::bigint < excluded.value::bigint`,
      [TOKEN_SEQUENCE_SETTING, String(seq)],
    );
  }

  async isEmpty(): Promise<boolean> {
    const r = await this.one<{ n: boolean }>(
      `SELECT NOT (EXISTS (SELECT 1 FROM cmks) OR EXISTS (SELECT 1 FROM wrapping_keys) OR EXISTS (SELECT 1 FROM audit_log)
        OR EXISTS (SELECT 1 FROM ceremony_custodians)) AS n`,
      [],
    );
    return r!.n;
  }

  // ------------------------------------------------------------------ store/token binding

  async openIntent(kind: TokenObjectKind, objectId: string, now: number, reserved?: number): Promise<number> {
    // Without a reserved number: the next one and the intent in one transaction.
    if (reserved === undefined) return this.ctx.atomically(async (ops) => ops.openIntent(kind, objectId, now, await ops.reserveTokenSequence(1)));
    // Inserted only under a sequence the store has reached (one statement, no extra round trip).
    const r = await this.ctx.query(
      `INSERT INTO token_intents (seq, kind, object_id, created, owner)
       SELECT $1, $2, $3, $4, $5 WHERE $1::bigint >= 1 AND $1::bigint <= (SELECT value::bigint FROM settings WHERE name = $6)`,
      [reserved, kind, objectId, now, this.ctx.owner, TOKEN_SEQUENCE_SETTING],
    );
    if (r.rowCount !== 1) throw new Error(`token creation sequence ${reserved} was never reserved`);
    return reserved;
  }

  async reserveTokenSequence(count: number): Promise<number> {
    if (!Number.isSafeInteger(count) || count < 1) throw new Error(`reserveTokenSequence: count must be a positive integer, not ${count}`);
    // Adds and reads in one statement, holding the row: replicas get disjoint blocks.
    const r = await this.one<{ value: string }>(
      `INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = (settings.value::bigint + $3::bigint)::text RETURNING value`,
      [TOKEN_SEQUENCE_SETTING, String(count), count],
    );
    return Number(r!.value);
  }

  async clearIntent(seq: number): Promise<void> {
    await this.ctx.query('DELETE FROM token_intents WHERE seq = $1', [seq]);
  }

  async claimIntent(seq: number): Promise<boolean> {
    // A concurrent claim waits for this row's lock, then finds it gone (0 rows): exactly one wins.
    return ((await this.ctx.query('DELETE FROM token_intents WHERE seq = $1', [seq])).rowCount ?? 0) === 1;
  }

  allIntents(): Promise<TokenIntentRow[]> {
    return this.all<TokenIntentRow>('SELECT * FROM token_intents ORDER BY seq');
  }

  async addPendingDestroy(kind: TokenObjectKind, objectId: string, keyId: string | null, reason: string, now: number): Promise<void> {
    await this.ctx.query(
      'INSERT INTO token_destroys (kind, object_id, key_id, reason, since) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, object_id) DO NOTHING',
      [kind, objectId, keyId, reason, now],
    );
  }

  getPendingDestroy(kind: TokenObjectKind, objectId: string): Promise<TokenDestroyRow | undefined> {
    return this.one<TokenDestroyRow>('SELECT * FROM token_destroys WHERE kind = $1 AND object_id = $2', [kind, objectId]);
  }

  pendingDestroys(): Promise<TokenDestroyRow[]> {
    return this.all<TokenDestroyRow>('SELECT * FROM token_destroys ORDER BY since, object_id COLLATE "C"');
  }

  async notePendingDestroyFailure(kind: TokenObjectKind, objectId: string, error: string): Promise<number> {
    const r = await this.one<{ attempts: number }>(
      'UPDATE token_destroys SET attempts = attempts + 1, last_error = $1 WHERE kind = $2 AND object_id = $3 RETURNING attempts',
      [error, kind, objectId],
    );
    return r?.attempts ?? 0;
  }

  async deletePendingDestroy(kind: TokenObjectKind, objectId: string): Promise<boolean> {
    return ((await this.ctx.query('DELETE FROM token_destroys WHERE kind = $1 AND object_id = $2', [kind, objectId])).rowCount ?? 0) === 1;
  }

  // ------------------------------------------------------------------ CMKs

  async insertCmk(row: CmkRow): Promise<void> {
    await this.ctx.query(CMK_INSERT, values(row, CMK_INSERT_COLUMNS));
    this.ctx.wrote('cmk', row.key_id);
  }

  async getCmk(keyId: string): Promise<CmkRow | undefined> {
    const cache = this.ctx.cache;
    const cached = cache?.get<CmkRow>('cmk', keyId);
    if (cached) return cached;
    const epoch = cache?.epoch ?? 0;
    const row = await this.one<CmkRow>('SELECT * FROM cmks WHERE key_id = $1', [keyId]);
    return cache ? cache.fill('cmk', keyId, row, epoch) : row;
  }

  async updateCmk(keyId: string, fields: Partial<Omit<CmkRow, 'key_id'>>): Promise<void> {
    const names = Object.keys(fields);
    if (names.length === 0) return;
    // Column names go into the SQL: only the table's own are accepted.
    for (const n of names) if (!(CMK_COLUMNS as readonly string[]).includes(n)) throw new Error(`updateCmk: ${n} is not a column of cmks`);
    const set = names.map((n, i) => `${n} = $${i + 2}`).join(', ');
    try {
      await this.ctx.query(`UPDATE cmks SET ${set} WHERE key_id = $1`, [keyId, ...names.map((n) => (fields as Record<string, unknown>)[n] ?? null)]);
    } finally {
      this.ctx.wrote('cmk', keyId);
    }
  }

  deleteCmk(keyId: string): Promise<void> {
    return this.ctx.atomically(async (ops) => {
      try {
        await ops.ctx.query('DELETE FROM aliases WHERE key_id = $1', [keyId]);
        await ops.ctx.query('DELETE FROM key_versions WHERE key_id = $1', [keyId]);
        await ops.ctx.query('UPDATE wrapping_keys SET key_id = NULL WHERE key_id = $1', [keyId]);
        await ops.ctx.query('DELETE FROM cmks WHERE key_id = $1', [keyId]);
      } finally {
        ops.ctx.wrote('cmk', keyId);
        ops.ctx.wroteCmkVersions(keyId);
      }
    });
  }

  countCmks(): Promise<number> {
    return this.count('SELECT COUNT(*) AS n FROM cmks');
  }

  listCmks(offset: number, limit: number): Promise<CmkRow[]> {
    return this.all<CmkRow>('SELECT * FROM cmks ORDER BY creation_date, key_id COLLATE "C" LIMIT $1 OFFSET $2', [limit, offset]);
  }

  allCmks(): Promise<CmkRow[]> {
    return this.all<CmkRow>('SELECT * FROM cmks');
  }

  async cmksDue(now: number): Promise<{ deletions: CmkRow[]; rotations: CmkRow[]; expiries: CmkRow[] }> {
    return {
      deletions: await this.all<CmkRow>("SELECT * FROM cmks WHERE key_state = 'PendingDeletion' AND delete_date <= $1", [now]),
      rotations: await this.all<CmkRow>(
        "SELECT * FROM cmks WHERE automatic_rotation = 'Enabled' AND key_state = 'Enabled' AND next_rotation_date IS NOT NULL AND next_rotation_date <= $1",
        [now],
      ),
      expiries: await this.all<CmkRow>("SELECT * FROM cmks WHERE material_expire_time IS NOT NULL AND material_expire_time <= $1 AND key_state <> 'PendingImport'", [now]),
    };
  }

  // ------------------------------------------------------------------ key versions

  async insertVersion(row: KeyVersionRow): Promise<void> {
    await this.ctx.query(insertSql('key_versions', VERSION_INSERT_COLUMNS), values(row, VERSION_INSERT_COLUMNS));
    this.ctx.wrote('version', row.version_id);
  }

  async getVersion(versionId: string): Promise<KeyVersionRow | undefined> {
    const cache = this.ctx.cache;
    const cached = cache?.get<KeyVersionRow>('version', versionId);
    if (cached) return cached;
    const epoch = cache?.epoch ?? 0;
    const row = await this.one<KeyVersionRow>('SELECT * FROM key_versions WHERE version_id = $1', [versionId]);
    return cache ? cache.fill('version', versionId, row, epoch) : row;
  }

  listVersions(keyId: string): Promise<KeyVersionRow[]> {
    return this.all<KeyVersionRow>('SELECT * FROM key_versions WHERE key_id = $1 ORDER BY creation_date, version_id COLLATE "C"', [keyId]);
  }

  allVersions(): Promise<KeyVersionRow[]> {
    return this.all<KeyVersionRow>('SELECT * FROM key_versions');
  }

  async updateVersion(versionId: string, fields: Partial<Pick<KeyVersionRow, 'software_wrapped' | 'material_state'>>): Promise<void> {
    const names = Object.keys(fields);
    if (names.length === 0) return;
    for (const n of names) if (!(VERSION_COLUMNS as readonly string[]).includes(n)) throw new Error(`updateVersion: ${n} is not a column of key_versions`);
    const set = names.map((n, i) => `${n} = $${i + 2}`).join(', ');
    try {
      await this.ctx.query(`UPDATE key_versions SET ${set} WHERE version_id = $1`, [versionId, ...names.map((n) => (fields as Record<string, unknown>)[n] ?? null)]);
    } finally {
      this.ctx.wrote('version', versionId);
    }
  }

  // ------------------------------------------------------------------ aliases

  async insertAlias(row: AliasRow): Promise<void> {
    await this.ctx.query(insertSql('aliases', ALIAS_COLUMNS), values(row, ALIAS_COLUMNS));
  }

  getAlias(name: string): Promise<AliasRow | undefined> {
    return this.one<AliasRow>('SELECT * FROM aliases WHERE alias_name = $1', [name]);
  }

  async updateAlias(name: string, keyId: string, now: number): Promise<void> {
    await this.ctx.query('UPDATE aliases SET key_id = $1, update_date = $2 WHERE alias_name = $3', [keyId, now, name]);
  }

  async deleteAlias(name: string): Promise<void> {
    await this.ctx.query('DELETE FROM aliases WHERE alias_name = $1', [name]);
  }

  countAliases(keyId?: string): Promise<number> {
    return keyId ? this.count('SELECT COUNT(*) AS n FROM aliases WHERE key_id = $1', [keyId]) : this.count('SELECT COUNT(*) AS n FROM aliases');
  }

  listAliases(offset: number, limit: number, keyId?: string): Promise<AliasRow[]> {
    return keyId
      ? this.all<AliasRow>('SELECT * FROM aliases WHERE key_id = $1 ORDER BY alias_name COLLATE "C" LIMIT $2 OFFSET $3', [keyId, limit, offset])
      : this.all<AliasRow>('SELECT * FROM aliases ORDER BY alias_name COLLATE "C" LIMIT $1 OFFSET $2', [limit, offset]);
  }

  // ------------------------------------------------------------------ access keys

  async insertAccessKey(row: AccessKeyRow): Promise<void> {
    await this.ctx.query(insertSql('access_keys', ACCESS_KEY_COLUMNS), values(row, ACCESS_KEY_COLUMNS));
  }

  getAccessKey(id: string): Promise<AccessKeyRow | undefined> {
    return this.one<AccessKeyRow>('SELECT * FROM access_keys WHERE access_key_id = $1', [id]);
  }

  listAccessKeys(): Promise<AccessKeyRow[]> {
    return this.all<AccessKeyRow>('SELECT * FROM access_keys ORDER BY creation_date, access_key_id COLLATE "C"');
  }

  countAccessKeys(): Promise<number> {
    return this.count('SELECT COUNT(*) AS n FROM access_keys');
  }

  async updateAccessKeyStatus(id: string, status: string, now: number): Promise<void> {
    await this.ctx.query('UPDATE access_keys SET status = $1, update_date = $2 WHERE access_key_id = $3', [status, now, id]);
  }

  async deleteAccessKey(id: string): Promise<void> {
    await this.ctx.query('DELETE FROM access_keys WHERE access_key_id = $1', [id]);
  }

  // ------------------------------------------------------------------ wrapping keys

  async insertWrappingKey(row: WrappingKeyRow): Promise<void> {
    await this.ctx.query(insertSql('wrapping_keys', WRAPPING_KEY_INSERT_COLUMNS), values(row, WRAPPING_KEY_INSERT_COLUMNS));
  }

  getWrappingKey(wrapId: string): Promise<WrappingKeyRow | undefined> {
    return this.one<WrappingKeyRow>('SELECT * FROM wrapping_keys WHERE wrap_id = $1', [wrapId]);
  }

  issuePooledWrappingKey(spec: string, rawDecrypt: boolean, keyId: string, algorithm: string, expires: number): Promise<WrappingKeyRow | undefined> {
    // SKIP LOCKED: a key another replica is taking right now is passed over, never taken twice.
    return this.one<WrappingKeyRow>(
      `UPDATE wrapping_keys SET key_id = $1, algorithm = $2, expires = $3
       WHERE key_id IS NULL AND expires IS NULL AND wrap_id = (
         SELECT wrap_id FROM wrapping_keys WHERE key_id IS NULL AND expires IS NULL AND key_spec = $4 AND raw_decrypt = $5
         ORDER BY created LIMIT 1 FOR UPDATE SKIP LOCKED)
       RETURNING *`,
      [keyId, algorithm, expires, spec, rawDecrypt ? 1 : 0],
    );
  }

  countPooledWrappingKeys(spec: string, rawDecrypt: boolean): Promise<number> {
    return this.count('SELECT COUNT(*) AS n FROM wrapping_keys WHERE key_id IS NULL AND expires IS NULL AND key_spec = $1 AND raw_decrypt = $2', [spec, rawDecrypt ? 1 : 0]);
  }

  expiredWrappingKeys(now: number): Promise<WrappingKeyRow[]> {
    return this.all<WrappingKeyRow>('SELECT * FROM wrapping_keys WHERE expires IS NOT NULL AND expires <= $1', [now]);
  }

  allWrappingKeys(): Promise<WrappingKeyRow[]> {
    return this.all<WrappingKeyRow>('SELECT * FROM wrapping_keys');
  }

  async countFailedImport(wrapId: string): Promise<number> {
    const r = await this.one<{ failed_imports: number }>('UPDATE wrapping_keys SET failed_imports = failed_imports + 1 WHERE wrap_id = $1 RETURNING failed_imports', [wrapId]);
    return r?.failed_imports ?? 0;
  }

  async deleteWrappingKey(wrapId: string): Promise<void> {
    await this.ctx.query('DELETE FROM wrapping_keys WHERE wrap_id = $1', [wrapId]);
  }
}

class PgAuditOps implements AuditOps {
  constructor(private readonly ctx: Context) {}

  async last(): Promise<AuditRow | undefined> {
    return (await this.ctx.query<AuditRow>('SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1')).rows[0];
  }

  async insert(row: AuditRow): Promise<void> {
    await this.ctx.query(insertSql('audit_log', AUDIT_COLUMNS), values(row, AUDIT_COLUMNS));
  }

  async count(f: AuditFilter = {}): Promise<number> {
    const w = auditWhere(f, 1);
    return (await this.ctx.query<{ n: number }>(`SELECT COUNT(*) AS n FROM audit_log ${w.sql}`, w.args)).rows[0].n;
  }

  async page(offset: number, limit: number, f: AuditFilter = {}): Promise<AuditRow[]> {
    const w = auditWhere(f, 1);
    const n = w.args.length;
    return (await this.ctx.query<AuditRow>(`SELECT * FROM audit_log ${w.sql} ORDER BY seq LIMIT $${n + 1} OFFSET $${n + 2}`, [...w.args, limit, offset])).rows;
  }

  async range(afterSeq: number, upToSeq: number, limit: number): Promise<AuditRow[]> {
    return (await this.ctx.query<AuditRow>('SELECT * FROM audit_log WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3', [afterSeq, upToSeq, limit])).rows;
  }

  async *iterate(): AsyncIterable<AuditRow> {
    // Pages by seq (not a cursor): no connection is held between pages.
    let after = -1;
    for (;;) {
      const rows = (await this.ctx.query<AuditRow>('SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2', [after, AUDIT_PAGE])).rows;
      yield* rows;
      if (rows.length < AUDIT_PAGE) return;
      after = rows[rows.length - 1].seq;
    }
  }

  async lastOfAction(action: string): Promise<AuditRow | undefined> {
    return (await this.ctx.query<AuditRow>('SELECT * FROM audit_log WHERE action = $1 ORDER BY seq DESC LIMIT 1', [action])).rows[0];
  }

  async addCounters(rows: CounterRow[]): Promise<void> {
    if (rows.length === 0) return;
    // Upserted in key order, so two replicas adding overlapping counters cannot deadlock.
    const sorted = [...rows].sort((a, b) => (a.key_id + '\0' + a.principal + '\0' + a.action < b.key_id + '\0' + b.principal + '\0' + b.action ? -1 : 1));
    await this.ctx.atomically(async (ops) => {
      for (const r of sorted) {
        await ops.ctx.query(
          `INSERT INTO usage_counters (key_id, principal, action, ok, errors, first_at, last_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
           ON CONFLICT (key_id, principal, action) DO UPDATE SET ok = usage_counters.ok + excluded.ok, errors = usage_counters.errors + excluded.errors,
             first_at = LEAST(usage_counters.first_at, excluded.first_at), last_at = GREATEST(usage_counters.last_at, excluded.last_at)`,
          [r.key_id, r.principal, r.action, r.ok, r.errors, r.first_at, r.last_at],
        );
      }
    });
  }

  async counters(keyId?: string): Promise<CounterRow[]> {
    return keyId
      ? (await this.ctx.query<CounterRow>('SELECT * FROM usage_counters WHERE key_id = $1 ORDER BY key_id COLLATE "C", principal COLLATE "C", action COLLATE "C"', [keyId])).rows
      : (await this.ctx.query<CounterRow>('SELECT * FROM usage_counters ORDER BY key_id COLLATE "C", principal COLLATE "C", action COLLATE "C"')).rows;
  }
}

class PgCeremonyOps implements CeremonyOps {
  constructor(
    private readonly ctx: Context,
    private readonly meta: Ops,
  ) {}

  private async all<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    return (await this.ctx.query<R>(sql, params)).rows;
  }

  async instanceId(make: () => string): Promise<string> {
    // The first replica's id wins; every other one reads it.
    await this.ctx.query('INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING', [INSTANCE_ID_SETTING, make()]);
    return (await this.meta.getSetting(INSTANCE_ID_SETTING))!;
  }

  async initializedAt(): Promise<number | null> {
    const v = await this.meta.getSetting(CEREMONY.initializedAt);
    return v ? Number(v) : null;
  }

  async threshold(): Promise<number> {
    return Number((await this.meta.getSetting(CEREMONY.threshold)) ?? '0');
  }

  async custodianSetVersion(): Promise<number> {
    return Number((await this.meta.getSetting(CEREMONY.setVersion)) ?? '0');
  }

  policyJson(): Promise<string | undefined> {
    return this.meta.getSetting(CEREMONY.policy);
  }

  setPolicyJson(json: string): Promise<void> {
    return this.meta.setSetting(CEREMONY.policy, json);
  }

  replaceCustodianSet(custodians: { custodian_id: string; public_key: Buffer; fingerprint: string }[], threshold: number, now: number, init: boolean): Promise<void> {
    return this.ctx.atomically(async (ops) => {
      const c = ops.ctx;
      // Reads the set and bumps its version: one replacement at a time across replicas.
      await c.lock(LOCK_CUSTODIAN_SET);
      const current = new Map((await ops.ceremony.activeCustodians()).map((r) => [r.custodian_id, r]));
      const next = new Set(custodians.map((r) => r.custodian_id));
      for (const r of current.values()) {
        if (!next.has(r.custodian_id)) await c.query('UPDATE ceremony_custodians SET removed_at = $1 WHERE custodian_id = $2', [now, r.custodian_id]);
      }
      for (const r of custodians) {
        const cur = current.get(r.custodian_id);
        if (cur && cur.fingerprint === r.fingerprint) continue;
        await c.query(
          `INSERT INTO ceremony_custodians (custodian_id, public_key, fingerprint, added_at, removed_at) VALUES ($1, $2, $3, $4, NULL)
           ON CONFLICT (custodian_id) DO UPDATE SET public_key = excluded.public_key, fingerprint = excluded.fingerprint, added_at = excluded.added_at, removed_at = NULL`,
          [r.custodian_id, r.public_key, r.fingerprint, now],
        );
      }
      await ops.setSetting(CEREMONY.threshold, String(threshold));
      await ops.setSetting(CEREMONY.setVersion, String((await ops.ceremony.custodianSetVersion()) + 1));
      if (init) await ops.setSetting(CEREMONY.initializedAt, String(now));
    });
  }

  activeCustodians(): Promise<CustodianRow[]> {
    return this.all<CustodianRow>('SELECT * FROM ceremony_custodians WHERE removed_at IS NULL ORDER BY custodian_id COLLATE "C"');
  }

  async getCustodian(id: string): Promise<CustodianRow | undefined> {
    return (await this.all<CustodianRow>('SELECT * FROM ceremony_custodians WHERE custodian_id = $1', [id]))[0];
  }

  insertProposal(row: ProposalRow): Promise<void> {
    return this.ctx.atomically(async (ops) => {
      await ops.ctx.query(insertSql('ceremony_proposals', PROPOSAL_COLUMNS), values(row, PROPOSAL_COLUMNS));
      await ops.ctx.query('INSERT INTO ceremony_proposal_revisions (proposal_id, revision, document) VALUES ($1, $2, $3)', [row.proposal_id, row.revision, row.document]);
    });
  }

  async getProposal(id: string): Promise<ProposalRow | undefined> {
    return (await this.all<ProposalRow>('SELECT * FROM ceremony_proposals WHERE proposal_id = $1', [id]))[0];
  }

  async countProposals(state?: ProposalState): Promise<number> {
    const rows = state
      ? await this.all<{ n: number }>('SELECT COUNT(*) AS n FROM ceremony_proposals WHERE state = $1', [state])
      : await this.all<{ n: number }>('SELECT COUNT(*) AS n FROM ceremony_proposals');
    return rows[0].n;
  }

  listProposals(offset: number, limit: number, state?: ProposalState): Promise<ProposalRow[]> {
    return state
      ? this.all<ProposalRow>('SELECT * FROM ceremony_proposals WHERE state = $1 ORDER BY created_at DESC, proposal_id COLLATE "C" LIMIT $2 OFFSET $3', [state, limit, offset])
      : this.all<ProposalRow>('SELECT * FROM ceremony_proposals ORDER BY created_at DESC, proposal_id COLLATE "C" LIMIT $1 OFFSET $2', [limit, offset]);
  }

  recentOpenDocuments(exceptId: string, limit: number): Promise<{ proposal_id: string; revision: number; document: Buffer }[]> {
    return this.all("SELECT proposal_id, revision, document FROM ceremony_proposals WHERE state = 'Open' AND proposal_id <> $1 ORDER BY created_at DESC LIMIT $2", [exceptId, limit]);
  }

  olderRevisions(id: string, currentRevision: number): Promise<{ revision: number; document: Buffer }[]> {
    return this.all('SELECT revision, document FROM ceremony_proposal_revisions WHERE proposal_id = $1 AND revision < $2 ORDER BY revision DESC', [id, currentRevision]);
  }

  reviseProposal(id: string, revision: number, document: Buffer, expiresAt: number): Promise<void> {
    return this.ctx.atomically(async (ops) => {
      await ops.ctx.query('UPDATE ceremony_proposals SET revision = $1, document = $2, expires_at = $3 WHERE proposal_id = $4', [revision, document, expiresAt, id]);
      await ops.ctx.query('INSERT INTO ceremony_proposal_revisions (proposal_id, revision, document) VALUES ($1, $2, $3)', [id, revision, document]);
    });
  }

  async transition(
    id: string,
    from: ProposalState,
    to: ProposalState,
    fields: { closed_at?: number | null; outcome?: string | null; result?: string | null; parameters?: string } = {},
  ): Promise<boolean> {
    const names = Object.keys(fields);
    for (const n of names) if (!(TRANSITION_COLUMNS as readonly string[]).includes(n)) throw new Error(`transition: ${n} is not a column it sets`);
    const sets = ['state = $3', ...names.map((n, i) => `${n} = $${i + 4}`)].join(', ');
    // Compare-and-set in one statement: a concurrent transition waits for this row and then finds
    // the state moved, so it updates nothing.
    const r = await this.ctx.query(`UPDATE ceremony_proposals SET ${sets} WHERE proposal_id = $1 AND state = $2`, [
      id,
      from,
      to,
      ...names.map((n) => (fields as Record<string, unknown>)[n] ?? null),
    ]);
    return r.rowCount === 1;
  }

  interruptedProposals(): Promise<ProposalRow[]> {
    return this.all<ProposalRow>("SELECT * FROM ceremony_proposals WHERE state = 'Executing'");
  }

  async insertApproval(row: ApprovalRow): Promise<void> {
    await this.ctx.query(
      `${insertSql('ceremony_approvals', APPROVAL_COLUMNS)}
       ON CONFLICT (proposal_id, revision, custodian_id) DO UPDATE SET key_fingerprint = excluded.key_fingerprint, signature = excluded.signature, approved_at = excluded.approved_at`,
      values(row, APPROVAL_COLUMNS),
    );
  }

  approvals(id: string, revision?: number): Promise<ApprovalRow[]> {
    return revision === undefined
      ? this.all<ApprovalRow>('SELECT * FROM ceremony_approvals WHERE proposal_id = $1 ORDER BY approved_at, custodian_id COLLATE "C"', [id])
      : this.all<ApprovalRow>('SELECT * FROM ceremony_approvals WHERE proposal_id = $1 AND revision = $2 ORDER BY approved_at, custodian_id COLLATE "C"', [id, revision]);
  }
}

class PgXksOps implements XksOps {
  constructor(private readonly ctx: Context) {}

  private async all<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<R[]> {
    return (await this.ctx.query<R>(sql, params)).rows;
  }

  async insertKeyStore(row: XksKeyStoreRow): Promise<void> {
    await this.ctx.query('INSERT INTO xks_key_stores (uri_path_prefix, creation_date) VALUES ($1, $2)', [row.uri_path_prefix, row.creation_date]);
  }

  async getKeyStore(prefix: string): Promise<XksKeyStoreRow | undefined> {
    return (await this.all<XksKeyStoreRow>('SELECT * FROM xks_key_stores WHERE uri_path_prefix = $1', [prefix]))[0];
  }

  listKeyStores(): Promise<XksKeyStoreRow[]> {
    return this.all<XksKeyStoreRow>('SELECT * FROM xks_key_stores ORDER BY uri_path_prefix COLLATE "C"');
  }

  deleteKeyStore(prefix: string): Promise<void> {
    return this.ctx.atomically(async (ops) => {
      await ops.ctx.query('DELETE FROM xks_credentials WHERE uri_path_prefix = $1', [prefix]);
      await ops.ctx.query('DELETE FROM xks_key_stores WHERE uri_path_prefix = $1', [prefix]);
    });
  }

  async insertCredential(row: XksCredentialRow): Promise<void> {
    await this.ctx.query('INSERT INTO xks_credentials (access_key_id, uri_path_prefix, sealed_secret, creation_date) VALUES ($1, $2, $3, $4)', [
      row.access_key_id,
      row.uri_path_prefix,
      row.sealed_secret,
      row.creation_date,
    ]);
  }

  async getCredential(accessKeyId: string): Promise<XksCredentialRow | undefined> {
    return (await this.all<XksCredentialRow>('SELECT * FROM xks_credentials WHERE access_key_id = $1', [accessKeyId]))[0];
  }

  listCredentials(prefix: string): Promise<XksCredentialRow[]> {
    return this.all<XksCredentialRow>('SELECT * FROM xks_credentials WHERE uri_path_prefix = $1 ORDER BY creation_date, access_key_id COLLATE "C"', [prefix]);
  }

  async deleteCredential(accessKeyId: string): Promise<void> {
    await this.ctx.query('DELETE FROM xks_credentials WHERE access_key_id = $1', [accessKeyId]);
  }

  async insertKey(row: XksKeyRow): Promise<void> {
    await this.ctx.query('INSERT INTO xks_keys (uri_path_prefix, external_key_id, key_id, operations, creation_date) VALUES ($1, $2, $3, $4, $5)', [
      row.uri_path_prefix,
      row.external_key_id,
      row.key_id,
      row.operations,
      row.creation_date,
    ]);
  }

  async getKey(prefix: string, externalKeyId: string): Promise<XksKeyRow | undefined> {
    return (await this.all<XksKeyRow>('SELECT * FROM xks_keys WHERE uri_path_prefix = $1 AND external_key_id = $2', [prefix, externalKeyId]))[0];
  }

  listKeys(prefix: string): Promise<XksKeyRow[]> {
    return this.all<XksKeyRow>('SELECT * FROM xks_keys WHERE uri_path_prefix = $1 ORDER BY external_key_id COLLATE "C"', [prefix]);
  }

  async countKeys(prefix: string): Promise<number> {
    return (await this.all<{ n: number }>('SELECT COUNT(*) AS n FROM xks_keys WHERE uri_path_prefix = $1', [prefix]))[0].n;
  }

  async deleteKey(prefix: string, externalKeyId: string): Promise<void> {
    await this.ctx.query('DELETE FROM xks_keys WHERE uri_path_prefix = $1 AND external_key_id = $2', [prefix, externalKeyId]);
  }
}

/** The calls of one transaction (or one group-commit unit) on one connection. */
class PgTx extends Ops implements StoreTx {
  constructor(ctx: TxContext) {
    super(ctx);
  }

  private get tctx(): TxContext {
    return this.ctx as TxContext;
  }

  async getCmkForUpdate(keyId: string): Promise<CmkRow | undefined> {
    return (await this.tctx.query<CmkRow>('SELECT * FROM cmks WHERE key_id = $1 FOR UPDATE', [keyId])).rows[0];
  }

  async getAliasForUpdate(name: string): Promise<AliasRow | undefined> {
    return (await this.tctx.query<AliasRow>('SELECT * FROM aliases WHERE alias_name = $1 FOR UPDATE', [name])).rows[0];
  }

  async getWrappingKeyForUpdate(wrapId: string): Promise<WrappingKeyRow | undefined> {
    return (await this.tctx.query<WrappingKeyRow>('SELECT * FROM wrapping_keys WHERE wrap_id = $1 FOR UPDATE', [wrapId])).rows[0];
  }

  async getProposalForUpdate(id: string): Promise<ProposalRow | undefined> {
    return (await this.tctx.query<ProposalRow>('SELECT * FROM ceremony_proposals WHERE proposal_id = $1 FOR UPDATE', [id])).rows[0];
  }

  async lastAuditForUpdate(): Promise<AuditRow | undefined> {
    // The lock first, then the read: the read's snapshot is taken after the previous holder committed.
    await this.tctx.lock(LOCK_AUDIT_HEAD);
    return this.audit.last();
  }
}

class TxContext implements Context {
  readonly cache = undefined;
  readonly dirty: { kind: RowKind | 'cmk-versions'; id: string }[] = [];
  closed = false;

  constructor(
    private readonly client: pg.PoolClient,
    private readonly rows: RowCache,
    readonly owner: string,
  ) {}

  query<R extends pg.QueryResultRow>(sql: string, params: unknown[] = []): Promise<pg.QueryResult<R>> {
    if (this.closed) return Promise.reject(new Error('store transaction used after it ended'));
    return run<R>(this.client, sql, params);
  }

  atomically<T>(fn: (ops: Ops) => Promise<T>): Promise<T> {
    return fn(this.tx);
  }

  tx!: PgTx;

  wrote(kind: RowKind, id: string): void {
    this.rows.drop(kind, id);
    this.dirty.push({ kind, id });
  }

  wroteCmkVersions(keyId: string): void {
    this.rows.dropCmkVersions(keyId);
    this.dirty.push({ kind: 'cmk-versions', id: keyId });
  }

  async lock(key: bigint): Promise<void> {
    await this.query('SELECT pg_advisory_xact_lock($1)', [key.toString()]);
  }

  /** Drops what this transaction wrote from the cache (its commit or rollback changed or restored it). */
  settle(): void {
    this.closed = true;
    for (const d of this.dirty) {
      if (d.kind === 'cmk-versions') this.rows.dropCmkVersions(d.id);
      else this.rows.drop(d.kind, d.id);
    }
  }
}

function newTx(client: pg.PoolClient, rows: RowCache, owner: string): { tx: PgTx; ctx: TxContext } {
  const ctx = new TxContext(client, rows, owner);
  const tx = new PgTx(ctx);
  ctx.tx = tx;
  return { tx, ctx };
}

interface Unit {
  fn: (tx: StoreTx) => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

export class PgStore extends Ops implements Store {
  readonly backend = 'postgres';
  readonly replicaId: string;
  private readonly rows: RowCache;
  /** Key leases whose release failed, retried by these timers. */
  private readonly unreleased = new Map<string, NodeJS.Timeout>();
  /** Whether the listening connection holds the leader lock (lost with that connection). */
  private leading = false;
  private readonly rollbackListeners: (() => void)[] = [];
  /** Backend pids of this process's connections: their notifications are our own writes. */
  private readonly ownBackends = new Set<number>();
  private listener: pg.Client | undefined;
  private closing = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private notifyScheduled = false;

  private queue: Unit[] = [];
  private groupRunning: Promise<void> | undefined;
  private groupScheduled = false;
  readonly groupStats: GroupCommitStats = { commits: 0, units: 0, largest: 0 };

  private constructor(
    readonly pool: pg.Pool,
    private readonly options: PgStoreOptions,
    rows: RowCache,
    self: { store?: PgStore } = {},
  ) {
    super({
      query: (sql, params) => run(pool, sql, params),
      atomically: (fn) => self.store!.transaction((tx) => fn(tx as PgTx)),
      cache: rows,
      wrote: (kind, id) => rows.drop(kind, id),
      wroteCmkVersions: (keyId) => rows.dropCmkVersions(keyId),
      lock: () => Promise.reject(new Error('an advisory lock needs a transaction')),
      owner: options.replicaId ?? (options.replicaId = crypto.randomUUID()),
    });
    this.replicaId = options.replicaId!;
    this.rows = rows;
    self.store = this;
  }

  /** Connects, migrates the schema (one replica at a time) and starts listening for other replicas' writes. */
  static async open(options: PgStoreOptions): Promise<PgStore> {
    const pool = new pg.Pool({ ...connectionConfig(options), max: options.maxConnections ?? 10, idleTimeoutMillis: 30_000 });
    // An idle connection that breaks (PostgreSQL restarted) must not take the process with it.
    pool.on('error', () => {});
    const store = new PgStore(pool, options, new RowCache());
    pool.on('connect', (c) => {
      const pid = (c as unknown as { processID?: number }).processID;
      if (pid) store.ownBackends.add(pid);
      c.on('end', () => pid && store.ownBackends.delete(pid));
    });
    try {
      await migrate(pool);
      await store.listen();
    } catch (e) {
      await pool.end().catch(() => {});
      throw mapError(e);
    }
    return store;
  }

  /**
   * Connects for reading only (the token auditor): every transaction is READ ONLY, the schema is not
   * migrated (a store of another schema version is refused, as a build that cannot read it), and
   * nothing listens for other replicas' writes. Only the read calls may be used.
   */
  static async openReadOnly(options: PgStoreOptions): Promise<PgStore> {
    const pool = new pg.Pool({ ...connectionConfig(options), options: '-c default_transaction_read_only=on', max: options.maxConnections ?? 2, idleTimeoutMillis: 30_000 });
    pool.on('error', () => {});
    try {
      const latest = Math.max(...PG_MIGRATIONS.map((m) => m.version));
      const exists = (await pool.query<{ t: string | null }>("SELECT to_regclass('schema_migrations') AS t")).rows[0].t !== null;
      const newest = exists ? Number((await pool.query<{ v: number | null }>('SELECT MAX(version) AS v FROM schema_migrations')).rows[0].v ?? 0) : 0;
      if (newest === 0) throw new Error('the database holds no kmsd store (no schema_migrations): not a database kmsd has started on');
      if (newest !== latest) throw new Error(`the PostgreSQL store has schema version ${newest}, this build reads ${latest}: use the kmsd build that wrote it${newest < latest ? ', or start this build on it once to migrate it' : ''}`);
    } catch (e) {
      await pool.end().catch(() => {});
      throw mapError(e);
    }
    return new PgStore(pool, options, new RowCache());
  }

  private async listen(): Promise<void> {
    const client = new pg.Client(connectionConfig(this.options));
    client.on('error', () => this.listenerLost(client));
    client.on('end', () => this.listenerLost(client));
    client.on('notification', (n) => this.notified(n));
    await client.connect();
    await client.query('LISTEN kmsd_rows');
    // Presence rides on the listening connection: while it lives, other replicas leave this one's
    // open intents alone; when it breaks, the lock (and leadership) go with it.
    await client.query('SELECT pg_advisory_lock($1, $2)', [PRESENCE_CLASS, presenceKey(this.replicaId)]);
    this.listener = client;
    // Whatever changed while nobody listened is read again.
    this.rows.clear();
    this.rows.enabled = true;
    this.changedElsewhere();
  }

  private listenerLost(client: pg.Client): void {
    if (this.listener !== client) return;
    this.listener = undefined;
    this.leading = false;
    this.rows.enabled = false;
    this.rows.clear();
    client.end().catch(() => {});
    if (this.closing) return;
    this.changedElsewhere();
    const retry = (delay: number) => {
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = undefined;
        if (this.closing) return;
        this.listen().catch(() => retry(Math.min(delay * 2, 1000)));
      }, delay);
      this.reconnectTimer.unref();
    };
    retry(250);
  }

  private notified(n: pg.Notification): void {
    const payload = n.payload ?? '';
    const colon = payload.indexOf(':');
    const table = payload.slice(0, colon);
    const id = payload.slice(colon + 1);
    if (table === 'cmks') {
      if (id === '*') this.rows.clear();
      else this.rows.drop('cmk', id);
    } else if (table === 'key_versions') {
      if (id === '*') this.rows.clear();
      else this.rows.drop('version', id);
    }
    if (!this.ownBackends.has(n.processId)) this.changedElsewhere();
  }

  /** Tells the listeners (once per turn of the event loop) that rows may have changed behind our back. */
  private changedElsewhere(): void {
    if (this.notifyScheduled) return;
    this.notifyScheduled = true;
    setImmediate(() => {
      this.notifyScheduled = false;
      for (const fn of this.rollbackListeners) fn();
    });
  }

  private rolledBack(): void {
    this.rows.clear();
    for (const fn of this.rollbackListeners) fn();
  }

  onRollback(fn: () => void): void {
    this.rollbackListeners.push(fn);
  }

  /**
   * Whether this replica's listening connection to PostgreSQL is up: false from the moment it breaks
   * (PostgreSQL down or unreachable) until it is back (retried at least every second). What a health
   * check reports as NOT_SERVING.
   */
  get reachable(): boolean {
    return this.listener !== undefined;
  }

  async replicaAlive(owner: string | null): Promise<boolean> {
    if (owner === null) return false;
    if (owner === this.replicaId) return true;
    const r = await this.ctx.query<{ alive: boolean }>(
      `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         AND classid = $1::bigint::oid AND objid = $2::bigint::oid) AS alive`,
      [PRESENCE_CLASS, presenceKey(owner)],
    );
    return r.rows[0]!.alive;
  }

  async lead(): Promise<boolean> {
    const l = this.listener;
    if (!l) return false;
    if (this.leading) return true;
    try {
      const r = await l.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [LOCK_LEADER.toString()]);
      // The connection may have been replaced meanwhile; the lock went with the old one.
      this.leading = r.rows[0]!.ok && this.listener === l;
    } catch {
      this.leading = false;
    }
    return this.leading;
  }

  async keyLease<T>(keyId: string, fn: () => Promise<T>): Promise<T> {
    const deadline = Date.now() + (this.options.lockTimeoutMs ?? 10_000);
    // A release still to be retried would end the lease this call is about to hold.
    clearTimeout(this.unreleased.get(keyId));
    this.unreleased.delete(keyId);
    for (let wait = 5; ; wait = Math.min(wait * 2, 100)) {
      const taken = await this.ctx.query('INSERT INTO key_leases (key_id, owner, since) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING', [keyId, this.replicaId, Date.now()]);
      if (taken.rowCount === 1) break;
      const holder = (await this.ctx.query<{ owner: string }>('SELECT owner FROM key_leases WHERE key_id = $1', [keyId])).rows[0]?.owner;
      if (holder === undefined) continue;
      // Our own: a release that failed (the store was down). The in-process lock makes us its only user.
      if (holder === this.replicaId) break;
      if (!(await this.replicaAlive(holder))) {
        await this.ctx.query('DELETE FROM key_leases WHERE key_id = $1 AND owner = $2', [keyId, holder]);
        continue;
      }
      if (Date.now() > deadline) throw new StoreUnavailableError(`CMK ${keyId} is being changed by another replica for too long; retry`);
      await new Promise((r) => setTimeout(r, wait));
    }
    // What the previous holder committed is read from the database, not from this replica's cache.
    this.rows.drop('cmk', keyId);
    this.rows.dropCmkVersions(keyId);
    try {
      return await fn();
    } finally {
      // Awaited: a release still in flight when this replica's next change of the CMK takes the lease
      // (as its own) would end that lease under it.
      await this.releaseLease(keyId);
    }
  }

  /** Released at once, or retried every second while the store is unreachable (others wait meanwhile). */
  private releaseLease(keyId: string): Promise<void> {
    return this.ctx.query('DELETE FROM key_leases WHERE key_id = $1 AND owner = $2', [keyId, this.replicaId]).then(() => undefined, () => {
      if (this.closing) return;
      const t = setTimeout(() => {
        this.unreleased.delete(keyId);
        void this.releaseLease(keyId);
      }, 1000);
      t.unref();
      this.unreleased.set(keyId, t);
    });
  }

  async exclusiveStart<T>(fn: () => Promise<T>): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      throw mapError(e);
    }
    let broken: Error | undefined;
    try {
      await client.query('SELECT pg_advisory_lock($1)', [LOCK_START.toString()]);
      try {
        return await fn();
      } finally {
        await client.query('SELECT pg_advisory_unlock($1)', [LOCK_START.toString()]).catch((e: Error) => (broken = e));
      }
    } catch (e) {
      if (connectionLost(e)) broken = e as Error;
      throw mapError(e);
    } finally {
      client.release(broken);
    }
  }

  cachedCmk(keyId: string): Readonly<CmkRow> | undefined {
    return this.rows.get<CmkRow>('cmk', keyId);
  }

  cachedVersion(versionId: string): Readonly<KeyVersionRow> | undefined {
    return this.rows.get<KeyVersionRow>('version', versionId);
  }

  async transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.closing) throw new Error('the metadata store is closed');
    for (let attempt = 1; ; attempt++) {
      let client: pg.PoolClient;
      try {
        client = await this.pool.connect();
      } catch (e) {
        throw mapError(e);
      }
      const { tx, ctx } = newTx(client, this.rows, this.replicaId);
      let broken: Error | undefined;
      try {
        await run(client, 'BEGIN');
        const value = await fn(tx);
        await run(client, 'COMMIT');
        ctx.settle();
        return value;
      } catch (e) {
        ctx.settle();
        if (connectionLost(e)) broken = e as Error;
        else await client.query('ROLLBACK').catch((r: Error) => (broken = r));
        this.rolledBack();
        const code = (e as { code?: string }).code;
        if (code && RETRYABLE.has(code) && attempt < TX_ATTEMPTS) continue;
        throw mapError(e);
      } finally {
        client.release(broken);
      }
    }
  }

  grouped<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.closing) return Promise.reject(new Error('the metadata store is closed'));
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ fn, resolve: resolve as (v: unknown) => void, reject });
      this.scheduleGroup();
    });
  }

  private scheduleGroup(): void {
    if (this.groupScheduled || this.groupRunning) return;
    this.groupScheduled = true;
    // Units submitted in the same turn of the event loop (and while a group commits) share a transaction.
    setImmediate(() => {
      this.groupScheduled = false;
      this.groupRunning = this.runGroup().finally(() => {
        this.groupRunning = undefined;
        if (this.queue.length > 0) this.scheduleGroup();
      });
    });
  }

  /**
   * One group transaction: each unit in a savepoint of its own (one that fails is rolled back alone
   * and its caller gets the error), every unit's promise settled only after COMMIT has returned.
   */
  private async runGroup(): Promise<void> {
    const units = this.queue;
    this.queue = [];
    if (units.length === 0) return;
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (e) {
      for (const u of units) u.reject(mapError(e));
      return;
    }
    const outcomes: { ok: boolean; value: unknown }[] = [];
    const contexts: TxContext[] = [];
    let broken: Error | undefined;
    try {
      // The savepoint statements travel with their neighbours (simple-query batches): one round trip
      // per unit fewer, which is most of a unit's cost when it appends one audit record.
      await simple(client, 'BEGIN; SAVEPOINT unit');
      for (const [i, u] of units.entries()) {
        const { tx, ctx } = newTx(client, this.rows, this.replicaId);
        contexts.push(ctx);
        try {
          const value = await u.fn(tx);
          outcomes.push({ ok: true, value });
        } catch (e) {
          if (connectionLost(e)) throw e;
          ctx.settle();
          await simple(client, 'ROLLBACK TO unit');
          this.rolledBack();
          outcomes.push({ ok: false, value: mapError(e) });
        }
        await simple(client, i < units.length - 1 ? 'RELEASE unit; SAVEPOINT unit' : 'RELEASE unit; COMMIT');
      }
    } catch (e) {
      // The batch as a whole failed: nothing of it is committed.
      for (const c of contexts) c.settle();
      if (connectionLost(e)) broken = e as Error;
      else await client.query('ROLLBACK').catch((r: Error) => (broken = r));
      client.release(broken);
      this.rolledBack();
      const err = mapError(e);
      for (const u of units) u.reject(err);
      return;
    }
    client.release();
    for (const c of contexts) c.settle();
    this.groupStats.commits++;
    this.groupStats.units += units.length;
    if (units.length > this.groupStats.largest) this.groupStats.largest = units.length;
    units.forEach((u, i) => (outcomes[i].ok ? u.resolve(outcomes[i].value) : u.reject(outcomes[i].value)));
  }

  async close(): Promise<void> {
    while (this.groupRunning || this.groupScheduled || this.queue.length > 0) {
      if (this.groupRunning) await this.groupRunning;
      else await new Promise((r) => setImmediate(r));
    }
    this.closing = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const l = this.listener;
    this.listener = undefined;
    this.rows.enabled = false;
    await l?.end().catch(() => {});
    await this.pool.end();
  }
}

function connectionConfig(o: PgStoreOptions): pg.ClientConfig {
  return {
    host: o.host,
    port: o.port,
    user: o.user,
    database: o.database,
    password: o.password,
    application_name: o.applicationName ?? 'kmsd',
    types,
    connectionTimeoutMillis: o.connectTimeoutMs ?? 5000,
    // A replica killed mid-transaction leaves nothing held for long: PostgreSQL ends such a session;
    // and a row or the audit head held that long by a stuck replica fails the waiter as unavailable
    // (retryable) instead of hanging its call.
    idle_in_transaction_session_timeout: 60_000,
    lock_timeout: o.lockTimeoutMs ?? 10_000,
    keepAlive: true,
  };
}

/** Applies the migrations this database lacks, each in its own transaction, one replica at a time. */
async function migrate(pool: pg.Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1)', [LOCK_MIGRATIONS.toString()]);
    try {
      await client.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)');
      const applied = new Set((await client.query<{ version: number }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version));
      const latest = Math.max(...PG_MIGRATIONS.map((m) => m.version));
      const newest = Math.max(0, ...applied);
      if (newest > latest) throw new Error(`the PostgreSQL store has schema version ${newest}, this build reads ${latest}: use the kmsd build that wrote it`);
      for (const m of PG_MIGRATIONS) {
        if (applied.has(m.version)) continue;
        await client.query('BEGIN');
        try {
          await client.query(m.sql);
          await client.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [m.version, Date.now()]);
          await client.query('COMMIT');
        } catch (e) {
          await client.query('ROLLBACK').catch(() => {});
          throw e;
        }
      }
    } finally {
      await client.query('SELECT pg_advisory_unlock($1)', [LOCK_MIGRATIONS.toString()]).catch(() => {});
    }
  } finally {
    client.release();
  }
}
