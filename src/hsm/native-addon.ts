// Loader and types for the native addon (native/, built by node-gyp into build/Release/kmsd_native.node):
// AES-256-GCM encrypt/decrypt on token-resident keys, run on a fixed pool of worker threads that
// each own a PKCS#11 session, so the event loop never waits on the HSM.
//
// The addon shares the module instance that pkcs11js loaded (same path, same dlopen handle) and
// relies on the JS side for C_Initialize and C_Login; it never logs in and never finalizes. The JS
// side must initialize with OS locking — `C_Initialize({ flags: CKF_OS_LOCKING_OK })` — because
// the workers call the module concurrently with it and with each other; SoftHSM, for one, turns
// its internal locking off when C_Initialize gets no arguments.
//
// When the .node file is absent (or fails to load), loadNativeAddon() returns null and
// nativeAddonLoadError() says why; src/hsm then stays on the pkcs11js path.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { nativeAddonOverride } from '../config';
import { toHsmError } from './errors';

/** One batch item: AES-GCM on the token key `handle` with a 12-byte IV. */
export interface NativeItem {
  handle: number;
  iv: Buffer;
  aad: Buffer;
  data: Buffer;
}

/**
 * A failed operation, named by the one table of src/hsm/errors.ts: `code` is the CKR_ name of the
 * PKCS#11 return value (unknown values: `CKR_0x%08x`), with `pkcs11Function` and `rv` set; or one of
 * the addon's own codes: `CLOSED` (the context was closed before the operation ran) and
 * `ERR_INVALID_ARG_VALUE` (bad handle, an IV that is not 12 bytes, a non-Buffer). The addon itself
 * reports only the bare return value; the names live in one place.
 */
export interface NativeError extends Error {
  code: string;
  pkcs11Function?: string;
  rv?: number;
}

/** A bad argument stays the addon's TypeError (a bug of the caller); the rest is named by the table. */
function normalise(e: unknown): Error {
  return e instanceof TypeError ? e : toHsmError(e);
}

export interface NativeStats {
  /** Successful encryptions / decryptions since open(). */
  encrypt: number;
  decrypt: number;
  /** Worker sessions replaced after CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED, CKR_DEVICE_REMOVED
   * (or a session left with an active operation). */
  sessionsReopened: number;
  threads: number;
}

