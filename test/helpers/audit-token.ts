// Runs the token auditor (dist/src/cli/audit-token.js, what `npm run audit-token` runs) as its own
// process, as an operator would, and parses its JSON report.

import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { ROOT, TEST_TOKEN, opencryptokiTestToken, testStoreOf } from './daemon';

export const AUDIT_TOKEN = path.join(ROOT, 'dist', 'src', 'cli', 'audit-token.js');

export interface AuditRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** The parsed report; null when none was printed (usage errors, unreadable token). */
  report: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export function auditToken(args: string[], env: Record<string, string> = {}): AuditRun {
  const r = spawnSync(process.execPath, [AUDIT_TOKEN, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 120_000 });
  let report: unknown = null;
  try {
    report = JSON.parse(r.stdout);
  } catch {
    /* no report */
  }
  return { code: r.status, stdout: r.stdout, stderr: r.stderr, report };
}

/** The findings of a run, for an assertion message that says what was wrong. */
export function describeFindings(run: AuditRun): string {
  return run.report ? JSON.stringify(run.report.findings, null, 1) : `exit ${run.code}: ${run.stderr}`;
}

/**
 * The auditor's arguments for a daemon's token: its data directory, on opencryptoki (whose token
 * is not in the data directory) the module, label and PIN file kmsd was given, and on the postgres
 * project the store kmsd was given.
 */
export function auditArgsFor(dataDir: string): string[] {
  const where = testStoreOf(dataDir);
  const store = where.kind === 'postgres' ? ['--store', where.db.url, '--store-password-file', where.db.passwordFile] : [];
  if (TEST_TOKEN !== 'opencryptoki') return ['--data-dir', dataDir, ...store];
  const t = opencryptokiTestToken();
  return ['--data-dir', dataDir, '--pkcs11-module', t.modulePath, '--token-label', t.label, '--pin-file', t.pinFile, ...store];
}
