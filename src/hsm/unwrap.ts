// Unwrapping imported key material into the token, for every wrapping algorithm of the seed (and
// AWS's RSA_AES_KEY_WRAP_*), on whatever the token can really do. Three paths:
//   in-token       C_UnwrapKey with the RSA private key straight into a session AES key;
//   composed       RSA-OAEP unwraps an ephemeral AES key in the token, which then unwraps the target
//                  with CKM_AES_KEY_WRAP_PAD (RFC 5649); for tokens without CKM_RSA_AES_KEY_WRAP;
//   host-assisted  raw RSA (CKM_RSA_X_509) in the token, OAEP decoded here in constant time, the
//                  32 bytes created as a non-extractable token key and every buffer zeroed. Only
//                  where the configuration allows it (the token cannot do that OAEP hash itself).
//   composed-host-assisted-kwp  for RSA_AES_KEY_WRAP_* on a token without CKM_AES_KEY_WRAP_PAD: the ephemeral
//                  AES key is unwrapped by RSA-OAEP in the token and stays there; RFC 5649 is undone
//                  here from CKM_AES_ECB decryptions with it (src/hsm/kwp-composed.ts), so the target
//                  material is in kmsd's memory for a moment. Only where host-assisted unwrap is allowed.
// The capability probe decides, per token, which path each algorithm takes.

import crypto from 'node:crypto';
import { HsmError, UnwrapFailedError } from './errors';
import type { GcmPath, HsmToken, RsaPadding, TransientKey } from './token';
import { OaepDecodingError, oaepDecode } from './rsa-oaep';
import { KwpIntegrityError, kwpUnwrap } from './kwp-composed';

export const WRAPPING_ALGORITHMS = [
  'RSAES_PKCS1_V1_5',
  'RSAES_OAEP_SHA_1',
  'RSAES_OAEP_SHA_256',
  'RSA_AES_KEY_WRAP_SHA_1',
  'RSA_AES_KEY_WRAP_SHA_256',
] as const;
export type WrappingAlgorithm = (typeof WRAPPING_ALGORITHMS)[number];

export const WRAPPING_KEY_SPECS = { RSA_2048: 2048, RSA_3072: 3072, RSA_4096: 4096 } as const;
export type WrappingKeySpec = keyof typeof WRAPPING_KEY_SPECS;

export type UnwrapPath = 'in-token' | 'composed' | 'host-assisted' | 'composed-host-assisted' | 'composed-host-assisted-kwp';

export interface HsmCapabilities {
  /** C_UnwrapKey with this RSA padding yields the right key inside the token. */
  rsaUnwrap: Record<RsaPadding, boolean>;
  /** CKM_RSA_X_509 decrypt works (needed by the host-assisted path). */
  rawRsa: boolean;
  /** CKM_AES_KEY_WRAP_PAD unwrap works (needed by the composed path). */
  aesKeyWrapPad: boolean;
  /** The module lists CKM_RSA_AES_KEY_WRAP (informational: we compose it either way). */
  rsaAesKeyWrapMechanism: boolean;
  /** AES-256-GCM works on one path or the other (every data-plane operation needs it). */
  aesGcm: boolean;
  /** Where AES-GCM runs: CKM_AES_GCM in the token, or composed from CKM_AES_ECB; null when neither works. */
  gcmPath: GcmPath | null;
  /** The token reports CKA_VALUE_LEN on unwrapped keys; if not, we measure the length in the token. */
  reportsUnwrappedLength: boolean;
}

export interface UnwrapPlan {
  algorithm: WrappingAlgorithm;
  path: UnwrapPath;
}

const OAEP_HASH: Record<'RSAES_OAEP_SHA_1' | 'RSAES_OAEP_SHA_256', 'sha1' | 'sha256'> = {
  RSAES_OAEP_SHA_1: 'sha1',
  RSAES_OAEP_SHA_256: 'sha256',
};

function rsaPaddingOf(alg: WrappingAlgorithm): RsaPadding {
  switch (alg) {
    case 'RSAES_PKCS1_V1_5':
      return 'PKCS1_V1_5';
    case 'RSAES_OAEP_SHA_1':
    case 'RSA_AES_KEY_WRAP_SHA_1':
      return 'OAEP_SHA_1';
    case 'RSAES_OAEP_SHA_256':
    case 'RSA_AES_KEY_WRAP_SHA_256':
      return 'OAEP_SHA_256';
  }
}

