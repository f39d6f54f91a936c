// The unwrap plan for the capabilities the probe finds on opencryptoki 3.8's soft token (asserted
// against the real token in test/integration/gcm-composed.test.ts): RSA unwraps in the token, no
// CKM_AES_KEY_WRAP_PAD. RSA_AES_KEY_WRAP_* then needs host-assisted unwrap, and is refused with the
// missing mechanism and the setting named when that is off.

import { describe, expect, it } from 'vitest';
import { WRAPPING_ALGORITHMS, needsRawDecrypt, planUnwrap, type HsmCapabilities } from '../../src/hsm/unwrap';

const OPENCRYPTOKI: HsmCapabilities = {
  rsaUnwrap: { PKCS1_V1_5: true, OAEP_SHA_1: true, OAEP_SHA_256: true },
  rawRsa: true,
  aesKeyWrapPad: false,
  rsaAesKeyWrapMechanism: false,
  aesGcm: true,
  gcmPath: 'composed',
  reportsUnwrappedLength: true,
};

describe('planUnwrap on a token without CKM_AES_KEY_WRAP_PAD', () => {
  it('keeps every RSAES algorithm in the token, host-assisted or not', () => {
    for (const allow of [false, true]) {
      for (const alg of ['RSAES_PKCS1_V1_5', 'RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256'] as const) expect(planUnwrap(alg, OPENCRYPTOKI, allow)).toEqual({ algorithm: alg, path: 'in-token' });
    }
  });

  it('composes RSA_AES_KEY_WRAP_* in kmsd only where host-assisted unwrap is allowed, without raw RSA', () => {
    for (const alg of ['RSA_AES_KEY_WRAP_SHA_1', 'RSA_AES_KEY_WRAP_SHA_256'] as const) {
      const plan = planUnwrap(alg, OPENCRYPTOKI, true);
      expect(plan).toEqual({ algorithm: alg, path: 'composed-host-assisted-kwp' });
      expect(needsRawDecrypt(plan as { algorithm: typeof alg; path: 'composed-host-assisted-kwp' })).toBe(false);
      const refused = planUnwrap(alg, OPENCRYPTOKI, false) as { refused: string };
      expect(refused.refused).toMatch(/CKM_AES_KEY_WRAP_PAD/);
      expect(refused.refused).toMatch(/KMS_ALLOW_HOST_ASSISTED_UNWRAP=1/);
    }
  });

  it('refuses RSA_AES_KEY_WRAP_* naming both mechanisms when the token can do neither', () => {
    const none: HsmCapabilities = { ...OPENCRYPTOKI, rsaUnwrap: { PKCS1_V1_5: false, OAEP_SHA_1: false, OAEP_SHA_256: false } };
    for (const alg of WRAPPING_ALGORITHMS.filter((a) => a.startsWith('RSA_AES'))) {
      expect((planUnwrap(alg, none, true) as { refused: string }).refused).toMatch(/CKM_AES_KEY_WRAP_PAD and RSA-OAEP unwrap/);
    }
  });
});
