// AES-256-GCM composed from AES-ECB, for tokens without CKM_AES_GCM (opencryptoki's soft token,
// YubiHSM 2). The token computes every block cipher call with the key, which never leaves it:
// H = E_K(0^128), E_K(J0) for the tag, and the counter blocks E_K(inc32(J0)), E_K(inc32^2(J0))...
// Only GHASH (a polynomial over blocks the caller already has) and XOR run here. The output is
// byte-for-byte NIST SP 800-38D GCM with a 128-bit tag, so a blob sealed by either path opens on
// the other.
//
// What the host sees is what it could already ask the token for: the ECB outputs of counter blocks
// under an IV it chose, which is exactly the keystream that CKM_AES_GCM encryption with that IV
// would expose (ciphertext XOR plaintext). Buffers that held keystream, H or E_K(J0) are zeroed
// before returning (docs/security.md).

import crypto from 'node:crypto';
import { DecryptFailedError } from './errors';

/** Encrypts whole 16-byte blocks with the key in the token (CKM_AES_ECB); returns a fresh buffer. */
export type EcbEncrypt = (blocks: Buffer) => Buffer;

const BLOCK = 16;
const TAG = 16;
/** SP 800-38D: at most 2^32 - 2 blocks of plaintext per invocation. */
const MAX_BLOCKS = 2 ** 32 - 2;

/** GF(2^128) multiplication of SP 800-38D 6.3, masked rather than branching on key-dependent bits. */
function gfMul(x: Uint32Array, h: Uint32Array, out: Uint32Array): void {
  let z0 = 0;
  let z1 = 0;
  let z2 = 0;
  let z3 = 0;
  let v0 = h[0];
  let v1 = h[1];
  let v2 = h[2];
  let v3 = h[3];
  for (let i = 0; i < 128; i++) {
    const bit = (x[i >>> 5] >>> (31 - (i & 31))) & 1;
    const m = -bit | 0;
    z0 ^= v0 & m;
    z1 ^= v1 & m;
    z2 ^= v2 & m;
    z3 ^= v3 & m;
    const lsb = -(v3 & 1) | 0;
    v3 = (v3 >>> 1) | (v2 << 31);
    v2 = (v2 >>> 1) | (v1 << 31);
    v1 = (v1 >>> 1) | (v0 << 31);
    v0 = (v0 >>> 1) ^ (0xe1000000 & lsb);
  }
  out[0] = z0;
  out[1] = z1;
  out[2] = z2;
  out[3] = z3;
}

/** GHASH state over a stream of zero-padded fields (SP 800-38D 6.4). */
class Ghash {
  private readonly h = new Uint32Array(4);
  private readonly y = new Uint32Array(4);
  private readonly x = new Uint32Array(4);

  constructor(hBlock: Buffer) {
    for (let i = 0; i < 4; i++) this.h[i] = hBlock.readUInt32BE(i * 4);
  }

  /** Absorbs `data` zero-padded to a whole number of blocks. */
  update(data: Buffer): void {
    for (let off = 0; off < data.length; off += BLOCK) {
      const n = Math.min(BLOCK, data.length - off);
      if (n === BLOCK) {
        for (let i = 0; i < 4; i++) this.x[i] = this.y[i] ^ data.readUInt32BE(off + i * 4);
      } else {
        const last = Buffer.alloc(BLOCK);
        data.copy(last, 0, off, off + n);
        for (let i = 0; i < 4; i++) this.x[i] = this.y[i] ^ last.readUInt32BE(i * 4);
      }
      gfMul(this.x, this.h, this.y);
    }
  }

  /** The lengths block [len(A)]64 || [len(C)]64 in bits; returns S. */
  final(aadBytes: number, textBytes: number): Buffer {
    const len = Buffer.alloc(BLOCK);
    len.writeBigUInt64BE(BigInt(aadBytes) * 8n, 0);
    len.writeBigUInt64BE(BigInt(textBytes) * 8n, 8);
    this.update(len);
    return this.state();
  }

  /** The current state as a block; the GHASH is wiped and done. */
  state(): Buffer {
    const s = Buffer.alloc(BLOCK);
    for (let i = 0; i < 4; i++) s.writeUInt32BE(this.y[i] >>> 0, i * 4);
    this.wipe();
    return s;
  }

  wipe(): void {
    this.h.fill(0);
    this.y.fill(0);
    this.x.fill(0);
  }
}

function inc32(block: Buffer): void {
  block.writeUInt32BE((block.readUInt32BE(12) + 1) >>> 0, 12);
}