/**
 * Which path an algorithm takes on this token, or why it cannot be offered. Host-assisted paths are
 * only planned when `allowHostAssisted` is set; otherwise the reason names the setting.
 */
export function planUnwrap(alg: WrappingAlgorithm, caps: HsmCapabilities, allowHostAssisted: boolean): UnwrapPlan | { refused: string } {
  const padding = rsaPaddingOf(alg);
  const composed = alg.startsWith('RSA_AES_KEY_WRAP');
  if (composed && !caps.aesKeyWrapPad) {
    if (!caps.rsaUnwrap[padding]) return { refused: `${alg} needs CKM_AES_KEY_WRAP_PAD and RSA-OAEP unwrap in the token, and this token has neither` };
    if (!allowHostAssisted) {
      return {
        refused: `${alg} needs CKM_AES_KEY_WRAP_PAD, which this token does not provide, and the host-assisted path that undoes the AES key wrap in kmsd is disabled (set allowHostAssistedUnwrap / KMS_ALLOW_HOST_ASSISTED_UNWRAP=1 to allow it)`,
      };
    }
    return { algorithm: alg, path: 'composed-host-assisted-kwp' };
  }
  if (caps.rsaUnwrap[padding]) return { algorithm: alg, path: composed ? 'composed' : 'in-token' };
  if (padding === 'PKCS1_V1_5') return { refused: `this token cannot unwrap with RSA PKCS#1 v1.5` };
  if (!caps.rawRsa) return { refused: `this token can do neither RSA-OAEP with ${padding === 'OAEP_SHA_1' ? 'SHA-1' : 'SHA-256'} nor raw RSA` };
  if (!allowHostAssisted) {
    return {
      refused: `this token cannot unwrap RSA-OAEP with ${padding === 'OAEP_SHA_1' ? 'SHA-1' : 'SHA-256'} inside the token, and host-assisted unwrap is disabled (set allowHostAssistedUnwrap / KMS_ALLOW_HOST_ASSISTED_UNWRAP=1 to allow it)`,
    };
  }
  return { algorithm: alg, path: composed ? 'composed-host-assisted' : 'host-assisted' };
}

/** The wrapping private key needs CKA_DECRYPT only for the host-assisted paths. */
export function needsRawDecrypt(plan: UnwrapPlan): boolean {
  return plan.path === 'host-assisted' || plan.path === 'composed-host-assisted';
}


export class MaterialLengthError extends HsmError {
  /** `bytes` only when the exact length is known; null when it is only known not to be 32. */
  constructor(readonly bytes: number | null) {
    super(bytes === null ? 'the key material is not 256 bits long' : `the key material is ${bytes * 8} bits`, 'MATERIAL_LENGTH');
  }
}

/**
 * Length checks of an unwrapped transient key. Where the token does not report CKA_VALUE_LEN the
 * token layer measures it by an RFC 5649 wrap, which rounds up to a multiple of 8 bytes: a measured
 * 40 may be 33..40 bytes, so only 16 and 24 (which AES accepts only exactly) are reported as exact.
 * A key the token cannot even wrap (an empty value) is a length error, not an internal one.
 */
function checkAes256(token: HsmToken, caps: HsmCapabilities, key: TransientKey): void {
  let len: number;
  try {
    len = token.keyLength(key);
  } catch (e) {
    if (!(e instanceof HsmError) || !['CKR_KEY_NOT_WRAPPABLE', 'CKR_KEY_SIZE_RANGE'].includes(e.code)) throw e;
    throw new MaterialLengthError(null);
  }
  const usable = token.usableForAes(key);
  if (len === AES_256_BYTES && usable) return;
  const exact = len > 0 && (caps.reportsUnwrappedLength || ((len === 16 || len === 24) && usable));
  throw new MaterialLengthError(exact ? len : null);
}

const AES_256_BYTES = 32;

/**
 * The ephemeral key of RSA_AES_KEY_WRAP_* must be AES-256 whatever the token accepted; any length
 * problem is the one UnwrapFailedError. The caller still owns (and destroys) the key.
 */
