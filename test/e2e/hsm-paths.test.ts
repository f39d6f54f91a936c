// Which mechanism each token-side operation runs on, as DescribeHsm reports it, and that every
// data-plane caller takes that path. Runs in both vitest projects: on SoftHSM AES-GCM is the token's
// CKM_AES_GCM (through the native addon); on opencryptoki, which has no CKM_AES_GCM, it is composed
// from CKM_AES_ECB and every caller (unary, EncryptBatch, EncryptStream and their decrypt sides)
// goes through the pkcs11js path, with the addon left out.

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, TEST_TOKEN, startKmsd } from '../helpers/daemon';

const ON_OCK = TEST_TOKEN === 'opencryptoki';
let k: Kmsd;

beforeAll(async () => {
  k = await startKmsd();
});

afterAll(async () => {
  await k?.stop();
});

describe('DescribeHsm', () => {
  it('names the mechanism and path of AES-256-GCM, the SOFTWARE wrap and the audit signature', async () => {
    const hsm = await k.client.call('DescribeHsm');
    const byOp = Object.fromEntries(hsm.Mechanisms.map((m: { Operation: string }) => [m.Operation, m]));
    if (ON_OCK) {
      expect(hsm.Manufacturer).toMatch(/IBM/);
      expect(hsm.Capabilities).toMatchObject({ AesGcm: true, AesGcmPath: 'composed', AesKeyWrapPad: false, RsaOaepSha256Unwrap: true });
      expect(byOp).toEqual({
        AES_256_GCM: { Operation: 'AES_256_GCM', Mechanism: 'CKM_AES_ECB', Path: 'composed' },
        SOFTWARE_MATERIAL_WRAP: { Operation: 'SOFTWARE_MATERIAL_WRAP', Mechanism: 'CKM_AES_ECB', Path: 'composed' },
        AUDIT_SIGNATURE: { Operation: 'AUDIT_SIGNATURE', Mechanism: 'CKM_RSA_PKCS', Path: 'in-token' },
      });
      expect(hsm.NativeAddon).toBe(false);
      expect(hsm.WrappingAlgorithms.find((w: { WrappingAlgorithm: string }) => w.WrappingAlgorithm === 'RSAES_OAEP_SHA_256')).toMatchObject({ Supported: true, Path: 'in-token' });
    } else {
      expect(hsm.Capabilities).toMatchObject({ AesGcm: true, AesGcmPath: 'in-token', AesKeyWrapPad: true });
      expect(byOp).toEqual({
        AES_256_GCM: { Operation: 'AES_256_GCM', Mechanism: 'CKM_AES_GCM', Path: 'in-token' },
        SOFTWARE_MATERIAL_WRAP: { Operation: 'SOFTWARE_MATERIAL_WRAP', Mechanism: 'CKM_AES_KEY_WRAP_PAD', Path: 'in-token' },
        AUDIT_SIGNATURE: { Operation: 'AUDIT_SIGNATURE', Mechanism: 'CKM_ECDSA', Path: 'in-token' },
      });
    }
  });
});

describe('every caller takes the token’s GCM path', () => {
  it('unary, EncryptBatch and EncryptStream on an HSM key, and back', async () => {
    const keyId = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
    const before = (await k.client.call('DescribeHsm')).Counters;
    const texts = [crypto.randomBytes(1), crypto.randomBytes(100), crypto.randomBytes(4096)];
    const blobs: string[] = [];
    for (const t of texts) blobs.push((await k.client.encrypt(keyId, t)).CiphertextBlob);
    const batch = await k.client.encryptBatch(texts.map((t) => ({ KeyId: keyId, Plaintext: t })));
    expect(batch.Results.map((r) => r.Code)).toEqual(['', '', '']);
    blobs.push(...batch.Results.map((r) => r.CiphertextBlob));
    const stream = k.client.openBatchStream('encrypt');
    const streamed = await stream.send(texts.map((t) => ({ KeyId: keyId, Plaintext: t })));
    await stream.end();
    expect(streamed.Results.map((r) => r.Code)).toEqual(['', '', '']);
    blobs.push(...streamed.Results.map((r) => r.CiphertextBlob));

    const expected = [...texts, ...texts, ...texts];
    for (const [i, b] of blobs.entries()) expect((await k.client.decrypt(b)).Plaintext.equals(expected[i])).toBe(true);
    const dbatch = await k.client.decryptBatch(blobs.map((b) => ({ CiphertextBlob: b })));
    expect(dbatch.Results.map((r, i) => r.PlaintextBytes!.equals(expected[i]))).toEqual(expected.map(() => true));
    const dstream = k.client.openBatchStream('decrypt');
    const dstreamed = await dstream.send(blobs.map((b) => ({ CiphertextBlob: b })));
    await dstream.end();
    expect(dstreamed.Results.map((r, i) => Buffer.from(r.Plaintext, 'base64').equals(expected[i]))).toEqual(expected.map(() => true));

    const after = (await k.client.call('DescribeHsm')).Counters;
    const delta = (f: string) => Number(after[f]) - Number(before[f] ?? 0);
    if (ON_OCK) {
      expect([delta('hsmEncryptPkcs11js'), delta('hsmDecryptPkcs11js')]).toEqual([9, 27]);
      expect([delta('hsmEncryptNative'), delta('hsmDecryptNative')]).toEqual([0, 0]);
    } else {
      expect(delta('hsmEncryptNative') + delta('hsmEncryptPkcs11js')).toBe(9);
      expect(delta('hsmDecryptNative') + delta('hsmDecryptPkcs11js')).toBe(27);
    }
  });
});
