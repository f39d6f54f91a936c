// AES-GCM composed from CKM_AES_ECB (src/hsm/gcm-composed.ts) against real tokens. Runs in both vitest
// projects: on SoftHSM, which has CKM_AES_GCM, the composed path is compared byte for byte with the
// token's own GCM; on opencryptoki (KMSD_TEST_TOKEN=opencryptoki), which has no CKM_AES_GCM, the
// probe must choose the composed path, and blobs sealed by SoftHSM's CKM_AES_GCM open there and back.
// Every Wycheproof AES-GCM vector runs through the composed path with its key imported into the token.

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DecryptFailedError } from '../../src/hsm/errors.js';
import { HsmToken, type TransientKey } from '../../src/hsm/token.js';
import { probeCapabilities } from '../../src/hsm/unwrap.js';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token.js';
import { createOpencryptokiToken, type OpencryptokiToken } from '../helpers/opencryptoki.js';
import { loadWycheproof } from '../helpers/wycheproof.js';

const ON_OCK = process.env['KMSD_TEST_TOKEN'] === 'opencryptoki';

interface AeadTest {
  tcId: number;
  comment: string;
  iv: string;
  key: string;
  msg: string;
  aad: string;
  ct: string;
  tag: string;
  result: 'valid' | 'invalid' | 'acceptable';
  flags: string[];
}
interface AeadGroup {
  keySize: number;
  ivSize: number;
  tagSize: number;
  tests: AeadTest[];
}

let soft: SoftHsmToken;
let softToken: HsmToken;
let ock: OpencryptokiToken | null = null;
let ockToken: HsmToken | null = null;

beforeAll(() => {
  soft = createSoftHsmToken({ label: 'gcm-composed' });
  softToken = HsmToken.open({ modulePath: soft.modulePath, tokenLabel: soft.label, pin: soft.userPin });
  if (ON_OCK) {
    ock = createOpencryptokiToken('kmsd-gcm');
    ockToken = HsmToken.open({ modulePath: ock.modulePath, tokenLabel: ock.label, pin: ock.pin });
  }
});

afterAll(() => {
  ockToken?.close();
  softToken?.close();
  ock?.cleanup();
  soft?.cleanup();
});

/** The token the vectors run on: opencryptoki in its project, else SoftHSM with the composed path forced. */
function composedToken(): HsmToken {
  if (ockToken) return ockToken;
  softToken.useGcmPath('composed');
  return softToken;
}

function withKey<T>(token: HsmToken, value: Buffer, fn: (k: TransientKey) => T): T {
  const k = token.createTransientAesKey(value, 'data');
  try {
    return fn(k);
  } finally {
    token.destroyTransient(k);
  }
}

function nodeGcm(key: Buffer, iv: Buffer, aad: Buffer, pt: Buffer): Buffer {
  const c = crypto.createCipheriv(`aes-${key.length * 8}-gcm` as 'aes-256-gcm', key, iv);
  c.setAAD(aad);
  return Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
}

describe('capability probe', () => {
  it(ON_OCK ? 'chooses the composed path on opencryptoki and finds every RSA unwrap in the token' : 'keeps CKM_AES_GCM in the token on SoftHSM', () => {
    const token = ockToken ?? softToken;
    const caps = probeCapabilities(token, token.tokenInfo().mechanisms);
    if (ON_OCK) {
      expect(caps).toMatchObject({ aesGcm: true, gcmPath: 'composed', rsaUnwrap: { PKCS1_V1_5: true, OAEP_SHA_1: true, OAEP_SHA_256: true }, rawRsa: true, aesKeyWrapPad: false });
      expect(token.gcmPath).toBe('composed');
    } else {
      expect(caps).toMatchObject({ aesGcm: true, gcmPath: 'in-token' });
      expect(token.gcmPath).toBe('in-token');
    }
  });
});

