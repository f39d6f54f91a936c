// The README's first command: `npm start` sets up, builds, creates a development token and runs
// kmsd; `npx kmsctl CreateKey --ProtectionLevel HSM` answers. The data directory and port come from
// KMS_DATA_DIR / KMS_LISTEN / KMS_HTTP_LISTEN so the test does not touch ./var, 50051 or 8080.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import path from 'node:path';
import { ROOT, makeTempDir } from '../helpers/daemon';

/** Resolves once no process of group `pgid` is alive; SIGKILLs the group after 30 s. */
async function groupGone(pgid: number): Promise<void> {
  const alive = (): boolean => {
    try {
      process.kill(-pgid, 0);
      return true;
    } catch {
      return false;
    }
  };
  for (const until = Date.now() + 30_000; alive() && Date.now() < until; ) await new Promise((r) => setTimeout(r, 100));
  if (alive()) process.kill(-pgid, 'SIGKILL');
  while (alive()) await new Promise((r) => setTimeout(r, 100));
}

describe('npm start and npx kmsctl', () => {
  const dataDir = makeTempDir('kmsd-npm-start-');
  let child: ReturnType<typeof spawn> | null = null;

  afterAll(async () => {
    if (child && child.exitCode === null) {
      // npm runs kmsd under a shell: signal the whole process group, then wait for npm to exit.
      const exited = new Promise((r) => child!.on('exit', r));
      process.kill(-child.pid!, 'SIGTERM');
      await exited;
    }
    // npm can exit before the kmsd it started has finished shutting down (and writing to its token
    // under dataDir): wait until no process of the group is left, then remove the directory.
    if (child) await groupGone(child.pid!);
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('brings kmsd up and kmsctl creates an HSM key through the npx bin entry', async () => {
    child = spawn('npm', ['start', '--silent'], {
      cwd: ROOT,
      env: { ...process.env, KMS_DATA_DIR: dataDir, KMS_LISTEN: '127.0.0.1:0', KMS_HTTP_LISTEN: '127.0.0.1:0' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    let out = '';
    child.stdout!.on('data', (d) => (out += d.toString()));
    child.stderr!.on('data', (d) => (out += d.toString()));
    const endpoint = await new Promise<string>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`npm start did not listen:\n${out}`)), 100_000);
      child!.stdout!.on('data', () => {
        const m = /listening on (127\.0\.0\.1:\d+)/.exec(out);
        if (m && /http listening on 127\.0\.0\.1:\d+/.test(out)) {
          clearTimeout(t);
          resolve(m[1]);
        }
      });
    });
    const r = spawnSync('npx', ['--no-install', 'kmsctl', 'CreateKey', '--ProtectionLevel', 'HSM'], {
      cwd: ROOT,
      env: { ...process.env, KMS_ENDPOINT: endpoint },
      encoding: 'utf8',
    });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const meta = JSON.parse(r.stdout).KeyMetadata;
    expect(meta.ProtectionLevel).toBe('HSM');
    expect(meta.KeyState).toBe('Enabled');
    // The development token was created inside the data directory.
    expect(fs.existsSync(`${dataDir}/softhsm/softhsm2.conf`)).toBe(true);
    // The HTTP listener is on (127.0.0.1:8080 unless KMS_HTTP_LISTEN says otherwise), with the
    // development access key for the local admin in the data directory, owner-only.
    expect(JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')).scripts.start).toContain('--http-listen ${KMS_HTTP_LISTEN:-127.0.0.1:8080}');
    const keyFile = `${dataDir}/dev-access-key.json`;
    expect(fs.statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(JSON.parse(fs.readFileSync(keyFile, 'utf8'))).toMatchObject({ AccessKeyId: expect.stringMatching(/^KMSD/), AccessKeySecret: expect.any(String), Principal: 'local-admin' });
    // Logged once the token is ready, after "listening on": read as it arrives (spawnSync above held
    // this process's event loop, and with it the child's output).
    for (let i = 0; i < 200 && !out.includes('development access key created'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(out).toContain('development access key created');
  });
});
