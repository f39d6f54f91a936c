// Issue 4: the HSM data path both ways. The same round trips (Encrypt/Decrypt, GenerateDataKey,
// ReEncrypt, EncryptBatch/DecryptBatch, the streams) against a kmsd with the native addon (the
// default) and one started with KMS_NATIVE=0, which must fall back to pkcs11js. The DescribeHsm
// counters prove which path every HSM-level operation took: exactly one of them counts.

import os from 'node:os';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, startKmsd } from '../helpers/daemon';

/* eslint-disable @typescript-eslint/no-explicit-any */

const MODES: { name: string; env: Record<string, string>; native: boolean; log: RegExp }[] = [
  { name: 'native addon (default)', env: {}, native: true, log: /native AES-GCM addon loaded/ },
  { name: 'pkcs11js fallback (KMS_NATIVE=0)', env: { KMS_NATIVE: '0' }, native: false, log: /native addon disabled by configuration \(KMS_NATIVE=0\)/ },
];

describe.each(MODES)('$name', (mode) => {
  let k: Kmsd;
  let hsm: string;
  let hsm2: string;
  let sw: string;

  beforeAll(async () => {
    k = await startKmsd({ env: mode.env });
    hsm = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
    hsm2 = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
    sw = (await k.client.createKey({ ProtectionLevel: 'SOFTWARE' })).KeyMetadata.KeyId;
  });

  afterAll(async () => {
    if (k) expect(await k.stop()).toBe(0);
  });

  it('says at start-up which path it uses, and DescribeHsm / DescribeRuntime agree', async () => {
    expect(k.logs()).toMatch(mode.log);
    const d = await k.client.call('DescribeHsm');
    expect(d.NativeAddon).toBe(mode.native);
    const rt = await k.client.call('DescribeRuntime', {});
    expect(rt.NativeAddon).toBe(mode.native);
    expect(rt.NativeThreads).toBe(mode.native ? os.availableParallelism() : 0); // the documented default: one per core
    expect(rt.Pid).toBe(k.pid);
    expect(rt.EventLoopDelaySamples).toBeGreaterThan(0);
  });

  it('every HSM-level encrypt and decrypt of the round trips goes through that path and only that one', async () => {
    const before = (await k.client.call('DescribeHsm')).Counters;
    let enc = 0;
    let dec = 0;
    // Unary Encrypt / Decrypt.
    for (let i = 0; i < 10; i++) {
      const ctx = { i: String(i) };
      const r = await k.client.encrypt(hsm, Buffer.from(`unary ${i}`), ctx);
      enc++;
      expect((await k.client.decrypt(r.CiphertextBlob, ctx)).Plaintext.toString()).toBe(`unary ${i}`);
      dec++;
    }
    // GenerateDataKey and ReEncrypt (HSM to HSM: one decrypt, one encrypt).
    const dk = await k.client.call('GenerateDataKey', { KeyId: hsm, NumberOfBytes: 32 });
    enc++;
    const re = await k.client.call('ReEncrypt', { CiphertextBlob: dk.CiphertextBlob, DestinationKeyId: hsm2 });
    enc++;
    dec++;
    expect((await k.client.decrypt(re.CiphertextBlob)).Plaintext.toString('base64')).toBe(dk.Plaintext);
    dec++;
    // Batches with HSM and SOFTWARE items (only the HSM ones count).
    const items = Array.from({ length: 40 }, (_, i) => ({ KeyId: [hsm, sw, hsm2, sw][i % 4], Plaintext: Buffer.from(`batch ${i}`) }));
    const eb = await k.client.encryptBatch(items);
    expect(eb.ErrorCount).toBe(0);
    enc += 20;
    const db = await k.client.decryptBatch(eb.Results.map((x) => ({ CiphertextBlob: x.CiphertextBlob })));
    expect(db.Results.map((x) => x.PlaintextBytes!.toString())).toEqual(items.map((x) => x.Plaintext.toString()));
    dec += 20;
    // The streams.
    const es = k.client.openBatchStream('encrypt');
    const sent = await Promise.all([es.send(items.slice(0, 8), 's1'), es.send(items.slice(8, 16), 's2')]);
    await es.end();
    enc += 8;
    const ds = k.client.openBatchStream('decrypt');
    const back = await ds.send(sent.flatMap((m) => m.Results.map((x) => ({ CiphertextBlob: x.CiphertextBlob }))));
    await ds.end();
    expect(back.Results.map((x) => Buffer.from(x.Plaintext, 'base64').toString())).toEqual(items.slice(0, 16).map((x) => x.Plaintext.toString()));
    dec += 8;

    const after = (await k.client.call('DescribeHsm')).Counters;
    const delta = (name: string) => after[name] - before[name];
    if (mode.native) {
      expect({ enc: delta('hsmEncryptNative'), dec: delta('hsmDecryptNative') }).toEqual({ enc, dec });
      expect({ enc: after.hsmEncryptPkcs11js, dec: after.hsmDecryptPkcs11js }).toEqual({ enc: 0, dec: 0 });
    } else {
      expect({ enc: delta('hsmEncryptPkcs11js'), dec: delta('hsmDecryptPkcs11js') }).toEqual({ enc, dec });
      expect({ enc: after.hsmEncryptNative, dec: after.hsmDecryptNative }).toEqual({ enc: 0, dec: 0 });
    }
  });

  it('concurrent unary Encrypts on HSM keys all succeed and decrypt', async () => {
    const blobs = await Promise.all(Array.from({ length: 200 }, (_, i) => k.client.encrypt(i % 2 ? hsm : hsm2, Buffer.from(`c${i}`)).then((r) => r.CiphertextBlob)));
    const opened = await Promise.all(blobs.map((b) => k.client.decrypt(b).then((r) => r.Plaintext.toString())));
    expect(opened).toEqual(blobs.map((_, i) => `c${i}`));
    expect(k.logs()).not.toContain('internal error');
  });
});
