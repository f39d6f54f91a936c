// The native AES-GCM addon (native/, src/hsm/native-addon.ts) against a throwaway SoftHSM token:
// agreement with node:crypto, tamper detection, per-item batch results, destroyed keys, close(),
// session recovery, every applicable Wycheproof AES-GCM case, and bounded memory over 100k ops.
//
// The JS side plays src/hsm's part: pkcs11js loads the module, initializes it with OS locking and
// logs in; the addon shares that module instance and login.

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ckrName, toHsmError } from '../../src/hsm/errors.js';
import {
  closeWorkerSessionsForTesting,
  isNativeError,
  loadNativeAddon,
  nativeAddonLoadError,
  type NativeAddon,
  type NativeAesGcm,
  type NativeError,
  type NativeItem,
} from '../../src/hsm/native-addon.js';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token.js';
import { loadWycheproof } from '../helpers/wycheproof.js';

const THREADS = 2;

// ---------------------------------------------------------------------------------------------
// Wycheproof AES-GCM vectors (aead_test_schema_v1.json): the 256-bit key, 96-bit IV, 128-bit tag ones.

interface GcmVector {
  tcId: number;
  comment: string;
  flags: string[];
  key: string;
  iv: string;
  aad: string;
  msg: string;
  ct: string;
  tag: string;
  result: 'valid' | 'invalid' | 'acceptable';
}

interface GcmGroup {
  keySize: number;
  ivSize: number;
  tagSize: number;
  tests: GcmVector[];
}

function loadGcmVectors(): GcmVector[] {
  return loadWycheproof<GcmGroup>('aes_gcm_test.json', 'aead_test_schema_v1.json').testGroups
    .filter((g) => g.keySize === 256 && g.ivSize === 96 && g.tagSize === 128)
    .flatMap((g) => g.tests);
}

const VECTORS = loadGcmVectors();
const hex = (s: string): Buffer => Buffer.from(s, 'hex');

// ---------------------------------------------------------------------------------------------
// Token, pkcs11js session, addon

let token: SoftHsmToken;
let p11: pkcs11js.PKCS11;
let session: Buffer;
let addon: NativeAddon;
let aes: NativeAesGcm;

/** An AES-256 session object with known material: sensitive, non-extractable, encrypt/decrypt. */
function createAesKey(value: Buffer, onToken = false): { handle: number; object: Buffer } {
  const object = p11.C_CreateObject(session, [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE, value },
    { type: pkcs11js.CKA_TOKEN, value: onToken },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
  ]);
  return { handle: Number(object.readBigUInt64LE(0)), object };
}

function referenceEncrypt(key: Buffer, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
  const c = crypto.createCipheriv('aes-256-gcm', key, iv);
  c.setAAD(aad);
  return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
}

/** A copy of `buf` with byte `index` XORed with `mask`. */
function flip(buf: Buffer, index: number, mask = 0x01): Buffer {
  const copy = Buffer.from(buf);
  copy[index] ^= mask;
  return copy;
}

/** The rejection of `p`, which must reject. */
async function rejection(p: Promise<unknown>): Promise<NativeError> {
  try {
    await p;
  } catch (e) {
    return e as NativeError;
  }
  throw new Error('expected the promise to reject');
}

beforeAll(() => {
  token = createSoftHsmToken({ label: 'native-addon' });
  p11 = new pkcs11js.PKCS11();
  p11.load(token.modulePath);
  // OS locking is required: the addon's workers call the module concurrently with this thread.
  p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  const slot = p11.C_GetSlotList(true).find((s) => Number(s.readBigUInt64LE(0)) === token.slotId);
  if (!slot) throw new Error(`slot ${token.slotId} not found`);
  session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  p11.C_Login(session, pkcs11js.CKU_USER, token.userPin);

  const loaded = loadNativeAddon();
  if (!loaded) throw new Error(`native addon not available: ${nativeAddonLoadError()}`);
  addon = loaded;
  aes = addon.open({ modulePath: token.modulePath, slotId: token.slotId, threads: THREADS });
});

afterAll(() => {
  // The addon first: its sessions must be gone before the module is finalized.
  aes?.close();
  if (p11) {
    try {
      p11.C_Logout(session);
      p11.C_CloseSession(session);
    } finally {
      p11.C_Finalize();
    }
  }
  token?.cleanup();
});

