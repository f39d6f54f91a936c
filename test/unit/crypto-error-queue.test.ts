// Regression (issue 4): SoftHSM links libcrypto, and inside node its OpenSSL calls bind to the copy
// node exports, so the token and node:crypto share the JS thread's OpenSSL error queue. A refused
// in-token unwrap (C_UnwrapKey with CKM_RSA_PKCS over bytes whose padding does not check) used to
// leave "padding check failed" on that queue, and the next node:crypto createPrivateKey of a
// perfectly good PKCS#8 key threw it. HsmToken.withSession now empties the queue after every call
// (native/addon.cc clearCryptoErrors, via src/hsm/native-addon.ts).

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { UnwrapFailedError } from '../../src/hsm/errors.js';
import { clearCryptoErrors, loadNativeAddon, nativeAddonLoadError } from '../../src/hsm/native-addon.js';
import { HsmToken } from '../../src/hsm/token.js';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token.js';

let soft: SoftHsmToken;
let token: HsmToken;
let pkcs8: Buffer;

beforeAll(() => {
  if (!loadNativeAddon()) throw new Error(`the native addon must be built for this test: ${nativeAddonLoadError()}`);
  soft = createSoftHsmToken({ label: 'errq' });
  token = HsmToken.open({ modulePath: soft.modulePath, tokenLabel: 'errq', pin: soft.userPin });
  token.generateWrappingKeyPair('errq-wrap', 2048, false, false); // a session-only pair
  pkcs8 = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'der' });
});

afterAll(() => {
  token?.destroyTransientPair('errq-wrap');
  token?.close();
  soft?.cleanup();
});

const parsePkcs8 = () => crypto.createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' });

describe('OpenSSL error queue shared with the PKCS#11 module', () => {
  it('a refused in-token unwrap does not poison the next createPrivateKey on the same thread', () => {
    for (const padding of ['PKCS1_V1_5', 'OAEP_SHA_1', 'PKCS1_V1_5'] as const) {
      // Random bytes below the modulus: the RSA operation succeeds, the padding check does not.
      const garbage = crypto.randomBytes(256);
      garbage[0] = 0x01;
      expect(() => token.rsaUnwrap('errq-wrap', padding, garbage, 'data', true)).toThrow(UnwrapFailedError);
      expect(parsePkcs8().asymmetricKeyType).toBe('rsa');
    }
  });

  it('the mechanism is real: a raw pkcs11js failure leaves an entry that clearCryptoErrors removes', () => {
    // A second pkcs11js instance on the same module (already initialized by the token above),
    // bypassing HsmToken and so its clean-up.
    const p11 = new pkcs11js.PKCS11();
    p11.load(soft.modulePath);
    try {
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch {
      /* CKR_CRYPTOKI_ALREADY_INITIALIZED */
    }
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === 'errq')!;
    const s = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      const { privateKey } = p11.C_GenerateKeyPair(
        s,
        { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN, parameter: null as unknown as Buffer },
        [
          { type: pkcs11js.CKA_TOKEN, value: false },
          { type: pkcs11js.CKA_MODULUS_BITS, value: 2048 },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) },
          { type: pkcs11js.CKA_WRAP, value: true },
        ],
        [
          { type: pkcs11js.CKA_TOKEN, value: false },
          { type: pkcs11js.CKA_PRIVATE, value: true },
          { type: pkcs11js.CKA_SENSITIVE, value: true },
          { type: pkcs11js.CKA_UNWRAP, value: true },
        ],
      );
      clearCryptoErrors();
      const garbage = crypto.randomBytes(256);
      garbage[0] = 0x01;
      expect(() =>
        p11.C_UnwrapKey(s, { mechanism: pkcs11js.CKM_RSA_PKCS, parameter: null as unknown as Buffer }, privateKey, garbage, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
          { type: pkcs11js.CKA_TOKEN, value: false },
        ]),
      ).toThrow();
      // The token's failure is on this thread's queue now...
      expect(clearCryptoErrors()).toBe(true);
      // ...and once cleared, node:crypto is unaffected.
      expect(parsePkcs8().asymmetricKeyType).toBe('rsa');
      expect(clearCryptoErrors()).toBe(false);
    } finally {
      p11.C_CloseSession(s);
    }
  });
});
