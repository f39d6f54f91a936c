// --store and --store-password-file (src/config.ts): the PostgreSQL store's settings, checked before
// the token opens; a password never on the command line and never in a message.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, USAGE, loadConfig } from '../../src/config';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-config-store-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

function file(content: string, mode = 0o600): string {
  const f = path.join(tmp, `pw-${Math.random().toString(36).slice(2)}`);
  fs.writeFileSync(f, content);
  fs.chmodSync(f, mode);
  return f;
}

function configError(argv: string[], env: NodeJS.ProcessEnv = {}): string {
  try {
    loadConfig(argv, env);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error(`loadConfig(${JSON.stringify(argv)}) did not throw`);
}

describe('--store', () => {
  it('is unset by default: SQLite in the data directory', () => {
    expect(loadConfig([], {}).store).toBeUndefined();
  });

  it('parses postgres://USER@HOST:PORT/DB from the flag, KMS_STORE or the config file, the flag first', () => {
    const c = loadConfig(['--store', 'postgres://kms@db.internal:6543/kmsd'], { KMS_STORE: 'postgres://other@h/x' });
    expect(c.store).toMatchObject({ backend: 'postgres', host: 'db.internal', port: 6543, user: 'kms', database: 'kmsd', url: 'postgres://kms@db.internal:6543/kmsd', passwordSource: 'pgpass' });
    expect(c.store!.password()).toBeUndefined();
    expect(loadConfig([], { KMS_STORE: 'postgresql://u@127.0.0.1/db1' }).store).toMatchObject({ host: '127.0.0.1', port: 5432, database: 'db1' });
    const cf = path.join(tmp, 'c.json');
    fs.writeFileSync(cf, JSON.stringify({ store: 'postgres://u@[::1]:5433/d' }));
    expect(loadConfig(['--config', cf], {}).store).toMatchObject({ host: '::1', port: 5433, url: 'postgres://u@[::1]:5433/d' });
  });

  it('refuses a password in the URL, naming the rule and never echoing the password', () => {
    const msg = configError(['--store', 'postgres://kms:hunter2secret@db:5432/kmsd']);
    expect(msg).toContain('--store must not hold a password');
    expect(msg).toContain('--store-password-file');
    expect(msg).not.toContain('hunter2secret');
  });

  it('refuses what is not postgres://USER@HOST:PORT/DB, saying which part is wrong', () => {
    expect(configError(['--store', 'mysql://u@h/d'])).toContain('got scheme "mysql"');
    expect(configError(['--store', 'not a url'])).toContain('must be postgres://USER@HOST:PORT/DB');
    expect(configError(['--store', 'postgres://h:5432/d'])).toContain('the user is missing');
    expect(configError(['--store', 'postgres://u@h:5432/'])).toContain('the database name is missing');
    expect(configError(['--store', 'postgres://u@h:5432/a/b'])).toContain('the database name is missing');
    expect(configError(['--store', 'postgres://u@h:5432/d?sslmode=disable'])).toContain('options after "?"');
    expect(configError(['--store', 'postgres://u@h:0/d'])).toContain('the port must be 1..65535');
  });
});

describe('the store password', () => {
  it('comes from --store-password-file (one trailing newline dropped), and the configuration never shows it', () => {
    const f = file('s3cret-pw\n');
    const c = loadConfig(['--store', 'postgres://u@h/d', '--store-password-file', f], { PGPASSWORD: 'from-env' });
    expect(c.store!.passwordSource).toBe('file');
    expect(c.store!.password()).toBe('s3cret-pw');
    expect(JSON.stringify(c)).not.toContain('s3cret-pw');
  });

  it('comes from PGPASSWORD when no file is given', () => {
    const c = loadConfig(['--store', 'postgres://u@h/d'], { PGPASSWORD: 'from-env' });
    expect(c.store!.passwordSource).toBe('PGPASSWORD');
    expect(c.store!.password()).toBe('from-env');
  });

  it('refuses a missing, empty or group/other-readable password file, and a password file without --store', () => {
    expect(configError(['--store', 'postgres://u@h/d', '--store-password-file', path.join(tmp, 'nope')])).toContain('cannot read: ENOENT');
    expect(configError(['--store', 'postgres://u@h/d', '--store-password-file', file('')])).toContain('is empty');
    const loose = file('pw', 0o644);
    expect(configError(['--store', 'postgres://u@h/d', '--store-password-file', loose])).toContain(`chmod 600 ${loose}`);
    expect(configError(['--store', 'postgres://u@h/d', '--store-password-file', tmp])).toContain('is not a file');
    expect(configError(['--store-password-file', file('pw')])).toContain('give --store postgres://USER@HOST:PORT/DB as well');
  });
});

describe('kmsd', () => {
  it('--help says which store to use when', () => {
    expect(USAGE).toContain('--store postgres://USER@HOST:PORT/DB');
    expect(USAGE).toContain('several kmsd replicas');
    expect(USAGE).toContain('KMS_STORE');
  });

  it('exits 2 on a password in --store before opening anything, and does not print it', () => {
    const dataDir = path.join(tmp, 'data');
    const r = spawnSync(process.execPath, ['bin/kmsd.js', '--data-dir', dataDir, '--store', 'postgres://u:TopSecretPw@127.0.0.1:1/d'], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('--store must not hold a password');
    expect(r.stderr + r.stdout).not.toContain('TopSecretPw');
    expect(fs.existsSync(dataDir)).toBe(false);
  });

  it('stops with a message naming the store when PostgreSQL cannot be reached at start, before it listens', () => {
    const dataDir = path.join(tmp, 'data2');
    const r = spawnSync(process.execPath, ['bin/kmsd.js', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--store', 'postgres://kms@127.0.0.1:1/kmsd'], { encoding: 'utf8', timeout: 60_000 });
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('--store postgres://kms@127.0.0.1:1/kmsd: cannot open the PostgreSQL store');
    expect(r.stdout + r.stderr).not.toContain('listening on');
  });
});
