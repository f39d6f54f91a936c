// The metadata store's interface, the same for every backend (SQLite in src/store/sqlite, the
// embedded default; PostgreSQL for replicas). Method names and arguments are those the SQLite store
// always had; every method returns a Promise, so a backend may go over the network.
//
// Two ways to write:
// - `transaction(fn)`: `fn` runs with a StoreTx whose calls all belong to one transaction, committed
//   when `fn`'s promise resolves and rolled back when it rejects. Nothing but calls on that StoreTx
//   may be awaited inside `fn` (no token operation, no timer, no other store's call): a backend may
//   hold a lock or serialize every transaction of the process while one is open, so anything else
//   awaited there stalls every writer, and a call on the Store itself (not the StoreTx) inside `fn`
//   may wait for `fn` to finish and never return. Token work goes before (with a write-ahead intent)
//   or after the transaction.
// - `grouped(fn)`: the same, but `fn` runs in a savepoint of a transaction shared with the units other
//   calls submit meanwhile (group commit, one durable commit for many calls); `fn` failing rolls back
//   its own savepoint only. Audit records and the changes they record go through either, together.
//
// Reads that decide a rule are made on the StoreTx with the `...ForUpdate` variants: they take a row
// lock until the transaction ends where the backend has row locks (PostgreSQL SELECT ... FOR UPDATE),
// so two replicas deciding on the same row are serialized; SQLite serializes whole transactions
// (BEGIN IMMEDIATE), where they read like their plain variants.
//
// Calls on the Store outside a transaction each run alone (autocommit) and read committed data.
//
// A unique key violated by an insert (an alias, a key store, an external key id, a credential taken
// meanwhile by another caller or replica) rejects with StoreConflictError, whatever the backend.

// ------------------------------------------------------------------ rows

export interface CmkRow {
  key_id: string;
  origin: string;
  key_spec: string;
  key_usage: string;
  protection_level: string;
  description: string;
  key_state: string;
  creation_date: number;
  delete_date: number | null;
  material_expire_time: number | null;
  automatic_rotation: string;
  rotation_interval_s: number | null;
  next_rotation_date: number | null;
  last_rotation_date: number | null;
  primary_key_version: string | null;
  material_fingerprint: Buffer | null;
  state_before_deletion: string | null;
  import_path: string | null;
  /** An external CMK's state once material is imported again: 'Disabled', or null for Enabled (migration 4). */
  state_after_import?: string | null;
}

export interface KeyVersionRow {
  version_id: string;
  key_id: string;
  creation_date: number;
  software_wrapped: Buffer | null;
  /** Present, Missing (reconciliation found no token object) or Deleted (material destroyed on purpose). */
  material_state: string;
}

export interface AliasRow {
  alias_name: string;
  key_id: string;
  creation_date: number;
  update_date: number;
}

export interface WrappingKeyRow {
  wrap_id: string;
  key_spec: string;
  raw_decrypt: number;
  public_key: Buffer;
  created: number;
  key_id: string | null;
  algorithm: string | null;
  expires: number | null;
  /** Imports under this key whose material could not be unwrapped (migration 3). */
  failed_imports?: number;
}

/** Token object kinds that are created per CMK version or import (the others exist once per token). */
export type TokenObjectKind = 'cmk' | 'wrap';

/** A token object being created: its metadata is not committed yet (migration 4). */
export interface TokenIntentRow {
  seq: number;
  kind: TokenObjectKind;
  object_id: string;
  created: number;
  /**
   * The replica (Store.replicaId) that opened it: start-up reconciliation leaves an intent alone
   * while its owner is alive, since that replica may still be creating the object (null: opened
   * before intents named their owner).
   */
  owner: string | null;
}

/** A token object whose metadata is gone and which kmsd destroys until the token confirms it (migration 4). */
export interface TokenDestroyRow {
  kind: TokenObjectKind;
  object_id: string;
  key_id: string | null;
  reason: string;
  since: number;
  attempts: number;
  last_error: string | null;
}

export interface AccessKeyRow {
  access_key_id: string;
  principal: string;
  status: string;
  sealed_secret: Buffer;
  creation_date: number;
  update_date: number;
}

