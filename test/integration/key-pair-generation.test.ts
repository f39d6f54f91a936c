// HsmToken.generateWrappingKeyPairOffLoop on a real SoftHSM token: the event loop keeps turning
// while RSA pairs are generated, at most MAX_KEY_PAIR_GENERATIONS run at once (the rest queue), every
// pair lands in the token, and drain() resolves only after the generations have finished.

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HsmToken, MAX_KEY_PAIR_GENERATIONS } from '../../src/hsm/token';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token';
import { wrapNative } from '../helpers/pkcs11-spy';

// C_GenerateKeyPairAsync ends in the native C_GenerateKeyPairCallback, which queues the generation
// on a libuv thread. A counter put on the native prototype before HsmToken.open sees each one start
// and complete.
let restoreGenerateKeyPair: () => void;
let running = 0;
let maxRunning = 0;

let softhsm: SoftHsmToken;
let token: HsmToken;

beforeAll(() => {
  restoreGenerateKeyPair = wrapNative('C_GenerateKeyPairCallback', (real) =>
    function (this: unknown, ...args: unknown[]) {
      const cb = args[4];
      if (typeof cb === 'function') {
        running++;
        maxRunning = Math.max(maxRunning, running);
        args[4] = (err: unknown, res: unknown) => {
          running--;
          (cb as (e: unknown, r: unknown) => void)(err, res);
        };
      }
      return real.apply(this, args);
    },
  );
  softhsm = createSoftHsmToken({ label: 'keygen' });
  token = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.userPin });
});

afterAll(() => {
  restoreGenerateKeyPair?.();
  token?.close();
  softhsm?.cleanup();
});

describe('generateWrappingKeyPairOffLoop', () => {
  it('keeps the event loop turning, runs at most MAX_KEY_PAIR_GENERATIONS at once, and puts every pair in the token', async () => {
    const ids = Array.from({ length: MAX_KEY_PAIR_GENERATIONS + 3 }, () => crypto.randomUUID());
    const events: string[] = [];
    const pairs = ids.map((id) => token.generateWrappingKeyPairOffLoop(id, 2048, false).then((spki) => (events.push(`pair ${id}`), spki)));
    // Scheduled after every generation was asked for: with generation on the event loop it could
    // only run after all of them.
    const turned = new Promise<void>((resolve) => setImmediate(() => (events.push('event loop'), resolve())));
    const spkis = await Promise.all(pairs);
    await turned;
    expect(events[0]).toBe('event loop');
    expect(maxRunning).toBe(MAX_KEY_PAIR_GENERATIONS);
    expect(running).toBe(0);
    expect(new Set(spkis.map((s) => s.toString('hex'))).size).toBe(ids.length);
    for (const [i, id] of ids.entries()) {
      expect(token.has('wrap', id)).toBe(true);
      expect(token.keyAttributes('wrap', id)).toEqual({ sensitive: true, extractable: false, token: true, modifiable: false });
      const pub = crypto.createPublicKey({ key: spkis[i], format: 'der', type: 'spki' });
      expect(pub.asymmetricKeyDetails?.modulusLength).toBe(2048);
    }
    for (const id of ids) expect(token.destroy('wrap', id)).toBe(2);
  });

  it('drain() resolves only after the running generation has finished', async () => {
    const id = crypto.randomUUID();
    const order: string[] = [];
    const pair = token.generateWrappingKeyPairOffLoop(id, 2048, true).then(() => order.push('generated'));
    await token.drain().then(() => order.push('drained'));
    await pair;
    expect(order).toEqual(['generated', 'drained']);
    expect(token.destroy('wrap', id)).toBe(2);
  });
});
