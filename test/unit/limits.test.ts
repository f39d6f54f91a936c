// The limits of src/api/grpc/limits.ts without a daemon: token buckets per principal, the HSM
// bulkhead (slots, bounded queue, queue timeout, cancelled waiters), and decoders that never throw.

import { describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { Bulkhead, CallAbandoned, RateLimiter, hardenService, isMalformed } from '../../src/api/grpc/limits';
import { KmsError } from '../../src/kms/errors';
import { serviceConstructor } from '../../src/api/proto';

describe('RateLimiter', () => {
  it('gives each principal its own bucket of `burst`, refilled at `rate` per second', () => {
    let now = 0;
    const r = new RateLimiter(10, 5, () => now);
    for (let i = 0; i < 5; i++) r.take('a');
    expect(() => r.take('a')).toThrow(KmsError);
    r.take('b'); // another principal is not affected
    now += 100; // one token back
    r.take('a');
    expect(() => r.take('a')).toThrow(/principal a is over its rate limit of 10 requests per second \(burst 5\)/);
    now += 10_000;
    for (let i = 0; i < 5; i++) r.take('a');
  });

  it('is off with rate 0 and forgets idle principals', () => {
    const off = new RateLimiter(0, 0);
    for (let i = 0; i < 10_000; i++) off.take('x');
    let now = 0;
    const r = new RateLimiter(100, 100, () => now);
    for (let i = 0; i < 1000; i++) r.take(`p${i}`);
    expect(r.size).toBe(1000);
    now += 20_000;
    r.take('fresh');
    expect(r.size).toBe(1);
  });
});

describe('Bulkhead', () => {
  const deferred = () => {
    let resolve!: () => void;
    const p = new Promise<void>((r) => (resolve = r));
    return { p, resolve };
  };

  it('runs at most maxInFlight at once, queues up to maxQueued, and refuses the rest with Throttling', async () => {
    const b = new Bulkhead({ maxInFlight: 2, maxQueued: 2, queueTimeoutMs: 10_000 });
    const gates = Array.from({ length: 4 }, deferred);
    let running = 0;
    let peak = 0;
    const work = (i: number) => async () => {
      running++;
      peak = Math.max(peak, running);
      await gates[i].p;
      running--;
      return i;
    };
    const runs = [0, 1, 2, 3].map((i) => b.run(work(i)));
    await expect(b.run(async () => 99)).rejects.toMatchObject({ code: 'Throttling' });
    expect(b.inFlight).toBe(2);
    expect(b.waiting).toBe(2);
    gates.forEach((g) => g.resolve());
    expect(await Promise.all(runs)).toEqual([0, 1, 2, 3]);
    expect(peak).toBe(2);
    expect(b.inFlight).toBe(0);
    expect(await b.run(() => 'sync')).toBe('sync');
    expect(b.inFlight).toBe(0);
  });

  it('times out queued work with Throttling and releases slots after failures', async () => {
    const b = new Bulkhead({ maxInFlight: 1, maxQueued: 5, queueTimeoutMs: 30 });
    const gate = deferred();
    const first = b.run(() => gate.p);
    await expect(b.run(() => 'late')).rejects.toThrow(/no slot within 30 ms/);
    gate.resolve();
    await first;
    await expect(b.run(() => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    await expect(
      b.run(() => {
        throw new Error('sync boom');
      }),
    ).rejects.toThrow('sync boom');
    expect(b.inFlight).toBe(0);
    expect(await b.run(() => 1)).toBe(1);
  });

  it('drops a waiter whose call was cancelled, without running it', async () => {
    const b = new Bulkhead({ maxInFlight: 1, maxQueued: 5, queueTimeoutMs: 10_000 });
    const gate = deferred();
    const first = b.run(() => gate.p);
    let cancel!: () => void;
    let ran = false;
    const call = { cancelled: false, onCancel: (cb: () => void) => (cancel = cb) };
    const queued = b.run(() => {
      ran = true;
    }, call);
    const after = b.run(() => 'next');
    call.cancelled = true;
    cancel();
    await expect(queued).rejects.toBeInstanceOf(CallAbandoned);
    gate.resolve();
    await first;
    expect(await after).toBe('next');
    expect(ran).toBe(false);
    expect(b.inFlight).toBe(0);
  });
});

describe('hardenService', () => {
  it('turns undecodable frames into a marker instead of throwing', () => {
    const def = hardenService(serviceConstructor('KeyManagementService').service as grpc.ServiceDefinition);
    const garbage = Buffer.from([0x1a, 0x0b, 0x0a, 0x01, 0x61, 0x12, 0x01, 0x62]); // a map entry longer than the frame
    const decoded = def.Encrypt.requestDeserialize(garbage);
    expect(isMalformed(decoded)).toBe(true);
    const good = def.Encrypt.requestDeserialize(def.Encrypt.requestSerialize({ KeyId: 'k' }));
    expect(isMalformed(good)).toBe(false);
    expect((good as { KeyId: string }).KeyId).toBe('k');
  });
});