// ---------------------------------------------------------------------------------------------

describe('loading and opening', () => {
  it('loads the addon and reports the pool size', () => {
    expect(nativeAddonLoadError()).toBeUndefined();
    expect(aes.stats().threads).toBe(THREADS);
  });

  it('rejects a bad slot with the PKCS#11 error of C_OpenSession', () => {
    let err: NativeError | undefined;
    try {
      addon.open({ modulePath: token.modulePath, slotId: token.slotId + 1000, threads: 1 });
    } catch (e) {
      err = e as NativeError;
    }
    expect(err?.code).toBe('CKR_SLOT_ID_INVALID');
    expect(err?.pkcs11Function).toBe('C_OpenSession');
    expect(err?.rv).toBe(0x3);
  });

  it('rejects a module that cannot be loaded', () => {
    expect(() => addon.open({ modulePath: '/nonexistent/libpkcs11.so', slotId: token.slotId })).toThrow(
      expect.objectContaining({ code: 'MODULE_LOAD_FAILED' }),
    );
  });

  it('validates open() options', () => {
    for (const bad of [
      { modulePath: '', slotId: token.slotId },
      { modulePath: token.modulePath, slotId: -1 },
      { modulePath: token.modulePath, slotId: 1.5 },
      { modulePath: token.modulePath, slotId: token.slotId, threads: 0 },
      { modulePath: token.modulePath, slotId: token.slotId, threads: 257 },
    ]) {
      expect(() => addon.open(bad)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARG_VALUE' }));
    }
  });

  it('cannot be constructed from JS', () => {
    const Ctor = Object.getPrototypeOf(aes).constructor as new (...args: unknown[]) => unknown;
    expect(() => new Ctor()).toThrow(TypeError);
    expect(() => new Ctor({})).toThrow(TypeError);
  });

  it('names return values by the one table of src/hsm/errors.ts, unknown ones in hex', () => {
    expect(ckrName(0x40)).toBe('CKR_ENCRYPTED_DATA_INVALID');
    expect(ckrName(0x60)).toBe('CKR_KEY_HANDLE_INVALID');
    expect(ckrName(0xb3)).toBe('CKR_SESSION_HANDLE_INVALID');
    expect(ckrName(0x80000123)).toBe('CKR_0x80000123');
    // The addon's errors and pkcs11js's are named (and classified) by the same table.
    expect(toHsmError({ rv: 0x82, pkcs11Function: 'C_EncryptInit' })).toMatchObject({ code: 'CKR_OBJECT_HANDLE_INVALID', kind: 'KEY_MISSING', pkcs11Function: 'C_EncryptInit', rv: 0x82 });
    expect(toHsmError(new pkcs11js.Pkcs11Error('CKR_OBJECT_HANDLE_INVALID:130', 0x82, 'C_EncryptInit'))).toMatchObject({ code: 'CKR_OBJECT_HANDLE_INVALID', kind: 'KEY_MISSING', rv: 0x82 });
    expect(toHsmError({ rv: 0x80000123 })).toMatchObject({ code: 'CKR_0x80000123', kind: 'INTERNAL' });
  });
});

describe('encrypt / decrypt', () => {
  const keyValue = crypto.randomBytes(32);
  let key: number;
  beforeAll(() => {
    key = createAesKey(keyValue).handle;
  });

  it.each([0, 1, 15, 16, 17, 256, 4096, 1 << 20])('matches node:crypto for %i-byte plaintexts', async (size) => {
    const iv = crypto.randomBytes(12);
    const aad = crypto.randomBytes(size % 64);
    const plaintext = crypto.randomBytes(size);
    const ct = await aes.encrypt(key, iv, aad, plaintext);
    expect(Buffer.isBuffer(ct)).toBe(true);
    expect(ct.equals(referenceEncrypt(keyValue, iv, aad, plaintext))).toBe(true);
    const back = await aes.decrypt(key, iv, aad, ct);
    expect(Buffer.isBuffer(back)).toBe(true);
    expect(back.equals(plaintext)).toBe(true);
  });

  it('works on a token object too', async () => {
    const value = crypto.randomBytes(32);
    const { handle, object } = createAesKey(value, true);
    try {
      const iv = crypto.randomBytes(12);
      const ct = await aes.encrypt(handle, iv, Buffer.alloc(0), Buffer.from('token object'));
      expect(ct.equals(referenceEncrypt(value, iv, Buffer.alloc(0), Buffer.from('token object')))).toBe(true);
    } finally {
      p11.C_DestroyObject(session, object);
    }
  });

  it('keeps the inputs alive and unchanged', async () => {
    const iv = crypto.randomBytes(12);
    const aad = Buffer.from('context');
    const plaintext = crypto.randomBytes(300);
    const copies = [Buffer.from(iv), Buffer.from(aad), Buffer.from(plaintext)];
    const ct = await aes.encrypt(key, iv, aad, plaintext);
    expect([iv, aad, plaintext].every((b, i) => b.equals(copies[i]))).toBe(true);
    expect(ct.equals(referenceEncrypt(keyValue, iv, aad, plaintext))).toBe(true);
  });

  it('handles many concurrent calls, each with its own result', async () => {
    const calls = Array.from({ length: 2000 }, (_, i) => ({
      iv: crypto.randomBytes(12),
      aad: Buffer.from(`aad-${i}`),
      plaintext: crypto.randomBytes(i % 300),
    }));
    const cts = await Promise.all(calls.map((c) => aes.encrypt(key, c.iv, c.aad, c.plaintext)));
    cts.forEach((ct, i) => {
      const c = calls[i];
      expect(ct.equals(referenceEncrypt(keyValue, c.iv, c.aad, c.plaintext))).toBe(true);
    });
    const pts = await Promise.all(calls.map((c, i) => aes.decrypt(key, c.iv, c.aad, cts[i])));
    pts.forEach((pt, i) => expect(pt.equals(calls[i].plaintext)).toBe(true));
  });

  describe('tampering', () => {
    const iv = crypto.randomBytes(12);
    const aad = Buffer.from('header');
    const plaintext = Buffer.from('attack at dawn, bring snacks');
    let ct: Buffer;
    beforeAll(async () => {
      ct = await aes.encrypt(key, iv, aad, plaintext);
    });

    // SoftHSM 2.6.1 reports a failed tag check as CKR_GENERAL_ERROR (PKCS#11 says
    // CKR_ENCRYPTED_DATA_INVALID); the addon passes on whatever the module says.
    const TAG_FAILURE = 'CKR_GENERAL_ERROR';

    it.each([
      ['a ciphertext byte', (c: Buffer) => flip(c, 0)],
      ['a tag byte', (c: Buffer) => flip(c, c.length - 1, 0x80)],
      ['a truncated tag', (c: Buffer) => c.subarray(0, c.length - 1)],
    ])('rejects %s', async (_what, tamper) => {
      const err = await rejection(aes.decrypt(key, iv, aad, tamper(ct)));
      expect(err).toBeInstanceOf(Error);
      expect(err.code).toBe(TAG_FAILURE);
      expect(err.pkcs11Function).toBe('C_Decrypt');
      expect(err.rv).toBe(0x5);
    });

    it('rejects another AAD or IV', async () => {
      expect((await rejection(aes.decrypt(key, iv, Buffer.from('headeR'), ct))).code).toBe(TAG_FAILURE);
      expect((await rejection(aes.decrypt(key, crypto.randomBytes(12), aad, ct))).code).toBe(TAG_FAILURE);
    });

    it('rejects input shorter than a tag', async () => {
      for (const short of [Buffer.alloc(0), Buffer.alloc(15)]) {
        const err = await rejection(aes.decrypt(key, iv, aad, short));
        expect(err.pkcs11Function).toBe('C_Decrypt');
        expect(err.code).toMatch(/^CKR_/);
      }
    });

    it('still decrypts the original afterwards', async () => {
      expect((await aes.decrypt(key, iv, aad, ct)).equals(plaintext)).toBe(true);
    });
  });

  it('rejects bad arguments with a TypeError, without touching the token', async () => {
    const before = aes.stats();
    const iv = crypto.randomBytes(12);
    const b = Buffer.alloc(4);
    const cases: Array<[unknown, unknown, unknown, unknown]> = [
      [-1, iv, b, b],
      [1.5, iv, b, b],
      ['1', iv, b, b],
      [key, Buffer.alloc(16), b, b],
      [key, 'iv', b, b],
      [key, iv, null, b],
      [key, iv, b, undefined],
    ];
    for (const args of cases) {
      const err = await rejection(
        (aes.encrypt as (...a: unknown[]) => Promise<Buffer>)(...args),
      );
      expect(err).toBeInstanceOf(TypeError);
      expect(err.code).toBe('ERR_INVALID_ARG_VALUE');
    }
    expect(aes.stats()).toEqual(before);
  });
});

describe('batches', () => {
  const keyValue = crypto.randomBytes(32);
  let key: number;
  beforeAll(() => {
    key = createAesKey(keyValue).handle;
  });

  it('returns one result per item, errors in place', async () => {
    const iv = crypto.randomBytes(12);
    const aad = Buffer.from('aad');
    const good = (n: number): NativeItem => ({ handle: key, iv, aad, data: Buffer.alloc(n, n) });
    const items = [
      good(1),
      { handle: 0x7fff_fff0, iv, aad, data: Buffer.alloc(8) }, // no such object
      good(2),
      { handle: key, iv: Buffer.alloc(11), aad, data: Buffer.alloc(8) }, // 88-bit IV
      null,
      good(300),
    ] as unknown as NativeItem[];
    const results = await aes.encryptBatch(items);
    expect(results).toHaveLength(items.length);
    for (const i of [0, 2, 5]) {
      const r = results[i];
      expect(isNativeError(r)).toBe(false);
      const it = items[i];
      expect((r as Buffer).equals(referenceEncrypt(keyValue, it.iv, it.aad, it.data))).toBe(true);
    }
    expect(results[1]).toMatchObject({ code: 'CKR_OBJECT_HANDLE_INVALID', pkcs11Function: 'C_EncryptInit', rv: 0x82 });
    expect(results[3]).toBeInstanceOf(TypeError);
    expect(results[3]).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
    expect(results[4]).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });

    // Decrypt the good ones, one of them tampered.
    const back = await aes.decryptBatch([
      { handle: key, iv, aad, data: results[0] as Buffer },
      { handle: key, iv, aad, data: flip(results[2] as Buffer, 0) },
      { handle: key, iv, aad, data: results[5] as Buffer },
    ]);
    expect((back[0] as Buffer).equals(items[0].data)).toBe(true);
    expect(back[1]).toMatchObject({ code: 'CKR_GENERAL_ERROR', pkcs11Function: 'C_Decrypt' });
    expect((back[2] as Buffer).equals(items[5].data)).toBe(true);
  });

  it('resolves an empty batch and rejects a non-array', async () => {
    expect(await aes.encryptBatch([])).toEqual([]);
    const err = await rejection(aes.decryptBatch('nope' as unknown as NativeItem[]));
    expect(err.code).toBe('ERR_INVALID_ARG_VALUE');
  });

  it('agrees with single calls over a large batch', async () => {
    const items: NativeItem[] = Array.from({ length: 5000 }, (_, i) => ({
      handle: key,
      iv: crypto.randomBytes(12),
      aad: Buffer.from(String(i)),
      data: crypto.randomBytes(i % 97),
    }));
    const cts = await aes.encryptBatch(items);
    cts.forEach((ct, i) => {
      const it = items[i];
      expect((ct as Buffer).equals(referenceEncrypt(keyValue, it.iv, it.aad, it.data))).toBe(true);
    });
    const pts = await aes.decryptBatch(items.map((it, i) => ({ ...it, data: cts[i] as Buffer })));
    pts.forEach((pt, i) => expect((pt as Buffer).equals(items[i].data)).toBe(true));
  });
});

