// A token that cannot do something at all: the refusal names the missing mechanism at CreateKey or
// GetParametersForImport time, and nothing is created; never an internal error at first use. The
// real daemon (dist/) with KMS_DISABLE_MECHANISMS, kmsd's own switch that makes it treat mechanisms
// as absent. On opencryptoki (its vitest project) CKM_AES_GCM is really absent and only CKM_AES_ECB
// is switched off. One daemon at a time: opencryptoki's slot is one per machine.

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, TEST_TOKEN, listTokenObjects, startKmsd } from '../helpers/daemon';
import { clientErrorOf } from '../helpers/errors';

/* eslint-disable @typescript-eslint/no-explicit-any */

// opencryptoki 3.8 has no CKM_AES_GCM: switching off CKM_AES_ECB leaves it with no AES-GCM path for real.
const SWITCHED_OFF = TEST_TOKEN === 'opencryptoki' ? 'CKM_AES_ECB' : 'CKM_AES_GCM, CKM_AES_ECB';

const objects = (k: Kmsd) =>
  listTokenObjects(k)
    .map((o) => `${o.type} ${o.label}`)
    .sort();

describe('a token with no AES-256-GCM path (neither CKM_AES_GCM nor CKM_AES_ECB)', () => {
  let k: Kmsd;
  let hsm: any;

  beforeAll(async () => {
    k = await startKmsd({ env: { KMS_DISABLE_MECHANISMS: SWITCHED_OFF } });
    hsm = await k.client.call('DescribeHsm');
  });
  afterAll(async () => {
    await k?.stop();
  });

  it('kmsd starts, says why HSM-level keys will be refused, and DescribeHsm shows no AES-GCM path', () => {
    expect(k.logs()).toMatch(/"refused":"an HSM-level key needs AES-256-GCM in the token[^"]*CKM_AES_GCM[^"]*CKM_AES_ECB/);
    expect(hsm.Capabilities).toMatchObject({ AesGcm: false, AesGcmPath: '' });
  });

  it('CreateKey (HSM, generated or EXTERNAL) is refused naming both mechanisms, and creates nothing', async () => {
    const before = objects(k);
    for (const Origin of ['Aliyun_KMS', 'EXTERNAL']) {
      const e = await clientErrorOf(k.client.createKey({ ProtectionLevel: 'HSM', Origin }));
      expect(e.code, Origin).toBe('Rejected.TokenLacksMechanism');
      expect(e.message).toMatch(/^ProtectionLevel: an HSM-level key needs AES-256-GCM in the token, with CKM_AES_GCM or composed from CKM_AES_ECB, and this token can do neither/);
      expect(e.message).toContain(`(KMS_DISABLE_MECHANISMS turns off ${SWITCHED_OFF})`);
    }
    expect(objects(k)).toEqual(before);
    expect((await k.client.call('ListKeys', {})).TotalCount).toBe(0);
  });

  it('SOFTWARE-level keys are served where the root key wraps in the token (SoftHSM), and refused by name where that needs CKM_AES_ECB (opencryptoki)', async () => {
    const rootWrap = hsm.Mechanisms.find((m: any) => m.Operation === 'SOFTWARE_MATERIAL_WRAP');
    expect(rootWrap).toMatchObject({ Path: TEST_TOKEN === 'opencryptoki' ? 'composed' : 'in-token' });
    if (rootWrap.Path === 'in-token') {
      const keyId = (await k.client.createKey({ ProtectionLevel: 'SOFTWARE' })).KeyMetadata.KeyId;
      const plaintext = crypto.randomBytes(40);
      const blob = (await k.client.encrypt(keyId, plaintext)).CiphertextBlob;
      expect((await k.client.decrypt(blob)).Plaintext.equals(plaintext)).toBe(true);
    } else {
      const e = await clientErrorOf(k.client.createKey({ ProtectionLevel: 'SOFTWARE' }));
      expect(e.code).toBe('Rejected.TokenLacksMechanism');
      expect(e.message).toMatch(/^ProtectionLevel: SOFTWARE-level material is wrapped under the root key with CKM_AES_KEY_WRAP_PAD, or composed from CKM_AES_ECB, and this token can do neither/);
    }
  });

  it('GetParametersForImport is refused naming the mechanisms (the fingerprint of imported material is an in-token AES-GCM), and creates nothing', async () => {
    const cmk = (await k.client.createKey({ ProtectionLevel: 'SOFTWARE', Origin: 'EXTERNAL' })).KeyMetadata;
    const before = objects(k);
    const e = await clientErrorOf(k.client.call('GetParametersForImport', { KeyId: cmk.KeyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' }));
    expect(e.code).toBe('Rejected.TokenLacksMechanism');
    expect(e.message).toMatch(new RegExp(`^KeyId: CMK ${cmk.KeyId} cannot take imported material on this token: importing key material needs AES-256-GCM in the token, with CKM_AES_GCM or composed from CKM_AES_ECB`));
    expect(objects(k)).toEqual(before);
    expect((await k.client.describeKey(cmk.KeyId)).KeyMetadata.KeyState).toBe('PendingImport');
  });
});

describe('a token without CKM_AES_GCM alone', () => {
  it('composes AES-GCM from CKM_AES_ECB: HSM-level keys are created and work', async () => {
    const k = await startKmsd({ env: { KMS_DISABLE_MECHANISMS: 'CKM_AES_GCM' } });
    try {
      const hsm = await k.client.call('DescribeHsm');
      expect(hsm.Capabilities).toMatchObject({ AesGcm: true, AesGcmPath: 'composed' });
      const keyId = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
      const plaintext = crypto.randomBytes(40);
      const blob = (await k.client.encrypt(keyId, plaintext)).CiphertextBlob;
      expect((await k.client.decrypt(blob)).Plaintext.equals(plaintext)).toBe(true);
    } finally {
      await k.stop();
    }
  });
});
