// kmsctl's light client (gRPC unary calls over node:http2, no grpc-js) against real kmsd processes:
// it answers as KmsClient answers, carries kmsd's error code and request id, speaks mutual TLS with
// the same options, and fails a call that outlives its deadline or finds no server.

import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/basics';
import { LightClient } from '../../src/client/light-client';
import { Kmsd, startKmsd } from '../helpers/daemon';
import { TlsKmsd, makePki, startTlsKmsd } from './tls-fixture';

async function failure(p: Promise<unknown>): Promise<KmsClientError> {
  const e = await p.then(
    () => new Error('the call succeeded'),
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(KmsClientError);
  return e as KmsClientError;
}

/** A port with nothing listening on it (bound, then closed). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

describe('the light client over plaintext', () => {
  let k: Kmsd;
  let c: LightClient;

  beforeAll(async () => {
    k = await startKmsd();
    c = new LightClient({ endpoint: k.endpoint, deadlineMs: 30_000 });
  });

  afterAll(async () => {
    c?.close();
    await k?.stop();
    k?.cleanup();
  });

  it('answers as KmsClient does, on one connection for several calls', async () => {
    const created = await c.call('CreateKey', { ProtectionLevel: 'HSM', Description: 'light' });
    const keyId = created.KeyMetadata.KeyId as string;
    await c.call('CreateAlias', { AliasName: 'alias/light', KeyId: keyId });
    const light = await c.call('DescribeKey', { KeyId: 'alias/light' });
    const full = await k.client.call('DescribeKey', { KeyId: 'alias/light' });
    expect(light).toEqual(full);
    expect(light.KeyMetadata).toMatchObject({ KeyId: keyId, Description: 'light', KeyState: 'Enabled' });
    const enc = await c.call('Encrypt', { KeyId: keyId, Plaintext: Buffer.from('hello').toString('base64') });
    const dec = await c.call('Decrypt', { CiphertextBlob: enc.CiphertextBlob });
    expect(Buffer.from(dec.Plaintext, 'base64').toString()).toBe('hello');
    // Another service of the API on the same client.
    expect((await c.call('VerifyAudit', {})).Valid).toBe(true);
  });

  it("carries kmsd's error code, message and request id, and the gRPC status", async () => {
    const e = await failure(c.call('DescribeKey', { KeyId: 'alias/none' }));
    expect(e.code).toBe('Forbidden.AliasNotFound');
    expect(e.message).toContain('alias/none');
    expect(e.requestId).toMatch(/^[0-9a-f-]{36}$/);
    const full = await failure(k.client.call('DescribeKey', { KeyId: 'alias/none' }));
    expect(e.grpcCode).toBe(full.grpcCode);
    expect(e.grpcCode).toBeGreaterThan(0);
    // A message with characters gRPC percent-encodes in grpc-message arrives decoded.
    const bad = await failure(c.call('DescribeKey', { KeyId: 'alias/ünïcode 100%' }));
    const badFull = await failure(k.client.call('DescribeKey', { KeyId: 'alias/ünïcode 100%' }));
    expect({ code: bad.code, message: bad.message }).toEqual({ code: badFull.code, message: badFull.message });
  });

  it('refuses a stream action and an unknown action without a call', async () => {
    expect((await failure(c.call('EncryptStream', {}))).code).toBe('InvalidAction');
    expect((await failure(c.call('NoSuchAction', {}))).code).toBe('InvalidAction');
  });

  it('answers UNAVAILABLE when nothing listens on the endpoint', async () => {
    const none = new LightClient({ endpoint: `127.0.0.1:${await freePort()}`, deadlineMs: 30_000 });
    try {
      const e = await failure(none.call('ListKeys', {}));
      expect(e.code).toBe('UNAVAILABLE');
      expect(e.message).toContain('ECONNREFUSED');
    } finally {
      none.close();
    }
  });

  it('takes a deadline longer than grpc-timeout digits or a 32-bit timer hold', async () => {
    for (const deadlineMs of [1e9, 1e12]) {
      const long = new LightClient({ endpoint: k.endpoint, deadlineMs });
      try {
        expect((await long.call('ListKeys', {})).TotalCount, String(deadlineMs)).toBeGreaterThanOrEqual(0);
      } finally {
        long.close();
      }
    }
  });

  it('fails with DEADLINE_EXCEEDED when kmsd does not answer in time, and works again after', async () => {
    const short = new LightClient({ endpoint: k.endpoint, deadlineMs: 500 });
    process.kill(k.pid, 'SIGSTOP');
    try {
      const e = await failure(short.call('ListKeys', {}));
      expect(e.code).toBe('DEADLINE_EXCEEDED');
      expect(e.message).toMatch(/Deadline exceeded/);
    } finally {
      process.kill(k.pid, 'SIGCONT');
      short.close();
    }
    expect((await c.call('ListKeys', {})).TotalCount).toBeGreaterThanOrEqual(1);
  });
});

describe('the light client over mutual TLS', () => {
  let t: TlsKmsd;

  beforeAll(async () => {
    const pki = makePki(['admin', 'nogrant']);
    t = await startTlsKmsd(pki, { version: 1, admins: ['admin'], grants: [] });
  });

  afterAll(async () => {
    await t?.stop();
  });

  const client = (name: string, extra: { caFile?: string } = {}) =>
    new LightClient({ endpoint: t.endpoint, caFile: t.pki.file('ca.crt'), certFile: t.pki.file(`client-${name}.crt`), keyFile: t.pki.file(`client-${name}.key`), deadlineMs: 30_000, ...extra });

  it('serves a certificate from the trusted CA and refuses a principal without a grant by its code', async () => {
    const admin = client('admin');
    const nogrant = client('nogrant');
    try {
      const keyId = (await admin.call('CreateKey', { Description: 'tls light' })).KeyMetadata.KeyId as string;
      expect((await admin.call('DescribeKey', { KeyId: keyId })).KeyMetadata.KeyId).toBe(keyId);
      const e = await failure(nogrant.call('DescribeKey', { KeyId: keyId }));
      expect(e.code).toBe('Forbidden.NoPermission');
      expect(e.message).toContain('principal "nogrant" may not call DescribeKey');
    } finally {
      admin.close();
      nogrant.close();
    }
  });

  it('fails UNAVAILABLE without a client certificate and when the server is not from the given CA', async () => {
    const anonymous = new LightClient({ endpoint: t.endpoint, caFile: t.pki.file('ca.crt'), deadlineMs: 30_000 });
    const wrongCa = client('admin', { caFile: t.pki.other('ca.crt') });
    try {
      expect((await failure(anonymous.call('ListKeys', {}))).code).toBe('UNAVAILABLE');
      const e = await failure(wrongCa.call('ListKeys', {}));
      expect(e.code).toBe('UNAVAILABLE');
      expect(e.message).toMatch(/certificate/i);
    } finally {
      anonymous.close();
      wrongCa.close();
    }
  });
});
