// Where a key version's material is and how to use it, by protection level:
//   HSM       a token object; AES-GCM runs in the token (native addon when loaded, else pkcs11js);
//   SOFTWARE  an RFC 5649 wrap under the root key in SQLite, unwrapped into process memory on first
//             use, cached (bounded) and zeroed on disable, deletion, eviction and shutdown.

import crypto from 'node:crypto';
import { HsmToken, TransientKey } from '../hsm/token';
import { DecryptFailedError } from '../hsm/errors';
import { KeyVersionRow, Store } from '../store/store';

/** The part of the native addon (src/hsm/native-addon.ts) the keyring uses. */
export interface NativeGcm {
  encrypt(handle: number, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer>;
  decrypt(handle: number, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Promise<Buffer>;
}

export const ROOT_KEY_ID = 'root-v1';
const SOFTWARE_CACHE_LIMIT = 4096;

export interface KeyringStats {
  hsmEncryptNative: number;
  hsmEncryptPkcs11js: number;
  hsmDecryptNative: number;
  hsmDecryptPkcs11js: number;
}

export class Keyring {
  private readonly software = new Map<string, Buffer>();
  readonly stats: KeyringStats = { hsmEncryptNative: 0, hsmEncryptPkcs11js: 0, hsmDecryptNative: 0, hsmDecryptPkcs11js: 0 };

  constructor(
    readonly token: HsmToken,
    private readonly store: Store,
    private native: NativeGcm | null = null,
  ) {}

  get nativeAttached(): boolean {
    return this.native !== null;
  }

  attachNative(native: NativeGcm | null): void {
    this.native = native;
  }

  // ---------------------------------------------------------------- creation

  /** New generated material for a version: in the token (HSM) or wrapped under the root key (SOFTWARE). */
  generate(level: string, versionId: string): Buffer | null {
    if (level === 'HSM') {
      this.token.generateAesKey('cmk', versionId);
      return null;
    }
    const k = this.token.generateTransientExtractableAesKey();
    try {
      return this.token.wrapUnderRoot(ROOT_KEY_ID, k);
    } finally {
      this.token.destroyTransient(k);
    }
  }

  /** Stores checked, unwrapped material (a transient key) for a version; returns the SOFTWARE wrap if any. */
  persist(level: string, versionId: string, key: TransientKey): Buffer | null {
    if (level === 'HSM') {
      this.token.persistTransient(key, 'cmk', versionId);
      return null;
    }
    this.forget(versionId);
    return this.token.wrapUnderRoot(ROOT_KEY_ID, key);
  }

  /** Destroys the material of a version (token object and/or cached bytes). */
  destroy(versionId: string): void {
    this.forget(versionId);
    this.token.destroy('cmk', versionId);
  }

  /** Zeroes cached SOFTWARE material (disable, deletion, shutdown). */
  forget(versionId: string): void {
    const m = this.software.get(versionId);
    if (m) {
      m.fill(0);
      this.software.delete(versionId);
    }
  }

  forgetAll(): void {
    for (const id of [...this.software.keys()]) this.forget(id);
  }

  // ---------------------------------------------------------------- use

  private softwareMaterial(v: KeyVersionRow): Buffer {
    let m = this.software.get(v.version_id);
    if (m) {
      // Refresh LRU position.
      this.software.delete(v.version_id);
      this.software.set(v.version_id, m);
      return m;
    }
    if (!v.software_wrapped) throw new Error(`version ${v.version_id} has no SOFTWARE material`);
    m = this.token.unwrapFromRoot(ROOT_KEY_ID, v.software_wrapped);
    if (this.software.size >= SOFTWARE_CACHE_LIMIT) {
      const oldest = this.software.keys().next().value as string;
      this.forget(oldest);
    }
    this.software.set(v.version_id, m);
    return m;
  }

  async encrypt(level: string, v: KeyVersionRow, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer> {
    if (level === 'HSM') {
      if (this.native) {
        this.stats.hsmEncryptNative++;
        return this.native.encrypt(this.token.numericHandle('cmk', v.version_id), iv, aad, plaintext);
      }
      this.stats.hsmEncryptPkcs11js++;
      return this.token.encryptGcm('cmk', v.version_id, iv, aad, plaintext);
    }
    const c = crypto.createCipheriv('aes-256-gcm', this.softwareMaterial(v), iv);
    c.setAAD(aad);
    return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
  }

  /** Throws DecryptFailedError on any authentication failure. */
  async decrypt(level: string, v: KeyVersionRow, iv: Buffer, aad: Buffer, sealed: Buffer): Promise<Buffer> {
    if (level === 'HSM') {
      if (this.native) {
        this.stats.hsmDecryptNative++;
        try {
          return await this.native.decrypt(this.token.numericHandle('cmk', v.version_id), iv, aad, sealed);
        } catch (e) {
          const code = (e as { code?: string }).code ?? '';
          if (['CKR_ENCRYPTED_DATA_INVALID', 'CKR_GENERAL_ERROR', 'CKR_ENCRYPTED_DATA_LEN_RANGE'].includes(code)) throw new DecryptFailedError();
          throw e;
        }
      }
      this.stats.hsmDecryptPkcs11js++;
      return this.token.decryptGcm('cmk', v.version_id, iv, aad, sealed);
    }
    const key = this.softwareMaterial(v);
    try {
      const d = crypto.createDecipheriv('aes-256-gcm', key, iv);
      d.setAAD(aad);
      d.setAuthTag(sealed.subarray(sealed.length - 16));
      return Buffer.concat([d.update(sealed.subarray(0, sealed.length - 16)), d.final()]);
    } catch {
      throw new DecryptFailedError();
    }
  }

  /** Is the version's material where its protection level says? */
  present(level: string, v: KeyVersionRow): boolean {
    return level === 'HSM' ? this.token.has('cmk', v.version_id) : v.software_wrapped !== null;
  }
}
