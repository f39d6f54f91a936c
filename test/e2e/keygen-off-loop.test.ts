// RSA wrapping key generation (GetParametersForImport with an empty pool) runs off the event loop:
// while four RSA_4096 generations are running, an unrelated Encrypt is answered. An ordering
// assertion, not a timed one: every Encrypt issued after the four calls went out comes back before
// the first of them does.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient } from '../../src/client/client';
import { Kmsd, startKmsd } from '../helpers/daemon';

let k: Kmsd;
let client: KmsClient;

beforeAll(async () => {
  // No pooled pairs (the pool holds RSA_2048 only anyway): every call generates.
  k = await startKmsd({ env: { KMS_WRAPPING_KEY_POOL_SIZE: '0' } });
  client = new KmsClient({ endpoint: k.endpoint, deadlineMs: 110_000 });
});

afterAll(async () => {
  client?.close();
  await k?.stop();
});

describe('GetParametersForImport RSA_4096 with an empty pool', () => {
  it('an unrelated Encrypt issued while four generations run is answered before any of them', async () => {
    const external = (await client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const other = (await client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId as string;
    const events: string[] = [];
    const imports = [0, 1, 2, 3].map((i) =>
      client.call<{ PublicKey: string; ImportToken: string }>('GetParametersForImport', { KeyId: external, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_4096' }).then((r) => {
        events.push(`import ${i}`);
        return r;
      }),
    );
    // A round trip the server answers only after it has read the four calls sent before it on this
    // connection (HTTP/2 keeps their order): from here on the generations are running.
    await client.describeKey(other);
    for (let i = 0; i < 3; i++) {
      await client.encrypt(other, Buffer.from(`unrelated ${i}`));
      events.push(`encrypt ${i}`);
    }
    const results = await Promise.all(imports);
    expect(events.slice(0, 3)).toEqual(['encrypt 0', 'encrypt 1', 'encrypt 2']);
    expect(events.filter((e) => e.startsWith('import'))).toHaveLength(4);
    // Four distinct 4096-bit wrapping keys.
    const keys = new Set(results.map((r) => r.PublicKey));
    expect(keys.size).toBe(4);
    for (const r of results) expect(Buffer.from(r.PublicKey, 'base64').length).toBeGreaterThan(512);
  });
});
