// Connection exhaustion on the TLS listener and oversized answers: a real kmsd with mutual TLS and a
// policy. Thousands of TCP connections that never complete a handshake (silent ones and ones that
// sent half a ClientHello) must neither lock out a client with a valid certificate nor stay open past
// the handshake timeout; a denied call naming a 1 MB KeyId must be answered at once with a bounded
// message.
//
// File descriptors: each idle socket costs one descriptor here and one in kmsd, and both processes
// inherit this process's soft limit (`ulimit -n`). The test opens more sockets than the listener's
// MAX_TLS_CONNECTIONS when the limit allows it and otherwise as many as it safely can (it says so in
// its output); the handshake-timeout and lock-out assertions hold either way.

import { spawnSync } from 'node:child_process';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient } from '../../src/client/client';
import { MAX_TLS_CONNECTIONS } from '../../src/api/grpc/auth';
import { clientErrorOf } from '../helpers/errors';
import { TlsKmsd, makePki, startTlsKmsd } from './tls-fixture';

const HANDSHAKE_TIMEOUT_MS = 2000;

let t: TlsKmsd;

beforeAll(async () => {
  const pki = makePki(['admin', 'app-1']);
  t = await startTlsKmsd(
    pki,
    { version: 1, admins: ['admin'], grants: [{ id: 'app-1-use', principals: ['app-1'], actions: ['Encrypt', 'Decrypt'], keys: ['alias/app-1-*'] }] },
    { KMS_TLS_HANDSHAKE_TIMEOUT_MS: String(HANDSHAKE_TIMEOUT_MS) },
  );
});

afterAll(async () => {
  await t?.stop();
});

function client(principal: string, deadlineMs: number): KmsClient {
  const c = new KmsClient({ endpoint: t.endpoint, caFile: t.pki.file('ca.crt'), certFile: t.pki.file(`client-${principal}.crt`), keyFile: t.pki.file(`client-${principal}.key`), deadlineMs });
  opened.push(c);
  return c;
}
const opened: KmsClient[] = [];
afterAll(() => opened.forEach((c) => c.close()));

/** The soft limit on open files this process (and the kmsd it spawned) runs under. */
function fdLimit(): number {
  const r = spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' });
  const n = Number(r.stdout.trim());
  return Number.isFinite(n) && n > 0 ? n : 1024;
}

interface Held {
  socket: net.Socket;
  /** Resolves when the server closes the connection (we never end it ourselves until cleanup). */
  closed: Promise<void>;
  isClosed: () => boolean;
}

/** A TCP connection to kmsd from `localAddress` that sends `hello` (maybe nothing) and then waits. */
function hold(localAddress: string, hello?: Buffer): Promise<Held> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port: t.k.port, localAddress });
    let done = false;
    const closed = new Promise<void>((r) => socket.once('close', () => ((done = true), r())));
    socket.on('error', () => undefined); // a reset by the server is one way of being closed
    socket.once('connect', () => {
      if (hello) socket.write(hello);
      resolve({ socket, closed, isClosed: () => done });
    });
    socket.once('error', (e) => {
      if (!socket.connecting) return;
      reject(e);
    });
  });
}

/** The first bytes of a TLS ClientHello record that announces 512 bytes and sends 9 of them. */
const HALF_CLIENT_HELLO = Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x5a, 0x5a, 0x5a]);

describe('connections that never complete the TLS handshake', () => {
  it('do not lock out a client with a valid certificate, and are closed by kmsd within the handshake timeout', async () => {
    const limit = fdLimit();
    // Room for vitest, kmsd's own files and the real client in both processes.
    const total = Math.min(MAX_TLS_CONNECTIONS + 200, limit - 400);
    if (total < MAX_TLS_CONNECTIONS) console.warn(`open-file limit ${limit}: opening ${total} idle connections, fewer than MAX_TLS_CONNECTIONS (${MAX_TLS_CONNECTIONS})`);
    expect(total).toBeGreaterThan(500);
    const half = 100;
    // Several source addresses (all of 127/8 is loopback on Linux), so that both the per-address
    // and the global cap on unauthenticated connections come into play.
    const sources = Array.from({ length: 16 }, (_, i) => `127.0.0.${i + 1}`);
    const held: Held[] = [];
    for (let i = 0; i < total; i += 200) {
      const batch = [];
      for (let j = i; j < Math.min(total, i + 200); j++) batch.push(hold(sources[j % sources.length], j < half ? HALF_CLIENT_HELLO : undefined));
      held.push(...(await Promise.all(batch)));
    }
    try {
      // While they are held, a client with a valid certificate is served (the deadline is longer
      // than the handshake timeout: kmsd may close an idle connection to make room, but must not
      // leave this client waiting for the silent ones to go away).
      const admin = client('admin', 10_000);
      const keys = await admin.call<{ Keys: { Key: unknown[] } }>('ListKeys', {});
      expect(keys.Keys).toBeDefined();
      // Every silent and half-open connection is closed by kmsd; none is ended by this side.
      const deadline = new Promise<'waited'>((r) => setTimeout(() => r('waited'), HANDSHAKE_TIMEOUT_MS * 4).unref());
      const outcome = await Promise.race([Promise.all(held.map((h) => h.closed)).then(() => 'all closed' as const), deadline]);
      const stillOpen = held.filter((h) => !h.isClosed()).length;
      expect({ outcome, stillOpen }).toEqual({ outcome: 'all closed', stillOpen: 0 });
      // And the listener still works afterwards.
      const again = client('admin', 10_000);
      expect((await again.call<{ Keys: unknown }>('ListKeys', {})).Keys).toBeDefined();
      expect(t.k.logs()).toMatch(/TLS handshake not completed/);
    } finally {
      for (const h of held) h.socket.destroy();
    }
  });
});

describe('a call with an oversized KeyId from a principal without the grant', () => {
  // Identifiers are checked before the policy, so the refusal names the field; either way the
  // answer must arrive before the client's deadline (a whole-id message in the trailer never did).
  it('is answered at once (not at the deadline) with a bounded message', async () => {
    const app = client('app-1', 5_000);
    const huge = `alias/${'k'.repeat(1024 * 1024)}`;
    const e = await clientErrorOf(app.call('DisableKey', { KeyId: huge }));
    expect(grpc.status[e.grpcCode]).toBe('INVALID_ARGUMENT');
    expect(e.code).toBe('InvalidParameter');
    expect(e.message.length).toBeLessThanOrEqual(2048);
    expect(e.message).toMatch(/^KeyId/);
    // The daemon keeps answering on the same connection.
    const again = await clientErrorOf(app.call('DisableKey', { KeyId: 'alias/app-2-x' }));
    expect(again.code).toBe('Forbidden.NoPermission');
  });
});