describe('failures the daemon must survive', () => {
  it('fails cleanly on a destroyed key and keeps going', async () => {
    const value = crypto.randomBytes(32);
    const { handle, object } = createAesKey(value);
    const iv = crypto.randomBytes(12);
    const ct = await aes.encrypt(handle, iv, Buffer.alloc(0), Buffer.from('short-lived'));
    p11.C_DestroyObject(session, object);

    const encErr = await rejection(aes.encrypt(handle, iv, Buffer.alloc(0), Buffer.from('x')));
    expect(['CKR_KEY_HANDLE_INVALID', 'CKR_OBJECT_HANDLE_INVALID']).toContain(encErr.code);
    expect(encErr.pkcs11Function).toBe('C_EncryptInit');
    const decErr = await rejection(aes.decrypt(handle, iv, Buffer.alloc(0), ct));
    expect(['CKR_KEY_HANDLE_INVALID', 'CKR_OBJECT_HANDLE_INVALID']).toContain(decErr.code);
    expect(decErr.pkcs11Function).toBe('C_DecryptInit');

    // The same workers carry on with a live key.
    const fresh = createAesKey(value);
    expect((await aes.encrypt(fresh.handle, iv, Buffer.alloc(0), Buffer.from('short-lived'))).equals(ct)).toBe(true);
  });

  it('reopens worker sessions closed behind its back and retries once', async () => {
    const value = crypto.randomBytes(32);
    const { handle } = createAesKey(value);
    const iv = crypto.randomBytes(12);
    const before = aes.stats().sessionsReopened;

    expect(closeWorkerSessionsForTesting(aes)).toBe(THREADS);
    const ct = await aes.encrypt(handle, iv, Buffer.alloc(0), Buffer.from('after a reset'));
    expect(ct.equals(referenceEncrypt(value, iv, Buffer.alloc(0), Buffer.from('after a reset')))).toBe(true);
    expect(aes.stats().sessionsReopened).toBe(before + 1);

    // Every worker recovers, whichever jobs it picks up.
    const items = Array.from({ length: 200 }, () => ({ handle, iv, aad: Buffer.alloc(0), data: Buffer.from('x') }));
    const results = await aes.encryptBatch(items);
    expect(results.every((r) => !isNativeError(r))).toBe(true);
    expect(aes.stats().sessionsReopened).toBeLessThanOrEqual(before + THREADS);
  });

  it('single calls started in one piece of JS all reach the workers, and fail CLOSED if closed first', async () => {
    const value = crypto.randomBytes(32);
    const { handle } = createAesKey(value);
    const iv = crypto.randomBytes(12);
    // Started back to back without yielding: they go to the workers together once this code returns.
    const pts = Array.from({ length: 50 }, (_, i) => Buffer.from(`single ${i}`));
    const outs = await Promise.all(pts.map((pt) => aes.encrypt(handle, iv, Buffer.alloc(0), pt)));
    outs.forEach((out, i) => expect(out.equals(referenceEncrypt(value, iv, Buffer.alloc(0), pts[i]))).toBe(true));

    // Closed in the same piece of JS that started them, before they were handed over: each one
    // settles CLOSED (none hangs, none runs after close), and the process keeps no handle open.
    const other = addon.open({ modulePath: token.modulePath, slotId: token.slotId, threads: 1 });
    const pending = Array.from({ length: 20 }, (_, i) => (i % 2 ? other.decrypt(handle, iv, Buffer.alloc(0), Buffer.alloc(17)) : other.encrypt(handle, iv, Buffer.alloc(0), Buffer.alloc(1))));
    other.close();
    for (const p of pending) expect((await rejection(p)).code).toBe('CLOSED');
    expect(other.stats().encrypt + other.stats().decrypt).toBe(0);
  });

  it('close() is idempotent; later and queued calls fail with CLOSED', async () => {
    const value = crypto.randomBytes(32);
    const { handle } = createAesKey(value);
    const other = addon.open({ modulePath: token.modulePath, slotId: token.slotId, threads: 1 });
    const iv = crypto.randomBytes(12);
    expect(await other.encrypt(handle, iv, Buffer.alloc(0), Buffer.alloc(1))).toHaveLength(17);

    // A batch in flight at close(): every item either ran or failed with CLOSED.
    const inFlight = other.encryptBatch(
      Array.from({ length: 2000 }, () => ({ handle, iv, aad: Buffer.alloc(0), data: Buffer.alloc(64) })),
    );
    other.close();
    other.close();
    const results = await inFlight;
    expect(results).toHaveLength(2000);
    for (const r of results) {
      if (isNativeError(r)) expect(r.code).toBe('CLOSED');
      else expect(r).toHaveLength(80);
    }

    expect((await rejection(other.encrypt(handle, iv, Buffer.alloc(0), Buffer.alloc(1)))).code).toBe('CLOSED');
    expect((await rejection(other.decrypt(handle, iv, Buffer.alloc(0), Buffer.alloc(17)))).code).toBe('CLOSED');
    expect(other.stats().encrypt).toBe(1 + results.filter((r) => !isNativeError(r)).length);
    expect((await rejection(other.encryptBatch([]))).code).toBe('CLOSED');
    expect((await rejection(other.decryptBatch([]))).code).toBe('CLOSED');
    expect(other.stats().encrypt).toBeGreaterThanOrEqual(1);
    expect(closeWorkerSessionsForTesting(other)).toBe(0);

    // The shared pool is unaffected.
    expect(await aes.encrypt(handle, iv, Buffer.alloc(0), Buffer.alloc(1))).toHaveLength(17);
  });
});

