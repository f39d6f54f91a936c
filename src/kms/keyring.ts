// Where a key version's material is and how to use it, by protection level:
//   HSM       a token object; AES-GCM runs in the token (src/hsm chooses how: the native addon's
//             workers when they run, else pkcs11js);
//   SOFTWARE  an RFC 5649 wrap under the root key in SQLite, unwrapped into process memory on first
//             use, cached (bounded) and zeroed on disable, deletion, eviction and shutdown.

import crypto from 'node:crypto';
import { HsmToken, TransientKey } from '../hsm/token';
import { DecryptFailedError, HsmError } from '../hsm/errors';
import { fromHsm } from './errors';
import { KeyVersionRow, Store } from '../store/store';

/** A key the token no longer holds is the caller's Rejected.KeyMaterialMissing; the rest pass on. */
function domainError(e: unknown): Error {
  if (e instanceof HsmError && e.kind === 'KEY_MISSING') return fromHsm(e) as Error;
  return e instanceof Error ? e : new Error(String(e));
}

function rethrowDomain(e: unknown): never {
  throw domainError(e);
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

export type KeyringStats = ReturnType<HsmToken['dataPathInfo']>['counters'];

export class Keyring {
  private readonly software = new Map<string, Buffer>();

  constructor(
    readonly token: HsmToken,
    private readonly store: Store,
  ) {}

  /** HSM operations per binding, for DescribeRuntime and DescribeHsm. */
  get stats(): KeyringStats {
    return this.token.dataPathInfo().counters;
  }

  get nativeAttached(): boolean {
    return this.token.dataPathInfo().workers;
  }

  // ---------------------------------------------------------------- creation

  /**
   * Why a CMK of this level (with generated material, or imported) cannot be had on this token at
   * all, naming what the token lacks; null when it can. Asked before anything is created.
   */
  cannotCreate(level: string, generated: boolean): string | null {
    if (level === 'HSM') return this.token.cannot(generated ? 'HSM_GENERATED' : 'HSM_EXTERNAL');
    return generated ? this.token.cannot('SOFTWARE_GENERATED') : null;
  }

  /** Why key material cannot be imported on this token at all; null when it can. */
  cannotImport(): string | null {
    return this.token.cannot('IMPORT');
  }

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

  encrypt(level: string, v: KeyVersionRow, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer> {
    if (level === 'HSM') return this.token.encrypt(v.version_id, iv, aad, plaintext).catch(rethrowDomain);
    try {
      const c = crypto.createCipheriv('aes-256-gcm', this.softwareMaterial(v), iv);
      c.setAAD(aad);
      return Promise.resolve(Buffer.concat([c.update(plaintext), c.final(), c.getAuthTag()]));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Rejects with DecryptFailedError on any authentication failure. */
  decrypt(level: string, v: KeyVersionRow, iv: Buffer, aad: Buffer, sealed: Buffer): Promise<Buffer> {
    if (level === 'HSM') return this.token.decrypt(v.version_id, iv, aad, sealed).catch(rethrowDomain);
    try {
      return Promise.resolve(this.softwareDecrypt(v, iv, aad, sealed));
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private softwareDecrypt(v: KeyVersionRow, iv: Buffer, aad: Buffer, sealed: Buffer): Buffer {
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
   * that item. The HSM items go to the token context in one call (across the addon's workers when
   * they run) while the SOFTWARE items are done here.
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
    const hsmIndex: number[] = [];
    const hsmItems: { versionId: string; iv: Buffer; aad: Buffer; data: Buffer }[] = [];
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      if (it.level !== 'HSM') continue;
      hsmIndex.push(i);
      hsmItems.push({ versionId: it.v.version_id, iv: it.iv, aad: it.aad, data: it.data });
    }
    const pending = hsmItems.length > 0 ? (op === 'encrypt' ? this.token.encryptMany(hsmItems) : this.token.decryptMany(hsmItems)) : null;
    // Meanwhile, on this thread: the SOFTWARE items.
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      if (it.level === 'HSM') continue;
      try {
        out[i] = op === 'encrypt' ? await this.encrypt(it.level, it.v, it.iv, it.aad, it.data) : this.softwareDecrypt(it.v, it.iv, it.aad, it.data);
      } catch (e) {
        out[i] = e instanceof Error ? e : new Error(String(e));
      }
    }
    if (pending) {
      const results = await pending;
      for (let j = 0; j < hsmIndex.length; j++) {
        const r = results[j];
        out[hsmIndex[j]] = Buffer.isBuffer(r) ? r : domainError(r);
      }
    }
    return out;
  }

  /** The addon's worker count and recovered sessions; null when the data path runs on pkcs11js. */
  nativeInfo(): { threads: number; sessionsReopened: number } | null {
    const s = this.token.dataPathInfo();
    return s.workers ? { threads: s.threads, sessionsReopened: s.sessionsReopened } : null;
  }

  /** Is the version's material where its protection level says? */
  present(level: string, v: KeyVersionRow): boolean {
    return level === 'HSM' ? this.token.has('cmk', v.version_id) : v.software_wrapped !== null;
  }
}
