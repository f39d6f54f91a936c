import { defineConfig } from 'vitest/config';
import { SpreadOpencryptoki } from './test/setup/sequencer';

// Tests run against real parts: a SoftHSM2 token per test file (or per daemon), real SQLite, real
// gRPC on loopback, the real openssl and pkcs11-tool. `npm test` builds dist/ first (scripts/setup.sh),
// which the daemon-spawning tests execute.
//
// Two projects, one per PKCS#11 implementation. `softhsm` runs everything, two files at a time.
// `opencryptoki` runs the suites listed in OPENCRYPTOKI_SUITES again with KMSD_TEST_TOKEN=opencryptoki
// (test/helpers/opencryptoki.ts, test/helpers/daemon.ts): its soft token is one machine-wide slot,
// so those files take turns on it (test/setup/opencryptoki-turn.ts), spread among the other files
// (test/setup/sequencer.ts) rather than run as a group of their own. The crash suite runs there only as its
// failpoint kills, one request at a time (CRASH_FAILPOINTS_ONLY): opencryptoki 3.8 rewrites NVTOK.DAT
// and its object files in place (O_TRUNC, no rename), so a SIGKILL while another PKCS#11 call writes
// loses objects or wipes the token (docs/security.md §9). The random kills run there only by hand:
// KMSD_TEST_TOKEN=opencryptoki npx vitest run --project softhsm test/e2e/crash.test.ts.
//
// `postgres` runs the suites in POSTGRES_SUITES again with KMSD_TEST_STORE=postgres: kmsd keeps its
// metadata in PostgreSQL (--store) instead of SQLite. One real PostgreSQL cluster for the project
// (test/global/postgres.ts), a database per kmsd data directory (test/helpers/daemon.ts), so the
// files share nothing and run two at a time like softhsm's.
const OPENCRYPTOKI_SUITES = ['test/integration/gcm-composed.test.ts', 'test/integration/kwp-composed.test.ts', 'test/e2e/lifecycle.test.ts', 'test/e2e/byok-lifecycle.test.ts', 'test/e2e/byok-walkthrough.test.ts', 'test/e2e/byok-policy.test.ts', 'test/e2e/ceremony.test.ts', 'test/e2e/hsm-paths.test.ts', 'test/e2e/token-mechanisms.test.ts', 'test/e2e/crash.test.ts'];

const POSTGRES_SUITES = ['test/e2e/lifecycle.test.ts', 'test/e2e/byok-lifecycle.test.ts', 'test/e2e/byok-walkthrough.test.ts', 'test/e2e/ceremony.test.ts', 'test/e2e/audit.test.ts'];

export default defineConfig({
  test: {
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // A failing test prints what its kmsd processes logged at warn and above.
    setupFiles: ['test/setup/daemon-logs.ts'],
    maxWorkers: 2,
    sequence: { sequencer: SpreadOpencryptoki },
    reporters: ['default'],
    projects: [
      {
        extends: true,
        test: { name: 'softhsm', include: ['test/**/*.test.ts'] },
      },
      {
        extends: true,
        test: {
          name: 'opencryptoki',
          include: OPENCRYPTOKI_SUITES,
          globalSetup: ['test/global/pkcsslotd.ts'],
          // Added to the root's setup files (extends: true).
          setupFiles: ['test/setup/opencryptoki-turn.ts'],
          env: { KMSD_TEST_TOKEN: 'opencryptoki', CRASH_FAILPOINTS_ONLY: '1', CRASH_FAILPOINT_ROUNDS: '1' },
        },
      },
      {
        extends: true,
        test: {
          name: 'postgres',
          include: POSTGRES_SUITES,
          globalSetup: ['test/global/postgres.ts'],
          env: { KMSD_TEST_STORE: 'postgres' },
        },
      },
    ],
  },
});