export interface AuditRow {
  seq: number;
  time: number;
  request_id: string;
  principal: string;
  action: string;
  key_id: string;
  proposal_id: string;
  outcome: string;
  details: string;
  prev_hash: string;
  hash: string;
}

export interface CounterRow {
  key_id: string;
  principal: string;
  action: string;
  ok: number;
  errors: number;
  first_at: number;
  last_at: number;
}

export interface AuditFilter {
  keyId?: string;
  action?: string;
  proposalId?: string;
}

export interface CustodianRow {
  custodian_id: string;
  public_key: Buffer;
  fingerprint: string;
  added_at: number;
  removed_at: number | null;
}

export type ProposalState = 'Open' | 'Executing' | 'Executed' | 'Cancelled';

export interface ProposalRow {
  proposal_id: string;
  revision: number;
  action: string;
  key_id: string | null;
  parameters: string;
  document: Buffer;
  requester: string;
  created_at: number;
  expires_at: number;
  state: ProposalState;
  closed_at: number | null;
  outcome: string | null;
  result: string | null;
}

export interface ApprovalRow {
  proposal_id: string;
  revision: number;
  custodian_id: string;
  key_fingerprint: string;
  signature: Buffer;
  approved_at: number;
}

export interface XksKeyStoreRow {
  uri_path_prefix: string;
  creation_date: number;
}

export interface XksCredentialRow {
  access_key_id: string;
  uri_path_prefix: string;
  sealed_secret: Buffer;
  creation_date: number;
}

export interface XksKeyRow {
  uri_path_prefix: string;
  external_key_id: string;
  key_id: string;
  operations: string;
  creation_date: number;
}

/** An insert refused because its unique key is taken (the caller maps it to its own "already exists"). */
export class StoreConflictError extends Error {
  constructor(
    /** The table whose key was taken. */
    readonly table: string,
    message: string,
  ) {
    super(message);
    this.name = 'StoreConflictError';
  }
}

// ------------------------------------------------------------------ operations

/** CMKs, versions, aliases, access keys, wrapping keys, settings, the store/token binding (was Store). */
export interface MetadataOps {
  getSetting(name: string): Promise<string | undefined>;
  setSetting(name: string, value: string): Promise<void>;

  /** The instance id this store is bound to (also the audit log's instance id); undefined for a new store. */
  instanceId(): Promise<string | undefined>;
  setInstanceId(id: string): Promise<void>;
  /** The last token-object creation sequence this store committed (0 before the first). */
  tokenSequence(): Promise<number>;
  /** Raises the committed sequence (adoption of a token whose sequence is ahead); never lowers it. */
  raiseTokenSequence(seq: number): Promise<void>;
  /** True when the store records nothing yet: no CMK, wrapping key, audit record or custodian. */
  isEmpty(): Promise<boolean>;

  /**
   * Raises the committed creation sequence by `count` at once and returns the new top: the numbers
   * above the old top are the caller's to give to its intents (openIntent's `seq`), so the token's
   * mark, raised to the top once, is written once per block instead of once per object. Concurrent
   * callers (replicas) get disjoint blocks.
   */
  reserveTokenSequence(count: number): Promise<number>;
  /**
   * Write-ahead intent for a token object about to be created, committed on its own before the
   * object exists (on the Store; in a transaction it commits with it): takes the next creation
   * sequence, or `seq` from a block reserveTokenSequence gave (refused if it was never reserved).
   */
  openIntent(kind: TokenObjectKind, objectId: string, now: number, seq?: number): Promise<number>;
  /** Closes an intent (after a failed creation, or an adoption); an intent already closed is no error. */
  clearIntent(seq: number): Promise<void>;
  /**
   * Closes an intent and says whether it was still open. The transaction that commits an object's
   * metadata must get true (else the object was reclaimed as an interrupted creation and is gone);
   * reconciliation destroys an intent's object only after claiming it in its own transaction. The
   * row is locked until the claim commits, so of the two exactly one proceeds.
   */
  claimIntent(seq: number): Promise<boolean>;
  allIntents(): Promise<TokenIntentRow[]>;
  /** Records a token object to destroy (in the transaction that removes the metadata that claimed it). */
  addPendingDestroy(kind: TokenObjectKind, objectId: string, keyId: string | null, reason: string, now: number): Promise<void>;
  getPendingDestroy(kind: TokenObjectKind, objectId: string): Promise<TokenDestroyRow | undefined>;
  pendingDestroys(): Promise<TokenDestroyRow[]>;
  /** Counts a failed attempt; returns the attempts so far. */
  notePendingDestroyFailure(kind: TokenObjectKind, objectId: string, error: string): Promise<number>;
  /** True when the row was there. In a transaction the row stays locked until it ends (see KmsService.destroyPending). */
  deletePendingDestroy(kind: TokenObjectKind, objectId: string): Promise<boolean>;

