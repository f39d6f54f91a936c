// kmsd: the daemon entry point. Parses flags and environment, starts the daemon, prints
// "listening on HOST:PORT", and drains in-flight calls on SIGTERM before exiting 0.
// Start-up failures (bad flag, missing module, wrong PIN) are one line on stderr and exit 1.

import pino from 'pino';
import { ConfigError, USAGE, loadConfig } from '../config';
import { startDaemon } from '../daemon';
import { HsmError } from '../hsm/errors';

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  let cfg;
  try {
    cfg = loadConfig(argv, process.env);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`kmsd: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const log = pino({
    level: cfg.logLevel,
    base: { service: 'kmsd' },
    // Defence in depth: these field names never carry secrets in our own log calls, and never will.
    redact: { paths: ['pin', '*.pin', 'Plaintext', '*.Plaintext', 'EncryptedKeyMaterial', '*.EncryptedKeyMaterial', 'material', '*.material'], censor: '[redacted]' },
  });
  let daemon;
  try {
    daemon = await startDaemon(cfg, log);
  } catch (e) {
    const msg = e instanceof HsmError || e instanceof ConfigError ? e.message : (e as Error).message;
    process.stderr.write(`kmsd: ${msg}\n`);
    process.exit(1);
  }
  log.info({ address: daemon.address, dataDir: cfg.dataDir, tls: Boolean(cfg.tls) }, `listening on ${daemon.address}`);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'draining in-flight calls');
    daemon.stop().then(
      () => {
        log.info({}, 'stopped');
        log.flush?.();
        process.exit(0);
      },
      (e) => {
        process.stderr.write(`kmsd: shutdown failed: ${(e as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((e) => {
  process.stderr.write(`kmsd: ${(e as Error).message}\n`);
  process.exit(1);
});
