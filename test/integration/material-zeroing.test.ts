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
import { wrapNative } from '../helpers/pkcs11-spy';
import { MaterialLengthError, probeCapabilities, unwrapKeyMaterial, type HsmCapabilities, type UnwrapPlan } from '../../src/hsm/unwrap';
import crypto from 'node:crypto';

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };
const isZero = (b: Buffer) => b.length > 0 && b.every((x) => x === 0);

let softhsm: SoftHsmToken;
let token: HsmToken;
let store: SqliteStore;
let dataDir: string;
let kms: KmsService;

// A recorder put on the native prototype before HsmToken.open sees every CKA_VALUE Buffer the
// token's C_GetAttributeValue returns.
let attributeValues: Buffer[] | null = null;
let restoreGetAttributeValue: () => void;

beforeAll(async () => {
  restoreGetAttributeValue = wrapNative<(...args: unknown[]) => pkcs11js.Attribute[]>('C_GetAttributeValue', (real) =>
    function (this: unknown, ...args: unknown[]) {
      const out = real.apply(this, args);
      for (const a of out) if (attributeValues && a.type === pkcs11js.CKA_VALUE && Buffer.isBuffer(a.value)) attributeValues.push(a.value);
      return out;
    },
  );
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
  restoreGetAttributeValue?.();
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

// The host-assisted unwrap paths hold the key material (or the ephemeral key of RSA_AES_KEY_WRAP) in
// kmsd for a moment: the Buffer handed to the token must be zero once the key is in it, on each path.
describe('host-assisted unwrap: material held in kmsd', () => {
  const wrapId = 'host-material';
  let caps: HsmCapabilities;
  let pub: crypto.KeyObject;

  beforeAll(() => {
    caps = probeCapabilities(token, token.tokenInfo().mechanisms);
    expect(caps.rsaUnwrap.OAEP_SHA_1).toBe(true);
    pub = crypto.createPublicKey({ key: token.generateWrappingKeyPair(wrapId, 2048, true, false), format: 'der', type: 'spki' });
  });
  afterAll(() => token?.destroyTransientPair(wrapId));

  const oaep = (msg: Buffer, oaepHash = 'sha256') => crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash }, msg);
  const kwp = (kek: Buffer, msg: Buffer) => {
    const c = crypto.createCipheriv('id-aes256-wrap-pad', kek, Buffer.from('A65959A6', 'hex'));
    return Buffer.concat([c.update(msg), c.final()]);
  };
  /** Every Buffer createTransientAesKey was given, as the call saw it. */
  function recordMaterial(): Buffer[] {
    const given: Buffer[] = [];
    const real = token.createTransientAesKey.bind(token);
    vi.spyOn(token, 'createTransientAesKey').mockImplementation((value, usage, extractable) => {
      given.push(value);
      return real(value, usage, extractable);
    });
    return given;
  }
  const plan = (algorithm: UnwrapPlan['algorithm'], path: UnwrapPlan['path']): UnwrapPlan => ({ algorithm, path });

  it('host-assisted: the decoded 32 bytes are zero once they are a token key', () => {
    const given = recordMaterial();
    const key = unwrapKeyMaterial(token, caps, wrapId, plan('RSAES_OAEP_SHA_256', 'host-assisted'), oaep(crypto.randomBytes(32)), false);
    token.destroyTransient(key);
    expect(given).toHaveLength(1);
    expect(isZero(given[0])).toBe(true);
  });

  it('host-assisted: material of another length creates nothing and is a length error', () => {
    const given = recordMaterial();
    expect(() => unwrapKeyMaterial(token, caps, wrapId, plan('RSAES_OAEP_SHA_256', 'host-assisted'), oaep(crypto.randomBytes(16)), false)).toThrow(MaterialLengthError);
    expect(given).toHaveLength(0);
  });

  it('composed-host-assisted: the ephemeral key decoded in kmsd is zero once it is a token key', () => {
    const given = recordMaterial();
    const ephemeral = crypto.randomBytes(32);
    const wrapped = Buffer.concat([oaep(ephemeral), kwp(ephemeral, crypto.randomBytes(32))]);
    const key = unwrapKeyMaterial(token, caps, wrapId, plan('RSA_AES_KEY_WRAP_SHA_256', 'composed-host-assisted'), wrapped, false);
    token.destroyTransient(key);
    expect(given).toHaveLength(1);
    expect(isZero(given[0])).toBe(true);
  });

  it('composed-host-assisted-kwp: the material unwrapped in kmsd is zero once it is a token key', () => {
    const given = recordMaterial();
    const ephemeral = crypto.randomBytes(32);
    // The ephemeral key is unwrapped in the token: with SHA-1, which SoftHSM's RSA-OAEP has.
    const wrapped = Buffer.concat([oaep(ephemeral, 'sha1'), kwp(ephemeral, crypto.randomBytes(32))]);
    const key = unwrapKeyMaterial(token, caps, wrapId, plan('RSA_AES_KEY_WRAP_SHA_1', 'composed-host-assisted-kwp'), wrapped, false);
    token.destroyTransient(key);
    expect(given).toHaveLength(1);
    expect(isZero(given[0])).toBe(true);
  });

  it('composed-host-assisted-kwp: material of another length creates nothing and is a length error', () => {
    const given = recordMaterial();
    const ephemeral = crypto.randomBytes(32);
    const wrapped = Buffer.concat([oaep(ephemeral, 'sha1'), kwp(ephemeral, crypto.randomBytes(24))]);
    expect(() => unwrapKeyMaterial(token, caps, wrapId, plan('RSA_AES_KEY_WRAP_SHA_1', 'composed-host-assisted-kwp'), wrapped, false)).toThrow(MaterialLengthError);
    expect(given).toHaveLength(0);
  });
});
