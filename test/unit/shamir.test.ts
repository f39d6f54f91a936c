// Split backups: the audited shamir-secret-sharing package through src/ceremony/shamir.ts.

import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { combineShares, decryptShare, encryptShare, keyCheckValue, parseShareFile, shareBytes, splitMaterial } from '../../src/ceremony/shamir';

function combos<T>(xs: T[], k: number): T[][] {
  if (k === 0) return [[]];
  return xs.flatMap((x, i) => combos(xs.slice(i + 1), k - 1).map((rest) => [x, ...rest]));
}

describe('Shamir split and combine (3-of-5)', () => {
  it('restores the material from any 3 of 5 shares, and not from 2', async () => {
    const material = crypto.randomBytes(32);
    const kcv = keyCheckValue(material);
    const shares = await splitMaterial(Buffer.from(material), 5, 3);
    expect(shares).toHaveLength(5);
    for (const s of shares) expect(s.length).toBe(33);
    for (const set of combos(shares, 3)) {
      const m = await combineShares(set.map((s) => Buffer.from(s)));
      expect(m.equals(material)).toBe(true);
    }
    for (const pair of combos(shares, 2)) {
      const m = await combineShares(pair.map((s) => Buffer.from(s)));
      expect(keyCheckValue(m)).not.toBe(kcv); // two shares give unrelated bytes, caught by the check value
    }
  });

  it('refuses thresholds below 2 or above N, and material that is not 32 bytes', async () => {
    await expect(splitMaterial(crypto.randomBytes(32), 5, 1)).rejects.toThrow(/2 <= M <= N/);
    await expect(splitMaterial(crypto.randomBytes(32), 3, 4)).rejects.toThrow(/2 <= M <= N/);
    await expect(splitMaterial(crypto.randomBytes(16), 3, 2)).rejects.toThrow(/32 bytes/);
  });

  it('computes the standard key check value (AES-256-ECB of a zero block)', () => {
    // AES-256 with the all-zero key encrypts the zero block to dc95c078a2408989ad48a21492842087.
    expect(keyCheckValue(Buffer.alloc(32))).toBe('DC95C0');
  });

  it('encrypts a share to an RSA key (OAEP-SHA-256) and validates share files strictly', async () => {
    const { publicKey, privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const [share] = await splitMaterial(crypto.randomBytes(32), 2, 2);
    const enc = encryptShare(share, publicKey);
    expect(decryptShare(enc, privateKey).equals(share)).toBe(true);
    const file = { Format: 'kmsd-key-share/v1', SetId: 's', Label: 'l', CustodianId: 'a', ShareIndex: 1, Threshold: 2, Shares: 2, KeyCheckValue: 'ABCDEF', CreatedAt: '', EncryptedShare: enc.toString('base64'), Encryption: 'RSAES_OAEP_SHA_256' };
    const parsed = parseShareFile(JSON.stringify(file), 'f');
    expect(shareBytes(parsed, 'f', privateKey).equals(share)).toBe(true);
    expect(() => shareBytes(parsed, 'f')).toThrow(/DecryptionKey/);
    expect(() => shareBytes(parsed, 'f', crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey)).toThrow(/does not open/);
    expect(() => parseShareFile(JSON.stringify({ ...file, Threshold: 1 }), 'f')).toThrow(/Threshold/);
    expect(() => parseShareFile(JSON.stringify({ ...file, ShareIndex: 3 }), 'f')).toThrow(/ShareIndex/);
    expect(() => parseShareFile(JSON.stringify({ ...file, Share: 'AA==' }), 'f')).toThrow(/exactly one/);
    expect(() => parseShareFile(JSON.stringify({ ...file, KeyCheckValue: 'abc' }), 'f')).toThrow(/KeyCheckValue/);
  });
});
