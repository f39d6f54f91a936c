// The SQLite backend of the store interface (src/store/api.ts): one better-sqlite3 connection, whose
// calls are synchronous underneath and answered with settled promises.
//
// One connection means one transaction at a time, and a transaction stays open across the awaits of
// the function it runs. So every transaction (and every group-commit batch) holds a lock, an async
// mutex, from BEGIN IMMEDIATE to COMMIT or ROLLBACK; a call on the store outside a transaction waits
// for that lock too, so it never lands inside someone else's open transaction and only ever reads
// committed rows. Inside a transaction nothing but calls on its StoreTx may be awaited: anything
// else (a token operation, a timer) holds every other writer and reader meanwhile, and a call on the
// store itself waits for the transaction that awaits it, forever.

import crypto from 'node:crypto';
import type { AuditOps, CeremonyOps, CmkRow, GroupCommitStats, KeyVersionRow, MetadataOps, Store, StoreTx, XksOps } from './api';
import { SqliteDb } from './store';
import { SqliteAudit } from './audit-store';
import { SqliteCeremony } from './ceremony-store';
import { SqliteXks } from './xks-store';
import { GroupCommit } from './group-commit';

/** An async mutex: FIFO, with a synchronous fast path when it is free. */
class Lock {
  private held = false;
  private readonly waiters: (() => void)[] = [];

  acquire(): Promise<void> {
    if (!this.held) {
      this.held = true;
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => this.waiters.push(resolve));
  }

  release(): void {
    const next = this.waiters.shift();
    if (next) next();
    else this.held = false;
  }

  /** A synchronous `f` under the lock: at once when it is free, else after the holders before it. */
  run<R>(f: () => R): Promise<R> {
    if (!this.held) return settle(f);
    return this.acquire().then(() => {
      try {
        return f();
      } finally {
        this.release();
      }
    });
  }

  /** An async `f` holding the lock until it settles. */
  async hold<R>(f: () => Promise<R>): Promise<R> {
    await this.acquire();
    try {
      return await f();
    } finally {
      this.release();
    }
  }
}

function settle<R>(f: () => R): Promise<R> {
  try {
    return Promise.resolve(f());
  } catch (e) {
    return Promise.reject(e);
  }
}

type Runner = <R>(f: () => R) => Promise<R>;

// The methods of each interface, listed so that the compiler checks the list is complete.
const METADATA: { [K in keyof MetadataOps]: true } = {
  getSetting: true,
  setSetting: true,
  instanceId: true,
  setInstanceId: true,
  tokenSequence: true,
  raiseTokenSequence: true,
  isEmpty: true,
  reserveTokenSequence: true,
  openIntent: true,
  clearIntent: true,
  claimIntent: true,
  allIntents: true,
  addPendingDestroy: true,
  getPendingDestroy: true,
  pendingDestroys: true,
  notePendingDestroyFailure: true,
  deletePendingDestroy: true,
  insertCmk: true,
  getCmk: true,
  updateCmk: true,
  deleteCmk: true,
  countCmks: true,
  listCmks: true,
  allCmks: true,
  cmksDue: true,
  insertVersion: true,
  getVersion: true,
  listVersions: true,
  allVersions: true,
  updateVersion: true,
  insertAlias: true,
  getAlias: true,
  updateAlias: true,
  deleteAlias: true,
  countAliases: true,
  listAliases: true,
  insertAccessKey: true,
  getAccessKey: true,
  listAccessKeys: true,
  countAccessKeys: true,
  updateAccessKeyStatus: true,
  deleteAccessKey: true,
  insertWrappingKey: true,
  getWrappingKey: true,
  issuePooledWrappingKey: true,
  countPooledWrappingKeys: true,
  expiredWrappingKeys: true,
  allWrappingKeys: true,
  countFailedImport: true,
  deleteWrappingKey: true,
};
const AUDIT: { [K in Exclude<keyof AuditOps, 'iterate'>]: true } = {
  last: true,
  insert: true,
  count: true,
  page: true,
  range: true,
  lastOfAction: true,
  addCounters: true,
  counters: true,
};
const CEREMONY: { [K in keyof CeremonyOps]: true } = {
  instanceId: true,
  initializedAt: true,
  threshold: true,
  custodianSetVersion: true,
  policyJson: true,
  setPolicyJson: true,
  replaceCustodianSet: true,
  activeCustodians: true,
  getCustodian: true,
  insertProposal: true,
  getProposal: true,
  countProposals: true,
  listProposals: true,
  recentOpenDocuments: true,
  olderRevisions: true,
  reviseProposal: true,
  transition: true,
  interruptedProposals: true,
  insertApproval: true,
  approvals: true,
};
const XKS: { [K in keyof XksOps]: true } = {
  insertKeyStore: true,
  getKeyStore: true,
  listKeyStores: true,
  deleteKeyStore: true,
  insertCredential: true,
  getCredential: true,
  listCredentials: true,
  deleteCredential: true,
  insertKey: true,
  getKey: true,
  listKeys: true,
  countKeys: true,
  deleteKey: true,
};

/** `target`'s methods named in `names`, each run through `run` and answered with a promise. */
function facade<T>(target: object, names: object, run: Runner): T {
  const out: Record<string, unknown> = {};
  for (const name of Object.keys(names)) {
    const method = (target as Record<string, (...a: unknown[]) => unknown>)[name];
    if (typeof method !== 'function') throw new Error(`the SQLite store has no ${name}`);
    out[name] = (...args: unknown[]) => run(() => method.apply(target, args));
  }
  return out as T;
}

