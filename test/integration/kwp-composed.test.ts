// RFC 5649 composed from AES block operations (src/hsm/kwp-composed.ts), the root-key wrap of tokens
// without CKM_AES_KEY_WRAP_PAD. The block operations are CKM_AES_ECB on the real token of the project
// (SoftHSM, or opencryptoki with KMSD_TEST_TOKEN=opencryptoki) with each Wycheproof key imported as a
// session key; on opencryptoki the root key itself takes the composed path and round-trips material.

import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HsmError } from '../../src/hsm/errors.js';
import { HsmToken } from '../../src/hsm/token.js';
import { KwpIntegrityError, kwpUnwrap, kwpWrap } from '../../src/hsm/kwp-composed.js';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token.js';
import { createOpencryptokiToken, type OpencryptokiToken } from '../helpers/opencryptoki.js';
import { loadWycheproof } from '../helpers/wycheproof.js';

const ON_OCK = process.env['KMSD_TEST_TOKEN'] === 'opencryptoki';

interface KwTest {
  tcId: number;
  comment: string;
  key: string;
  msg: string;
  ct: string;
  result: 'valid' | 'invalid' | 'acceptable';
}

let soft: SoftHsmToken | null = null;
let ock: OpencryptokiToken | null = null;
let modulePath: string;
let label: string;
let pin: string;
let p11: pkcs11js.PKCS11;
let session: Buffer;

beforeAll(() => {
  if (ON_OCK) {
    ock = createOpencryptokiToken('kmsd-kwp');
    ({ modulePath, label, pin } = ock);
  } else {
    soft = createSoftHsmToken({ label: 'kwp-composed' });
    ({ modulePath, label } = soft);
    pin = soft.userPin;
  }
  p11 = new pkcs11js.PKCS11();
  p11.load(modulePath);
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === label)!;
  session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p11.C_Login(session, pkcs11js.CKU_USER, pin);
});

afterAll(() => {
  try {
    p11?.C_CloseSession(session);
    p11?.C_Finalize();
  } catch {
    /* the module is going away with the test */
  }
  soft?.cleanup();
  ock?.cleanup();
});

/** ECB block functions with `key` as a session key in the token. */
function tokenBlocks(key: Buffer): { enc: (b: Buffer) => Buffer; dec: (b: Buffer) => Buffer; done: () => void } {
  const h = p11.C_CreateObject(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_VALUE, value: key },
  ]);
  const ecb = { mechanism: pkcs11js.CKM_AES_ECB, parameter: null as unknown as Buffer };
  return {
    enc: (b) => {
      p11.C_EncryptInit(session, ecb, h);
      return p11.C_Encrypt(session, b, Buffer.alloc(16));
    },
    dec: (b) => {
      p11.C_DecryptInit(session, ecb, h);
      return p11.C_Decrypt(session, b, Buffer.alloc(16));
    },
    done: () => p11.C_DestroyObject(session, h),
  };
}

describe('Wycheproof AES-KWP through token AES-ECB blocks', () => {
  const file = loadWycheproof<{ keySize: number; tests: KwTest[] }>('aes_kwp_test.json', 'keywrap_test_schema_v1.json');
  it(`runs all ${file.numberOfTests} vectors`, () => {
    let n = 0;
    for (const g of file.testGroups) {
      for (const t of g.tests) {
        n++;
        const blocks = tokenBlocks(Buffer.from(t.key, 'hex'));
        const label = `tcId ${t.tcId} (${t.comment})`;
        try {
          const ct = Buffer.from(t.ct, 'hex');
          if (t.result === 'valid') {
            expect(kwpWrap(blocks.enc, Buffer.from(t.msg, 'hex')).toString('hex'), label).toBe(t.ct);
            expect(kwpUnwrap(blocks.dec, ct).toString('hex'), label).toBe(t.msg);
          } else {
            expect(() => kwpUnwrap(blocks.dec, ct), label).toThrow(KwpIntegrityError);
          }
        } finally {
          blocks.done();
        }
      }
    }
    expect(n).toBe(file.numberOfTests);
  });
});

describe.runIf(ON_OCK)('the root key of a token without CKM_AES_KEY_WRAP_PAD', () => {
  it('takes the composed path, round-trips SOFTWARE material and refuses an altered wrap as the token would', () => {
    const token = HsmToken.open({ modulePath, tokenLabel: label, pin });
    try {
      token.ensureRootKey('root-v1');
      expect(token.rootWrapPath).toBe('composed');
      const k = token.generateTransientExtractableAesKey();
      let wrapped: Buffer;
      try {
        wrapped = token.wrapUnderRoot('root-v1', k);
      } finally {
        token.destroyTransient(k);
      }
      expect(wrapped.length).toBe(40);
      const m = token.unwrapFromRoot('root-v1', wrapped);
      expect(m.length).toBe(32);
      expect(token.unwrapFromRoot('root-v1', wrapped).equals(m)).toBe(true);
      const bad = Buffer.from(wrapped);
      bad[5] ^= 1;
      expect(() => token.unwrapFromRoot('root-v1', bad)).toThrow(HsmError);
      try {
        token.unwrapFromRoot('root-v1', bad);
      } catch (e) {
        expect((e as HsmError).code).toBe('CKR_WRAPPED_KEY_INVALID');
      }
    } finally {
      token.close();
    }
  });
});