function requireAes256(token: HsmToken, ephemeral: TransientKey): void {
  let length: number;
  try {
    length = token.keyLength(ephemeral);
  } catch {
    throw new UnwrapFailedError();
  }
  // A measured 40 is 25..32 bytes; 25..31 cannot key AES and would fail in the AES-KWP unwrap.
  if (length !== AES_256_BYTES) throw new UnwrapFailedError();
}

/** The ephemeral AES key of RSA_AES_KEY_WRAP_*: any length problem is the one UnwrapFailedError. */
function ephemeralUnwrap(token: HsmToken, wrapId: string, padding: RsaPadding, head: Buffer, usage: 'data' | 'unwrap', measurable: boolean): TransientKey {
  try {
    return token.rsaUnwrap(wrapId, padding, head, usage, measurable);
  } catch (e) {
    if (e instanceof HsmError && e.code === 'UNWRAPPED_KEY_LENGTH') throw new UnwrapFailedError();
    throw e;
  }
}

/**
 * Material the host holds for a moment (host-assisted paths) into the token as a transient AES-256
 * key. The buffer is zeroed whatever happens, so no path can forget it; a length other than 32 bytes
 * is `wrongLength()` and nothing is created.
 */
function materialIntoToken(token: HsmToken, material: Buffer, usage: 'data' | 'unwrap', extractable: boolean, wrongLength: () => Error): TransientKey {
  try {
    if (material.length !== AES_256_BYTES) throw wrongLength();
    return token.createTransientAesKey(material, usage, extractable);
  } finally {
    material.fill(0);
  }
}

/** Host-assisted OAEP: raw RSA in the token, decoding here; one error for every failure. */
function hostOaepDecrypt(token: HsmToken, wrapId: string, ciphertext: Buffer, hash: 'sha1' | 'sha256'): Buffer {
  const k = token.wrappingModulusBytes(wrapId);
  // RFC 8017 7.1.2 step 1: the ciphertext must be exactly k bytes; never hand anything else to raw RSA.
  if (ciphertext.length !== k) throw new UnwrapFailedError();
  let em: Buffer | null = null;
  try {
    em = token.rsaRawDecrypt(wrapId, ciphertext, k);
    return oaepDecode(em, k, hash);
  } catch (e) {
    if (e instanceof OaepDecodingError || e instanceof UnwrapFailedError) throw new UnwrapFailedError();
    throw e;
  } finally {
    em?.fill(0);
  }
}

/**
 * Unwraps `wrapped` with wrapping key `wrapId` according to `plan` into a transient AES key that is
 * checked to be exactly 256 bits. `extractable` is true only for the SOFTWARE level, whose material is
 * then wrapped under the root key. On any failure nothing is left in the token.
 */
