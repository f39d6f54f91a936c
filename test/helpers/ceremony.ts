// Helpers for the ceremony and audit tests (issue 5): a daemon with its own data dir, custodian
// keys made with openssl, signing with plain openssl, a client for all three services, and running
// the ceremony scripts from dist/.

import { spawnSync, SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';
import { Kmsd, ROOT, makeTempDir, startKmsd } from './daemon';
import { KmsdClient } from '../../src/client/kmsd-client';
import { KmsClientError } from '../../src/client/client';

/**
 * A data dir whose SoftHSM config is already in place (kmsd writes one only when absent), so the
 * tests do not depend on how kmsd renders its template.
 */
export function prepareDataDir(): string {
  const dataDir = makeTempDir('kmsd-ceremony-');
  const tokens = path.join(dataDir, 'softhsm', 'tokens');
  fs.mkdirSync(tokens, { recursive: true, mode: 0o700 });
  fs.writeFileSync(path.join(dataDir, 'softhsm', 'softhsm2.conf'), `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`, { mode: 0o600 });
  return dataDir;
}

export async function startCeremonyDaemon(env: Record<string, string> = {}, dataDir = prepareDataDir(), keep = false): Promise<Kmsd> {
  return startKmsd({ dataDir, env, keep });
}

export function run(cmd: string, args: string[], opts: { cwd?: string; input?: Buffer | string; env?: NodeJS.ProcessEnv } = {}): SpawnSyncReturns<Buffer> {
  const r = spawnSync(cmd, args, { cwd: opts.cwd, input: opts.input, env: opts.env ?? process.env, timeout: 60_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr?.toString()}`);
  return r;
}

export interface CustodianKeyFiles {
  id: string;
  pem: string;
  pub: string;
}

/** Ed25519 custodian keys generated with openssl, as a custodian would on their own machine. */
export function custodianKeys(dir: string, ids: string[]): Record<string, CustodianKeyFiles> {
  const out: Record<string, CustodianKeyFiles> = {};
  for (const id of ids) {
    const pem = path.join(dir, `${id}.pem`);
    const pub = path.join(dir, `${id}.pub`);
    run('openssl', ['genpkey', '-algorithm', 'ed25519', '-out', pem]);
    run('openssl', ['pkey', '-in', pem, '-pubout', '-out', pub]);
    out[id] = { id, pem, pub };
  }
  return out;
}

/** `openssl pkeyutl -sign -rawin -inkey KEY -in DOC` → base64. */
export function opensslSign(keyFile: string, docFile: string): string {
  return run('openssl', ['pkeyutl', '-sign', '-rawin', '-inkey', keyFile, '-in', docFile]).stdout.toString('base64');
}

export function writeDoc(dir: string, name: string, documentB64: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, Buffer.from(documentB64, 'base64'));
  return f;
}

export function client(k: Kmsd): KmsdClient {
  return new KmsdClient({ endpoint: k.endpoint });
}

/** Awaits a call that must fail with this API error code (and, when given, gRPC status name). */
export async function refused(p: Promise<unknown>, code: string, status?: string): Promise<KmsClientError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeInstanceOf(KmsClientError);
  const e = err as KmsClientError;
  expect(e.code, e.message).toBe(code);
  if (status) {
    const names: Record<number, string> = { 3: 'INVALID_ARGUMENT', 5: 'NOT_FOUND', 6: 'ALREADY_EXISTS', 7: 'PERMISSION_DENIED', 9: 'FAILED_PRECONDITION' };
    expect(names[e.grpcCode]).toBe(status);
  }
  return e;
}

export const SCRIPTS = path.join(ROOT, 'dist', 'scripts', 'ceremony');

export function runScript(name: string, configFile: string, extra: string[] = [], env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(process.execPath, [path.join(SCRIPTS, `${name}.js`), configFile, ...extra], { encoding: 'utf8', timeout: 60_000, env });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

/** A value recorded as "VALUE name = value" in a ceremony transcript. */
export function transcriptValue(stdout: string, name: string): string {
  const m = new RegExp(`VALUE\\s+${name} = (.*)`).exec(stdout);
  if (!m) throw new Error(`transcript has no ${name}:\n${stdout}`);
  return m[1].trim();
}