describe('Wycheproof aes_gcm_test.json (256-bit key, 96-bit IV, 128-bit tag)', () => {
  const handles = new Map<number, number>();
  beforeAll(() => {
    expect(VECTORS.length).toBeGreaterThan(0);
    for (const v of VECTORS) handles.set(v.tcId, createAesKey(hex(v.key)).handle);
  });

  for (const v of VECTORS) {
    it(`tcId ${v.tcId} (${v.result}${v.comment ? `: ${v.comment}` : ''})`, async () => {
      const handle = handles.get(v.tcId)!;
      const [iv, aad, msg, ctTag] = [hex(v.iv), hex(v.aad), hex(v.msg), hex(v.ct + v.tag)];
      if (v.result === 'valid') {
        expect((await aes.encrypt(handle, iv, aad, msg)).toString('hex')).toBe(v.ct + v.tag);
        expect((await aes.decrypt(handle, iv, aad, ctTag)).toString('hex')).toBe(v.msg);
      } else {
        const err = await rejection(aes.decrypt(handle, iv, aad, ctTag));
        expect(err.pkcs11Function).toBe('C_Decrypt');
      }
    });
  }

  it('gives the same answers through the batch API', async () => {
    const items = VECTORS.map((v) => ({ handle: handles.get(v.tcId)!, iv: hex(v.iv), aad: hex(v.aad), data: hex(v.ct + v.tag) }));
    const results = await aes.decryptBatch(items);
    VECTORS.forEach((v, i) => {
      const r = results[i];
      if (v.result === 'valid') expect((r as Buffer).toString('hex'), `tcId ${v.tcId}`).toBe(v.msg);
      else expect(isNativeError(r), `tcId ${v.tcId}`).toBe(true);
    });
  });
});