  insertCmk(row: CmkRow): Promise<void>;
  getCmk(keyId: string): Promise<CmkRow | undefined>;
  /** Updates the named columns of one CMK. */
  updateCmk(keyId: string, fields: Partial<Omit<CmkRow, 'key_id'>>): Promise<void>;
  /** The CMK, its versions and aliases; wrapping keys issued for it are unbound. */
  deleteCmk(keyId: string): Promise<void>;
  countCmks(): Promise<number>;
  listCmks(offset: number, limit: number): Promise<CmkRow[]>;
  allCmks(): Promise<CmkRow[]>;
  cmksDue(now: number): Promise<{ deletions: CmkRow[]; rotations: CmkRow[]; expiries: CmkRow[] }>;

  insertVersion(row: KeyVersionRow): Promise<void>;
  getVersion(versionId: string): Promise<KeyVersionRow | undefined>;
  listVersions(keyId: string): Promise<KeyVersionRow[]>;
  allVersions(): Promise<KeyVersionRow[]>;
  updateVersion(versionId: string, fields: Partial<Pick<KeyVersionRow, 'software_wrapped' | 'material_state'>>): Promise<void>;

  /** Rejects with StoreConflictError when the name is taken. */
  insertAlias(row: AliasRow): Promise<void>;
  getAlias(name: string): Promise<AliasRow | undefined>;
  updateAlias(name: string, keyId: string, now: number): Promise<void>;
  deleteAlias(name: string): Promise<void>;
  countAliases(keyId?: string): Promise<number>;
  listAliases(offset: number, limit: number, keyId?: string): Promise<AliasRow[]>;

  insertAccessKey(row: AccessKeyRow): Promise<void>;
  getAccessKey(id: string): Promise<AccessKeyRow | undefined>;
  listAccessKeys(): Promise<AccessKeyRow[]>;
  countAccessKeys(): Promise<number>;
  updateAccessKeyStatus(id: string, status: string, now: number): Promise<void>;
  deleteAccessKey(id: string): Promise<void>;

  insertWrappingKey(row: WrappingKeyRow): Promise<void>;
  getWrappingKey(wrapId: string): Promise<WrappingKeyRow | undefined>;
  /** Takes one pooled (unissued) key pair of this spec and binds it to a CMK, atomically (one taker per key, across replicas). */
  issuePooledWrappingKey(spec: string, rawDecrypt: boolean, keyId: string, algorithm: string, expires: number): Promise<WrappingKeyRow | undefined>;
  countPooledWrappingKeys(spec: string, rawDecrypt: boolean): Promise<number>;
  expiredWrappingKeys(now: number): Promise<WrappingKeyRow[]>;
  allWrappingKeys(): Promise<WrappingKeyRow[]>;
  /** Counts one failed import under a wrapping key, atomically; returns the failures so far. */
  countFailedImport(wrapId: string): Promise<number>;
  deleteWrappingKey(wrapId: string): Promise<void>;
}