describe('composed GCM equals the token’s CKM_AES_GCM (SoftHSM)', () => {
  it('for every length from 0 to 80 bytes and larger, with and without AAD, both ways', () => {
    const key = crypto.randomBytes(32);
    withKey(softToken, key, (k) => {
      for (const len of [...Array(81).keys(), 255, 256, 4096, 65_537]) {
        const iv = crypto.randomBytes(12);
        const aad = crypto.randomBytes(len % 3 === 0 ? 0 : len % 50);
        // pkcs11js hands an empty buffer to the module as NULL, which SoftHSM rejects: 0 bytes only composed.
        const pt = crypto.randomBytes(len);
        softToken.useGcmPath('composed');
        const composed = softToken.encryptGcmTransient(k, iv, aad, pt);
        expect(composed.equals(nodeGcm(key, iv, aad, pt))).toBe(true);
        if (len > 0) {
          softToken.useGcmPath('in-token');
          const inToken = softToken.encryptGcmTransient(k, iv, aad, pt);
          expect(composed.equals(inToken)).toBe(true);
          expect(softToken.decryptGcmTransient(k, iv, aad, composed).equals(pt)).toBe(true);
          softToken.useGcmPath('composed');
          expect(softToken.decryptGcmTransient(k, iv, aad, inToken).equals(pt)).toBe(true);
        }
      }
    });
    softToken.useGcmPath('in-token');
  });

  it('refuses a changed tag, ciphertext, AAD or IV with DecryptFailedError and returns no plaintext', () => {
    const token = composedToken();
    const key = crypto.randomBytes(32);
    withKey(token, key, (k) => {
      const iv = crypto.randomBytes(12);
      const aad = Buffer.from('context');
      const sealed = token.encryptGcmTransient(k, iv, aad, Buffer.from('attack at dawn, bring snacks'));
      for (let i = 0; i < sealed.length; i++) {
        const bad = Buffer.from(sealed);
        bad[i] ^= 0x01;
        expect(() => token.decryptGcmTransient(k, iv, aad, bad)).toThrow(DecryptFailedError);
      }
      expect(() => token.decryptGcmTransient(k, iv, Buffer.from('contexT'), sealed)).toThrow(DecryptFailedError);
      expect(() => token.decryptGcmTransient(k, Buffer.alloc(12), aad, sealed)).toThrow(DecryptFailedError);
      expect(() => token.decryptGcmTransient(k, iv, aad, sealed.subarray(0, 15))).toThrow(DecryptFailedError);
    });
    if (!ON_OCK) softToken.useGcmPath('in-token');
  });
});

describe('Wycheproof AES-GCM through the composed path, keys imported into the token', () => {
  const file = loadWycheproof<AeadGroup>('aes_gcm_test.json', 'aead_test_schema_v1.json');
  const tests = file.testGroups.flatMap((g) => g.tests.map((t) => ({ g, t })));

  it(`runs all ${file.numberOfTests} vectors`, () => {
    expect(tests.length).toBe(file.numberOfTests);
    const token = composedToken();
    let valid = 0;
    let refused = 0;
    for (const { g, t } of tests) {
      expect(g.tagSize).toBe(128);
      const key = Buffer.from(t.key, 'hex');
      const iv = Buffer.from(t.iv, 'hex');
      const aad = Buffer.from(t.aad, 'hex');
      const msg = Buffer.from(t.msg, 'hex');
      const sealed = Buffer.concat([Buffer.from(t.ct, 'hex'), Buffer.from(t.tag, 'hex')]);
      withKey(token, key, (k) => {
        const label = `tcId ${t.tcId} (${t.comment})`;
        if (t.result === 'valid') {
          // A zero-length message: the composed path needs no token call for the text itself.
          expect(token.encryptGcmTransient(k, iv, aad, msg).toString('hex'), label).toBe(sealed.toString('hex'));
          expect(token.decryptGcmTransient(k, iv, aad, sealed).toString('hex'), label).toBe(t.msg);
          valid++;
        } else {
          // Invalid: an empty IV (refused before the token is asked) or an altered tag/ciphertext.
          expect(() => token.decryptGcmTransient(k, iv, aad, sealed), label).toThrow();
          if (iv.length > 0) expect(() => token.decryptGcmTransient(k, iv, aad, sealed), label).toThrow(DecryptFailedError);
          refused++;
        }
      });
    }
    expect(valid + refused).toBe(file.numberOfTests);
    expect(valid).toBeGreaterThan(200);
    if (!ON_OCK) softToken.useGcmPath('in-token');
  });
});

describe.runIf(ON_OCK)('a blob opens on the other implementation', () => {
  it('SoftHSM CKM_AES_GCM → opencryptoki composed, and back', () => {
    const key = crypto.randomBytes(32);
    softToken.useGcmPath('in-token');
    withKey(softToken, key, (ks) =>
      withKey(ockToken!, key, (ko) => {
        for (const len of [1, 16, 33, 1000]) {
          const iv = crypto.randomBytes(12);
          const aad = crypto.randomBytes(20);
          const pt = crypto.randomBytes(len);
          const fromSoft = softToken.encryptGcmTransient(ks, iv, aad, pt);
          expect(ockToken!.decryptGcmTransient(ko, iv, aad, fromSoft).equals(pt)).toBe(true);
          const fromOck = ockToken!.encryptGcmTransient(ko, iv, aad, pt);
          expect(fromOck.equals(fromSoft)).toBe(true);
          expect(softToken.decryptGcmTransient(ks, iv, aad, fromOck).equals(pt)).toBe(true);
        }
      }),
    );
  });
});
