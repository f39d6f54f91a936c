// AES-256-GCM on CMK versions held by the token: the hot path of Encrypt, Decrypt and their batches.
// The token context (src/hsm/token.ts) owns one of these; it chooses the binding (the native
// addon's worker sessions when they run, else pkcs11js on the event loop), looks up the object
// handle, and turns every failure into one shape whichever binding ran the call:
//   - a key the token no longer holds is KEY_MISSING: a stale handle, a lookup that finds nothing,
//     or any other PKCS#11 error once the object is gone or was replaced (material destroyed while
//     the request was in flight; SoftHSM then answers C_EncryptInit with whatever it read from the
//     dying object, e.g. CKR_KEY_FUNCTION_NOT_PERMITTED);
//   - an authentication failure on decrypt is DecryptFailedError;
//   - a closed context is CLOSED; the rest keep the kind the return value has in the one table.

import { DecryptFailedError, HsmClosedError, HsmError, isGcmAuthFailure, toHsmError } from './errors';
import type { NativeAesGcm, NativeItem } from './native-addon';

/** What the data path needs of the token context: lookups and the pkcs11js fallback. */
export interface CmkObjects {
  has(kind: 'cmk', id: string): boolean;
  /** Other processes create and destroy objects in this token too (HsmToken's `shared`). */
  readonly shared: boolean;
  /** Drops a handle that may be stale (see HsmToken.refresh). */
  refresh(kind: 'cmk', id: string): void;
  /** Shared tokens: makes the module read the token again (see HsmToken.reload). */
  reload(): Promise<void>;
  /** The reload under way, if any: operations wait for it rather than fail. */
  readonly reloading: Promise<void> | null;
  numericHandle(kind: 'cmk', id: string): number;
  encryptGcm(kind: 'cmk', id: string, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer;
  decryptGcm(kind: 'cmk', id: string, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Buffer;
}

/** One AES-GCM operation on CMK version `versionId`; `data` is the plaintext or ciphertext || tag. */
export interface CmkGcmItem {
  versionId: string;
  iv: Buffer;
  aad: Buffer;
  data: Buffer;
}

/** How the data path runs, for DescribeRuntime and DescribeHsm. */
export interface DataPathInfo {
  /** The native addon's worker sessions carry the operations (else pkcs11js on the event loop). */
  workers: boolean;
  threads: number;
  sessionsReopened: number;
  counters: { hsmEncryptNative: number; hsmEncryptPkcs11js: number; hsmDecryptNative: number; hsmDecryptPkcs11js: number };
}

type Op = 'encrypt' | 'decrypt';

/** Waits between lookups of material a shared token does not show yet (about 3 s in all). */
const SHARED_LOOKUP_RETRIES_MS = [50, 100, 200, 400, 800, 1500];

export class CmkDataPath {
  private workers: NativeAesGcm | null = null;
  private closed = false;
  private readonly counters = { hsmEncryptNative: 0, hsmEncryptPkcs11js: 0, hsmDecryptNative: 0, hsmDecryptPkcs11js: 0 };

  constructor(private readonly objects: CmkObjects) {}

  /** From now on operations run on these worker sessions; closed with the data path. */
  attachWorkers(workers: NativeAesGcm): void {
    if (this.closed) {
      workers.close();
      throw new HsmClosedError();
    }
    this.workers?.close();
    this.workers = workers;
  }

  get hasWorkers(): boolean {
    return this.workers !== null;
  }

  /**
   * Stops the workers (running operations finish first; queued ones fail CLOSED) but not the data
   * path, which goes on with pkcs11js until workers are attached again. Returns their thread count.
   */
  detachWorkers(): number {
    const w = this.workers;
    this.workers = null;
    const threads = w?.stats().threads ?? 0;
    w?.close();
    return threads;
  }

  /** Stops the workers (operations already running finish, queued ones fail CLOSED). Idempotent. */
  close(): void {
    this.closed = true;
    const w = this.workers;
    this.workers = null;
    w?.close();
  }

  info(): DataPathInfo {
    const s = this.workers?.stats();
    return { workers: s !== undefined, threads: s?.threads ?? 0, sessionsReopened: s?.sessionsReopened ?? 0, counters: { ...this.counters } };
  }

  encrypt(versionId: string, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer> {
    return this.one('encrypt', versionId, iv, aad, plaintext);
  }

  decrypt(versionId: string, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Promise<Buffer> {
    return this.one('decrypt', versionId, iv, aad, ciphertextWithTag);
  }

  /** One result per item, in order: the output, or the error that item alone would have thrown. */
  encryptMany(items: CmkGcmItem[]): Promise<Array<Buffer | HsmError>> {
    return this.many('encrypt', items);
  }

  decryptMany(items: CmkGcmItem[]): Promise<Array<Buffer | HsmError>> {
    return this.many('decrypt', items);
  }

  private one(op: Op, versionId: string, iv: Buffer, aad: Buffer, data: Buffer): Promise<Buffer> {
    // A call that arrives while the token is read again waits for it; one queued on a worker when it
    // began is made once more after it.
    const reloading = this.objects.reloading;
    const p = reloading ? reloading.then(() => this.attempt(op, versionId, iv, aad, data)) : this.attempt(op, versionId, iv, aad, data);
    if (!this.objects.shared) return p.catch((e: unknown) => this.againAfterReload(e, op, versionId, iv, aad, data));
    return p.catch((e: unknown) => this.retryMissing(e, op, versionId, iv, aad, data));
  }

  /** A worker queue closed by a reload (not by close()): once more on the new workers. */
  private async againAfterReload(e: unknown, op: Op, versionId: string, iv: Buffer, aad: Buffer, data: Buffer): Promise<Buffer> {
    if (!(e instanceof HsmError && e.kind === 'CLOSED') || this.closed) throw e;
    await this.objects.reloading;
    return this.attempt(op, versionId, iv, aad, data);
  }

  /**
   * On a shared token, a key another process made may stay invisible to this one for a moment
   * (SoftHSM: a process that lists the token while another writes an object file loses sight of
   * that object for up to a few seconds). Missing material is looked up again for up to ~3 s before
   * it is reported; anything else fails at once.
   */
  private async retryMissing(first: unknown, op: Op, versionId: string, iv: Buffer, aad: Buffer, data: Buffer): Promise<Buffer> {
    let e = first;
    for (const [i, delay] of SHARED_LOOKUP_RETRIES_MS.entries()) {
      try {
        return await this.againAfterReload(e, op, versionId, iv, aad, data);
      } catch (again) {
        e = again;
      }
      if (!(e instanceof HsmError && e.code === 'NOT_FOUND') || this.closed) throw e;
      await new Promise((r) => setTimeout(r, delay));
      // Still not there: the module may hold a stale copy, which only reading the token again clears.
      if (i === 2) await this.objects.reload().catch(() => undefined);
      try {
        return await this.attempt(op, versionId, iv, aad, data);
      } catch (again) {
        e = again;
      }
    }
    throw e;
  }

  private attempt(op: Op, versionId: string, iv: Buffer, aad: Buffer, data: Buffer): Promise<Buffer> {
    if (this.closed) return Promise.reject(new HsmClosedError());
    const workers = this.workers;
    let handle: number | undefined;
    try {
      if (workers) {
        handle = this.objects.numericHandle('cmk', versionId);
        const used = handle;
        if (op === 'encrypt') {
          this.counters.hsmEncryptNative++;
          return workers.encrypt(handle, iv, aad, data).catch((e: unknown) => {
            throw this.failure(e, versionId, op, used);
          });
        }
        this.counters.hsmDecryptNative++;
        return workers.decrypt(handle, iv, aad, data).catch((e: unknown) => {
          throw this.failure(e, versionId, op, used);
        });
      }
      if (op === 'encrypt') {
        this.counters.hsmEncryptPkcs11js++;
        return Promise.resolve(this.objects.encryptGcm('cmk', versionId, iv, aad, data));
      }
      this.counters.hsmDecryptPkcs11js++;
      return Promise.resolve(this.objects.decryptGcm('cmk', versionId, iv, aad, data));
    } catch (e) {
      return Promise.reject(this.failure(e, versionId, op, handle));
    }
  }

  private async many(op: Op, items: CmkGcmItem[]): Promise<Array<Buffer | HsmError>> {
    const out: Array<Buffer | HsmError> = new Array(items.length);
    const gone = new Map<string, boolean>();
    const workers = this.workers;
    if (this.closed) return out.fill(new HsmClosedError());
    if (!workers) {
      // pkcs11js: one at a time on this thread.
      for (let i = 0; i < items.length; i++) {
        const it = items[i];
        try {
          out[i] = await this.one(op, it.versionId, it.iv, it.aad, it.data);
        } catch (e) {
          out[i] = toHsmError(e);
        }
      }
      return out;
    }
    const index: number[] = [];
    const batch: NativeItem[] = [];
    // A batch usually names a few versions many times: one handle lookup per version.
    const handles = new Map<string, number | HsmError>();
    for (let i = 0; i < items.length; i++) {
      const it = items[i];
      let h = handles.get(it.versionId);
      if (h === undefined) {
        try {
          h = this.objects.numericHandle('cmk', it.versionId);
        } catch (e) {
          h = this.failure(e, it.versionId, op, undefined, gone);
        }
        handles.set(it.versionId, h);
      }
      if (typeof h !== 'number') {
        out[i] = h;
        continue;
      }
      batch.push({ handle: h, iv: it.iv, aad: it.aad, data: it.data });
      index.push(i);
    }
    if (batch.length === 0) return out;
    if (op === 'encrypt') this.counters.hsmEncryptNative += batch.length;
    else this.counters.hsmDecryptNative += batch.length;
    let results: Array<Buffer | Error>;
    try {
      results = await (op === 'encrypt' ? workers.encryptBatch(batch) : workers.decryptBatch(batch));
    } catch (e) {
      // Only a closed context rejects the whole batch.
      const err = this.failure(e, items[index[0]].versionId, op, undefined, gone);
      results = index.map(() => err);
    }
    for (let j = 0; j < index.length; j++) {
      const r = results[j];
      const i = index[j];
      out[i] = Buffer.isBuffer(r) ? r : this.failure(r, items[i].versionId, op, batch[j].handle, gone);
    }
    return out;
  }

  /** One shape for every failure, whichever binding ran the operation (see the top of this file). */
  private failure(e: unknown, versionId: string, op: Op, usedHandle?: number, gone?: Map<string, boolean>): HsmError {
    if (e instanceof DecryptFailedError) return e;
    const err = toHsmError(e);
    if (err.kind === 'CLOSED') return err;
    if (err.kind === 'KEY_MISSING' || (err.code.startsWith('CKR_') && this.materialGone(versionId, usedHandle, gone))) {
      return new HsmError(`the token no longer holds key version ${versionId} (destroyed while the request was in flight, or removed outside kmsd)`, 'NOT_FOUND', err.pkcs11Function);
    }
    if (op === 'decrypt' && isGcmAuthFailure(err.code)) return new DecryptFailedError();
    return err;
  }

  /** Has the version's token object gone, or been replaced since `usedHandle` was taken? */
  private materialGone(versionId: string, usedHandle: number | undefined, memo?: Map<string, boolean>): boolean {
    const key = `${versionId}/${usedHandle ?? ''}`;
    const known = memo?.get(key);
    if (known !== undefined) return known;
    let result: boolean;
    try {
      this.objects.refresh('cmk', versionId);
      result = !this.objects.has('cmk', versionId) || (usedHandle !== undefined && this.objects.numericHandle('cmk', versionId) !== usedHandle);
    } catch {
      result = false; // the token cannot say: report the original error
    }
    memo?.set(key, result);
    return result;
  }
}
