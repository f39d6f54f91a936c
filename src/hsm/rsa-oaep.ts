// Host-assisted RSA-OAEP decoding (RFC 8017 §7.1.2, step 3: EME-OAEP decoding).
//
// Used when the token cannot run RSA-OAEP with the requested hash inside C_UnwrapKey
// (SoftHSM 2.6.1 answers CKR_ARGUMENTS_BAD for OAEP with SHA-256): the token performs raw
// RSA (CKM_RSA_X_509) and hands back the k-byte encoded message EM, which is decoded here.
//
// EM is secret. Every padding failure must look the same to the caller (Manger's attack,
// CVE-2020-26939), so:
//   - there is one error, OaepDecodingError, always with the same message and no detail;
//   - the decoding walks every byte of EM whatever its contents and folds the checks into
//     0/1 flags with masks (as Go's crypto/rsa decryptOAEP and BoringSSL's
//     RSA_padding_check_PKCS1_OAEP_mgf1 do); the only branches are on public values (lengths,
//     hash) and on the single final "good" bit;
//   - every intermediate buffer that held secret data is zeroed in `finally`.
// JavaScript gives no guarantee about the machine code the JIT emits; this code avoids
// data-dependent branches, early exits and data-dependent memory access at the source level,
// which is the most that can be done in-process.
//
// The returned message (the key material) belongs to the caller, who must zero it when done.

import crypto from 'node:crypto';

export type OaepHash = 'sha1' | 'sha256';

const DIGEST_BYTES: Readonly<Record<OaepHash, number>> = { sha1: 20, sha256: 32 };

const DECODING_FAILED = 'RSA-OAEP decoding failed';

/** The single error for every OAEP decoding failure: no cause, no detail, same message. */
export class OaepDecodingError extends Error {
  constructor() {
    super(DECODING_FAILED);
  }
}
// On the prototype rather than per instance, so instances carry only the own properties Error gives them.
Object.defineProperty(OaepDecodingError.prototype, 'name', {
  value: 'OaepDecodingError',
  writable: true,
  enumerable: false,
  configurable: true,
});

// Constant-time helpers on small non-negative integers. Flags are 0 or 1.

/** 1 if x (0..255) is zero, else 0. */
function ctIsZeroByte(x: number): number {
  return ((x - 1) >>> 31) & 1;
}

/** 1 if bytes a and b are equal, else 0. */
function ctEqByte(a: number, b: number): number {
  return ctIsZeroByte((a ^ b) & 0xff);
}

/** flag === 1 ? a : b, for flag in {0, 1} and a, b in int32 range. */
function ctSelect(flag: number, a: number, b: number): number {
  const mask = -flag | 0;
  return (mask & a) | (~mask & b);
}

/** 1 if a and b (equal, public length) hold the same bytes, else 0. */
function ctEqBytes(a: Buffer, b: Buffer): number {
  let diff = 0;
  for (let i = 0; i < a.length; i++) {
    diff |= a[i]! ^ b[i]!;
  }
  return ctIsZeroByte(diff);
}

/**
 * target ^= MGF1(seed, target.length) with the given hash, in place.
 * Each digest block is zeroed after use; `seed` is read, never kept.
 */
function mgf1XorInPlace(target: Buffer, seed: Buffer, hash: OaepHash): void {
  const counter = Buffer.alloc(4);
  let done = 0;
  for (let c = 0; done < target.length; c++) {
    counter.writeUInt32BE(c, 0);
    const block = crypto.createHash(hash).update(seed).update(counter).digest();
    try {
      const n = Math.min(block.length, target.length - done);
      for (let i = 0; i < n; i++) {
        target[done + i] = target[done + i]! ^ block[i]!;
      }
      done += n;
    } finally {
      block.fill(0);
    }
  }
}

/**
 * EME-OAEP decoding of the k-byte encoded message EM (RFC 8017 §7.1.2 step 3), MGF1 with
 * the same hash as the label hash. `label` defaults to the empty string.
 *
 * Throws OaepDecodingError, and nothing else for bad input, when EM is not exactly
 * `modulusBytes` long, when the modulus is too short for the hash, or when the padding is
 * wrong in any way. Returns a fresh Buffer holding the message; the caller zeroes it.
 */
export function oaepDecode(
  em: Buffer,
  modulusBytes: number,
  hash: OaepHash,
  label: Buffer = Buffer.alloc(0),
): Buffer {
  if (!Object.hasOwn(DIGEST_BYTES, hash)) {
    // Programming error, not a padding failure: the hash is public configuration.
    throw new TypeError('unsupported OAEP hash');
  }
  const hLen = DIGEST_BYTES[hash];
  // Public checks: lengths only (RFC 8017 §7.1.2 steps 1b, 1c).
  if (
    !Number.isSafeInteger(modulusBytes) ||
    modulusBytes < 2 * hLen + 2 ||
    em.length !== modulusBytes
  ) {
    throw new OaepDecodingError();
  }

  const lHash = crypto.createHash(hash).update(label).digest(); // public: hash of the label
  // Working copy of EM = Y || maskedSeed || maskedDB; unmasked in place into Y || seed || DB.
  const work = Buffer.alloc(modulusBytes);
  try {
    em.copy(work);
    const seed = work.subarray(1, 1 + hLen);
    const db = work.subarray(1 + hLen);

    // Y must be 0x00.
    const firstByteIsZero = ctIsZeroByte(work[0]!);

    // seed = maskedSeed ^ MGF(maskedDB, hLen); DB = maskedDB ^ MGF(seed, k - hLen - 1).
    mgf1XorInPlace(seed, db, hash);
    mgf1XorInPlace(db, seed, hash);

    // DB = lHash' || PS || 0x01 || M.
    const lHashGood = ctEqBytes(lHash, db.subarray(0, hLen));

    // Find the 0x01 separator after PS (zero bytes), visiting every byte whatever the contents.
    const rest = db.subarray(hLen);
    let lookingForIndex = 1;
    let index = 0;
    let invalid = 0;
    for (let i = 0; i < rest.length; i++) {
      const b = rest[i]!;
      const equals0 = ctIsZeroByte(b);
      const equals1 = ctEqByte(b, 0x01);
      index = ctSelect(lookingForIndex & equals1, i, index);
      lookingForIndex = ctSelect(equals1, 0, lookingForIndex);
      // A byte other than 0x00 before the separator is a failure.
      invalid = ctSelect(lookingForIndex & (equals0 ^ 1), 1, invalid);
    }

    const good = firstByteIsZero & lHashGood & (invalid ^ 1) & (lookingForIndex ^ 1);
    if (good !== 1) {
      throw new OaepDecodingError();
    }

    // Only now, with the padding known good, does the message length become observable.
    const m = rest.subarray(index + 1);
    const message = Buffer.alloc(m.length); // not from the shared allocation pool
    m.copy(message);
    return message;
  } finally {
    work.fill(0);
  }
}