export function unwrapKeyMaterial(token: HsmToken, caps: HsmCapabilities, wrapId: string, plan: UnwrapPlan, wrapped: Buffer, extractable: boolean): TransientKey {
  // Where the token does not report the length of an unwrapped key it is measured by wrapping it,
  // which needs it extractable for that moment; the persisted copy never is (HSM level).
  const measurable = extractable || !caps.reportsUnwrappedLength;
  let target: TransientKey | null = null;
  let ephemeral: TransientKey | null = null;
  try {
    switch (plan.path) {
      case 'in-token':
        try {
          target = token.rsaUnwrap(wrapId, rsaPaddingOf(plan.algorithm), wrapped, 'data', measurable);
        } catch (e) {
          // The token refused the key's length (opencryptoki). For PKCS#1 v1.5 that stays the one
          // UnwrapFailedError (a Bleichenbacher oracle otherwise); after OAEP it is a length error.
          if (e instanceof HsmError && e.code === 'UNWRAPPED_KEY_LENGTH') throw plan.algorithm === 'RSAES_PKCS1_V1_5' ? new UnwrapFailedError() : new MaterialLengthError(null);
          throw e;
        }
        break;
      case 'host-assisted': {
        const material = hostOaepDecrypt(token, wrapId, wrapped, OAEP_HASH[plan.algorithm as 'RSAES_OAEP_SHA_1' | 'RSAES_OAEP_SHA_256']);
        // Same attributes as the in-token path's transient key: HsmToken.persistTransient copies it
        // with CKA_EXTRACTABLE=false, which SoftHSM refuses (CKR_ATTRIBUTE_READ_ONLY) on a key that is
        // already non-extractable. The persisted copy is never extractable at HSM level.
        target = materialIntoToken(token, material, 'data', measurable, () => new MaterialLengthError(material.length));
        break;
      }
      case 'composed':
      case 'composed-host-assisted': {
        const k = token.wrappingModulusBytes(wrapId);
        // AWS's format: RSA-OAEP(ephemeral AES-256 key) || AES-KWP(ephemeral, target).
        if (wrapped.length <= k) throw new UnwrapFailedError();
        const head = wrapped.subarray(0, k);
        const tail = wrapped.subarray(k);
        const padding = rsaPaddingOf(plan.algorithm);
        if (plan.path === 'composed') {
          // The ephemeral key must be AES-256, whatever the token does: measured like the target.
          ephemeral = ephemeralUnwrap(token, wrapId, padding, head, 'unwrap', !caps.reportsUnwrappedLength);
          requireAes256(token, ephemeral);
        } else {
          const eph = hostOaepDecrypt(token, wrapId, head, padding === 'OAEP_SHA_1' ? 'sha1' : 'sha256');
          ephemeral = materialIntoToken(token, eph, 'unwrap', false, () => new UnwrapFailedError());
        }
        target = token.aesKwpUnwrap(ephemeral, tail, 'data', measurable);
        break;
      }
      case 'composed-host-assisted-kwp': {
        const k = token.wrappingModulusBytes(wrapId);
        if (wrapped.length <= k) throw new UnwrapFailedError();
        ephemeral = ephemeralUnwrap(token, wrapId, rsaPaddingOf(plan.algorithm), wrapped.subarray(0, k), 'data', !caps.reportsUnwrappedLength);
        requireAes256(token, ephemeral);
        const eph = ephemeral;
        let material: Buffer;
        try {
          material = kwpUnwrap((block) => token.aesBlockDecrypt(eph, block), wrapped.subarray(k));
        } catch (e) {
          if (e instanceof KwpIntegrityError) throw new UnwrapFailedError();
          throw e;
        }
        target = materialIntoToken(token, material, 'data', measurable, () => new MaterialLengthError(material.length));
        break;
      }
    }
    if (plan.path !== 'host-assisted' && plan.path !== 'composed-host-assisted-kwp') {
      try {
        checkAes256(token, caps, target);
      } catch (e) {
        // PKCS#1 v1.5: telling "bad padding" apart from "good padding, wrong length" would be a
        // Bleichenbacher oracle on the wrapping key, so both are the one UnwrapFailedError.
        if (e instanceof MaterialLengthError && plan.algorithm === 'RSAES_PKCS1_V1_5') throw new UnwrapFailedError();
        throw e;
      }
    }
    const result = target;
    target = null;
    return result;
  } finally {
    token.destroyTransient(ephemeral);
    token.destroyTransient(target);
  }
}

/**
 * Finds out what the token really does: first which AES-GCM path gives the same bytes as
 * node:crypto for a known key (CKM_AES_GCM, else GCM composed from CKM_AES_ECB), then, for each RSA
 * padding, a test unwrap of that known key with a throwaway session key pair, compared by an AES-GCM
 * operation on the chosen path. Leaves the token on the GCM path found. Nothing is persisted.
 */
export function probeCapabilities(token: HsmToken, mechanisms: number[]): HsmCapabilities {
  const caps = probe(token, mechanisms);
  token.adoptCapabilities(caps);
  return caps;
}

