// Group commit: units of work submitted by concurrent calls run together in one SQLite transaction,
// so many calls share one commit, and with it one fsync of the write-ahead log (on this kind of
// disk an fsync costs milliseconds; the inserts themselves microseconds). A unit is a function that
// does its SQL through the StoreTx it is given (and awaits nothing else): an audit record, or a state
// change together with the record of it, so a call's change and its record always commit or roll
// back together. The batch holds the store's transaction lock (src/store/sqlite.ts) while it runs.
//
// Each unit runs in a savepoint of its own: one that throws is rolled back alone and its caller gets
// the error; the others commit. A unit's promise settles only after the COMMIT that holds it has
// returned, and the store runs with synchronous=FULL, so a call that waits for its unit before it
// answers never acknowledges anything a crash or a power loss can take back.
//
// Units are collected until the event loop has run what is ready (setImmediate), so the batch is
// whatever the calls that finished in that turn submitted: no timer, and no added latency when the
// daemon is idle.

import type Database from 'better-sqlite3';
import type { GroupCommitStats } from './api';

export type { GroupCommitStats } from './api';

interface Unit {
  work: () => Promise<unknown>;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

export class GroupCommit {
  private queue: Unit[] = [];
  private scheduled = false;
  readonly stats: GroupCommitStats = { commits: 0, units: 0, largest: 0 };

  /**
   * `rolledBack` is called after any rollback (one unit's savepoint or the whole batch), so that
   * what callers keep in memory about rows (caches, the head of the audit chain) is read again.
   */
  constructor(
    private readonly db: Database.Database,
    private readonly rolledBack: () => void,
    /** Runs a batch holding the store's transaction lock. */
    private readonly exclusive: (batch: () => Promise<void>) => Promise<void>,
  ) {
    // Prepared once: four of these run per unit or batch, and parsing them each time showed up.
    const stmt = (sql: string) => {
      const st = db.prepare(sql);
      return () => void st.run();
    };
    this.sql = {
      begin: stmt('BEGIN IMMEDIATE'),
      savepoint: stmt('SAVEPOINT unit'),
      release: stmt('RELEASE unit'),
      rollbackTo: stmt('ROLLBACK TO unit'),
      commit: stmt('COMMIT'),
      rollback: stmt('ROLLBACK'),
    };
  }

  private readonly sql: Record<'begin' | 'savepoint' | 'release' | 'rollbackTo' | 'commit' | 'rollback', () => void>;

  /** Runs `work` in the next group transaction; resolves with its value once that has committed. */
  submit<T>(work: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, resolve: resolve as (v: unknown) => void, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => void this.flush());
      }
    });
  }

  /** Units waiting for the next group transaction. */
  get pending(): number {
    return this.queue.length;
  }

  /** Commits every waiting unit now (also called on close, after the last call). */
  flush(): Promise<void> {
    this.scheduled = false;
    const units = this.queue;
    if (units.length === 0) return Promise.resolve();
    this.queue = [];
    return this.exclusive(() => this.commit(units));
  }

  private async commit(units: Unit[]): Promise<void> {
    const outcomes: { ok: boolean; value: unknown }[] = [];
    try {
      this.sql.begin();
      for (const u of units) {
        this.sql.savepoint();
        try {
          const value = await u.work();
          this.sql.release();
          outcomes.push({ ok: true, value });
        } catch (e) {
          this.sql.rollbackTo();
          this.sql.release();
          this.rolledBack();
          outcomes.push({ ok: false, value: e });
        }
      }
      this.sql.commit();
    } catch (e) {
      // The batch as a whole failed (disk full, I/O error): nothing of it is on disk.
      if (this.db.inTransaction) this.sql.rollback();
      this.rolledBack();
      for (const u of units) u.reject(e);
      return;
    }
    this.stats.commits++;
    this.stats.units += units.length;
    if (units.length > this.stats.largest) this.stats.largest = units.length;
    units.forEach((u, i) => (outcomes[i].ok ? u.resolve(outcomes[i].value) : u.reject(outcomes[i].value)));
  }
}