/** The hash-chained audit log and the data-plane usage counters (was AuditStore). */
export interface AuditOps {
  last(): Promise<AuditRow | undefined>;
  insert(row: AuditRow): Promise<void>;
  count(f?: AuditFilter): Promise<number>;
  page(offset: number, limit: number, f?: AuditFilter): Promise<AuditRow[]>;
  /** Records with afterSeq < seq <= upToSeq, in order (export pages). */
  range(afterSeq: number, upToSeq: number, limit: number): Promise<AuditRow[]>;
  /** Every record in seq order, read in pages (verification of a long log never loads it whole). */
  iterate(): AsyncIterable<AuditRow>;
  lastOfAction(action: string): Promise<AuditRow | undefined>;
  addCounters(rows: CounterRow[]): Promise<void>;
  counters(keyId?: string): Promise<CounterRow[]>;
}

/** Custodians, proposals, approvals and the ceremony settings (was CeremonyStore). */
export interface CeremonyOps {
  /** The instance id, made with `make` and stored when there is none yet. */
  instanceId(make: () => string): Promise<string>;
  initializedAt(): Promise<number | null>;
  threshold(): Promise<number>;
  custodianSetVersion(): Promise<number>;
  policyJson(): Promise<string | undefined>;
  setPolicyJson(json: string): Promise<void>;
  /** Replaces the active custodian set and threshold, atomically (InitCeremony, SetCustodians). */
  replaceCustodianSet(custodians: { custodian_id: string; public_key: Buffer; fingerprint: string }[], threshold: number, now: number, init: boolean): Promise<void>;
  activeCustodians(): Promise<CustodianRow[]>;
  getCustodian(id: string): Promise<CustodianRow | undefined>;

  insertProposal(row: ProposalRow): Promise<void>;
  getProposal(id: string): Promise<ProposalRow | undefined>;
  countProposals(state?: ProposalState): Promise<number>;
  listProposals(offset: number, limit: number, state?: ProposalState): Promise<ProposalRow[]>;
  /** Open proposals other than one (to tell a custodian which proposal they actually signed). */
  recentOpenDocuments(exceptId: string, limit: number): Promise<{ proposal_id: string; revision: number; document: Buffer }[]>;
  olderRevisions(id: string, currentRevision: number): Promise<{ revision: number; document: Buffer }[]>;
  /** A new revision of an open proposal: new document and expiry; earlier approvals stay on their revision. */
  reviseProposal(id: string, revision: number, document: Buffer, expiresAt: number): Promise<void>;
  /** Compare-and-set of the state: true only for the one caller (of any replica) that moved it from `from`. */
  transition(id: string, from: ProposalState, to: ProposalState, fields?: { closed_at?: number | null; outcome?: string | null; result?: string | null; parameters?: string }): Promise<boolean>;
  /** Proposals left Executing by a crash: they are never run again. */
  interruptedProposals(): Promise<ProposalRow[]>;

  /** Records an approval; one made earlier with a key the custodian no longer has is replaced. */
  insertApproval(row: ApprovalRow): Promise<void>;
  approvals(id: string, revision?: number): Promise<ApprovalRow[]>;
}

/** The AWS external key store proxy's key stores, credentials and external keys (was XksStore). */
export interface XksOps {
  insertKeyStore(row: XksKeyStoreRow): Promise<void>;
  getKeyStore(prefix: string): Promise<XksKeyStoreRow | undefined>;
  listKeyStores(): Promise<XksKeyStoreRow[]>;
  /** The key store and its credentials. */
  deleteKeyStore(prefix: string): Promise<void>;
  insertCredential(row: XksCredentialRow): Promise<void>;
  getCredential(accessKeyId: string): Promise<XksCredentialRow | undefined>;
  listCredentials(prefix: string): Promise<XksCredentialRow[]>;
  deleteCredential(accessKeyId: string): Promise<void>;
  insertKey(row: XksKeyRow): Promise<void>;
  getKey(prefix: string, externalKeyId: string): Promise<XksKeyRow | undefined>;
  listKeys(prefix: string): Promise<XksKeyRow[]>;
  countKeys(prefix: string): Promise<number>;
  deleteKey(prefix: string, externalKeyId: string): Promise<void>;
}

/** Everything both the Store and a StoreTx offer; domain helpers that work in or out of a transaction take this. */
export interface StoreOps extends MetadataOps {
  readonly audit: AuditOps;
  readonly ceremony: CeremonyOps;
  readonly xks: XksOps;
}

