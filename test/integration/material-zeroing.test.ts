// Buffers that held key material, plaintexts or data keys are zeroed once kmsd is done with them,
// including the Buffers pkcs11js itself returned (DESIGN §7.7). A real SoftHSM token, a real SQLite
// store and the real domain; the only addition is a spy that keeps a reference to the Buffers as
// they pass (the calls themselves run unchanged), so the test can look at that memory afterwards.

import fs from 'node:fs';
import * as pkcs11js from 'pkcs11js';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { HsmToken } from '../../src/hsm/token';
import { Keyring, ROOT_KEY_ID } from '../../src/kms/keyring';
import { DEFAULT_KMS_CONFIG, KmsService, type Logger } from '../../src/kms/service';
import { BatchService } from '../../src/kms/batch';
import { SqliteStore } from '../../src/store/sqlite';
import { bindStoreToToken } from '../../src/kms/binding';
import { makeTempDir } from '../helpers/daemon';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token';

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };
const isZero = (b: Buffer) => b.length > 0 && b.every((x) => x === 0);

let softhsm: SoftHsmToken;
let token: HsmToken;
let store: SqliteStore;
let dataDir: string;
let kms: KmsService;

// pkcs11js binds its methods to each instance when it is constructed (index.js, modify(this)), from
// the native class's prototype: a recorder put there before HsmToken.open sees every CKA_VALUE
// Buffer the token's C_GetAttributeValue returns.
const nativeProto = Object.getPrototypeOf(pkcs11js.PKCS11.prototype) as { C_GetAttributeValue: (...args: unknown[]) => pkcs11js.Attribute[] };
const realGetAttributeValue = nativeProto.C_GetAttributeValue;
let attributeValues: Buffer[] | null = null;

beforeAll(async () => {
  nativeProto.C_GetAttributeValue = function (this: unknown, ...args: unknown[]) {
    const out = realGetAttributeValue.apply(this, args);
    for (const a of out) if (attributeValues && a.type === pkcs11js.CKA_VALUE && Buffer.isBuffer(a.value)) attributeValues.push(a.value);
    return out;
  };
  softhsm = createSoftHsmToken({ label: 'zeroing' });
  token = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.userPin });
  dataDir = makeTempDir('kmsd-zeroing-');
  store = new SqliteStore(dataDir);
  // As the daemon does: store and token bound first, then the root key.
  await bindStoreToToken(store, token, { adopt: false, log: quiet, dataDir });
  token.ensureRootKey(ROOT_KEY_ID);
  kms = new KmsService(store, new Keyring(token, store), DEFAULT_KMS_CONFIG, quiet);
});

afterAll(async () => {
  nativeProto.C_GetAttributeValue = realGetAttributeValue;
  await store?.close();
  token?.close();
  softhsm?.cleanup();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

afterEach(() => {
  attributeValues = null;
  vi.restoreAllMocks();
});

async function createKey(level: 'SOFTWARE' | 'HSM'): Promise<string> {
  return (await kms.CreateKey({ ProtectionLevel: level })).KeyMetadata.KeyId;
}

describe('SOFTWARE key material', () => {
  it('the CKA_VALUE Buffer pkcs11js returned is zero once the key is disabled (not a copy left behind)', async () => {
    const values: Buffer[] = [];
    attributeValues = values;
    const keyId = await createKey('SOFTWARE');
    const blob = (await kms.Encrypt({ KeyId: keyId, Plaintext: Buffer.from('in the clear').toString('base64') })).CiphertextBlob;
    expect((await kms.Decrypt({ CiphertextBlob: blob })).Plaintext).toBe(Buffer.from('in the clear').toString('base64'));
    expect(values).toHaveLength(1); // unwrapped once, then cached
    expect(values[0]).toHaveLength(32);
    expect(isZero(values[0])).toBe(false); // in use: the material itself
    await kms.DisableKey({ KeyId: keyId });
    expect(isZero(values[0])).toBe(true);
  });
});

describe('plaintexts and data keys', () => {
  for (const level of ['SOFTWARE', 'HSM'] as const) {
    it(`${level}: the decoded plaintext of Encrypt is zero after the call`, async () => {
      const keyId = await createKey(level);
      const seen: Buffer[] = [];
      const real = kms.keyring.encrypt.bind(kms.keyring);
      vi.spyOn(kms.keyring, 'encrypt').mockImplementation((lvl, v, iv, aad, plaintext) => {
        seen.push(plaintext);
        return real(lvl, v, iv, aad, plaintext);
      });
      await kms.Encrypt({ KeyId: keyId, Plaintext: Buffer.from('secret payload').toString('base64') });
      expect(seen).toHaveLength(1);
      expect(isZero(seen[0])).toBe(true);
    });

    it(`${level}: the data key of GenerateDataKey and the plaintext Decrypt produced are zero after the calls`, async () => {
      const keyId = await createKey(level);
      const sealedInputs: Buffer[] = [];
      const opened: Buffer[] = [];
      const enc = kms.keyring.encrypt.bind(kms.keyring);
      const dec = kms.keyring.decrypt.bind(kms.keyring);
      vi.spyOn(kms.keyring, 'encrypt').mockImplementation((lvl, v, iv, aad, plaintext) => {
        sealedInputs.push(plaintext);
        return enc(lvl, v, iv, aad, plaintext);
      });
      vi.spyOn(kms.keyring, 'decrypt').mockImplementation(async (lvl, v, iv, aad, sealed) => {
        const r = await dec(lvl, v, iv, aad, sealed);
        opened.push(r);
        return r;
      });
      const dk = await kms.GenerateDataKey({ KeyId: keyId });
      expect(Buffer.from(dk.Plaintext, 'base64')).toHaveLength(32);
      const back = await kms.Decrypt({ CiphertextBlob: dk.CiphertextBlob });
      expect(back.Plaintext).toBe(dk.Plaintext);
      expect(sealedInputs).toHaveLength(1);
      expect(opened).toHaveLength(1);
      expect(isZero(sealedInputs[0])).toBe(true);
      expect(isZero(opened[0])).toBe(true);
    });
  }

  it('EncryptBatch: every item plaintext is zero after the call', async () => {
    const keyId = await createKey('SOFTWARE');
    const disabled = await createKey('HSM');
    await kms.DisableKey({ KeyId: disabled });
    const seen: Buffer[] = [];
    const real = kms.keyring.encryptMany.bind(kms.keyring);
    vi.spyOn(kms.keyring, 'encryptMany').mockImplementation((items) => {
      for (const it of items) seen.push(it.data);
      return real(items);
    });
    const batch = new BatchService(kms);
    const r = await batch.EncryptBatch({
      Items: [
        { KeyId: keyId, Plaintext: Buffer.from('first').toString('base64') },
        { KeyId: keyId, Plaintext: Buffer.from('second').toString('base64') },
        { KeyId: disabled, Plaintext: Buffer.from('to a disabled key').toString('base64') },
      ],
    });
    expect(r.Results.map((x) => x.Code)).toEqual(['', '', 'Rejected.Disabled']);
    expect(seen).toHaveLength(2);
    for (const b of seen) expect(isZero(b)).toBe(true);
  });
});
