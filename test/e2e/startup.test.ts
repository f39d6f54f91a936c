// kmsd start-up and shutdown (DESIGN §3, issue 2): a wrong PIN, a missing module, a missing PIN file
// or an unknown token each give one line on stderr and a non-zero exit, never a stack trace; an
// existing ("production") token is used with the right PIN and never initialized; a non-loopback
// listen address without TLS is refused; SIGTERM exits 0; gRPC health and server reflection answer;
// logs carry request ids and never the PIN.

import { execFileSync, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient, KmsClientError } from '../../src/client/client';
import { loadApi } from '../../src/api/proto';
import { KMSD, Kmsd, ROOT, makeTempDir, startKmsd } from '../helpers/daemon';

const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// An existing token, as an operator would have it: its own softhsm2.conf and token directory,
// initialized with softhsm2-util before kmsd ever runs. The PINs are test values.
const prod = (() => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-prod-token-'));
  const tokens = path.join(dir, 'tokens');
  fs.mkdirSync(tokens, { mode: 0o700 });
  const conf = path.join(dir, 'softhsm2.conf');
  fs.writeFileSync(conf, `directories.tokendir = ${tokens}\nobjectstore.backend = file\nlog.level = ERROR\n`);
  const label = 'kmsd-prod-test';
  const pin = 'Pr0d-PIN-7d41c2';
  const soPin = 'S0-PIN-90af13';
  const env = { ...process.env, SOFTHSM2_CONF: conf };
  execFileSync('softhsm2-util', ['--init-token', '--free', '--label', label, '--so-pin', soPin, '--pin', pin], { env, stdio: 'ignore' });
  const pinFile = path.join(dir, 'user.pin');
  fs.writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
  const wrongPinFile = path.join(dir, 'wrong.pin');
  fs.writeFileSync(wrongPinFile, 'Wr0ng-PIN-55e1\n', { mode: 0o600 });
  return { dir, conf, label, pin, soPin, pinFile, wrongPinFile, env: { SOFTHSM2_CONF: conf } };
})();

const started: Kmsd[] = [];
const dirs: string[] = [];

afterAll(async () => {
  for (const d of started) {
    await d.stop();
    d.cleanup();
  }
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  fs.rmSync(prod.dir, { recursive: true, force: true });
});

/** Runs kmsd expecting it NOT to start; returns its exit and output. */
function runFailing(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string; dataDir: string } {
  const dataDir = makeTempDir('kmsd-startup-');
  dirs.push(dataDir);
  const r = spawnSync(process.execPath, [KMSD, '--data-dir', dataDir, ...args], {
    encoding: 'utf8',
    env: { ...process.env, KMS_LOG_LEVEL: 'info', ...env },
    timeout: 60_000,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, dataDir };
}

/**
 * `found`: where kmsd finds the fault. Configuration faults stop it before it listens; faults of
 * the token (wrong PIN, no such token) come after "listening on", since kmsd listens before it
 * opens the token, and then before any call is served (no "token ready").
 */
function expectOneLineFailure(r: { status: number | null; stdout: string; stderr: string }, message: RegExp, found: 'before-listening' | 'at-the-token' = 'before-listening'): void {
  expect(r.status, `stdout: ${r.stdout}\nstderr: ${r.stderr}`).not.toBe(0);
  expect(r.status).not.toBeNull(); // exited, not killed by the timeout
  const lines = r.stderr.trim().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^kmsd: /);
  expect(lines[0]).toMatch(message);
  expect(r.stderr + r.stdout).not.toContain('    at ');
  if (found === 'before-listening') expect(r.stdout).not.toContain('listening on');
  else {
    expect(r.stdout).toContain('listening on');
    expect(r.stdout).not.toContain('token ready');
  }
}

/** The tokens SoftHSM knows in this configuration: label, serial and initialized flag of each slot. */
function showSlots(): string[] {
  const out = execFileSync('softhsm2-util', ['--show-slots'], { env: { ...process.env, ...prod.env }, encoding: 'utf8' });
  const tokens: string[] = [];
  for (const block of out.split(/\n(?=Slot \d+)/)) {
    const label = /Label:\s*(.*)/.exec(block)?.[1]?.trim() ?? '';
    const serial = /Serial number:\s*(.*)/.exec(block)?.[1]?.trim() ?? '';
    const init = /Initialized:\s*(\w+)/.exec(block)?.[1] ?? '';
    if (/Slot \d+/.test(block)) tokens.push(`${label}|${serial}|${init}`);
  }
  return tokens.sort();
}

