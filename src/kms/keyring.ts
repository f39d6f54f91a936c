// Where a key version's material is and how to use it, by protection level:
//   HSM       a token object; AES-GCM runs in the token (native addon when loaded, else pkcs11js);
//   SOFTWARE  an RFC 5649 wrap under the root key in SQLite, unwrapped into process memory on first
//             use, cached (bounded) and zeroed on disable, deletion, eviction and shutdown.

import crypto from 'node:crypto';
import { HsmToken, TransientKey } from '../hsm/token';
import { DecryptFailedError, HsmError, isGcmAuthFailure } from '../hsm/errors';
import { KmsError } from './errors';
import { KeyVersionRow, Store } from '../store/store';

/** The part of the native addon (src/hsm/native-addon.ts) the keyring uses. */
export interface NativeGcm {
  encrypt(handle: number, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer>;
  decrypt(handle: number, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Promise<Buffer>;
  /** Many operations in one call across the addon's workers; a Buffer or an Error per item. */
  encryptBatch?(items: { handle: number; iv: Buffer; aad: Buffer; data: Buffer }[]): Promise<Array<Buffer | Error>>;
  decryptBatch?(items: { handle: number; iv: Buffer; aad: Buffer; data: Buffer }[]): Promise<Array<Buffer | Error>>;
  stats?(): { threads: number; sessionsReopened: number };
}

/** One AES-GCM operation of a batch (src/kms/batch.ts): `data` is the plaintext or the sealed bytes. */
export interface GcmItem {
  level: string;
  v: KeyVersionRow;
  iv: Buffer;
  aad: Buffer;
  data: Buffer;
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

  /** generate, with HSM material generated off the event loop (CreateKey). */
  async generateOffLoop(level: string, versionId: string): Promise<Buffer | null> {
    if (level !== 'HSM') return this.generate(level, versionId);
    await this.token.generateAesKeyOffLoop('cmk', versionId);
    return null;
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

  /**
   * A new access key secret: 32 bytes generated in the token and wrapped under the root key, as
   * SOFTWARE material is. Returns the wrap (the only form stored) and the bytes (the caller zeroes them).
   */
  newSealedSecret(): { sealed: Buffer; secret: Buffer } {
    const k = this.token.generateTransientExtractableAesKey();
    try {
      const sealed = this.token.wrapUnderRoot(ROOT_KEY_ID, k);
      return { sealed, secret: this.token.unwrapFromRoot(ROOT_KEY_ID, sealed) };
    } finally {
      this.token.destroyTransient(k);
    }
  }

  /** The bytes of a sealed secret (the caller zeroes them). */
  unsealSecret(sealed: Buffer): Buffer {
    return this.token.unwrapFromRoot(ROOT_KEY_ID, sealed);
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
      let handle: number | undefined;
      try {
        if (this.native) {
          this.stats.hsmEncryptNative++;
          handle = this.token.numericHandle('cmk', v.version_id);
          return await this.native.encrypt(handle, iv, aad, plaintext);
        }
        this.stats.hsmEncryptPkcs11js++;
        return this.token.encryptGcm('cmk', v.version_id, iv, aad, plaintext);
      } catch (e) {
        throw this.hsmFailure(e, v, 'encrypt', handle);
      }
    }
    const c = crypto.createCipheriv('aes-256-gcm', this.softwareMaterial(v), iv);
    c.setAAD(aad);
    return Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]);
  }

  /** Throws DecryptFailedError on any authentication failure. */
  async decrypt(level: string, v: KeyVersionRow, iv: Buffer, aad: Buffer, sealed: Buffer): Promise<Buffer> {
    if (level === 'HSM') {
      let handle: number | undefined;
      try {
        if (this.native) {
          this.stats.hsmDecryptNative++;
          handle = this.token.numericHandle('cmk', v.version_id);
          return await this.native.decrypt(handle, iv, aad, sealed);
        }
        this.stats.hsmDecryptPkcs11js++;
        return this.token.decryptGcm('cmk', v.version_id, iv, aad, sealed);
      } catch (e) {
        throw this.hsmFailure(e, v, 'decrypt', handle);
      }
    }
    const key = this.softwareMaterial(v);
    // The parts hold plaintext (unauthenticated until final()): zeroed whatever happens.
    const parts: Buffer[] = [];
    try {
      const d = crypto.createDecipheriv('aes-256-gcm', key, iv);
      d.setAAD(aad);
      d.setAuthTag(sealed.subarray(sealed.length - 16));
      parts.push(d.update(sealed.subarray(0, sealed.length - 16)));
      parts.push(d.final());
      return Buffer.concat(parts);
    } catch {
      throw new DecryptFailedError();
    } finally {
      for (const p of parts) p.fill(0);
    }
  }

  // ---------------------------------------------------------------- batches

  /**
   * One result per item, in order: the sealed bytes, or the Error encrypt() would have thrown for
   * that item. With the addon attached, every HSM item goes to it in one encryptBatch call (run
   * across its workers while the SOFTWARE items are done here); otherwise item by item.
   */
  encryptMany(items: GcmItem[]): Promise<Array<Buffer | Error>> {
    return this.many('encrypt', items);
  }

  /** As encryptMany; authentication failures are DecryptFailedError. */
  decryptMany(items: GcmItem[]): Promise<Array<Buffer | Error>> {
    return this.many('decrypt', items);
  }

