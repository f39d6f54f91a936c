// The object index of HsmToken on a real SoftHSM token: a fresh context finds a key it has not
// walked to yet on its own (one C_FindObjects), the walk runs in slices with the event loop free
// between them, and after it presence and handles come from memory without any C_FindObjects;
// creating a new key version asks the token nothing; creations and destroys during a walk keep the
// inventory true; two objects under one label are ambiguous before and after the walk.

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HsmToken } from '../../src/hsm/token';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token';
import { wrapNative } from '../helpers/pkcs11-spy';

// A counter put on the native prototype before HsmToken.open sees every C_FindObjectsInit.
let finds = 0;
let restoreFindInit: () => void;

let softhsm: SoftHsmToken;
let maker: HsmToken;
const ids = Array.from({ length: 20 }, () => crypto.randomUUID());
const opened: HsmToken[] = [];
const open = () => {
  const t = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.userPin });
  opened.push(t);
  return t;
};

beforeAll(() => {
  restoreFindInit = wrapNative('C_FindObjectsInit', (real) =>
    function (this: unknown, ...args: unknown[]) {
      finds++;
      return real.apply(this, args);
    },
  );
  softhsm = createSoftHsmToken({ label: 'index' });
  maker = open();
  for (const id of ids) maker.generateAesKey('cmk', id);
});

afterAll(() => {
  restoreFindInit?.();
  for (const t of opened.reverse()) t.close();
  softhsm?.cleanup();
});

const iv = Buffer.alloc(12, 7);
const aad = Buffer.from('aad');

describe('HsmToken object index', () => {
  it('finds a key on its own before the walk, walks in slices with the event loop free, then needs no C_FindObjects', async () => {
    const t = open();
    expect(t.walked).toBe(false);
    finds = 0;
    const sealed = t.encryptGcm('cmk', ids[0], iv, aad, Buffer.from('before the walk'));
    expect(finds).toBe(1);
    expect(t.decryptGcm('cmk', ids[0], iv, aad, sealed).toString()).toBe('before the walk');
    expect(finds).toBe(1); // the handle is kept

    let turns = 0;
    let walking = true;
    const spin = () => {
      if (!walking) return;
      turns++;
      setImmediate(spin);
    };
    setImmediate(spin);
    finds = 0;
    await t.walkInBackground(4);
    walking = false;
    expect(finds).toBe(1); // one pass over the token
    // 20 CMKs plus nothing else: at least five slices of four, each after a turn of the event loop.
    expect(turns).toBeGreaterThanOrEqual(5);
    expect(t.walked).toBe(true);
    expect([...t.knownInventory().cmk].sort()).toEqual([...ids].sort());

    finds = 0;
    for (const id of ids) expect(t.decryptGcm('cmk', id, iv, aad, t.encryptGcm('cmk', id, iv, aad, Buffer.from(id))).toString()).toBe(id);
    expect(t.has('cmk', 'never-created')).toBe(false);
    expect(t.has('wrap', ids[1])).toBe(false);
    expect(finds).toBe(0);
  });

  it('generates a new key version before the walk without a C_FindObjects (SoftHSM would read every object for it), on the loop and off it', async () => {
    const t = open();
    expect(t.walked).toBe(false);
    finds = 0;
    const a = crypto.randomUUID();
    const b = crypto.randomUUID();
    t.generateAesKey('cmk', a);
    await t.generateAesKeyOffLoop('cmk', b);
    expect(finds).toBe(0);
    // An id the index knows is still refused, with nothing created.
    expect(() => t.generateAesKey('cmk', a)).toThrow(/already exists/);
    await expect(t.generateAesKeyOffLoop('cmk', b)).rejects.toThrow(/already exists/);
    expect(finds).toBe(0);
    expect(t.decryptGcm('cmk', b, iv, aad, t.encryptGcm('cmk', b, iv, aad, Buffer.from('new'))).toString()).toBe('new');
    expect(t.destroy('cmk', a)).toBe(1);
    expect(t.destroy('cmk', b)).toBe(1);
  });

  it('keeps the inventory true through a creation and a destroy made while the walk runs', async () => {
    const t = open();
    const walk = t.walkInBackground(2); // the token is listed now; the labels are read slice by slice
    const made = crypto.randomUUID();
    t.generateAesKey('cmk', made);
    expect(t.destroy('cmk', ids[19])).toBe(1);
    await walk;
    const inv = t.knownInventory();
    expect(inv.cmk.has(made)).toBe(true);
    expect(inv.cmk.has(ids[19])).toBe(false);
    expect(inv.cmk.size).toBe(ids.length);
    expect(t.has('cmk', ids[19])).toBe(false);
    expect(t.has('cmk', made)).toBe(true);
  });

  it('a label two objects share is ambiguous, before the walk and after it', async () => {
    const dup = crypto.randomUUID();
    maker.generateAesKey('cmk', dup);
    // The second object comes from outside kmsd (another application, a hand-made copy).
    const p11 = new pkcs11js.PKCS11();
    p11.load(softhsm.modulePath);
    try {
      p11.C_Initialize();
    } catch (e) {
      if (!String((e as Error).message).startsWith('CKR_CRYPTOKI_ALREADY_INITIALIZED')) throw e;
    }
    const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === softhsm.label)!;
    const s = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    p11.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN, parameter: null as unknown as Buffer }, [
      { type: pkcs11js.CKA_TOKEN, value: true },
      { type: pkcs11js.CKA_PRIVATE, value: true },
      { type: pkcs11js.CKA_ENCRYPT, value: true },
      { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
      { type: pkcs11js.CKA_LABEL, value: `kmsd:cmk:${dup}` },
    ]);
    p11.C_CloseSession(s);

    const before = open();
    expect(() => before.encryptGcm('cmk', dup, iv, aad, Buffer.from('x'))).toThrow(expect.objectContaining({ code: 'AMBIGUOUS' }));
    const after = open();
    await after.walkInBackground();
    expect(after.knownInventory().cmk.has(dup)).toBe(true);
    expect(() => after.encryptGcm('cmk', dup, iv, aad, Buffer.from('x'))).toThrow(expect.objectContaining({ code: 'AMBIGUOUS' }));
    expect(() => after.has('cmk', dup)).toThrow(expect.objectContaining({ code: 'AMBIGUOUS' }));
    expect(after.has('cmk', ids[0])).toBe(true);
  });
});
