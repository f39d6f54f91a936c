// The throwaway PostgreSQL cluster lives with the scripts, so that `npm run bench` (which cannot
// import test helpers: they are not built into dist/) starts its cluster the same way the tests do.
import pg from 'pg';
import type { PgDatabase } from '../../scripts/throwaway/postgres';

export * from '../../scripts/throwaway/postgres';

/**
 * A pool on one test database, for tests that act as an outside party on the store (an operator
 * checking the schema, an attacker editing the audit table): the caller ends it.
 */
export function poolOn(db: PgDatabase, max = 4): pg.Pool {
  return new pg.Pool({ host: db.host, port: db.port, user: db.user, password: db.password, database: db.database, max });
}
