// HsmToken recovers from losing its session (src/hsm/token.ts withSession/withObject): when the
// module closes every session of the slot, SoftHSM also forgets every object handle, so the token
// must look its objects up again rather than retry with the handles it had cached.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDevToken } from '../../src/hsm/dev-token';
import { HsmToken } from '../../src/hsm/token';
import { countNative } from '../helpers/pkcs11-spy';

let dir: string;
let token: HsmToken;
let opts: ReturnType<typeof ensureDevToken>;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-session-recovery-'));
  opts = ensureDevToken(dir);
  token = HsmToken.open(opts);
});

afterAll(() => {
  token?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

/** What a module reset looks like from inside the process: every session of the slot closed. */
function closeAllSessions(): void {
  const p11 = new pkcs11js.PKCS11();
  p11.load(opts.modulePath); // the same module instance (dlopen), already initialized by the token
  const slot = p11.C_GetSlotList(true).find((s) => p11.C_GetTokenInfo(s).label.trim() === opts.tokenLabel);
  if (!slot) throw new Error('dev token slot not found');
  p11.C_CloseAllSessions(slot);
}

describe('after the module closed every session (and forgot every handle)', () => {
  it('CMK encrypt/decrypt, HMAC and root-key wrap all work again, with the same keys', () => {
    const id = crypto.randomUUID();
    token.generateAesKey('cmk', id);
    const macId = crypto.randomUUID();
    token.generateMacKey(macId);
    const rootId = crypto.randomUUID();
    token.ensureRootKey(rootId);
    const iv = crypto.randomBytes(12);
    const aad = Buffer.from('aad');
    const pt = Buffer.from('made before the reset');
    const sealed = token.encryptGcm('cmk', id, iv, aad, pt);
    const mac = token.hmacSha256(macId, Buffer.from('data'));
    const soft = token.generateTransientExtractableAesKey();
    const wrapped = token.wrapUnderRoot(rootId, soft);
    token.destroyTransient(soft);
    const material = token.unwrapFromRoot(rootId, wrapped);

    closeAllSessions();
    expect(token.decryptGcm('cmk', id, iv, aad, sealed).equals(pt)).toBe(true);
    closeAllSessions();
    expect(token.decryptGcm('cmk', id, iv, aad, token.encryptGcm('cmk', id, iv, aad, pt)).equals(pt)).toBe(true);
    closeAllSessions();
    expect(token.hmacSha256(macId, Buffer.from('data')).equals(mac)).toBe(true);
    closeAllSessions();
    expect(token.unwrapFromRoot(rootId, wrapped).equals(material)).toBe(true);
    material.fill(0);
    token.destroy('cmk', id);
  });
});

describe('off-loop generations (CreateKey)', () => {
  it('reuse their sessions instead of opening and closing one each, and get a new one, logged in, when the module closed them', async () => {
    // The counters see only pkcs11js instances made after they are installed: a second HsmToken on the same module.
    const { calls, restore } = countNative(['C_OpenSession', 'C_CloseSession']);
    const counted = HsmToken.open(opts);
    try {
      const ids = Array.from({ length: 12 }, () => crypto.randomUUID());
      calls.C_OpenSession = calls.C_CloseSession = 0;
      for (let i = 0; i < ids.length; i += 2) await Promise.all([counted.generateAesKeyOffLoop('cmk', ids[i]), counted.generateAesKeyOffLoop('cmk', ids[i + 1])]);
      // Two at a time: two sessions, opened once, never closed.
      expect(calls).toEqual({ C_OpenSession: 2, C_CloseSession: 0 });

      closeAllSessions();
      const after = crypto.randomUUID();
      await counted.generateAesKeyOffLoop('cmk', after);
      const iv = crypto.randomBytes(12);
      const sealed = counted.encryptGcm('cmk', after, iv, Buffer.alloc(0), Buffer.from('x'));
      expect(counted.decryptGcm('cmk', after, iv, Buffer.alloc(0), sealed).toString()).toBe('x');
      for (const id of [...ids, after]) counted.destroy('cmk', id);
    } finally {
      restore();
      counted.close();
    }
  });
});

describe('CMK key objects', () => {
  it('are read-only, whether generated in the token or persisted from an unwrapped (transient) key', () => {
    const generated = crypto.randomUUID();
    token.generateAesKey('cmk', generated);
    const imported = crypto.randomUUID();
    const transient = token.generateTransientExtractableAesKey();
    try {
      token.persistTransient(transient, 'cmk', imported);
    } finally {
      token.destroyTransient(transient);
    }
    for (const id of [generated, imported]) {
      expect(token.keyAttributes('cmk', id)).toEqual({ sensitive: true, extractable: false, token: true, modifiable: false });
      token.destroy('cmk', id);
    }
  });
});
