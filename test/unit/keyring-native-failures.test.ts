// How HSM-level failures from the native addon reach the domain, single and batched: the token
// context's data path (src/hsm/data-path.ts) classifies them, the Keyring turns a missing key into
// Rejected.KeyMaterialMissing. Stand-ins for the token's lookups and the addon's workers. Material destroyed while a request is in flight can surface from
// SoftHSM as a stale handle or, in the race inside C_EncryptInit, as whatever the dying object
// answered (CKR_KEY_FUNCTION_NOT_PERMITTED, CKR_KEY_TYPE_INCONSISTENT): all of them must become
// Rejected.KeyMaterialMissing once the object is gone, and stay internal errors while it is not.

import { describe, expect, it } from 'vitest';
import { CmkDataPath, type CmkObjects } from '../../src/hsm/data-path';
import { DecryptFailedError, HsmError } from '../../src/hsm/errors';
import type { NativeAesGcm } from '../../src/hsm/native-addon';
import type { HsmToken } from '../../src/hsm/token';
import { KmsError } from '../../src/kms/errors';
import { Keyring, type GcmItem } from '../../src/kms/keyring';
import type { KeyVersionRow, Store } from '../../src/store/api';

const ver: KeyVersionRow = { version_id: '11111111-1111-4111-8111-111111111111', key_id: '22222222-2222-4222-8222-222222222222', creation_date: 0, software_wrapped: null, material_state: 'Present' };

/** What the addon rejects with: the bare return value and the function. */
const RV = { CKR_OBJECT_HANDLE_INVALID: 0x82, CKR_KEY_FUNCTION_NOT_PERMITTED: 0x68, CKR_KEY_TYPE_INCONSISTENT: 0x63, CKR_GENERAL_ERROR: 0x5 } as const;
function ckr(code: keyof typeof RV): Error {
  return Object.assign(new Error(`C_EncryptInit failed: rv ${RV[code]}`), { code: 'PKCS11_ERROR', rv: RV[code], pkcs11Function: 'C_EncryptInit' });
}

function setup(opts: { present: () => boolean; handle?: () => number; fail: (i: number) => Error | null }) {
  let lookups = 0;
  const objects: CmkObjects = {
    has: () => (lookups++, opts.present()),
    shared: false,
    refresh: () => undefined,
    reload: () => Promise.resolve(),
    reloading: null,
    numericHandle: () => {
      if (!opts.present()) throw new HsmError('token object cmk/x not found', 'NOT_FOUND');
      return opts.handle?.() ?? 7;
    },
    encryptGcm: () => {
      throw new Error('the pkcs11js path is not used while the workers run');
    },
    decryptGcm: () => {
      throw new Error('the pkcs11js path is not used while the workers run');
    },
  };
  const result = (i: number, data: Buffer) => opts.fail(i) ?? Buffer.concat([data, Buffer.alloc(16)]);
  const native = {
    encrypt: async (_h, _iv, _aad, data) => {
      const r = result(0, data);
      if (r instanceof Error) throw r;
      return r;
    },
    decrypt: async (_h, _iv, _aad, data) => {
      const r = result(0, data);
      if (r instanceof Error) throw r;
      return r;
    },
    encryptBatch: async (items) => items.map((it, i) => result(i, it.data)),
    decryptBatch: async (items) => items.map((it, i) => result(i, it.data)),
    stats: () => ({ encrypt: 0, decrypt: 0, sessionsReopened: 0, threads: 2 }),
    close: () => undefined,
  } as NativeAesGcm;
  const path = new CmkDataPath(objects);
  path.attachWorkers(native);
  // The token context's data path methods, as HsmToken delegates them.
  const token = {
    encrypt: path.encrypt.bind(path),
    decrypt: path.decrypt.bind(path),
    encryptMany: path.encryptMany.bind(path),
    decryptMany: path.decryptMany.bind(path),
    dataPathInfo: path.info.bind(path),
  } as unknown as HsmToken;
  const keyring = new Keyring(token, {} as Store);
  return { keyring, lookups: () => lookups };
}

