// Issue 4: EncryptBatch / DecryptBatch and their streams against the real kmsd (dist/) with the
// native addon: per-item results that are exactly what the unary call would have answered (blob
// or error code and message), mixed HSM and SOFTWARE keys in one batch, the 256-item bound, blobs
// that plain Decrypt opens, in-order stream answers with their BatchIds, and kmsctl support.

import crypto from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError, type EncryptBatchItem } from '../../src/client/client';
import { Kmsd, startKmsd } from '../helpers/daemon';

/* eslint-disable @typescript-eslint/no-explicit-any */

let k: Kmsd;
const key: Record<'hsm' | 'sw' | 'hsm2' | 'disabled', string> = { hsm: '', sw: '', hsm2: '', disabled: '' };
const ALIAS = 'alias/batch-hsm';
const NOWHERE = '00000000-0000-4000-8000-0000000000ff';

beforeAll(async () => {
  k = await startKmsd();
  key.hsm = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  key.sw = (await k.client.createKey({ ProtectionLevel: 'SOFTWARE' })).KeyMetadata.KeyId;
  key.hsm2 = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  key.disabled = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
  await k.client.call('DisableKey', { KeyId: key.disabled });
  await k.client.call('CreateAlias', { AliasName: ALIAS, KeyId: key.hsm });
});

afterAll(async () => {
  if (k) expect(await k.stop()).toBe(0);
});

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');

/** What the unary call answers for the same request: {ok, value} or {Code, Message}. */
async function unary(action: 'Encrypt' | 'Decrypt', req: Record<string, unknown>): Promise<{ ok: true; value: any } | { ok: false; Code: string; Message: string }> {
  try {
    return { ok: true, value: await k.client.call(action, req) };
  } catch (e) {
    expect(e).toBeInstanceOf(KmsClientError);
    return { ok: false, Code: (e as KmsClientError).code, Message: (e as KmsClientError).message };
  }
}

async function counters(): Promise<Record<string, number>> {
  return (await k.client.call('DescribeHsm')).Counters;
}

describe('EncryptBatch', () => {
  it('mixed HSM and SOFTWARE keys, and each bad item fails alone with the unary error code and message', async () => {
    const before = await counters();
    const ctx = { app: 'batch', n: '1' };
    const items: Record<string, unknown>[] = [
      { KeyId: key.hsm, Plaintext: b64('hsm item'), EncryptionContext: ctx },
      { KeyId: key.sw, Plaintext: b64('software item') },
      { KeyId: ALIAS, Plaintext: b64('by alias') },
      { KeyId: NOWHERE, Plaintext: b64('x') }, // Forbidden.KeyNotFound
      { KeyId: 'not-a-key', Plaintext: b64('x') }, // InvalidParameter
      { KeyId: key.hsm }, // MissingParameter (Plaintext)
      { KeyId: key.disabled, Plaintext: b64('x') }, // Rejected.Disabled
      { KeyId: key.sw, Plaintext: b64(crypto.randomBytes(6145)) }, // too long
      { KeyId: key.hsm2, Plaintext: 'not base64!' }, // InvalidParameter
      { KeyId: 'alias/nowhere', Plaintext: b64('x') }, // Forbidden.AliasNotFound
      { KeyId: key.hsm2, Plaintext: b64('hsm2 item'), EncryptionContext: { k: 'v' } },
    ];
    const r = await k.client.call('EncryptBatch', { BatchId: 'mixed-1', Items: items });
    expect(r.BatchId).toBe('mixed-1');
    expect(r.Results).toHaveLength(items.length);
    expect(r.SuccessCount + r.ErrorCount).toBe(items.length);
    const okIdx = [0, 1, 2, 10];
    expect(r.SuccessCount).toBe(okIdx.length);
    for (let i = 0; i < items.length; i++) {
      const got = r.Results[i];
      const want = await unary('Encrypt', items[i]);
      if (want.ok) {
        expect(got.Code, `item ${i}: ${got.Message}`).toBe('');
        expect(okIdx).toContain(i);
        expect(got.KeyId).toBe(want.value.KeyId);
        expect(got.KeyVersionId).toBe(want.value.KeyVersionId);
        // The blob is the unary one: plain Decrypt opens it.
        const opened = await k.client.decrypt(got.CiphertextBlob, (items[i].EncryptionContext as Record<string, string>) ?? {});
        expect(opened.Plaintext.toString('base64')).toBe(items[i].Plaintext);
        expect(opened.KeyId).toBe(got.KeyId);
      } else {
        expect({ Code: got.Code, Message: got.Message }, `item ${i}`).toEqual({ Code: want.Code, Message: want.Message });
        expect(got.CiphertextBlob).toBe('');
      }
    }
    expect(new Set(r.Results.map((x: any) => x.Code))).toEqual(
      new Set(['', 'Forbidden.KeyNotFound', 'InvalidParameter', 'MissingParameter', 'Rejected.Disabled', 'Forbidden.AliasNotFound']),
    );
    // The HSM items went through the addon, as one batch.
    const after = await counters();
    expect(after.hsmEncryptNative - before.hsmEncryptNative).toBeGreaterThanOrEqual(3);
    expect(after.hsmEncryptPkcs11js).toBe(0);
  });

  it('takes up to 256 items; 257 (or none) is InvalidParameter for the whole call', async () => {
    const item = { KeyId: key.hsm, Plaintext: b64('bound') };
    const full = await k.client.encryptBatch(Array.from({ length: 256 }, (_, i) => ({ KeyId: i % 2 ? key.hsm : key.sw, Plaintext: Buffer.from(`n${i}`) })));
    expect(full.SuccessCount).toBe(256);
    expect(new Set(full.Results.map((x) => x.CiphertextBlob)).size).toBe(256); // fresh IV per item
    for (const n of [257, 0]) {
      const e = await k.client.call('EncryptBatch', { Items: Array.from({ length: n }, () => item) }).catch((x: KmsClientError) => x);
      expect(e).toBeInstanceOf(KmsClientError);
      expect((e as KmsClientError).code).toBe('InvalidParameter');
      expect((e as KmsClientError).grpcCode).toBe(grpc.status.INVALID_ARGUMENT);
      expect((e as KmsClientError).message).toMatch(/^Items: /);
    }
    const big = await k.client.call('DecryptBatch', { Items: Array.from({ length: 257 }, () => ({ CiphertextBlob: full.Results[0].CiphertextBlob })) }).catch((x: KmsClientError) => x);
    expect((big as KmsClientError).code).toBe('InvalidParameter');
  });
});