  private async many(op: 'encrypt' | 'decrypt', items: GcmItem[]): Promise<Array<Buffer | Error>> {
    const out: Array<Buffer | Error> = new Array(items.length);
    const native = this.native;
    const batch = native ? (op === 'encrypt' ? native.encryptBatch : native.decryptBatch) : undefined;
    const hsmIndex: number[] = [];
    const hsmItems: { handle: number; iv: Buffer; aad: Buffer; data: Buffer }[] = [];
    const gone = new Map<string, boolean>();
    if (native && batch) {
      for (let i = 0; i < items.length; i++) {
        const it = items[i];
        if (it.level !== 'HSM') continue;
        try {
          hsmItems.push({ handle: this.token.numericHandle('cmk', it.v.version_id), iv: it.iv, aad: it.aad, data: it.data });
          hsmIndex.push(i);
        } catch (e) {
          out[i] = this.hsmFailure(e, it.v, op, undefined, gone);
        }
      }
    }
    let pending: Promise<Array<Buffer | Error>> | null = null;
    if (native && batch && hsmItems.length > 0) {
      if (op === 'encrypt') this.stats.hsmEncryptNative += hsmItems.length;
      else this.stats.hsmDecryptNative += hsmItems.length;
      pending = batch.call(native, hsmItems);
    }
    // Meanwhile, on this thread: SOFTWARE items (and HSM items when there is no addon).
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      if (out[i] !== undefined || (pending && it.level === 'HSM')) continue;
      try {
        out[i] = op === 'encrypt' ? await this.encrypt(it.level, it.v, it.iv, it.aad, it.data) : await this.decrypt(it.level, it.v, it.iv, it.aad, it.data);
      } catch (e) {
        out[i] = e instanceof Error ? e : new Error(String(e));
      }
    }
    if (pending) {
      let results: Array<Buffer | Error>;
      try {
        results = await pending;
      } catch (e) {
        // Only a closed context rejects the whole batch.
        const err = this.hsmFailure(e, items[hsmIndex[0]].v, op, undefined, gone);
        results = hsmIndex.map(() => err);
      }
      results.forEach((r, j) => {
        const i = hsmIndex[j];
        out[i] = r instanceof Error ? this.hsmFailure(r, items[i].v, op, hsmItems[j].handle, gone) : r;
      });
    }
    return out;
  }

  /** The addon's worker count and recovered sessions; null without the addon. */
  nativeInfo(): { threads: number; sessionsReopened: number } | null {
    const s = this.native?.stats?.();
    return s ? { threads: s.threads, sessionsReopened: s.sessionsReopened } : null;
  }

  /**
   * One shape for HSM-level failures, whichever path (addon or pkcs11js) ran the operation:
   * authentication failures become DecryptFailedError; a key the token no longer holds becomes
   * Rejected.KeyMaterialMissing: a stale handle, a lookup that finds nothing, or any other PKCS#11
   * error once the object is gone or was replaced (material destroyed while the request was in
   * flight; SoftHSM then answers C_EncryptInit with whatever it read from the dying object, e.g.
   * CKR_KEY_FUNCTION_NOT_PERMITTED); a closed context an HsmError CLOSED (ServiceUnavailable.Hsm);
   * the rest an HsmError with the CKR_ name, which the API reports as an internal error.
   * `gone` memoizes the token lookup for the items of one batch.
   */
  private hsmFailure(e: unknown, v: KeyVersionRow, op: 'encrypt' | 'decrypt', usedHandle?: number, gone?: Map<string, boolean>): Error {
    if (e instanceof KmsError || e instanceof DecryptFailedError) return e;
    const code = (e as { code?: unknown }).code;
    const name = typeof code === 'string' ? code : '';
    const stale = ['CKR_KEY_HANDLE_INVALID', 'CKR_OBJECT_HANDLE_INVALID', 'NOT_FOUND'].includes(name);
    if (stale || (name.startsWith('CKR_') && this.materialGone(v, usedHandle, gone))) {
      return new KmsError('Rejected.KeyMaterialMissing', `KeyId: the token no longer holds key version ${v.version_id} (destroyed while the request was in flight, or removed outside kmsd)`);
    }
    if (op === 'decrypt' && isGcmAuthFailure(name)) return new DecryptFailedError();
    if (e instanceof HsmError) return e;
    const fn = (e as { pkcs11Function?: unknown }).pkcs11Function;
    return new HsmError(e instanceof Error ? e.message : String(e), name || 'CKR_GENERAL_ERROR', typeof fn === 'string' ? fn : undefined);
  }

  /** Has the version's token object gone, or been replaced since `usedHandle` was taken? */
  private materialGone(v: KeyVersionRow, usedHandle: number | undefined, memo?: Map<string, boolean>): boolean {
    const key = `${v.version_id}/${usedHandle ?? ''}`;
    const known = memo?.get(key);
    if (known !== undefined) return known;
    let result: boolean;
    try {
      result = !this.token.has('cmk', v.version_id) || (usedHandle !== undefined && this.token.numericHandle('cmk', v.version_id) !== usedHandle);
    } catch {
      result = false; // the token cannot say: report the original error
    }
    memo?.set(key, result);
    return result;
  }

  /** Is the version's material where its protection level says? */
  present(level: string, v: KeyVersionRow): boolean {
    return level === 'HSM' ? this.token.has('cmk', v.version_id) : v.software_wrapped !== null;
  }
}