describe('resources', () => {
  // KMSD_NATIVE_LEAK_OPS shrinks the run under valgrind (scripts/valgrind-addon.sh).
  const OPS = Number(process.env['KMSD_NATIVE_LEAK_OPS'] ?? 100_000);
  const BATCH = 5_000;

  it(`keeps RSS bounded over ${OPS} operations`, async () => {
    const value = crypto.randomBytes(32);
    const { handle } = createAesKey(value);
    const iv = crypto.randomBytes(12);
    const aad = Buffer.from('leak-check');
    const plaintext = crypto.randomBytes(256);
    const expected = referenceEncrypt(value, iv, aad, plaintext);
    const round = async (n: number): Promise<void> => {
      const enc = await aes.encryptBatch(Array.from({ length: n }, () => ({ handle, iv, aad, data: plaintext })));
      const dec = await aes.decryptBatch(enc.map((ct) => ({ handle, iv, aad, data: ct as Buffer })));
      expect((enc[n - 1] as Buffer).equals(expected)).toBe(true);
      expect((dec[n - 1] as Buffer).equals(plaintext)).toBe(true);
    };

    // Each round is n encryptions plus n decryptions.
    const run = async (ops: number): Promise<number> => {
      let done = 0;
      while (ops - done >= 2) {
        const n = Math.min(BATCH, Math.floor((ops - done) / 2));
        await round(n);
        done += 2 * n;
      }
      return done;
    };

    await run(Math.min(OPS, 20_000)); // warm-up: V8 heap, malloc arenas, SoftHSM's caches
    const gc = (globalThis as { gc?: () => void }).gc;
    gc?.();
    const rssBefore = process.memoryUsage().rss;
    const statsBefore = aes.stats();
    const done = await run(OPS);
    gc?.();
    const grown = process.memoryUsage().rss - rssBefore;
    const statsAfter = aes.stats();

    expect(done).toBe(OPS - (OPS % 2));
    expect(statsAfter.encrypt + statsAfter.decrypt - statsBefore.encrypt - statsBefore.decrypt).toBe(done);
    expect(grown).toBeLessThan(64 * 1024 * 1024);
  });
});