describe('DecryptBatch', () => {
  it('opens HSM and SOFTWARE blobs in one call; altered blobs, other contexts and wrong KeyIds fail alone, as in Decrypt', async () => {
    const ctx = { purpose: 'decrypt-batch' };
    const enc = await k.client.encryptBatch([
      { KeyId: key.hsm, Plaintext: Buffer.from('one'), EncryptionContext: ctx },
      { KeyId: key.sw, Plaintext: Buffer.from('two') },
      { KeyId: key.hsm2, Plaintext: Buffer.from('three') },
    ]);
    expect(enc.ErrorCount).toBe(0);
    const [a, b, c] = enc.Results.map((x) => x.CiphertextBlob);
    const tampered = Buffer.from(a, 'base64');
    tampered[tampered.length - 1] ^= 1;
    const items: Record<string, unknown>[] = [
      { CiphertextBlob: a, EncryptionContext: ctx },
      { CiphertextBlob: b },
      { CiphertextBlob: c, KeyId: key.hsm2 },
      { CiphertextBlob: a }, // context missing: InvalidCiphertext
      { CiphertextBlob: tampered.toString('base64'), EncryptionContext: ctx }, // InvalidCiphertext
      { CiphertextBlob: b, KeyId: key.hsm }, // IncorrectKeyId
      { CiphertextBlob: 'AAAA' }, // malformed
      {}, // MissingParameter
      { CiphertextBlob: c, EncryptionContext: { 'bad\u0000key': 'x' } }, // context rule
    ];
    const before = await counters();
    const r = await k.client.call('DecryptBatch', { Items: items, BatchId: 'd1' });
    expect(r.BatchId).toBe('d1');
    expect(r.SuccessCount).toBe(3);
    for (let i = 0; i < items.length; i++) {
      const got = r.Results[i];
      const want = await unary('Decrypt', items[i]);
      if (want.ok) {
        expect(got.Code).toBe('');
        expect(got).toMatchObject({ KeyId: want.value.KeyId, KeyVersionId: want.value.KeyVersionId, Plaintext: want.value.Plaintext });
      } else {
        expect({ Code: got.Code, Message: got.Message }, `item ${i}`).toEqual({ Code: want.Code, Message: want.Message });
        expect(got.Plaintext).toBe('');
      }
    }
    expect(Buffer.from(r.Results[0].Plaintext, 'base64').toString()).toBe('one');
    expect(r.Results.slice(3).map((x: any) => x.Code)).toEqual(expect.arrayContaining(['InvalidCiphertext', 'IncorrectKeyId', 'MissingParameter']));
    const after = await counters();
    expect(after.hsmDecryptNative).toBeGreaterThan(before.hsmDecryptNative);
    expect(after.hsmDecryptPkcs11js).toBe(0);
  });
});

