// Clients with several endpoints against real kmsd processes on loopback: KmsClient, KmsdClient,
// kmsctl's light client and kmsctl itself. Two kmsd cannot share one SQLite store, so the replicas
// here are independent daemons, each with its own data directory and keys: which one served a call
// shows in its answer (each lists only its own keys). A killed daemon is killed by its pid (SIGKILL,
// after SIGSTOP when a call must be in flight on its connection as it dies).

import net from 'node:net';
import { spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient, KmsClientError } from '../../src/client/client';
import { KmsdClient } from '../../src/client/kmsd-client';
import { LightClient } from '../../src/client/light-client';
import { KMSCTL, Kmsd, startKmsd } from '../helpers/daemon';

/** A port with nothing listening on it (bound, then closed). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function keyCount(k: Kmsd): Promise<number> {
  return (await k.client.call<{ TotalCount: number }>('ListKeys', { PageSize: 100 })).TotalCount;
}

function kmsctl(args: string[], env: Record<string, string> = {}) {
  const r = spawnSync(process.execPath, [KMSCTL, ...args], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, KMS_ENDPOINT: '', ...env } });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('clients with several endpoints', () => {
  let a: Kmsd;
  let b: Kmsd;
  let ka: string;
  let kb: string;
  let dead: string;
  const daemons: Kmsd[] = [];
  const clients: { close(): void }[] = [];

  /** Which daemon served a ListKeys answer. */
  const server = (r: { Keys: { KeyId: string }[] }) => {
    const ids = r.Keys.map((x) => x.KeyId);
    return ids.includes(ka) ? 'a' : ids.includes(kb) ? 'b' : `neither (${ids.join(',')})`;
  };

  beforeAll(async () => {
    a = await startKmsd();
    daemons.push(a);
    b = await startKmsd();
    daemons.push(b);
    ka = (await a.client.createKey()).KeyMetadata.KeyId;
    kb = (await b.client.createKey()).KeyMetadata.KeyId;
    dead = `127.0.0.1:${await freePort()}`;
  }, 180_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const k of daemons) {
      await k.stop();
      k.cleanup();
    }
  });

  it('alternates calls over the daemons and passes over a port with nothing listening', async () => {
    const kc = new KmsClient({ endpoint: [dead, a.endpoint, b.endpoint], deadlineMs: 30_000 });
    const dc = new KmsdClient({ endpoint: `${dead},${a.endpoint},${b.endpoint}`, deadlineMs: 30_000 });
    const lc = new LightClient({ endpoint: `${dead},${a.endpoint},${b.endpoint}`, deadlineMs: 30_000 });
    clients.push(kc, dc, lc);
    for (const c of [kc, dc, lc]) {
      const served: string[] = [];
      for (let n = 0; n < 6; n++) served.push(server(await c.call('ListKeys', { PageSize: 100 })));
      expect(served).toEqual(['a', 'b', 'a', 'b', 'a', 'b']);
    }
  });

  it('kmsctl takes the list from --endpoint or KMS_ENDPOINT, and names the one that is malformed', async () => {
    const ok = kmsctl(['--endpoint', `${dead},${b.endpoint}`, 'DescribeKey', '--KeyId', kb]);
    expect(ok.stderr).toBe('');
    expect(JSON.parse(ok.stdout).KeyMetadata.KeyId).toBe(kb);
    const env = kmsctl(['DescribeKey', '--KeyId', kb], { KMS_ENDPOINT: `${dead},${b.endpoint}` });
    expect(JSON.parse(env.stdout).KeyMetadata.KeyId).toBe(kb);

    const empty = kmsctl(['--endpoint', `${a.endpoint},,${b.endpoint}`, 'ListKeys']);
    expect(empty.code).toBe(2);
    expect(empty.stderr).toBe(`kmsctl: --endpoint: entry 2 of "${a.endpoint},,${b.endpoint}" is empty (give HOST:PORT, several separated by commas)\n`);
    const port = kmsctl(['ListKeys'], { KMS_ENDPOINT: `${a.endpoint},127.0.0.1:70000` });
    expect(port.code).toBe(2);
    expect(port.stderr).toBe('kmsctl: KMS_ENDPOINT: entry 2 ("127.0.0.1:70000") has port "70000"; a port is an integer from 1 to 65535\n');

    const help = kmsctl(['--help']);
    expect(help.stdout).toContain('--endpoint HOST:PORT[,HOST:PORT...]');
    expect(help.stdout).toMatch(/never for a call that may have run there/);
  });

  it('a daemon killed with a read in flight: the read and every call after it are answered by the other, with no error', async () => {
    const c = new KmsClient({ endpoint: [a.endpoint, b.endpoint], deadlineMs: 30_000 });
    const lc = new LightClient({ endpoint: [a.endpoint, b.endpoint], deadlineMs: 30_000 });
    clients.push(c, lc);
    // Connections to both, and the next call of each client goes to a.
    for (const x of [c, lc]) expect([server(await x.call('ListKeys', { PageSize: 100 })), server(await x.call('ListKeys', { PageSize: 100 }))]).toEqual(['a', 'b']);
    process.kill(a.pid, 'SIGSTOP');
    // DescribeKey of b's key: were a to answer it, the answer would be NotFound.
    const inFlight = [c.call('DescribeKey', { KeyId: kb }), lc.call('DescribeKey', { KeyId: kb })];
    await sleep(300);
    await a.kill();
    for (const r of await Promise.all(inFlight)) expect((r as { KeyMetadata: { KeyId: string } }).KeyMetadata.KeyId).toBe(kb);
    for (let n = 0; n < 6; n++) {
      const enc = await c.encrypt(kb, Buffer.from(`m${n}`));
      expect((await c.decrypt(enc.CiphertextBlob)).Plaintext.toString()).toBe(`m${n}`);
      expect(server(await lc.call('ListKeys', { PageSize: 100 }))).toBe('b');
    }
  });

  it('a CreateKey whose connection is refused goes to the next daemon, and runs once', async () => {
    // a is dead now (killed above); with no back-off every call tries it first and is refused.
    const c = new KmsClient({ endpoint: [a.endpoint, b.endpoint], endpointBackoffMs: 0, deadlineMs: 30_000 });
    const lc = new LightClient({ endpoint: [a.endpoint, b.endpoint], endpointBackoffMs: 0, deadlineMs: 30_000 });
    clients.push(c, lc);
    const before = await keyCount(b);
    const ids: string[] = [];
    for (let n = 0; n < 3; n++) {
      ids.push((await c.createKey()).KeyMetadata.KeyId);
      ids.push((await lc.call<{ KeyMetadata: { KeyId: string } }>('CreateKey', {})).KeyMetadata.KeyId);
    }
    expect(new Set(ids).size).toBe(6);
    expect(await keyCount(b)).toBe(before + 6);
    for (const id of ids) expect((await b.client.describeKey(id)).KeyMetadata.KeyId).toBe(id);
  });

  it('a CreateKey in flight when its daemon dies is not sent again: UNAVAILABLE, nothing created elsewhere', async () => {
    const c3 = await startKmsd();
    daemons.push(c3);
    const c = new KmsClient({ endpoint: [c3.endpoint, b.endpoint], endpointBackoffMs: 0, deadlineMs: 30_000 });
    const lc = new LightClient({ endpoint: [c3.endpoint, b.endpoint], endpointBackoffMs: 0, deadlineMs: 30_000 });
    clients.push(c, lc);
    for (const x of [c, lc]) {
      await x.call('ListKeys', {});
      await x.call('ListKeys', {});
    }
    const before = await keyCount(b);
    process.kill(c3.pid, 'SIGSTOP');
    const inFlight = [c.call('CreateKey', {}), lc.call('CreateKey', {})].map((p) =>
      p.then(
        () => new Error('the CreateKey succeeded'),
        (e: unknown) => e,
      ),
    );
    await sleep(300);
    await c3.kill();
    for (const e of await Promise.all(inFlight)) {
      expect(e).toBeInstanceOf(KmsClientError);
      expect((e as KmsClientError).grpcCode).toBe(14);
      expect((e as KmsClientError).message).not.toMatch(/^No connection established/);
    }
    expect(await keyCount(b)).toBe(before);
  }, 120_000);
});
