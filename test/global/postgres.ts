// The postgres project's PostgreSQL cluster, started once for the project and stopped by its pid
// when the project ends. Each kmsd data directory of the tests gets its own database in it
// (test/helpers/daemon.ts), so test files share the server and nothing else and run in parallel.
// The workers learn where it is through vitest's provide/inject, which reaches forked workers (they
// get the project's serialised config); a cluster per worker would cost a copy and a start per file.

import type { TestProject } from 'vitest/node';
import { startPostgres, type PgServer } from '../helpers/postgres';

declare module 'vitest' {
  export interface ProvidedContext {
    kmsdTestPostgres: PgServer;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const cluster = await startPostgres();
  project.provide('kmsdTestPostgres', { dir: cluster.dir, port: cluster.port, user: cluster.user, password: cluster.password });
  // stop() sends SIGQUIT to the postmaster pid this process spawned, waits for it and removes its dir.
  return () => cluster.stop();
}