const productionArgs = (pinFile: string) => ['--listen', '127.0.0.1:0', '--pkcs11-module', MODULE, '--token-label', prod.label, '--pin-file', pinFile];

describe('start-up failures are one line and a non-zero exit', () => {
  it('a wrong PIN', () => {
    const r = runFailing(productionArgs(prod.wrongPinFile), prod.env);
    expectOneLineFailure(r, /login to token "kmsd-prod-test" failed: CKR_PIN_INCORRECT/, 'at-the-token');
    expect(r.stderr + r.stdout).not.toContain('Wr0ng-PIN-55e1');
    expect(r.stderr + r.stdout).not.toContain(prod.pin);
    // It made no development token either.
    expect(fs.existsSync(path.join(r.dataDir, 'softhsm'))).toBe(false);
  });

  it('a module path that does not exist', () => {
    const r = runFailing(['--listen', '127.0.0.1:0', '--pkcs11-module', '/nonexistent/lib/libpkcs11-missing.so', '--token-label', prod.label, '--pin-file', prod.pinFile], prod.env);
    expectOneLineFailure(r, /cannot load PKCS#11 module \/nonexistent\/lib\/libpkcs11-missing\.so/);
  });

  it('a module path that is not a PKCS#11 module', () => {
    const notAModule = path.join(prod.dir, 'not-a-module.so');
    fs.writeFileSync(notAModule, 'this is not a shared object');
    const r = runFailing(['--listen', '127.0.0.1:0', '--pkcs11-module', notAModule, '--token-label', prod.label, '--pin-file', prod.pinFile], prod.env);
    expectOneLineFailure(r, /cannot load PKCS#11 module/);
  });

  it('a PIN file that does not exist, and an empty one', () => {
    const r = runFailing(productionArgs(path.join(prod.dir, 'no-such.pin')), prod.env);
    expectOneLineFailure(r, /cannot read PIN file .*no-such\.pin: ENOENT/);
    const empty = path.join(prod.dir, 'empty.pin');
    fs.writeFileSync(empty, '\n');
    expectOneLineFailure(runFailing(productionArgs(empty), prod.env), /PIN file .* is empty/);
  });

  it('a token label that no token has', () => {
    const r = runFailing(['--listen', '127.0.0.1:0', '--pkcs11-module', MODULE, '--token-label', 'no-such-token', '--pin-file', prod.pinFile], prod.env);
    expectOneLineFailure(r, /no initialized token with label "no-such-token"/, 'at-the-token');
  });

  it('a development token that softhsm2-util cannot create (its multi-line complaint folded into one line)', () => {
    const dataDir = makeTempDir('kmsd-startup-');
    dirs.push(dataDir);
    fs.mkdirSync(path.join(dataDir, 'softhsm'), { recursive: true });
    fs.writeFileSync(path.join(dataDir, 'softhsm', 'softhsm2.conf'), 'directories.tokendir = /nonexistent/kmsd-test-tokens\nobjectstore.backend = file\n');
    const r = spawnSync(process.execPath, [KMSD, '--data-dir', dataDir, '--listen', '127.0.0.1:0'], { encoding: 'utf8', env: { ...process.env }, timeout: 60_000 });
    expectOneLineFailure({ status: r.status, stdout: r.stdout, stderr: r.stderr }, /cannot create the development token: .*nonexistent/);
  });

  it('half a production configuration', () => {
    const r = runFailing(['--listen', '127.0.0.1:0', '--pkcs11-module', MODULE], prod.env);
    expectOneLineFailure(r, /needs all of --pkcs11-module, --token-label and --pin-file/);
  });

  it('an unknown flag (usage error, exit 2)', () => {
    const r = runFailing(['--listen', '127.0.0.1:0', '--colour', 'blue']);
    expectOneLineFailure(r, /unknown argument "--colour"/);
    expect(r.status).toBe(2);
  });

  it('refuses a non-loopback listen address without TLS', () => {
    for (const listen of ['0.0.0.0:0', '[::]:0', '10.1.2.3:0', 'example.com:0']) {
      const r = runFailing(['--listen', listen]);
      expectOneLineFailure(r, new RegExp(`refusing to listen on non-loopback address ${listen.replace(/[.[\]]/g, '\\$&')} without TLS`));
      // Refused before any token work.
      expect(fs.existsSync(path.join(r.dataDir, 'softhsm'))).toBe(false);
    }
    // The environment variable is held to the same rule.
    expectOneLineFailure(runFailing([], { KMS_LISTEN: '0.0.0.0:0' }), /refusing to listen on non-loopback address 0\.0\.0\.0:0 without TLS/);
  });
});

describe('an existing (production) token', () => {
  let slotsBefore: string[];

  beforeAll(() => {
    slotsBefore = showSlots();
    expect(slotsBefore.some((t) => t.startsWith(`${prod.label}|`) && t.endsWith('|yes'))).toBe(true);
  });

  it('is used with the right PIN and never initialized; keys survive a restart on it', async () => {
    const k = await startKmsd({ args: ['--pkcs11-module', MODULE, '--token-label', prod.label, '--pin-file', prod.pinFile], env: prod.env, keep: true });
    started.push(k);
    const m = (await k.client.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata;
    const enc = await k.client.encrypt(m.KeyId, Buffer.from('on the production token'));
    // No development token was made in the data directory.
    expect(fs.existsSync(path.join(k.dataDir, 'softhsm'))).toBe(false);
    // The CMK version is an object of the existing token.
    const list = spawnSync('pkcs11-tool', ['--module', MODULE, '--token-label', prod.label, '--login', '--pin', prod.pin, '--list-objects'], {
      encoding: 'utf8',
      env: { ...process.env, ...prod.env },
    });
    expect(list.status, list.stderr).toBe(0);
    expect(list.stdout).toContain(`kmsd:cmk:${m.PrimaryKeyVersion}`);
    expect(await k.stop()).toBe(0);

    const again = await startKmsd({ dataDir: k.dataDir, args: ['--pkcs11-module', MODULE, '--token-label', prod.label, '--pin-file', prod.pinFile], env: prod.env, keep: true });
    started.push(again);
    expect((await again.client.decrypt(enc.CiphertextBlob)).Plaintext.toString()).toBe('on the production token');
    expect(await again.stop()).toBe(0);

    // Same tokens, same serials, nothing initialized or added.
    expect(showSlots()).toEqual(slotsBefore);
    for (const d of [k, again]) {
      expect(d.logs()).not.toContain(prod.pin);
      expect(d.logs()).not.toContain(prod.soPin);
    }
  });
});

describe('a running daemon', () => {
  let k: Kmsd;

  beforeAll(async () => {
    k = await startKmsd();
    started.push(k);
  });

  it('prints "listening on HOST:PORT" and answers gRPC health checks with SERVING', async () => {
    expect(k.logs()).toMatch(new RegExp(`listening on 127\\.0\\.0\\.1:${k.port}`));
    const def = protoLoader.loadSync(path.join(ROOT, 'node_modules', 'grpc-health-check', 'proto', 'health', 'v1', 'health.proto'), { keepCase: true, enums: String, defaults: true });
    const Health = (grpc.loadPackageDefinition(def) as any).grpc.health.v1.Health as grpc.ServiceClientConstructor;
    const client = new Health(k.endpoint, grpc.credentials.createInsecure()) as any;
    const check = (service: string) =>
      new Promise<{ err: grpc.ServiceError | null; res: any }>((resolve) => client.Check({ service }, (err: grpc.ServiceError | null, res: any) => resolve({ err, res })));
    try {
      expect((await check('')).res).toEqual({ status: 'SERVING' });
      expect((await check('kms.v1.KeyManagementService')).res).toEqual({ status: 'SERVING' });
      const unknown = await check('no.such.Service');
      expect(unknown.err?.code).toBe(grpc.status.NOT_FOUND);
    } finally {
      client.close();
    }
  });

  it('lists kms.v1.KeyManagementService through server reflection and serves its file descriptor', async () => {
    const file = path.join(ROOT, 'node_modules', '@grpc', 'reflection', 'build', 'proto', 'grpc', 'reflection', 'v1alpha', 'reflection.proto');
    const def = protoLoader.loadSync(file, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    const Refl = (grpc.loadPackageDefinition(def) as any).grpc.reflection.v1alpha.ServerReflection as grpc.ServiceClientConstructor;
    const client = new Refl(k.endpoint, grpc.credentials.createInsecure()) as any;
    try {
      const ask = (req: object) =>
        new Promise<any[]>((resolve, reject) => {
          const out: any[] = [];
          const call = client.ServerReflectionInfo();
          call.on('data', (d: any) => out.push(d));
          call.on('error', reject);
          call.on('end', () => resolve(out));
          call.write(req);
          call.end();
        });
      const [list] = await ask({ list_services: '' });
      const names = list.list_services_response.service.map((s: any) => s.name);
      expect(names).toContain('kms.v1.KeyManagementService');
      const [fd] = await ask({ file_containing_symbol: 'kms.v1.KeyManagementService' });
      const protos: Buffer[] = fd.file_descriptor_response.file_descriptor_proto;
      expect(protos.length).toBeGreaterThan(0);
      expect(Buffer.concat(protos).toString('latin1')).toContain('ScheduleKeyDeletion');
    } finally {
      client.close();
    }
  });

  it('logs each call as JSON with its request id, and never the PIN', async () => {
    const m = (await k.client.call('CreateKey', {})).KeyMetadata;
    const e = await k.client.call('Encrypt', { KeyId: m.KeyId, Plaintext: 'bad base64!' }).then(
      () => null,
      (err: KmsClientError) => err,
    );
    expect(e?.requestId).toMatch(UUID);
    await new Promise((r) => setTimeout(r, 200));
    const lines = k
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l));
    const calls = lines.filter((l) => l.msg === 'call');
    expect(calls.length).toBeGreaterThanOrEqual(2);
    for (const c of calls) expect(c.requestId).toMatch(UUID);
    expect(calls.find((c) => c.action === 'CreateKey')).toMatchObject({ outcome: 'ok' });
    expect(calls.find((c) => c.requestId === e!.requestId)).toMatchObject({ action: 'Encrypt', outcome: 'InvalidParameter' });
    const pins = [k.tokenEnv().pin, fs.readFileSync(path.join(k.dataDir, 'softhsm', 'so.pin'), 'utf8').trim()];
    for (const pin of pins) {
      expect(pin.length).toBeGreaterThanOrEqual(8);
      expect(k.logs()).not.toContain(pin);
    }
    // Request payloads are not logged either.
    expect(k.logs()).not.toContain('bad base64!');
  });

  it('answers errors and control-plane calls with a kms-request-id trailer, successful data-plane calls without', async () => {
    const def = loadApi().definition['kms.v1.KeyManagementService'] as unknown as Record<string, grpc.MethodDefinition<object, any>>;
    const client = new grpc.Client(k.endpoint, grpc.credentials.createInsecure());
    const call = (action: string, req: object) =>
      new Promise<{ res: any; err: grpc.ServiceError | null; requestId: string | undefined }>((resolve) => {
        let answer: { res: any; err: grpc.ServiceError | null } | undefined;
        let requestId: string | undefined;
        let statusSeen = false;
        const settle = () => answer && statusSeen && resolve({ ...answer, requestId });
        const c = client.makeUnaryRequest(def[action].path, def[action].requestSerialize, def[action].responseDeserialize, req, (err, res) => {
          answer = { err, res };
          settle();
        });
        c.on('status', (st: grpc.StatusObject) => {
          requestId = st.metadata.get('kms-request-id')[0]?.toString();
          statusSeen = true;
          settle();
        });
      });
    try {
      const created = await call('CreateKey', { ProtectionLevel: 'HSM' });
      expect(created.requestId).toMatch(UUID);
      const keyId = created.res.KeyMetadata.KeyId as string;
      const enc = await call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('quiet').toString('base64') });
      expect(enc.err).toBeNull();
      expect(enc.requestId).toBeUndefined();
      const bad = await call('Encrypt', { KeyId: keyId, Plaintext: 'not base64!' });
      expect(bad.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
      expect(bad.requestId).toMatch(UUID);
      // The log line reaches this process through a pipe, maybe after the answer does.
      for (let i = 0; i < 100 && !k.logs().includes(`"requestId":"${bad.requestId}"`); i++) await new Promise((r) => setTimeout(r, 50));
      expect(k.logs()).toContain(`"requestId":"${bad.requestId}"`);
    } finally {
      client.close();
    }
  });

  it('refuses a second kmsd on the same data directory in one line, and the first keeps serving', async () => {
    const r = spawnSync(process.execPath, [KMSD, '--data-dir', k.dataDir, '--listen', '127.0.0.1:0'], { encoding: 'utf8', env: { ...process.env, KMS_LOG_LEVEL: 'info' }, timeout: 60_000 });
    expectOneLineFailure({ status: r.status, stdout: r.stdout, stderr: r.stderr }, new RegExp(`data directory .* is in use by another kmsd \\(pid ${k.pid}\\)`));
    expect(fs.readFileSync(path.join(k.dataDir, 'kmsd.lock'), 'utf8').trim()).toBe(String(k.pid));
    const c = new KmsClient({ endpoint: k.endpoint });
    try {
      const m = (await c.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata;
      expect((await c.encrypt(m.KeyId, Buffer.from('still serving'))).KeyId).toBe(m.KeyId);
    } finally {
      c.close();
    }
  });

  it('exits 0 on SIGTERM, finishing the calls it already has', async () => {
    // A second client: stop() closes the daemon's own one first.
    const c = new KmsClient({ endpoint: k.endpoint });
    const m = (await c.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata;
    const inflight = Array.from({ length: 50 }, (_, i) =>
      c.encrypt(m.KeyId, Buffer.from(`in flight ${i}`)).then(
        (r) => ({ ok: true as const, r }),
        (err: KmsClientError) => ({ ok: false as const, err }),
      ),
    );
    // SIGTERM as soon as the first answer is back, with the rest of the burst still going.
    await Promise.race(inflight);
    const code = await k.stop();
    const results = await Promise.all(inflight);
    c.close();
    expect(code).toBe(0);
    for (const x of results) {
      // Either finished, or never reached the daemon before it stopped listening: never INTERNAL.
      if (!x.ok) expect([grpc.status.UNAVAILABLE, grpc.status.CANCELLED]).toContain(x.err.grpcCode);
    }
    expect(results.filter((x) => x.ok).length).toBeGreaterThan(0);
    expect(k.logs()).toContain('draining in-flight calls');
    expect(k.logs()).toMatch(/"msg":"stopped"/);
    expect(k.logs()).not.toContain('    at ');
    expect(fs.existsSync(path.join(k.dataDir, 'kmsd.lock'))).toBe(false);
  });
});

describe('the data directory lock', () => {
  it('left behind by a killed kmsd is taken over at the next start', async () => {
    const dataDir = makeTempDir('kmsd-stale-lock-');
    dirs.push(dataDir);
    const first = await startKmsd({ dataDir, keep: true });
    const key = (await first.client.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    await first.kill();
    expect(fs.readFileSync(path.join(dataDir, 'kmsd.lock'), 'utf8').trim()).toBe(String(first.pid));
    const second = await startKmsd({ dataDir, keep: true });
    started.push(second);
    expect(fs.readFileSync(path.join(dataDir, 'kmsd.lock'), 'utf8').trim()).toBe(String(second.pid));
    expect((await second.client.call('DescribeKey', { KeyId: key })).KeyMetadata.KeyState).toBe('Enabled');
  });
});

describe('a data directory moved elsewhere', () => {
  it('keeps its development token and its CMKs', async () => {
    const before = makeTempDir('kmsd-moved-from-');
    const after = `${before}-moved`;
    dirs.push(before, after);
    const first = await startKmsd({ dataDir: before, keep: true });
    const key = (await first.client.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const blob = (await first.client.encrypt(key, Buffer.from('moved'))).CiphertextBlob;
    await first.stop();
    fs.renameSync(before, after);
    const second = await startKmsd({ dataDir: after, keep: true });
    started.push(second);
    expect(fs.readFileSync(path.join(after, 'softhsm', 'softhsm2.conf'), 'utf8')).toContain(`directories.tokendir = ${path.join(after, 'softhsm', 'tokens')}\n`);
    expect((await second.client.decrypt(blob)).Plaintext.toString()).toBe('moved');
  });
});

describe('a kmsd whose log reader has gone', () => {
  it('still exits 0 on SIGTERM when its stdout is closed', async () => {
    const dataDir = makeTempDir('kmsd-no-reader-');
    dirs.push(dataDir);
    const child = spawn(process.execPath, [KMSD, '--data-dir', dataDir, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'ignore'] });
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        child.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          if (out.includes('token ready')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`kmsd exited with ${code} before its token was ready`)));
      });
      // The reading end goes (a log shipper that died): kmsd's next line meets a closed pipe.
      child.stdout!.destroy();
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      child.kill('SIGTERM');
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running after 20 s'), 20_000))]);
      expect(code).toBe(0);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  });
});
