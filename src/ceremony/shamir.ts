// Split backups of key material: Shamir's secret sharing over GF(2^8) with the independently
// audited `shamir-secret-sharing` package (the same share layout as Vault: y-values || x), never a
// home-made implementation. One JSON file per custodian, optionally with the share encrypted to
// that custodian's RSA public key (RSA-OAEP-SHA-256, so `openssl pkeyutl -decrypt` can open it
// without our software). Every share carries the key check value of the whole material, so a
// wrong or corrupted share set is caught before anything is imported.

import crypto from 'node:crypto';
import { split, combine } from 'shamir-secret-sharing';

export const SHARE_FORMAT = 'kmsd-key-share/v1';
export const MATERIAL_BYTES = 32;

export interface ShareFile {
  Format: string;
  /** Binds the shares of one split: shares of different splits never combine. */
  SetId: string;
  Label: string;
  CustodianId: string;
  ShareIndex: number;
  Threshold: number;
  Shares: number;
  /** Key check value of the material (see keyCheckValue). */
  KeyCheckValue: string;
  CreatedAt: string;
  /** base64 of the share when not encrypted. */
  Share?: string;
  /** base64 of RSA-OAEP-SHA-256(custodian's RSA public key, share) when encrypted. */
  EncryptedShare?: string;
  Encryption?: 'RSAES_OAEP_SHA_256';
  /** SHA-256 hex of the DER SubjectPublicKeyInfo the share was encrypted to. */
  EncryptionKeySha256?: string;
}

/**
 * The classic key check value: the first 3 bytes of AES-256-ECB(material, 16 zero bytes), hex,
 * upper case. It identifies the material without revealing it.
 */
export function keyCheckValue(material: Buffer): string {
  const c = crypto.createCipheriv('aes-256-ecb', material, null);
  c.setAutoPadding(false);
  const block = Buffer.concat([c.update(Buffer.alloc(16)), c.final()]);
  return block.subarray(0, 3).toString('hex').toUpperCase();
}

export async function splitMaterial(material: Buffer, shares: number, threshold: number): Promise<Buffer[]> {
  if (material.length !== MATERIAL_BYTES) throw new Error(`key material must be ${MATERIAL_BYTES} bytes (got ${material.length})`);
  if (!Number.isInteger(threshold) || threshold < 2 || !Number.isInteger(shares) || shares < threshold || shares > 255) {
    throw new Error(`a split needs 2 <= M <= N <= 255 (M=${threshold}, N=${shares})`);
  }
  const out = await split(new Uint8Array(material), shares, threshold);
  return out.map((u) => {
    const b = Buffer.from(u);
    u.fill(0);
    return b;
  });
}

/** Combines shares; the caller checks the result against the key check value (too few shares give garbage, not an error). */
export async function combineShares(shares: Buffer[]): Promise<Buffer> {
  const inputs = shares.map((s) => new Uint8Array(s));
  try {
    const secret = await combine(inputs);
    const b = Buffer.from(secret);
    secret.fill(0);
    return b;
  } finally {
    for (const u of inputs) u.fill(0);
  }
}

export function encryptShare(share: Buffer, rsaPublicKey: crypto.KeyObject): Buffer {
  return crypto.publicEncrypt({ key: rsaPublicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, share);
}

export function decryptShare(encrypted: Buffer, rsaPrivateKey: crypto.KeyObject): Buffer {
  return crypto.privateDecrypt({ key: rsaPrivateKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, encrypted);
}

const KCV_RE = /^[0-9A-F]{6}$/;

/** Parses and checks a share file; every field is validated before any share is combined. */
export function parseShareFile(text: string, source: string): ShareFile {
  let o: ShareFile;
  try {
    o = JSON.parse(text) as ShareFile;
  } catch {
    throw new Error(`${source}: not a JSON share file`);
  }
  const fail = (why: string) => new Error(`${source}: ${why}`);
  if (o.Format !== SHARE_FORMAT) throw fail(`Format must be ${SHARE_FORMAT}`);
  if (typeof o.SetId !== 'string' || !o.SetId) throw fail('SetId is missing');
  if (!Number.isInteger(o.Threshold) || o.Threshold < 2 || !Number.isInteger(o.Shares) || o.Shares < o.Threshold || o.Shares > 255) throw fail('Threshold/Shares are not 2 <= M <= N <= 255');
  if (!Number.isInteger(o.ShareIndex) || o.ShareIndex < 1 || o.ShareIndex > o.Shares) throw fail('ShareIndex is out of range');
  if (typeof o.KeyCheckValue !== 'string' || !KCV_RE.test(o.KeyCheckValue)) throw fail('KeyCheckValue must be 6 upper-case hex digits');
  if (!o.Share === !o.EncryptedShare) throw fail('needs exactly one of Share and EncryptedShare');
  if (o.EncryptedShare && o.Encryption !== 'RSAES_OAEP_SHA_256') throw fail('Encryption must be RSAES_OAEP_SHA_256');
  return o;
}

/** The share bytes of a parsed file (decrypting with the custodian's private key when needed). */
export function shareBytes(f: ShareFile, source: string, rsaPrivateKey?: crypto.KeyObject): Buffer {
  let b: Buffer;
  if (f.Share) {
    b = Buffer.from(f.Share, 'base64');
  } else {
    if (!rsaPrivateKey) throw new Error(`${source}: the share is encrypted; give the custodian's DecryptionKey`);
    try {
      b = decryptShare(Buffer.from(f.EncryptedShare as string, 'base64'), rsaPrivateKey);
    } catch {
      throw new Error(`${source}: the DecryptionKey does not open this share`);
    }
  }
  if (b.length !== MATERIAL_BYTES + 1) throw new Error(`${source}: a share of 32-byte material is 33 bytes (got ${b.length})`);
  return b;
}