function probe(token: HsmToken, mechanisms: number[]): HsmCapabilities {
  const CKM_RSA_AES_KEY_WRAP = 0x1054;
  const probeId = `probe-${crypto.randomUUID()}`;
  const known = crypto.randomBytes(32);
  const caps: HsmCapabilities = {
    rsaUnwrap: { PKCS1_V1_5: false, OAEP_SHA_1: false, OAEP_SHA_256: false },
    rawRsa: false,
    aesKeyWrapPad: false,
    rsaAesKeyWrapMechanism: mechanisms.includes(CKM_RSA_AES_KEY_WRAP),
    aesGcm: false,
    gcmPath: null,
    reportsUnwrappedLength: false,
  };
  let reference: TransientKey | null = null;
  try {
    reference = token.createTransientAesKey(known, 'data');
    const iv = Buffer.alloc(12, 7);
    const aad = Buffer.from('kmsd-probe');
    const c = crypto.createCipheriv('aes-256-gcm', known, iv);
    c.setAAD(aad);
    const expected = Buffer.concat([c.update(Buffer.alloc(32)), c.final(), c.getAuthTag()]);
    for (const path of ['in-token', 'composed'] as GcmPath[]) {
      if (token.mechanismDisabled(path === 'in-token' ? 'CKM_AES_GCM' : 'CKM_AES_ECB')) continue;
      token.useGcmPath(path);
      try {
        if (tokenGcm(token, reference, iv, aad).equals(expected)) {
          caps.gcmPath = path;
          break;
        }
      } catch {
        /* this path does not work on this token; try the next */
      }
    }
    caps.aesGcm = caps.gcmPath !== null;
    // Without AES-GCM nothing else can be compared; kmsd refuses what needs it (HsmToken.cannot).
    if (caps.gcmPath === null) return caps;
    const spki = token.generateWrappingKeyPair(probeId, 2048, true, false);
    const pub = crypto.createPublicKey({ key: spki, format: 'der', type: 'spki' });
    const encrypt = (padding: RsaPadding, msg: Buffer) =>
      padding === 'PKCS1_V1_5'
        ? crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_PADDING }, msg)
        : crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: padding === 'OAEP_SHA_1' ? 'sha1' : 'sha256' }, msg);
    for (const padding of ['PKCS1_V1_5', 'OAEP_SHA_1', 'OAEP_SHA_256'] as RsaPadding[]) {
      if (token.mechanismDisabled(padding === 'PKCS1_V1_5' ? 'CKM_RSA_PKCS' : 'CKM_RSA_PKCS_OAEP')) continue;
      let k: TransientKey | null = null;
      try {
        k = token.rsaUnwrap(probeId, padding, encrypt(padding, known), 'data', false);
        caps.rsaUnwrap[padding] = tokenGcm(token, k, iv, aad).equals(expected);
        if (padding === 'PKCS1_V1_5') caps.reportsUnwrappedLength = token.keyLengthReported(k) === 32;
      } catch {
        caps.rsaUnwrap[padding] = false;
      } finally {
        token.destroyTransient(k);
      }
    }
    // Paths the configuration disabled stay false (src/hsm/mechanisms.ts).
    if (!token.mechanismDisabled('CKM_RSA_X_509')) caps.rawRsa = probeRawRsa(token, probeId, encrypt('OAEP_SHA_256', known), known);
    if (!token.mechanismDisabled('CKM_AES_KEY_WRAP_PAD')) caps.aesKeyWrapPad = probeKwp(token, known, expected, iv, aad);
    return caps;
  } finally {
    known.fill(0);
    token.destroyTransient(reference);
    token.destroyTransientPair(probeId);
  }
}

/** Raw RSA in the token decrypts an OAEP-SHA-256 encryption of `known` that kmsd then decodes. */
function probeRawRsa(token: HsmToken, probeId: string, ciphertext: Buffer, known: Buffer): boolean {
  try {
    const em = token.rsaRawDecrypt(probeId, ciphertext, 256);
    try {
      const msg = oaepDecode(em, 256, 'sha256');
      const same = msg.equals(known);
      msg.fill(0);
      return same;
    } finally {
      em.fill(0);
    }
  } catch {
    return false;
  }
}

/** CKM_AES_KEY_WRAP_PAD unwraps an RFC 5649 wrap of `known` into a key that encrypts as `known` does. */
function probeKwp(token: HsmToken, known: Buffer, expected: Buffer, iv: Buffer, aad: Buffer): boolean {
  let kek: TransientKey | null = null;
  let k: TransientKey | null = null;
  try {
    const kekValue = crypto.randomBytes(32);
    kek = token.createTransientAesKey(kekValue, 'unwrap');
    const c = crypto.createCipheriv('id-aes256-wrap-pad', kekValue, Buffer.from('A65959A6', 'hex'));
    const wrapped = Buffer.concat([c.update(known), c.final()]);
    kekValue.fill(0);
    k = token.aesKwpUnwrap(kek, wrapped, 'data', false);
    return tokenGcm(token, k, iv, aad).equals(expected);
  } catch {
    return false;
  } finally {
    token.destroyTransient(k);
    token.destroyTransient(kek);
  }
}

function tokenGcm(token: HsmToken, key: TransientKey, iv: Buffer, aad: Buffer): Buffer {
  return token.encryptGcmTransient(key, iv, aad, Buffer.alloc(32));
}