/**
 * The keystream material for one invocation: H, E_K(J0) and `blocks` counter blocks, from as few
 * token calls as the IV allows (one for a 96-bit IV, two otherwise, since J0 then depends on H).
 */
function keyMaterial(ecb: EcbEncrypt, iv: Buffer, blocks: number): { h: Buffer; ekj0: Buffer; stream: Buffer; all: Buffer[] } {
  if (iv.length === 0) throw new RangeError('the GCM IV must not be empty');
  if (blocks > MAX_BLOCKS) throw new RangeError('the GCM input is longer than 2^32 - 2 blocks');
  const all: Buffer[] = [];
  let h: Buffer;
  const j0 = Buffer.alloc(BLOCK);
  let prefix: Buffer[];
  if (iv.length === 12) {
    iv.copy(j0, 0);
    j0.writeUInt32BE(1, 12);
    prefix = [Buffer.alloc(BLOCK)];
  } else {
    h = ecb(Buffer.alloc(BLOCK));
    all.push(h);
    // 38D 7.1 step 2: J0 = GHASH(IV || 0^(s+64) || [len(IV)]64).
    const g = new Ghash(h);
    g.update(iv);
    const lenBlock = Buffer.alloc(BLOCK);
    lenBlock.writeBigUInt64BE(BigInt(iv.length) * 8n, 8);
    g.update(lenBlock);
    const s = g.state();
    s.copy(j0);
    s.fill(0);
    prefix = [];
  }
  // Counter blocks: J0 (for the tag), then inc32(J0), inc32^2(J0), ...
  const counters = Buffer.alloc(BLOCK * (prefix.length + 1 + blocks));
  let off = 0;
  for (const p of prefix) {
    p.copy(counters, off);
    off += BLOCK;
  }
  const ctr = Buffer.from(j0);
  for (let i = 0; i <= blocks; i++) {
    ctr.copy(counters, off);
    off += BLOCK;
    inc32(ctr);
  }
  const out = ecb(counters);
  counters.fill(0);
  ctr.fill(0);
  j0.fill(0);
  all.push(out);
  if (out.length !== counters.length) throw new Error(`CKM_AES_ECB returned ${out.length} bytes for ${counters.length}`);
  let at = 0;
  if (prefix.length === 1) {
    h = out.subarray(0, BLOCK);
    at = BLOCK;
  }
  const ekj0 = out.subarray(at, at + BLOCK);
  const stream = out.subarray(at + BLOCK);
  return { h: h!, ekj0, stream, all };
}

function xorInto(dst: Buffer, a: Buffer, b: Buffer, n: number): void {
  for (let i = 0; i < n; i++) dst[i] = a[i] ^ b[i];
}

function tagOf(h: Buffer, ekj0: Buffer, aad: Buffer, ciphertext: Buffer): Buffer {
  const g = new Ghash(h);
  g.update(aad);
  g.update(ciphertext);
  const s = g.final(aad.length, ciphertext.length);
  const tag = Buffer.alloc(TAG);
  xorInto(tag, s, ekj0, TAG);
  s.fill(0);
  return tag;
}

/** AES-GCM encryption with a 128-bit tag; returns ciphertext || tag. */
export function composedGcmEncrypt(ecb: EcbEncrypt, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
  const blocks = Math.ceil(plaintext.length / BLOCK);
  const km = keyMaterial(ecb, iv, blocks);
  try {
    const out = Buffer.alloc(plaintext.length + TAG);
    xorInto(out, plaintext, km.stream, plaintext.length);
    tagOf(km.h, km.ekj0, aad, out.subarray(0, plaintext.length)).copy(out, plaintext.length);
    return out;
  } finally {
    for (const b of km.all) b.fill(0);
  }
}

/** AES-GCM decryption of ciphertext || 128-bit tag; any mismatch is DecryptFailedError, and no plaintext is made before the tag checks. */
export function composedGcmDecrypt(ecb: EcbEncrypt, iv: Buffer, aad: Buffer, sealed: Buffer): Buffer {
  if (sealed.length < TAG) throw new DecryptFailedError();
  const n = sealed.length - TAG;
  const ciphertext = sealed.subarray(0, n);
  const km = keyMaterial(ecb, iv, Math.ceil(n / BLOCK));
  try {
    const expected = tagOf(km.h, km.ekj0, aad, ciphertext);
    if (!crypto.timingSafeEqual(expected, sealed.subarray(n))) throw new DecryptFailedError();
    const out = Buffer.alloc(n);
    xorInto(out, ciphertext, km.stream, n);
    return out;
  } finally {
    for (const b of km.all) b.fill(0);
  }
}