function auditFacade(core: SqliteAudit, run: Runner): AuditOps {
  const ops = facade<Omit<AuditOps, 'iterate'>>(core, AUDIT, run);
  return {
    ...ops,
    // A page per step, each read on its own: the connection is free between pages.
    async *iterate() {
      const it = core.iterate();
      for (;;) {
        const next = await run(() => it.next());
        if (next.done) return;
        yield next.value;
      }
    },
  };
}

export class SqliteStore implements Store {
  readonly backend = 'sqlite';
  /** One kmsd per data directory (its lock): every other owner of an intent is a process that ended. */
  readonly replicaId = crypto.randomUUID();
  readonly reachable = true;
  readonly core: SqliteDb;
  readonly audit: AuditOps;
  readonly ceremony: CeremonyOps;
  readonly xks: XksOps;
  private readonly lock = new Lock();
  private readonly group: GroupCommit | undefined;
  private readonly cores: { audit: SqliteAudit; ceremony: SqliteCeremony; xks: SqliteXks };
  private closed = false;

  constructor(
    readonly dataDir: string,
    opts: { readOnly?: boolean } = {},
  ) {
    this.core = new SqliteDb(dataDir, opts);
    this.core.owner = this.replicaId;
    this.cores = { audit: new SqliteAudit(this.core), ceremony: new SqliteCeremony(this.core), xks: new SqliteXks(this.core) };
    const run: Runner = (f) => (this.closed ? Promise.reject(new Error('the metadata store is closed')) : this.lock.run(f));
    Object.assign(this, facade<MetadataOps>(this.core, METADATA, run));
    this.audit = auditFacade(this.cores.audit, run);
    this.ceremony = facade<CeremonyOps>(this.cores.ceremony, CEREMONY, run);
    this.xks = facade<XksOps>(this.cores.xks, XKS, run);
    if (!opts.readOnly) this.group = new GroupCommit(this.core.db, () => this.core.rolledBack(), (batch) => this.lock.hold(batch));
  }

  /** A StoreTx whose calls run at once, inside the transaction the caller holds, until `end()`. */
  private openTx(): { tx: StoreTx; end: () => void } {
    let open = true;
    const run: Runner = (f) => (open ? settle(f) : Promise.reject(new Error('a store call on a transaction that has ended (await every call inside the transaction)')));
    const tx = {
      ...facade<MetadataOps>(this.core, METADATA, run),
      audit: auditFacade(this.cores.audit, run),
      ceremony: facade<CeremonyOps>(this.cores.ceremony, CEREMONY, run),
      xks: facade<XksOps>(this.cores.xks, XKS, run),
      // BEGIN IMMEDIATE holds the database's write lock: the plain reads are already the locked ones.
      getCmkForUpdate: (keyId: string) => run(() => this.core.getCmkForUpdate(keyId)),
      getAliasForUpdate: (name: string) => run(() => this.core.getAliasForUpdate(name)),
      getWrappingKeyForUpdate: (wrapId: string) => run(() => this.core.getWrappingKeyForUpdate(wrapId)),
      getProposalForUpdate: (id: string) => run(() => this.cores.ceremony.getProposalForUpdate(id)),
      lastAuditForUpdate: () => run(() => this.cores.audit.last()),
    } satisfies StoreTx;
    return {
      tx,
      end: () => {
        open = false;
      },
    };
  }

  transaction<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error('the metadata store is closed'));
    return this.lock.hold(async () => {
      const { tx, end } = this.openTx();
      const db = this.core.db;
      this.core.stmt('BEGIN IMMEDIATE').run();
      try {
        const value = await fn(tx);
        end();
        this.core.stmt('COMMIT').run();
        return value;
      } catch (e) {
        end();
        if (db.inTransaction) this.core.stmt('ROLLBACK').run();
        this.core.rolledBack();
        throw e;
      }
    });
  }

  replicaAlive(owner: string | null): Promise<boolean> {
    return Promise.resolve(owner === this.replicaId);
  }

  lead(): Promise<boolean> {
    return Promise.resolve(true);
  }

  exclusiveStart<T>(fn: () => Promise<T>): Promise<T> {
    return fn();
  }

  keyLease<T>(_keyId: string, fn: () => Promise<T>): Promise<T> {
    return fn();
  }

  grouped<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    if (!this.group || this.closed) return Promise.reject(new Error(this.closed ? 'the metadata store is closed' : 'the metadata store was opened read-only'));
    return this.group.submit(async () => {
      const { tx, end } = this.openTx();
      try {
        return await fn(tx);
      } finally {
        end();
      }
    });
  }

  get groupStats(): GroupCommitStats {
    return this.group?.stats ?? { commits: 0, units: 0, largest: 0 };
  }

  cachedCmk(keyId: string): Readonly<CmkRow> | undefined {
    return this.core.cachedCmk(keyId);
  }

  cachedVersion(versionId: string): Readonly<KeyVersionRow> | undefined {
    return this.core.cachedVersion(versionId);
  }

  onRollback(fn: () => void): void {
    this.core.onRollback(fn);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    // Calls still waiting for their group transaction get it before the database goes.
    await this.group?.flush();
    this.closed = true;
    await this.lock.hold(async () => this.core.close());
  }
}

// The metadata calls are installed on each instance by the constructor (facade above).
export interface SqliteStore extends MetadataOps {}