/** The calls of one transaction (see the top of this file: await nothing else while it is open). */
export interface StoreTx extends StoreOps {
  /** getCmk, holding the CMK's row until the transaction ends (state transitions, imports). */
  getCmkForUpdate(keyId: string): Promise<CmkRow | undefined>;
  /** getAlias, holding the alias row until the transaction ends (UpdateAlias, DeleteAlias). */
  getAliasForUpdate(name: string): Promise<AliasRow | undefined>;
  /** getWrappingKey, holding its row until the transaction ends (an import token's use). */
  getWrappingKeyForUpdate(wrapId: string): Promise<WrappingKeyRow | undefined>;
  /** The ceremony's getProposal, holding its row until the transaction ends (approvals, execution). */
  getProposalForUpdate(id: string): Promise<ProposalRow | undefined>;
  /**
   * The head of the audit chain, holding it until the transaction ends: the next record of any
   * replica links to what this transaction appends.
   */
  lastAuditForUpdate(): Promise<AuditRow | undefined>;
}

export interface GroupCommitStats {
  /** Transactions committed by the group writer. */
  commits: number;
  /** Units in them (units / commits is the mean batch). */
  units: number;
  /** Largest batch so far. */
  largest: number;
}

/**
 * The store could not be reached (connection refused, lost, timed out, a lock held too long): the
 * call changed nothing and can be retried. Callers get ServiceUnavailable.Store.
 */
export class StoreUnavailableError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreUnavailableError';
  }
}

/** A metadata store: SQLite (one kmsd) or PostgreSQL (replicas). */
export interface Store extends StoreOps {
  /** 'sqlite' or 'postgres': for messages and DescribeRuntime, never for behaviour. */
  readonly backend: string;
  /** This process's id among the replicas sharing the store (new at every start); owner of the intents it opens. */
  readonly replicaId: string;
  /**
   * Whether the replica that owns an intent may still be running: this process itself, or (on a
   * shared store) a replica whose presence the store still sees. False for a null owner.
   */
  replicaAlive(owner: string | null): Promise<boolean>;
  /**
   * True while this replica is the one that runs scheduled work (deletions, expiries, rotation,
   * the wrapping-key pool): always on a single-node store; on a shared store, the holder of a lock
   * that passes to another replica when the holder dies or loses its connection.
   */
  lead(): Promise<boolean>;
  /**
   * `fn` while no other replica changes this CMK's token objects (the caller already holds the
   * in-process lock of the key). Waits for a live holder (failing as StoreUnavailableError after the
   * lock timeout) and breaks the lease of a dead one. Rows of the CMK read inside `fn` are fresh.
   */
  keyLease<T>(keyId: string, fn: () => Promise<T>): Promise<T>;
  /** `fn` while no other replica runs its own start-up binding check (first start of a new store and token). */
  exclusiveStart<T>(fn: () => Promise<T>): Promise<T>;
  /** False while the store cannot be reached (what health reports as NOT_SERVING). */
  readonly reachable: boolean;
  /** `fn` in one transaction; see the top of this file. A failed transaction is rolled back and its error passed on. */
  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T>;
  /** `fn` in a savepoint of the next group transaction; resolves once that has committed durably. */
  grouped<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T>;
  readonly groupStats: GroupCommitStats;
  /**
   * The CMK's row if this process holds it cached (no I/O; undefined says nothing about the CMK):
   * the data path reads this first and awaits getCmk only on a miss, so Encrypt and Decrypt make no
   * store read per call. A cached row is frozen and dropped on any write to it or any rollback.
   */
  cachedCmk(keyId: string): Readonly<CmkRow> | undefined;
  /** The version's row if cached, as cachedCmk. */
  cachedVersion(versionId: string): Readonly<KeyVersionRow> | undefined;
  /**
   * `fn` after any rollback, and whenever rows may have changed behind this process's back (another
   * replica's write): state kept in memory about rows (caches, the head of the audit chain) is read again.
   */
  onRollback(fn: () => void): void;
  /** Waits for units still queued for group commit, then closes. */
  close(): Promise<void>;
}
