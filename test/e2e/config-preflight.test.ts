// Every kind of setting (flag, environment variable, config-file field, and the files TLS and the
// policy name) is checked before kmsd touches anything: a bad value is a non-zero exit with one line
// naming the setting, the existing token it was given holds no object afterwards, and the data
// directory holds no store. Before, the ceremony and audit variables, the TLS files and the policy
// were read only after kmsd had bound the token and created its keys.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExternalToken, KMSD, Kmsd, createExternalToken, listTokenObjects, makeTempDir, startKmsd } from '../helpers/daemon';

let token: ExternalToken;
let dir: string;
let cert = '';
let key = '';

beforeAll(() => {
  token = createExternalToken('kmsd-preflight');
  dir = makeTempDir('kmsd-preflight-');
  cert = path.join(dir, 'server.crt');
  key = path.join(dir, 'server.key');
  const r = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-subj', '/CN=127.0.0.1', '-days', '1'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl failed: ${r.stderr}`);
});

afterAll(() => {
  token?.cleanup();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function file(name: string, content: string): string {
  const f = path.join(dir, name);
  fs.writeFileSync(f, content, { mode: 0o600 });
  return f;
}

/** Starts kmsd on the existing token with one bad setting; it must refuse before touching anything. */
function refuses(args: string[], env: Record<string, string>, message: RegExp): void {
  const dataDir = path.join(makeTempDir('kmsd-preflight-data-'), 'data');
  try {
    const r = spawnSync(process.execPath, [KMSD, '--data-dir', dataDir, ...token.args, ...args], {
      encoding: 'utf8',
      env: { ...process.env, KMS_LOG_LEVEL: 'info', ...token.env, ...env },
      timeout: 30_000,
      killSignal: 'SIGKILL',
    });
    expect(r.status, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).not.toBe(0);
    expect(r.status).not.toBeNull(); // it exited; a kmsd that started would have been killed by the timeout
    const lines = r.stderr.trim().split('\n');
    expect(lines, r.stderr).toHaveLength(1);
    expect(lines[0]).toMatch(/^kmsd: /);
    expect(lines[0]).toMatch(message);
    expect(r.stdout).not.toContain('listening on');
    // Nothing was made: no data directory (so no store, no lock), and not one object in the token.
    expect(fs.existsSync(dataDir)).toBe(false);
    expect(listTokenObjects(token)).toEqual([]);
  } finally {
    fs.rmSync(path.dirname(dataDir), { recursive: true, force: true });
  }
}

describe('a bad setting stops kmsd before the token is opened, naming the setting', () => {
  it('a flag: --listen that is not HOST:PORT', () => refuses(['--listen', 'nowhere'], {}, /--listen must be HOST:PORT/));
  it('a flag: --token-label longer than a token label can be', () => refuses(['--token-label', 'x'.repeat(33)], {}, /--token-label must be at most 32 bytes/));
  it('a flag: --data-dir that is a file', () => {
    const f = file('not-a-dir', 'x');
    const r = spawnSync(process.execPath, [KMSD, ...token.args, '--listen', '127.0.0.1:0', '--data-dir', f], { encoding: 'utf8', env: { ...process.env, ...token.env }, timeout: 30_000, killSignal: 'SIGKILL' });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/^kmsd: --data-dir .*not-a-dir is not a directory\n$/);
    expect(listTokenObjects(token)).toEqual([]);
  });
  it('a flag: --tls-cert that cannot be read', () => refuses(['--tls-cert', path.join(dir, 'missing.crt'), '--tls-key', key], {}, /--tls-cert .*missing\.crt: cannot read: ENOENT/));
  it('a flag: --tls-key that holds no key', () => refuses(['--tls-cert', cert, '--tls-key', file('garbage.key', 'not a key\n')], {}, /--tls-key .*garbage\.key: /));
  it('a flag: --tls-client-ca that holds no certificate', () => refuses(['--tls-cert', cert, '--tls-key', key, '--tls-client-ca', file('garbage.ca', 'no\n')], {}, /--tls-client-ca .*garbage\.ca: /));
  it('a flag: --policy that is not a policy', () => refuses(['--policy', file('policy.json', '{"version": 9}')], {}, /--policy: invalid policy .*policy\.json/));
  it('an integer variable out of range', () => refuses([], { KMS_WRAPPING_KEY_POOL_SIZE: '65' }, /wrappingKeyPoolSize must be an integer from 0 to 64 \(got 65\)/));
  it('a 0|1 variable with another value', () => refuses([], { KMS_NATIVE: 'maybe' }, /KMS_NATIVE must be 0 or 1/));
  it('the ceremony variable KMS_PROPOSAL_TTL_SECONDS', () => refuses([], { KMS_PROPOSAL_TTL_SECONDS: '0' }, /KMS_PROPOSAL_TTL_SECONDS\) must be an integer from 1 to 604800/));
  it('the audit variables KMS_AUDIT_CHECKPOINT_SECONDS and KMS_AUDIT_DATA_PLANE', () => {
    refuses([], { KMS_AUDIT_CHECKPOINT_SECONDS: 'soon' }, /KMS_AUDIT_CHECKPOINT_SECONDS\) must be an integer/);
    refuses([], { KMS_AUDIT_DATA_PLANE: 'yes' }, /KMS_AUDIT_DATA_PLANE\) must be 0 or 1/);
  });
  it('KMSD_NATIVE_ADDON naming no file', () => refuses([], { KMSD_NATIVE_ADDON: '/nonexistent/kmsd_native.node' }, /KMSD_NATIVE_ADDON \/nonexistent\/kmsd_native\.node is not a file/));
  it('a config-file field kmsd does not know', () => refuses(['--config', file('unknown.json', '{"listn": "127.0.0.1:1"}')], {}, /unknown field "listn"/));
  it('a config-file field of the wrong type', () => refuses(['--config', file('type.json', '{"wrappingKeyPoolSize": [1]}')], {}, /wrappingKeyPoolSize must be a number/));
  it('a config file that is not a JSON object', () => refuses(['--config', file('array.json', '[]')], {}, /must hold a JSON object/));
});

describe('the files checked before the token is opened are the ones used', () => {
  it('the policy read at start is enforced even when its file is gone before the token is open', async () => {
    // Only ListKeys for the anonymous caller: an open (no policy) kmsd would let CreateKey through.
    const policyDir = makeTempDir('kmsd-preflight-policy-');
    const policyFile = path.join(policyDir, 'policy.json');
    fs.writeFileSync(policyFile, JSON.stringify({ version: 1, grants: [{ principals: ['anonymous'], actions: ['ListKeys'], keys: ['*'] }] }));
    let k: Kmsd | undefined;
    try {
      k = await startKmsd({ args: ['--policy', policyFile], onListening: () => fs.rmSync(policyDir, { recursive: true, force: true }) });
      expect(fs.existsSync(policyFile)).toBe(false);
      expect((await k.client.call('ListKeys', {})).TotalCount).toBe(0);
      const e = await k.client.createKey({}).then(
        () => null,
        (x: { code?: string; message: string }) => x,
      );
      expect(e?.code, e?.message).toBe('Forbidden.NoPermission');
      expect(k.unexpectedExit()).toBeNull();
    } finally {
      fs.rmSync(policyDir, { recursive: true, force: true });
      if (k) expect(await k.stop()).toBe(0);
    }
  });
});
