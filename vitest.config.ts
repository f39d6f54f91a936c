import { defineConfig } from 'vitest/config';

// Tests run against real parts: a SoftHSM2 token per test file (or per daemon), real SQLite, real
// gRPC on loopback, the real openssl and pkcs11-tool. `npm test` builds dist/ first (scripts/setup.sh),
// which the daemon-spawning tests execute.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    pool: 'forks',
    maxWorkers: 2,
    reporters: ['default'],
  },
});