export interface NativeAesGcm {
  /** Resolves to ciphertext || 16-byte tag. */
  encrypt(handle: number, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer>;
  decrypt(handle: number, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Promise<Buffer>;
  /** One result per item, in order: a Buffer or a NativeError. Rejects only for a non-array or
   * after close(). */
  encryptBatch(items: NativeItem[]): Promise<Array<Buffer | NativeError>>;
  decryptBatch(items: NativeItem[]): Promise<Array<Buffer | NativeError>>;
  stats(): NativeStats;
  /**
   * Idempotent. Operations already running on a worker complete; queued ones fail with CLOSED, as
   * does every later call. Blocks until the workers have stopped and closed their sessions.
   */
  close(): void;
}

export interface NativeOpenOptions {
  /** The PKCS#11 module path, the same one pkcs11js loaded. */
  modulePath: string;
  slotId: number;
  /** Worker threads (and sessions), 1..256. Default: the number of cores. */
  threads?: number;
}

export interface NativeAddon {
  /** Throws a NativeError (e.g. CKR_SLOT_ID_INVALID, MODULE_LOAD_FAILED) if the pool cannot start. */
  open(opts: NativeOpenOptions): NativeAesGcm;
}

/** What the .node file exports. Its errors carry `rv` and `pkcs11Function` but no name. */
interface RawAddon {
  open(opts: NativeOpenOptions): RawAesGcm;
  clearCryptoErrors?(): boolean;
  disableCoreDumps?(): { coreLimitZero: boolean; notDumpable: boolean; error?: string };
}

interface RawAesGcm {
  /** `defer`: queued until flush(), which must follow before the event loop gets control back. */
  encrypt(handle: number, iv: Buffer, aad: Buffer, plaintext: Buffer, defer?: boolean): Promise<Buffer>;
  decrypt(handle: number, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer, defer?: boolean): Promise<Buffer>;
  flush?(): void;
  encryptBatch(items: NativeItem[]): Promise<Array<Buffer | Error>>;
  decryptBatch(items: NativeItem[]): Promise<Array<Buffer | Error>>;
  stats(): NativeStats;
  close(): void;
  _closeWorkerSessions(): number;
}

function rethrow(e: unknown): never {
  throw normalise(e);
}

function named(out: Array<Buffer | Error>): Array<Buffer | NativeError> {
  for (let i = 0; i < out.length; i++) {
    const r = out[i];
    if (!Buffer.isBuffer(r)) out[i] = normalise(r);
  }
  return out as Array<Buffer | NativeError>;
}

/** The addon's context with every error named by the one table. */
class AesGcm implements NativeAesGcm {
  readonly #raw: RawAesGcm;
  /**
   * Single operations started in one piece of JS (a turn of unary calls starts several) reach the
   * workers together, from a microtask after it: one wake-up for all of them, instead of one per
   * operation waking a worker that then competes with the event loop while it starts the rest
   * (on two cores, the loop was switched out at that moment about every other call).
   */
  #flushQueued = false;
  readonly #defer: boolean;
  readonly #flush = (): void => {
    this.#flushQueued = false;
    this.#raw.flush!();
  };

  constructor(raw: RawAesGcm) {
    if (raw === null || typeof raw !== 'object' || typeof raw.encrypt !== 'function') throw new TypeError('AesGcm is made by open(), not by its constructor');
    this.#raw = raw;
    this.#defer = typeof raw.flush === 'function';
  }

  #deferring(): boolean {
    if (!this.#defer) return false;
    if (!this.#flushQueued) {
      this.#flushQueued = true;
      queueMicrotask(this.#flush);
    }
    return true;
  }

  encrypt(handle: number, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer> {
    try {
      return this.#raw.encrypt(handle, iv, aad, plaintext, this.#deferring()).catch(rethrow);
    } catch (e) {
      return Promise.reject(normalise(e));
    }
  }

  decrypt(handle: number, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Promise<Buffer> {
    try {
      return this.#raw.decrypt(handle, iv, aad, ciphertextWithTag, this.#deferring()).catch(rethrow);
    } catch (e) {
      return Promise.reject(normalise(e));
    }
  }

  encryptBatch(items: NativeItem[]): Promise<Array<Buffer | NativeError>> {
    try {
      return this.#raw.encryptBatch(items).then(named, rethrow);
    } catch (e) {
      return Promise.reject(normalise(e));
    }
  }

  decryptBatch(items: NativeItem[]): Promise<Array<Buffer | NativeError>> {
    try {
      return this.#raw.decryptBatch(items).then(named, rethrow);
    } catch (e) {
      return Promise.reject(normalise(e));
    }
  }

  stats(): NativeStats {
    return this.#raw.stats();
  }

  close(): void {
    this.#raw.close();
  }

  closeWorkerSessionsForTesting(): number {
    return this.#raw._closeWorkerSessions();
  }
}

const ADDON_FILE = 'kmsd_native.node';
const BUILD_DIRS = ['build/Release', 'build/Debug'];

let loaded: RawAddon | null | undefined;
let loadError: string | undefined;

/** Directories to search upward from: this file's (when compiled to CommonJS) and the cwd. */
function searchRoots(): string[] {
  const roots: string[] = [];
  if (typeof __dirname === 'string') roots.push(__dirname);
  roots.push(process.cwd());
  return roots;
}

function findAddon(): string | undefined {
  const explicit = nativeAddonOverride();
  if (explicit) return fs.existsSync(explicit) ? explicit : undefined;
  for (const root of searchRoots()) {
    for (let dir = path.resolve(root); ; dir = path.dirname(dir)) {
      for (const b of BUILD_DIRS) {
        const candidate = path.join(dir, b, ADDON_FILE);
        if (fs.existsSync(candidate)) return candidate;
      }
      if (fs.existsSync(path.join(dir, 'package.json')) || path.dirname(dir) === dir) break;
    }
  }
  return undefined;
}

function load(): RawAddon | null {
  if (loaded !== undefined) return loaded;
  const file = findAddon();
  if (!file) {
    const override = nativeAddonOverride();
    loadError = override
      ? `KMSD_NATIVE_ADDON=${override} does not exist`
      : `${ADDON_FILE} not found (run \`npx node-gyp rebuild\`)`;
    loaded = null;
    return null;
  }
  try {
    // process.dlopen rather than require: works the same from CommonJS, ESM and vitest.
    const mod = { exports: {} as RawAddon };
    process.dlopen(mod, file, os.constants.dlopen.RTLD_NOW);
    if (typeof mod.exports.open !== 'function') throw new Error('the addon does not export open()');
    loaded = mod.exports;
  } catch (e) {
    loadError = `cannot load ${file}: ${(e as Error).message}`;
    loaded = null;
  }
  return loaded;
}

/** The addon, or null when it is not built or does not load (see nativeAddonLoadError). */
export function loadNativeAddon(): NativeAddon | null {
  const raw = load();
  if (!raw) return null;
  return {
    open(opts: NativeOpenOptions): NativeAesGcm {
      let ctx: RawAesGcm;
      try {
        ctx = raw.open(opts);
      } catch (e) {
        throw normalise(e);
      }
      return new AesGcm(ctx);
    },
  };
}

/** Why loadNativeAddon() returned null; undefined if it has not failed. */
export function nativeAddonLoadError(): string | undefined {
  return loadError;
}

/**
 * Empties the calling thread's OpenSSL error queue, which the PKCS#11 module shares with
 * node:crypto when it links libcrypto (SoftHSM does): a refused in-token operation can leave
 * entries there that make node:crypto's next call fail ("padding check failed" from
 * createPrivateKey). src/hsm/token.ts calls this after every pkcs11js call. Returns whether the
 * queue had entries; a no-op returning false when the addon is not built or does not load.
 */
export function clearCryptoErrors(): boolean {
  const addon = load();
  return addon !== null && typeof addon.clearCryptoErrors === 'function' ? addon.clearCryptoErrors() : false;
}

/** What disableCoreDumps() left in force. */
export interface CoreDumpState {
  /** Both locks hold: RLIMIT_CORE is 0 and the process is not dumpable. */
  disabled: boolean;
  coreLimitZero: boolean;
  notDumpable: boolean;
  /** Why not (both), when disabled is false. */
  reason?: string;
}

/**
 * Turns core dumps off for the whole process (a core would hold the PIN, SOFTWARE key material,
 * plaintexts and data keys): RLIMIT_CORE 0 and PR_SET_DUMPABLE 0, through the addon, since Node
 * itself has neither setrlimit nor prctl. Without the addon nothing changes and `reason` says why.
 */
export function disableCoreDumps(): CoreDumpState {
  const addon = load();
  if (addon === null || typeof addon.disableCoreDumps !== 'function') {
    return { disabled: false, coreLimitZero: false, notDumpable: false, reason: addon === null ? loadError : 'the native addon predates disableCoreDumps (rebuild it)' };
  }
  const r = addon.disableCoreDumps();
  const disabled = r.coreLimitZero && r.notDumpable;
  return { disabled, coreLimitZero: r.coreLimitZero, notDumpable: r.notDumpable, ...(disabled ? {} : { reason: r.error ?? 'the limits did not take effect' }) };
}

/** Narrows a batch result. */
export function isNativeError(result: Buffer | Error): result is NativeError {
  return result instanceof Error;
}

/**
 * Test hook: every worker closes its session behind the back of its own bookkeeping (as a token
 * reset would) just before its next job, which then goes through session recovery. Returns the
 * number of workers told.
 */
export function closeWorkerSessionsForTesting(aes: NativeAesGcm): number {
  return (aes as AesGcm).closeWorkerSessionsForTesting();
}
