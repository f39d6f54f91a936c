// Group commit: units of work submitted by concurrent calls run together in one SQLite transaction,
// so many calls share one commit, and with it one fsync of the write-ahead log (on this kind of
// disk an fsync costs milliseconds; the inserts themselves microseconds). A unit is a function that
// does its SQL synchronously: an audit record, or a state change together with the record of it, so
// a call's change and its record always commit or roll back together.
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

interface Unit {
  work: () => unknown;
  resolve: (value: unknown) => void;
  reject: (error: unknown) => void;
}

export interface GroupCommitStats {
  /** Transactions committed by the group writer. */
  commits: number;
  /** Units in them (units / commits is the mean batch). */
  units: number;
  /** Largest batch so far. */
  largest: number;
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
  submit<T>(work: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, resolve: resolve as (v: unknown) => void, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Units waiting for the next group transaction. */
  get pending(): number {
    return this.queue.length;
  }

  /**
   * Commits every waiting unit now (also called on close). Outside any transaction only: the
   * scheduled flush runs from the event loop, and close() runs after the last call.
   */
  flush(): void {
    this.scheduled = false;
    const units = this.queue;
    if (units.length === 0) return;
    this.queue = [];
    const outcomes: { ok: boolean; value: unknown }[] = [];
    try {
      this.sql.begin();
      for (const u of units) {
        this.sql.savepoint();
        try {
          const value = u.work();
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
