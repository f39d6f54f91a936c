// Limits under overload (issue 6, item 3): a small HSM bulkhead (2 in flight, 8 queued) hit by a
// storm of HSM encryptions degrades into Throttling errors ("the HSM is busy") instead of queueing
// without bound; calls whose deadline passes are answered DEADLINE_EXCEEDED and not run late (the
// bulkhead drops a waiter whose call is cancelled: test/unit/limits.test.ts); and afterwards the
// daemon serves normally. The rate limiter is covered per principal in policy.test.ts.

import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient, KmsClientError } from '../../src/client/client';
import { Kmsd, startKmsd } from '../helpers/daemon';

let k: Kmsd;
let keyId = '';
let native = false;

beforeAll(async () => {
  k = await startKmsd({ env: { KMS_HSM_MAX_IN_FLIGHT: '2', KMS_HSM_MAX_QUEUED: '8', KMS_HSM_QUEUE_TIMEOUT_MS: '2000' } });
  keyId = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  native = (await k.client.call('DescribeHsm', {})).NativeAddon;
});

afterAll(async () => {
  await k?.stop();
});

describe('the HSM bulkhead', () => {
  it('answers a storm with successes and Throttling only, never unbounded queueing', async () => {
    const payload = Buffer.alloc(4096, 7);
    const results = await Promise.allSettled(Array.from({ length: 300 }, () => k.client.encrypt(keyId, payload)));
    const errors = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason as KmsClientError);
    for (const e of errors) {
      expect(e.code, e.message).toBe('Throttling');
      expect(e.grpcCode).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(e.message).toMatch(/the HSM is busy/);
    }
    const ok = results.length - errors.length;
    expect(ok).toBeGreaterThanOrEqual(10);
    // With the native addon HSM calls are asynchronous and overlap, so the bulkhead must have refused some;
    // through pkcs11js they run one at a time on the event loop and never queue.
    if (native) expect(errors.length).toBeGreaterThan(0);
    // Afterwards: business as usual.
    const e = await k.client.encrypt(keyId, Buffer.from('after the storm'));
    expect((await k.client.decrypt(e.CiphertextBlob)).Plaintext.toString()).toBe('after the storm');
  });

  it('honours deadlines under load: expired calls end with DEADLINE_EXCEEDED and are not run late', async () => {
    const quick = new KmsClient({ endpoint: k.endpoint, deadlineMs: 5 });
    const payload = Buffer.alloc(4096, 9);
    const before = (k.logs().match(/"action":"Encrypt"[^\n]*"outcome":"ok"/g) ?? []).length;
    const storm = Array.from({ length: 60 }, () => k.client.encrypt(keyId, payload).then(() => 1, () => 0));
    const short = await Promise.allSettled(Array.from({ length: 20 }, () => quick.encrypt(keyId, payload)));
    const stormOk = (await Promise.all(storm)).reduce((a: number, b: number) => a + b, 0);
    quick.close();
    const codes = short.map((r) => (r.status === 'rejected' ? (r.reason as KmsClientError).grpcCode : grpc.status.OK));
    expect(codes.every((c) => [grpc.status.OK, grpc.status.DEADLINE_EXCEEDED, grpc.status.RESOURCE_EXHAUSTED].includes(c))).toBe(true);
    expect(codes).toContain(grpc.status.DEADLINE_EXCEEDED);
    await new Promise((r) => setTimeout(r, 300));
    // Every Encrypt the daemon completed was answered to a client still waiting (a few may race their deadline).
    const after = (k.logs().match(/"action":"Encrypt"[^\n]*"outcome":"ok"/g) ?? []).length;
    const quickOk = codes.filter((c) => c === grpc.status.OK).length;
    expect(after - before).toBeLessThanOrEqual(stormOk + quickOk + 2);
    await k.client.describeKey(keyId);
  });
});