const item = (): GcmItem => ({ level: 'HSM', v: ver, iv: Buffer.alloc(12), aad: Buffer.alloc(0), data: Buffer.from('x') });

describe('Keyring: native failures', () => {
  it('a stale handle is Rejected.KeyMaterialMissing', async () => {
    const { keyring } = setup({ present: () => false, fail: () => ckr('CKR_OBJECT_HANDLE_INVALID') });
    const e = await keyring.encrypt('HSM', ver, Buffer.alloc(12), Buffer.alloc(0), Buffer.from('x')).catch((x) => x);
    expect(e).toBeInstanceOf(KmsError);
    expect(e.code).toBe('Rejected.KeyMaterialMissing');
    expect(e.message).toContain(ver.version_id);
  });

  it('a racing CKR_KEY_FUNCTION_NOT_PERMITTED is KeyMaterialMissing when the object is gone, an internal HsmError when it is not', async () => {
    let present = true;
    const { keyring } = setup({ present: () => present, fail: () => ckr('CKR_KEY_FUNCTION_NOT_PERMITTED') });
    const internal = await keyring.encrypt('HSM', ver, Buffer.alloc(12), Buffer.alloc(0), Buffer.from('x')).catch((x) => x);
    expect(internal).toBeInstanceOf(HsmError);
    expect(internal.code).toBe('CKR_KEY_FUNCTION_NOT_PERMITTED');
    present = false;
    const [gone] = await keyring.encryptMany([item()]).then((r) => r, (x) => [x]);
    // The handle lookup for the batch itself now fails: same answer.
    expect(gone).toBeInstanceOf(KmsError);
    expect((gone as KmsError).code).toBe('Rejected.KeyMaterialMissing');
  });

  it('an object replaced under the request (another handle now) counts as gone', async () => {
    let handle = 7;
    const { keyring } = setup({ present: () => true, handle: () => handle, fail: () => ((handle = 8), ckr('CKR_KEY_TYPE_INCONSISTENT')) });
    const e = await keyring.encrypt('HSM', ver, Buffer.alloc(12), Buffer.alloc(0), Buffer.from('x')).catch((x) => x);
    expect(e.code).toBe('Rejected.KeyMaterialMissing');
  });

  it('in a batch, each item gets its own result; the token is asked once per version, not per item', async () => {
    let present = true;
    const { keyring, lookups } = setup({ present: () => present, fail: (i) => (i % 2 ? ((present = false), ckr('CKR_KEY_FUNCTION_NOT_PERMITTED')) : null) });
    const out = await keyring.encryptMany(Array.from({ length: 100 }, item));
    expect(out.filter((r) => Buffer.isBuffer(r))).toHaveLength(50);
    const errs = out.filter((r): r is KmsError => r instanceof KmsError);
    expect(errs).toHaveLength(50);
    expect(new Set(errs.map((x) => x.code))).toEqual(new Set(['Rejected.KeyMaterialMissing']));
    expect(lookups()).toBe(1);
    expect(keyring.stats.hsmEncryptNative).toBe(100);
  });

  it('authentication failures stay DecryptFailedError while the key is there', async () => {
    const { keyring } = setup({ present: () => true, fail: () => ckr('CKR_GENERAL_ERROR') });
    const [r] = await keyring.decryptMany([item()]);
    expect(r).toBeInstanceOf(DecryptFailedError);
    expect(keyring.stats.hsmDecryptNative).toBe(1);
  });

  it('a closed addon is HsmError CLOSED (the API answers ServiceUnavailable.Hsm)', async () => {
    const { keyring } = setup({ present: () => true, fail: () => Object.assign(new Error('the native AES-GCM context is closed'), { code: 'CLOSED' }) });
    const [r] = await keyring.encryptMany([item()]);
    expect(r).toBeInstanceOf(HsmError);
    expect((r as HsmError).code).toBe('CLOSED');
  });
});
