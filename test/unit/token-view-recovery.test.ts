// A module whose view of the token went bad is read again (src/hsm/token.ts staleOr, reload).
// A C_Login in any process (an operator's pkcs11-tool, a second kmsd) truncates and rewrites the
// token's token.object, and a SoftHSM process reading it at that moment can take the torn copy for a
// corrupt file. SoftHSM then marks the whole token invalid in that process,
// for good: from then on every object creation answers CKR_GENERAL_ERROR, until C_Finalize. Seen
// both in kmsd (a CreateKey of the crash suite) and in pkcs11-tool under load. The torn read is made
// here on purpose: token.object is corrupt during one C_GetTokenInfo of kmsd's, and whole again after.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureDevToken } from '../../src/hsm/dev-token';
import { HsmToken } from '../../src/hsm/token';
import { hsmErrorOf } from '../helpers/errors';
import { wrapNative } from '../helpers/pkcs11-spy';

let dir: string;
let token: HsmToken;
let tokenObject: string;
let generationFile: string;
let tornNext = false;
let probeKey = '';
let restoreNative: () => void;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-view-recovery-'));
  const opts = ensureDevToken(dir);
  const tokens = path.join(dir, 'softhsm', 'tokens');
  const [uuid] = fs.readdirSync(tokens);
  tokenObject = path.join(tokens, uuid, 'token.object');
  generationFile = path.join(tokens, uuid, 'generation');
  restoreNative = wrapNative('C_GetTokenInfo', (real) =>
    function (this: unknown, ...args: unknown[]) {
      if (!tornNext) return real.apply(this, args);
      tornNext = false;
      const whole = fs.readFileSync(tokenObject);
      // What a reader finds mid-rewrite: a newer generation number, then an attribute cut short.
      const torn = Buffer.alloc(19);
      torn.writeBigUInt64BE(whole.readBigUInt64BE(0) + 1n, 0);
      torn.writeBigUInt64BE(3n, 8);
      fs.writeFileSync(tokenObject, torn);
      try {
        return real.apply(this, args);
      } finally {
        fs.writeFileSync(tokenObject, whole);
        // And another process created an object meanwhile: the next look at the token re-indexes it
        // before token.object is read again, and finds the copy it holds marked corrupt.
        const generation = fs.readFileSync(generationFile);
        generation.writeBigUInt64BE(generation.readBigUInt64BE(0) + 1n, 0);
        fs.writeFileSync(generationFile, generation);
      }
    },
  );
  token = HsmToken.open(opts);
  const workers = token.startWorkers(2);
  if (!workers.started) throw new Error(`the native addon's workers did not start: ${workers.reason}`);
});

afterAll(() => {
  token?.close();
  restoreNative?.();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('a module that read a torn token.object', () => {
  /** One C_GetTokenInfo that reads token.object torn, then a look at an object, which re-indexes the token. */
  function tornRead(probe: string): void {
    tornNext = true;
    const err = hsmErrorOf(() => token.tokenInfo());
    expect(tornNext).toBe(false);
    // Retryable for the caller (ServiceUnavailable.Hsm), never an internal error.
    expect(err.kind).toBe('TOKEN_GONE');
    expect(token.keyAttributes('cmk', probe).sensitive).toBe(true);
  }

  it('answers the call that read it with a retryable error; CMK generation, which the module then refuses, works after the token is read again', async () => {
    const before = crypto.randomUUID();
    await token.generateAesKeyOffLoop('cmk', before);
    tornRead(before);
    // Encrypts on the addon's workers keep coming while the token is read again (the workers are
    // replaced): none of them fails.
    const iv0 = crypto.randomBytes(12);
    let stop = false;
    let encrypted = 0;
    const load = (async () => {
      while (!stop) {
        await Promise.all(Array.from({ length: 256 }, () => token.encrypt(before, iv0, Buffer.alloc(0), Buffer.from('during'))));
        encrypted += 256;
      }
    })();
    const ids = Array.from({ length: 4 }, () => crypto.randomUUID());
    try {
      for (const id of ids) await token.generateAesKeyOffLoop('cmk', id);
    } finally {
      stop = true;
      await load;
    }
    expect(encrypted).toBeGreaterThan(0);
    expect(token.tokenInfo().label).toBe('kmsd-dev');
    const iv = crypto.randomBytes(12);
    for (const id of [before, ...ids]) {
      const sealed = token.encryptGcm('cmk', id, iv, Buffer.alloc(0), Buffer.from(id));
      expect(token.decryptGcm('cmk', id, iv, Buffer.alloc(0), sealed).toString()).toBe(id);
    }
    probeKey = before;
  });

  it('the same for a wrapping key pair (GetParametersForImport)', async () => {
    // The token is read again at most once a second.
    await new Promise((r) => setTimeout(r, 1100));
    tornRead(probeKey);
    const spki = await token.generateWrappingKeyPairOffLoop(crypto.randomUUID(), 2048, false);
    expect(crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' }).asymmetricKeyDetails?.modulusLength).toBe(2048);
  });

  it('a session key made before the token was read again ended with its session: using it is a retryable STALE_VIEW, never an internal error', async () => {
    const rootId = crypto.randomUUID();
    token.ensureRootKey(rootId);
    await new Promise((r) => setTimeout(r, 1100));
    const transient = token.generateTransientExtractableAesKey();
    tornRead(probeKey);
    await token.generateAesKeyOffLoop('cmk', crypto.randomUUID()); // refused by the module, made again after the re-read
    const uses: Array<[string, () => unknown]> = [
      ['fingerprint', () => token.fingerprint(transient, 'a-cmk')],
      ['persistTransient', () => token.persistTransient(transient, 'cmk', crypto.randomUUID())],
      ['wrapUnderRoot', () => token.wrapUnderRoot(rootId, transient)],
      ['encryptGcmTransient', () => token.encryptGcmTransient(transient, crypto.randomBytes(12), Buffer.alloc(0), Buffer.alloc(16))],
    ];
    for (const [name, use] of uses) expect(hsmErrorOf(use, name).code, name).toBe('STALE_VIEW');
    token.destroyTransient(transient);
  });
});