describe('EncryptStream / DecryptStream', () => {
  it('round-trips many messages in order with their BatchIds; a message over the bound is refused alone and the stream goes on', async () => {
    const enc = k.client.openBatchStream('encrypt');
    const msgs = Array.from({ length: 12 }, (_, m) =>
      Array.from({ length: 1 + ((m * 37) % 60) }, (_, i): EncryptBatchItem => ({ KeyId: [key.hsm, key.sw, key.hsm2][(m + i) % 3], Plaintext: Buffer.from(`m${m}-i${i}`), EncryptionContext: { m: String(m) } })),
    );
    // All sent before any answer is read: the daemon pipelines them and answers in order.
    const sent = msgs.map((items, m) => enc.send(items, `e${m}`));
    const tooBig = enc.send(Array.from({ length: 257 }, () => ({ KeyId: key.hsm, Plaintext: Buffer.from('x') })), 'too-big');
    const after = enc.send([{ KeyId: key.sw, Plaintext: Buffer.from('after') }, { KeyId: NOWHERE, Plaintext: Buffer.from('y') }], 'after');
    const answers = await Promise.all(sent);
    answers.forEach((a, m) => {
      expect(a.BatchId).toBe(`e${m}`);
      expect(a.Code).toBe('');
      expect(a.Results).toHaveLength(msgs[m].length);
      expect(a.ErrorCount).toBe(0);
    });
    const refused = await tooBig;
    expect(refused).toMatchObject({ BatchId: 'too-big', Code: 'InvalidParameter', Results: [] });
    expect(refused.Message).toMatch(/^Items: at most 256/);
    const last = await after;
    expect(last.BatchId).toBe('after');
    expect(last.Results.map((x) => x.Code)).toEqual(['', 'Forbidden.KeyNotFound']);
    await enc.end();

    // Back through DecryptStream, and a sample through plain Decrypt.
    const dec = k.client.openBatchStream('decrypt');
    const opened = await Promise.all(answers.map((a, m) => dec.send(a.Results.map((x) => ({ CiphertextBlob: x.CiphertextBlob, EncryptionContext: { m: String(m) } })), `d${m}`)));
    opened.forEach((o, m) => {
      expect(o.BatchId).toBe(`d${m}`);
      expect(o.ErrorCount).toBe(0);
      expect(o.Results.map((x) => Buffer.from(x.Plaintext, 'base64').toString())).toEqual(msgs[m].map((x) => (x.Plaintext as Buffer).toString()));
    });
    await dec.end();
    const plain = await k.client.decrypt(answers[5].Results[0].CiphertextBlob, { m: '5' });
    expect(plain.Plaintext.toString()).toBe('m5-i0');
  });
});

describe('a stream the client abandons', () => {
  it('cancelled with messages in flight: the daemon drops their answers and keeps serving', async () => {
    const s = k.client.openBatchStream('encrypt');
    const pending = Array.from({ length: 6 }, (_, m) => s.send(Array.from({ length: 200 }, () => ({ KeyId: key.hsm, Plaintext: Buffer.from('abandoned') })), `c${m}`).catch((e) => e));
    s.cancel();
    const outcomes = await Promise.all(pending);
    for (const o of outcomes) if (o instanceof Error) expect((o as KmsClientError).grpcCode).toBe(grpc.status.CANCELLED);
    const r = await k.client.encryptBatch([{ KeyId: key.hsm, Plaintext: Buffer.from('after the cancel') }]);
    expect(r.SuccessCount).toBe(1);
    expect(() => process.kill(k.pid, 0)).not.toThrow();
    expect(k.logs()).not.toContain('internal error');
  });
});

describe('kmsctl', () => {
  it('EncryptBatch and DecryptBatch take --Items as a JSON array; streams are refused as a usage error', () => {
    const items = [
      { KeyId: key.hsm, Plaintext: b64('from kmsctl') },
      { KeyId: key.sw, Plaintext: b64('also'), EncryptionContext: { a: 'b' } },
      { KeyId: NOWHERE, Plaintext: b64('nope') },
    ];
    const enc = k.kmsctl(['EncryptBatch', '--Items', JSON.stringify(items), '--BatchId', 'cli']);
    expect(enc.code, enc.stderr).toBe(0);
    expect(enc.json).toMatchObject({ BatchId: 'cli', SuccessCount: 2, ErrorCount: 1 });
    expect(enc.json.Results[2]).toMatchObject({ Code: 'Forbidden.KeyNotFound', CiphertextBlob: '' });
    const dec = k.kmsctl(['DecryptBatch', '--Items', JSON.stringify([{ CiphertextBlob: enc.json.Results[0].CiphertextBlob }, { CiphertextBlob: enc.json.Results[1].CiphertextBlob, EncryptionContext: { a: 'b' } }])]);
    expect(dec.code, dec.stderr).toBe(0);
    expect(dec.json.Results.map((x: any) => Buffer.from(x.Plaintext, 'base64').toString())).toEqual(['from kmsctl', 'also']);
    const bad = k.kmsctl(['EncryptBatch', '--Items', '{"KeyId":"x"}']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--Items: expected a JSON array/);
    const over = k.kmsctl(['EncryptBatch', '--Items', JSON.stringify(Array.from({ length: 257 }, () => items[0]))]);
    expect(over.code).toBe(1);
    expect(over.json).toMatchObject({ Code: 'InvalidParameter' });
    const stream = k.kmsctl(['EncryptStream', '--Items', JSON.stringify(items)]);
    expect(stream.code).toBe(2);
    expect(stream.stderr).toMatch(/EncryptStream is a stream/);
  });
});
