// kmsd listens before it opens the token (SoftHSM reads every object file of a token in
// C_Initialize: tens of seconds at 10,000 keys). Until the token is open and the binding check has
// passed: health says NOT_SERVING, DescribeHsm says TokenState Opening, and every other call (gRPC
// and HTTP) waits a bounded time, then is answered ServiceUnavailable.Hsm "the token is still
// opening"; a call that arrives in that window and may wait long enough is served once the token
// is ready.
//
// The token is held "opening" for real: SoftHSM takes an fcntl read lock on each object file while
// it loads it in C_Initialize, so a write lock held by another process (python3's fcntl.lockf)
// makes kmsd's C_Initialize wait until it is released.

import { ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient } from '../../src/client/client';
import { KmsdClient } from '../../src/client/kmsd-client';
import { KMSD, makeTempDir, startKmsd } from '../helpers/daemon';
import { clientErrorOf } from '../helpers/errors';
import { rawRequest } from '../helpers/http';
import { healthOf } from '../helpers/health';

/* eslint-disable @typescript-eslint/no-explicit-any */

const dirs: string[] = [];
const children: ChildProcess[] = [];

afterAll(async () => {
  for (const c of children) await stopChild(c, 'SIGKILL');
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

async function stopChild(c: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null || !c.pid) return;
  const exited = new Promise((r) => c.once('exit', r));
  process.kill(c.pid, signal);
  await exited;
}

/** Holds a write lock on `file` until released; resolves once the lock is taken. */
async function holdLock(file: string): Promise<{ release(): Promise<void> }> {
  const py = spawn('python3', ['-c', 'import fcntl,sys\nf=open(sys.argv[1],"r+b")\nfcntl.lockf(f, fcntl.LOCK_EX)\nprint("locked", flush=True)\nsys.stdin.read()', file], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(py);
  await new Promise<void>((resolve, reject) => {
    py.stdout!.on('data', (d) => String(d).includes('locked') && resolve());
    py.once('exit', (code) => reject(new Error(`python3 lock holder exited with ${code}`)));
  });
  return { release: () => stopChild(py, 'SIGTERM') };
}

interface Started {
  child: ChildProcess;
  port: number;
  httpPort: number;
  out: () => string;
}

/** Spawns kmsd and resolves once it prints "listening on" and "http listening on" (not waiting for the token). */
async function spawnListening(dataDir: string, env: Record<string, string>): Promise<Started> {
  const child = spawn(process.execPath, [KMSD, '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--http-listen', '127.0.0.1:0'], {
    env: { ...process.env, KMS_LOG_LEVEL: 'info', KMS_WRAPPING_KEY_POOL_SIZE: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (out += d));
  return new Promise<Started>((resolve, reject) => {
    const check = () => {
      const g = /"listening on 127\.0\.0\.1:(\d+)"/.exec(out);
      const h = /http listening on 127\.0\.0\.1:(\d+)/.exec(out);
      if (g && h) resolve({ child, port: Number(g[1]), httpPort: Number(h[1]), out: () => out });
    };
    child.stdout!.on('data', check);
    child.once('exit', (code) => reject(new Error(`kmsd exited with ${code} before listening:\n${out}`)));
  });
}


describe('calls while the token is still opening', () => {
  let dataDir: string;
  let keyId: string;
  let objectFile: string;

  beforeAll(async () => {
    dataDir = path.join(makeTempDir('kmsd-opening-'), 'data');
    dirs.push(path.dirname(dataDir));
    const k = await startKmsd({ dataDir, keep: true });
    keyId = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    await k.stop();
    const tokens = path.join(dataDir, 'softhsm', 'tokens');
    const tokenDir = path.join(tokens, fs.readdirSync(tokens)[0]);
    objectFile = path.join(tokenDir, fs.readdirSync(tokenDir).find((f) => f.endsWith('.object') && f !== 'token.object')!);
  }, 120_000);

  it('are turned away with ServiceUnavailable.Hsm after the wait; health is NOT_SERVING and DescribeHsm says Opening', async () => {
    const lock = await holdLock(objectFile);
    let k: Started | null = null;
    try {
      k = await spawnListening(dataDir, { KMS_TOKEN_OPEN_WAIT_MS: '0' });
      expect(await healthOf(k.port)).toBe('NOT_SERVING');
      expect(await healthOf(k.port, 'kms.v1.KeyManagementService')).toBe('NOT_SERVING');
      const client = new KmsClient({ endpoint: `127.0.0.1:${k.port}` });
      try {
        const hsm = await client.call('DescribeHsm');
        expect(hsm.TokenState).toBe('Opening');
        expect(hsm.ReconciliationRunning).toBe(true);
        expect(hsm.TokenLabel).toBe('');
        const e = await clientErrorOf(client.encrypt(keyId, Buffer.from('x')));
        expect(e.grpcCode).toBe(grpc.status.UNAVAILABLE);
        expect(e.code).toBe('ServiceUnavailable.Hsm');
        expect(e.message).toMatch(/the token is still opening/);
        // A stream ends with the same status.
        const stream = client.openBatchStream('encrypt');
        const se = await clientErrorOf(stream.send([{ KeyId: keyId, Plaintext: Buffer.from('x') }]));
        expect(se.code).toBe('ServiceUnavailable.Hsm');
        expect(se.message).toMatch(/the token is still opening/);
      } finally {
        client.close();
      }
      // A ceremony service waits in the same front.
      const all = new KmsdClient({ endpoint: `127.0.0.1:${k.port}` });
      try {
        const c = await clientErrorOf(all.call('DescribeCeremony'));
        expect(c.code).toBe('ServiceUnavailable.Hsm');
        expect(c.message).toMatch(/the token is still opening/);
      } finally {
        all.close();
      }
      // The HTTP listener too, in its dialect's shape (Alibaba here), before any signature is checked.
      const a = await rawRequest(k.httpPort, { method: 'POST', path: '/', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'Action=Encrypt' });
      expect(a.status).toBe(503);
      expect(JSON.parse(a.body).Code).toBe('Throttling.Hsm');
      expect(JSON.parse(a.body).Message).toMatch(/the token is still opening/);
      expect(k.out()).not.toContain('token ready');
    } finally {
      // Killed while its token is still opening: nothing was served, nothing written to the token.
      if (k) await stopChild(k.child, 'SIGKILL');
      await lock.release();
    }
  }, 120_000);

  it('a call made while it opens is served once it is ready, and health turns SERVING', async () => {
    const lock = await holdLock(objectFile);
    let k: Started;
    let pending: Promise<unknown>;
    const client = { c: null as KmsClient | null };
    try {
      k = await spawnListening(dataDir, { KMS_TOKEN_OPEN_WAIT_MS: '120000' });
      client.c = new KmsClient({ endpoint: `127.0.0.1:${k.port}` });
      // Made while the lock holds C_Initialize: it waits in the front.
      pending = client.c.encrypt(keyId, Buffer.from('waited'));
      expect(await healthOf(k.port)).toBe('NOT_SERVING');
      expect((await client.c.call('DescribeHsm')).TokenState).toBe('Opening');
    } finally {
      await lock.release();
    }
    try {
      const enc = (await pending) as { CiphertextBlob: string };
      expect((await client.c.decrypt(enc.CiphertextBlob)).Plaintext.toString()).toBe('waited');
      expect(k.out()).toContain('token ready');
      expect(await healthOf(k.port)).toBe('SERVING');
      const hsm = await client.c.call('DescribeHsm');
      expect(hsm.TokenState).toBe('Ready');
      expect(hsm.TokenLabel).toBe('kmsd-dev');
    } finally {
      client.c.close();
      await stopChild(k.child, 'SIGTERM');
    }
  }, 180_000);
});
