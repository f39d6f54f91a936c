// RFC 5649 (AES key wrap with padding) composed from single AES block operations, for the root key
// of a token without CKM_AES_KEY_WRAP_PAD (opencryptoki's soft token). The block operations are
// CKM_AES_ECB with the root key inside the token; the wrap is byte-identical to CKM_AES_KEY_WRAP_PAD,
// so SOFTWARE-level blobs have one format whichever token made them. Only used for SOFTWARE-level
// material, whose bytes kmsd holds in memory anyway (docs/security.md).

/** One AES block operation with the key in the token: 16 bytes in, 16 bytes out. */
export type BlockCipher = (block: Buffer) => Buffer;

const AIV_PREFIX = Buffer.from('a65959a6', 'hex');

export class KwpIntegrityError extends Error {
  constructor() {
    super('the wrapped key fails the RFC 5649 integrity check');
    this.name = 'KwpIntegrityError';
  }
}

function xorCounter(a: Buffer, t: number): void {
  // A ^ [t]64; t stays below 2^32 for any key this path wraps.
  a.writeUInt32BE((a.readUInt32BE(4) ^ t) >>> 0, 4);
}

/** RFC 5649 section 4.1. The caller zeroes `key`; the result holds no plaintext. */
export function kwpWrap(encrypt: BlockCipher, key: Buffer): Buffer {
  if (key.length === 0) throw new RangeError('nothing to wrap');
  const n = Math.ceil(key.length / 8);
  const a = Buffer.alloc(8);
  AIV_PREFIX.copy(a, 0);
  a.writeUInt32BE(key.length, 4);
  const r = Buffer.alloc(n * 8);
  key.copy(r);
  const b = Buffer.alloc(16);
  try {
    if (n === 1) {
      a.copy(b, 0);
      r.copy(b, 8);
      return encrypt(b);
    }
    for (let j = 0; j <= 5; j++) {
      for (let i = 1; i <= n; i++) {
        a.copy(b, 0);
        r.copy(b, 8, (i - 1) * 8, i * 8);
        const out = encrypt(b);
        out.copy(a, 0, 0, 8);
        xorCounter(a, n * j + i);
        out.copy(r, (i - 1) * 8, 8, 16);
        out.fill(0);
      }
    }
    return Buffer.concat([a, r]);
  } finally {
    r.fill(0);
    b.fill(0);
  }
}

/** RFC 5649 section 4.2; every integrity failure is the one KwpIntegrityError. The caller zeroes the result. */
export function kwpUnwrap(decrypt: BlockCipher, wrapped: Buffer): Buffer {
  if (wrapped.length < 16 || wrapped.length % 8 !== 0) throw new KwpIntegrityError();
  const n = wrapped.length / 8 - 1;
  const a = Buffer.alloc(8);
  const r = Buffer.alloc(n * 8);
  const b = Buffer.alloc(16);
  try {
    if (n === 1) {
      const out = decrypt(wrapped);
      out.copy(a, 0, 0, 8);
      out.copy(r, 0, 8, 16);
      out.fill(0);
    } else {
      wrapped.copy(a, 0, 0, 8);
      wrapped.copy(r, 0, 8);
      for (let j = 5; j >= 0; j--) {
        for (let i = n; i >= 1; i--) {
          xorCounter(a, n * j + i);
          a.copy(b, 0);
          r.copy(b, 8, (i - 1) * 8, i * 8);
          const out = decrypt(b);
          out.copy(a, 0, 0, 8);
          out.copy(r, (i - 1) * 8, 8, 16);
          out.fill(0);
        }
      }
    }
    // Integrity: the prefix, a length within the last block, and zero padding.
    const mli = a.readUInt32BE(4);
    let ok = a.subarray(0, 4).equals(AIV_PREFIX) && mli > 8 * (n - 1) && mli <= 8 * n;
    if (ok) for (let i = mli; i < r.length; i++) ok = ok && r[i] === 0;
    if (!ok) throw new KwpIntegrityError();
    return Buffer.from(r.subarray(0, mli));
  } finally {
    r.fill(0);
    b.fill(0);
  }
}
