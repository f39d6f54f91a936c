// kmsd: the daemon entry point. Parses flags and environment, starts the daemon, prints
// "listening on HOST:PORT" (before the token is open), and drains in-flight calls on SIGTERM
// before exiting 0. Start-up failures (bad flag, missing module, wrong PIN, a store that is not the
// token's) are one line on stderr and exit 1; those found at the token come after "listening on".

import pino from 'pino';
import { ConfigError, USAGE, loadDaemonConfig } from '../config';
import { startDaemon } from '../daemon';
import { HsmError } from '../hsm/errors';
import { disableCoreDumps } from '../hsm/native-addon';

/** Start-up failures are one line: messages from tools (softhsm2-util's stderr) may span several. */
function oneLine(message: string): string {
  return message.trim().replace(/\s*\n\s*/g, '; ');
}

async function main(): Promise<void> {
  // Everything kmsd creates (SQLite and its WAL, token files, PIN files) is owner-only.
  process.umask(0o077);
  const argv = process.argv.slice(2);
  if (argv[0] === 'migrate') {
    // Loaded only for this command: the daemon itself does not need the PostgreSQL client yet.
    const { migrateMain } = await import('./migrate');
    await migrateMain(argv.slice(1));
    return;
  }
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE + '\n');
    return;
  }
  // Before anything secret is read (the PIN file) or made (SOFTWARE material, data keys).
  const coreDumps = disableCoreDumps();
  let cfg;
  try {
    cfg = loadDaemonConfig(argv);
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`kmsd: ${oneLine(e.message)}\n`);
      process.exit(2);
    }
    throw e;
  }
  const log = pino(
    {
      level: cfg.logLevel,
      base: { service: 'kmsd' },
      // Defence in depth: these field names never carry secrets in our own log calls, and never will.
      redact: { paths: ['pin', '*.pin', 'Plaintext', '*.Plaintext', 'EncryptedKeyMaterial', '*.EncryptedKeyMaterial', 'material', '*.material'], censor: '[redacted]' },
    },
    // Each line written as it is logged. pino's default (buffered) destination rewrites what is
    // left at exit with a loop that never gives up on a closed stdout (EPIPE), so a kmsd whose log
    // reader had gone hung at SIGTERM instead of exiting; written at once, a closed stdout just
    // ends the logging.
    pino.destination({ dest: 1, sync: true }),
  );
  if (coreDumps.disabled) log.info({ coreDumps: 'disabled' }, 'core dumps disabled (RLIMIT_CORE 0, not dumpable)');
  else log.warn({ coreDumps: 'enabled', coreLimitZero: coreDumps.coreLimitZero, notDumpable: coreDumps.notDumpable, reason: coreDumps.reason }, 'core dumps are NOT disabled: a core of kmsd would hold the PIN and key material');
  let daemon: Awaited<ReturnType<typeof startDaemon>> | undefined;
  let stopping = false;
  const stop = (signal: 'SIGTERM' | 'SIGINT') => {
    if (!daemon) {
      // Still starting: the signal does what it did before kmsd listened for it (ends the process).
      process.removeAllListeners(signal);
      process.kill(process.pid, signal);
      return;
    }
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
        process.stderr.write(`kmsd: shutdown failed: ${oneLine((e as Error).message)}\n`);
        process.exit(1);
      },
    );
  };
  // Listened for before the start, not after it: "token ready" is written the moment it is logged,
  // and a supervisor that sends SIGTERM on reading it must find the drain in place. A signal taken
  // in the last synchronous steps of the start is handled after them, with the daemon set.
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    // kmsd listens before it opens the token (on a full token the module's first use takes long):
    // "listening on" comes first; a token that cannot be opened or is refused still ends the
    // process below, with its one line and exit 1, before any call has been served.
    daemon = await startDaemon(cfg, log, {
      onListening: ({ address, httpAddress }) => {
        log.info({ address, dataDir: cfg.dataDir, tls: Boolean(cfg.tls) }, `listening on ${address}`);
        if (httpAddress) log.info({ address: httpAddress, tls: Boolean(cfg.tls) }, `http listening on ${httpAddress}`);
      },
    });
  } catch (e) {
    const msg = e instanceof HsmError || e instanceof ConfigError ? e.message : (e as Error).message;
    log.flush?.();
    process.stderr.write(`kmsd: ${oneLine(msg)}\n`);
    process.exit(1);
  }
  const started = daemon;
  // SIGHUP re-reads the authorization policy; a bad file is logged and the old policy stays.
  process.on('SIGHUP', () => {
    if (!stopping) started.reloadPolicy();
  });
}

main().catch((e) => {
  process.stderr.write(`kmsd: ${oneLine((e as Error).message)}\n`);
  process.exit(1);
});
