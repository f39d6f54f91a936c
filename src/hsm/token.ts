// The one module that owns PKCS#11: it loads the module, calls C_Initialize once per process,
// logs in, owns the session and every object handle it opens, and exposes CMK-level operations.
// Nothing outside src/hsm sees a CK_ constant or a pkcs11js handle.
//
// Why one session and not a pool: pkcs11js calls are synchronous on the event loop, so two JS
// callers can never use a session at the same time; a pool would only add handles to leak.
// Concurrency for the hot path lives in the native addon, whose worker threads own their sessions;
// this context starts them (startWorkers) and stops them before its own session in close(), so the
// rest of kmsd asks for encrypt/decrypt on a key version and never knows which binding ran it.
//
// This file keeps the session and the objects it looks up; the keys with a life of their own are
// parts it holds, each in its file: wrapping-keys.ts (RSA wrapping key pairs and the unwraps done
// with them), root-key.ts (SOFTWARE level), signing-key.ts (audit checkpoints). Every template is in
// templates.ts; what the parts may use of this context is context.ts.

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { HsmClosedError, HsmError, DecryptFailedError, UnwrapFailedError, isGcmAuthFailure, isSessionLost, toHsmError } from './errors';
import { clearCryptoErrors, loadNativeAddon, nativeAddonLoadError } from './native-addon';
import { initializeModuleOffLoop } from './module-init';
import { CmkDataPath, type CmkGcmItem, type DataPathInfo } from './data-path';
import { composedGcmDecrypt, composedGcmEncrypt } from './gcm-composed';
import { HANDLE, type Handle, type MechanismPath, Slots, type TokenContext, TransientKey } from './context';
import { INSTANCE_LABEL_PREFIX, LABEL_PREFIX, ObjectIndex, ObjectKind, TokenInventory, findObjects, findOne, usedClass } from './objects';
import { RootKey } from './root-key';
import { SigningKey } from './signing-key';
import { cmkKeyTemplate, instanceTemplate, macKeyTemplate, measuringKekTemplate, transientAesTemplate } from './templates';
import { type RsaPadding, WrappingKeys } from './wrapping-keys';
import { type HsmCapabilities, type UnwrapPlan, unwrapKeyMaterial } from './unwrap';
import type { DisableableMechanism } from './mechanisms';

export type { ObjectKind, TokenInventory } from './objects';
export { TransientKey } from './context';
export { MAX_KEY_PAIR_GENERATIONS, type RsaPadding } from './wrapping-keys';

export interface TokenOptions {
  modulePath: string;
  tokenLabel: string;
  pin: string;
  /** Mechanisms kmsd must not use even where the token has them (src/hsm/mechanisms.ts). */
  disabledMechanisms?: readonly DisableableMechanism[];
  /**
   * Other processes (replicas on a shared store) create and destroy kmsd objects in this token: a
   * walk is never the whole truth, so a key the index lacks is looked up in the token, and a handle
   * that failed is looked up again.
   */
  shared?: boolean;
}

const MECHANISM_NUMBERS: Record<DisableableMechanism, number> = {
  CKM_AES_GCM: pkcs11js.CKM_AES_GCM,
  CKM_AES_ECB: pkcs11js.CKM_AES_ECB,
  CKM_AES_KEY_WRAP_PAD: pkcs11js.CKM_AES_KEY_WRAP_PAD,
  CKM_RSA_PKCS: pkcs11js.CKM_RSA_PKCS,
  CKM_RSA_PKCS_OAEP: pkcs11js.CKM_RSA_PKCS_OAEP,
  CKM_RSA_X_509: pkcs11js.CKM_RSA_X_509,
};

/** What a CMK needs of the token, asked before anything is created (see HsmToken.cannot). */
export type TokenNeed = 'HSM_GENERATED' | 'HSM_EXTERNAL' | 'SOFTWARE_GENERATED' | 'IMPORT';

/**
 * Where AES-256-GCM runs: `in-token` is CKM_AES_GCM; `composed` is CKM_AES_ECB in the token with
 * GHASH and the tag here (src/hsm/gcm-composed.ts), for tokens without CKM_AES_GCM.
 */
export type GcmPath = MechanismPath;

/** CKA_APPLICATION of the token's kmsd:instance data object (its label starts with INSTANCE_LABEL_PREFIX). */
const INSTANCE_APPLICATION = 'kmsd:instance';

/** Objects whose class and label one session call of a background walk reads before yielding. */
const WALK_SLICE = 256;

/** Where a LoadedModule keeps its pkcs11js binding: a symbol only this file holds. */
const LOADED: unique symbol = Symbol('loaded pkcs11 module');

/** A PKCS#11 module loaded but not yet initialized (HsmToken.loadModule). Opaque outside this file. */
export interface LoadedModule {
  readonly [LOADED]: pkcs11js.PKCS11;
  readonly modulePath: string;
}

let moduleRefCount = 0;

/** AES key generations run at once off the event loop; see generateAesKeyOffLoop. */
const MAX_AES_GENERATIONS = 2;
/** Sessions kept open for off-loop calls: enough for the AES generations and a wrapping key pair's. */
const MAX_IDLE_SESSIONS = MAX_AES_GENERATIONS + 2;

/** C_CloseSession where a failure only means the session is gone already (with the token, or a reset). */
function closeQuietly(p11: pkcs11js.PKCS11, s: Handle): void {
  try {
    p11.C_CloseSession(s);
  } catch {
    /* already gone */
  }
}

export class HsmToken {
  private p11: pkcs11js.PKCS11 | null;
  private session: Handle;
  private readonly slot: Handle;
  /** Handles of kmsd's token objects, and whether one walk has gone over the whole token. */
  private readonly index = new ObjectIndex();
  /** Bumped when a walk starts: an older background walk stops, superseded. */
  private walkGeneration = 0;
  private walking: Promise<void> | null = null;
  /** Bumped whenever the session is reopened: handles taken before may be stale (see reopenSession). */
  private sessionEpoch = 0;
  readonly slotId: number;
  readonly tokenLabel: string;
  readonly modulePath: string;
  private readonly pin: string;
  /** Mechanisms the configuration told kmsd not to use. */
  private readonly disabled: ReadonlySet<DisableableMechanism>;
  /** See TokenOptions.shared. */
  readonly shared: boolean;

  private constructor(p11: pkcs11js.PKCS11, slot: Handle, session: Handle, opts: TokenOptions) {
    this.p11 = p11;
    this.slot = slot;
    this.slotId = Number(slot.readBigUInt64LE(0));
    this.session = session;
    this.tokenLabel = opts.tokenLabel;
    this.modulePath = opts.modulePath;
    this.pin = opts.pin;
    this.disabled = new Set(opts.disabledMechanisms ?? []);
    this.shared = Boolean(opts.shared);
    const ctx = this.context();
    this.wrapping = new WrappingKeys(ctx);
    this.rootKey = new RootKey(ctx);
    this.signingKey = new SigningKey(ctx);
  }

  /** The parts of the token that hold one kind of key each; they reach the session through context(). */
  private readonly wrapping: WrappingKeys;
  private readonly rootKey: RootKey;
  private readonly signingKey: SigningKey;

  /** What the parts get from this context: the session, lookup and bookkeeping, never the PIN. */
  private context(): TokenContext {
    return {
      slot: this.slot,
      index: this.index,
      mechanisms: () => this.mechanisms(),
      withSession: (fn, name) => this.withSession(fn, name),
      withObject: (kind, id, fn, name) => this.withObject(kind, id, fn, name),
      inOwnSession: (fn, name) => this.inOwnSession(fn, name),
      label: (kind, id) => this.label(kind, id),
      handleOf: (kind, id) => this.handleOf(kind, id),
      requireHandle: (kind, id) => this.requireHandle(kind, id),
      created: (kind, id, h) => this.created(kind, id, h),
      destroyTransient: (key) => this.destroyTransient(key),
      createOffLoop: (kind, id, create) => this.createOffLoop(kind, id, create),
    };
  }

  /**
   * Loads the module (dlopen and C_GetFunctionList only: quick, and a wrong path fails here). The
   * result is passed to open() or openOffLoop(), which use it as the context's binding.
   */
  static loadModule(modulePath: string): LoadedModule {
    const p11 = new pkcs11js.PKCS11();
    try {
      p11.load(modulePath);
    } catch (e) {
      throw new HsmError(`cannot load PKCS#11 module ${modulePath}: ${(e as Error).message}`, 'MODULE_LOAD_FAILED');
    }
    return { [LOADED]: p11, modulePath };
  }

  /**
   * open() with the module's C_Initialize made in a worker thread first (src/hsm/module-init.ts):
   * the slow part of a first start on a full token, kept off the event loop. What is left on the
   * loop (slot list, session, login) takes milliseconds.
   */
  static async openOffLoop(opts: TokenOptions, loaded: LoadedModule = HsmToken.loadModule(opts.modulePath)): Promise<HsmToken> {
    await initializeModuleOffLoop(opts.modulePath);
    return HsmToken.open(opts, loaded);
  }

  /** Loads the module, finds the token by label (exactly one), opens a RW session and logs in as user. */
  static open(opts: TokenOptions, loaded: LoadedModule = HsmToken.loadModule(opts.modulePath)): HsmToken {
    const p11 = loaded[LOADED];
    try {
      // The native addon calls into the same module from its worker threads, so the module must do
      // its own locking: without CKF_OS_LOCKING_OK SoftHSM turns locking off.
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
    } catch (e) {
      const err = toHsmError(e, 'C_Initialize');
      if (err.code !== 'CKR_CRYPTOKI_ALREADY_INITIALIZED') throw err;
    }
    moduleRefCount++;
    let session: Handle | undefined;
    try {
      const slots = p11.C_GetSlotList(true).filter((s) => p11.C_GetTokenInfo(s).label.trim() === opts.tokenLabel);
      if (slots.length === 0) throw new HsmError(`no initialized token with label "${opts.tokenLabel}"`, 'TOKEN_NOT_FOUND');
      if (slots.length > 1) throw new HsmError(`more than one token has label "${opts.tokenLabel}"`, 'AMBIGUOUS');
      const slot = slots[0];
      session = p11.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      try {
        p11.C_Login(session, pkcs11js.CKU_USER, opts.pin);
      } catch (e) {
        const err = toHsmError(e, 'C_Login');
        if (err.code !== 'CKR_USER_ALREADY_LOGGED_IN') {
          // Never echo the PIN; the CKR name is enough to act on.
          throw new HsmError(`login to token "${opts.tokenLabel}" failed: ${err.code}`, err.code, 'C_Login');
        }
      }
      return new HsmToken(p11, slot, session, opts);
    } catch (e) {
      if (session) closeQuietly(p11, session);
      moduleRefCount--;
      if (moduleRefCount === 0) {
        try {
          p11.C_Finalize();
        } catch {
          /* already failing */
        }
      }
      throw e instanceof HsmError ? e : toHsmError(e, 'open');
    }
  }

  get closed(): boolean {
    return this.p11 === null;
  }

  /**
   * Closes everything this context opened, in the order the module needs: the addon's worker
   * sessions first (they share the login), then the login session, then C_Finalize when this was
   * the last context of the process. Every later call fails with HsmClosedError.
   */
  close(): void {
    const p11 = this.p11;
    if (!p11) return;
    this.dataPath.close();
    this.p11 = null;
    this.walkGeneration++;
    this.index.clear();
    this.closeIdleSessions(p11);
    try {
      p11.C_Logout(this.session);
    } catch {
      /* a lost session is already logged out */
    }
    closeQuietly(p11, this.session);
    moduleRefCount--;
    if (moduleRefCount === 0) {
      try {
        p11.C_Finalize();
      } catch {
        /* finalize is best effort at shutdown */
      }
    }
  }

  /** close() once no off-loop key pair generation is running or queued (daemon shutdown). */
  async shutdown(): Promise<void> {
    await this.drain();
    this.close();
  }

  // ---------------------------------------------------------------- the data path (CMK AES-GCM)

  private readonly dataPath = new CmkDataPath(this);

  /**
   * Moves the data path onto the native addon's worker threads, each with its own session on this
   * token's slot. Without the addon (not built, or it cannot open) the data path stays on pkcs11js
   * and `reason` says why.
   */
  startWorkers(threads: number): { started: boolean; threads: number; reason?: string } {
    if (!this.p11) throw new HsmClosedError();
    const addon = loadNativeAddon();
    if (!addon) return { started: false, threads: 0, reason: nativeAddonLoadError() ?? 'the native addon is not built' };
    try {
      const workers = addon.open({ modulePath: this.modulePath, slotId: this.slotId, threads });
      this.dataPath.attachWorkers(workers);
      return { started: true, threads: workers.stats().threads };
    } catch (e) {
      return { started: false, threads: 0, reason: (e as Error).message };
    }
  }

  /** AES-256-GCM with CMK version `versionId`; resolves to ciphertext || 16-byte tag. */
  encrypt(versionId: string, iv: Buffer, aad: Buffer, plaintext: Buffer): Promise<Buffer> {
    return this.dataPath.encrypt(versionId, iv, aad, plaintext);
  }

  /** Rejects with DecryptFailedError on any authentication failure, NOT_FOUND when the key is gone. */
  decrypt(versionId: string, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Promise<Buffer> {
    return this.dataPath.decrypt(versionId, iv, aad, ciphertextWithTag);
  }

  /** Many operations at once (across the workers when they run): the output or an HsmError per item. */
  encryptMany(items: CmkGcmItem[]): Promise<Array<Buffer | HsmError>> {
    return this.dataPath.encryptMany(items);
  }

  decryptMany(items: CmkGcmItem[]): Promise<Array<Buffer | HsmError>> {
    return this.dataPath.decryptMany(items);
  }

  dataPathInfo(): DataPathInfo {
    return this.dataPath.info();
  }

  /** Runs fn with the session, reopening it once if the token dropped it under us. */
  private withSession<T>(fn: (p11: pkcs11js.PKCS11, s: Handle) => T, name: string, mapError: (e: HsmError) => HsmError = (x) => x): T {
    const p11 = this.p11;
    if (!p11) throw new HsmClosedError();
    try {
      return fn(p11, this.session);
    } catch (e) {
      const err = toHsmError(e, name);
      if (!isSessionLost(err)) throw mapError(this.staleOr(err));
      this.reopenSession(p11);
      try {
        return fn(p11, this.session);
      } catch (e2) {
        throw mapError(toHsmError(e2, name));
      }
    } finally {
      // The module shares this thread's OpenSSL error queue with node:crypto (src/hsm/native-addon.ts).
      clearCryptoErrors();
    }
  }

  /**
   * withSession for an operation on one token object. If the session has to be reopened, the retry
   * looks the object up again instead of using a handle that may have died with the old session.
   */
  private withObject<T>(kind: ObjectKind, id: string, fn: (p11: pkcs11js.PKCS11, s: Handle, h: Handle) => T, name: string): T {
    const h = this.requireHandle(kind, id);
    const epoch = this.sessionEpoch;
    return this.withSession((p11, s) => fn(p11, s, this.sessionEpoch === epoch ? h : this.requireHandle(kind, id)), name);
  }

  private reopenSession(p11: pkcs11js.PKCS11): void {
    this.closeIdleSessions(p11);
    closeQuietly(p11, this.session);
    const hadWalked = this.index.complete;
    this.newLoginSession(p11);
    // Lookups find objects one by one until a new walk has the handles again.
    if (hadWalked) void this.walkInBackground().catch(() => undefined);
  }

  /**
   * Opens and logs in the session that replaces one that ended (reopenSession, reload). Session
   * objects (transient keys) ended with the old one. Token-object handles may have too: SoftHSM
   * forgets every object handle of a slot when its last session closes (as when the addon is not
   * loaded and this was the only session), so they are looked up again.
   */
  private newLoginSession(p11: pkcs11js.PKCS11): void {
    this.session = p11.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    try {
      p11.C_Login(this.session, pkcs11js.CKU_USER, this.pin);
    } catch (e) {
      if (toHsmError(e, 'C_Login').code !== 'CKR_USER_ALREADY_LOGGED_IN') throw e;
    }
    this.index.clearHandles();
    this.instanceHandle = null;
    this.sessionEpoch++;
    this.sessionsEndedAt = Date.now();
  }

  // ---------------------------------------------------------------- token information

  tokenInfo(): { label: string; manufacturer: string; model: string; serialNumber: string; mechanisms: number[] } {
    return this.withSession((p11) => {
      const info = p11.C_GetTokenInfo(this.slot);
      return {
        label: info.label.trim(),
        manufacturer: info.manufacturerID.trim(),
        model: info.model.trim(),
        serialNumber: info.serialNumber.trim(),
        mechanisms: this.usable(p11.C_GetMechanismList(this.slot)),
      };
    }, 'C_GetTokenInfo', (e) =>
      // Whatever the module answers (SoftHSM: CKR_GENERAL_ERROR once its token directory is gone), a
      // token that cannot describe itself is unavailable, not a bug of kmsd's.
      e.kind === 'CLOSED' || e.code === 'STALE_VIEW' ? e : new HsmError(`the token does not answer C_GetTokenInfo (${e.code})`, 'TOKEN_UNANSWERED', 'C_GetTokenInfo', e.rv),
    );
  }

  /**
   * tokenInfo for start-up: on a shared token, a view that went stale (STALE_VIEW, the token being
   * read again) is waited for and asked again, a few times, instead of ending the start.
   */
  async tokenInfoSettled(tries = 5): Promise<ReturnType<HsmToken['tokenInfo']>> {
    for (let i = 1; ; i++) {
      try {
        return this.tokenInfo();
      } catch (e) {
        if (!(e instanceof HsmError) || e.code !== 'STALE_VIEW' || i >= tries) throw e;
        await new Promise((r) => setTimeout(r, 200 * i));
        await this.reload().catch(() => undefined);
      }
    }
  }

  /** The token's mechanism list, less the ones the configuration disabled (read once: it does not change). */
  mechanisms(): number[] {
    this.listed ??= this.withSession((p11) => p11.C_GetMechanismList(this.slot), 'C_GetMechanismList');
    return this.usable(this.listed);
  }

  private listed: number[] | null = null;

  private usable(listed: number[]): number[] {
    const off = new Set([...this.disabled].map((m) => MECHANISM_NUMBERS[m]));
    return listed.filter((m) => !off.has(m));
  }

  /** Did the configuration tell kmsd not to use this mechanism? The capability probe skips its paths. */
  mechanismDisabled(name: DisableableMechanism): boolean {
    return this.disabled.has(name);
  }

  /**
   * Why the token cannot do at all what a CMK needs, naming the mechanisms it lacks, or null when it
   * can. Asked by CreateKey and GetParametersForImport before anything is created, so a token
   * without a mechanism is a clear refusal there, never an internal error at the key's first use.
   * What depends on the AES-GCM path goes by the capability probe's finding (nothing is refused
   * for it before the probe has run).
   */
  cannot(need: TokenNeed): string | null {
    const lacking = (names: DisableableMechanism[]) => {
      const off = names.filter((n) => this.disabled.has(n));
      return off.length ? ` (KMS_DISABLE_MECHANISMS turns off ${off.join(', ')})` : '';
    };
    const noGcmPath = this.capabilities !== null && this.capabilities.gcmPath === null;
    const noGcm = `AES-256-GCM in the token, with CKM_AES_GCM or composed from CKM_AES_ECB, and this token can do neither${lacking(['CKM_AES_GCM', 'CKM_AES_ECB'])}`;
    switch (need) {
      case 'HSM_GENERATED':
        if (noGcmPath) return `an HSM-level key needs ${noGcm}`;
        if (!this.mechanisms().includes(pkcs11js.CKM_AES_KEY_GEN)) return 'an HSM-level key is generated with CKM_AES_KEY_GEN, which this token does not list';
        return null;
      case 'HSM_EXTERNAL':
        return noGcmPath ? `an HSM-level key needs ${noGcm}` : null;
      case 'IMPORT':
        return noGcmPath ? `importing key material needs ${noGcm} (the material's fingerprint is computed there)` : null;
      case 'SOFTWARE_GENERATED': {
        if (!this.mechanisms().includes(pkcs11js.CKM_AES_KEY_GEN)) return 'SOFTWARE-level material is generated in the token with CKM_AES_KEY_GEN, which this token does not list';
        if (this.rootKey.wrapPath === 'composed' && !this.mechanisms().includes(pkcs11js.CKM_AES_ECB)) {
          return `SOFTWARE-level material is wrapped under the root key with CKM_AES_KEY_WRAP_PAD, or composed from CKM_AES_ECB, and this token can do neither${lacking(['CKM_AES_KEY_WRAP_PAD', 'CKM_AES_ECB'])}`;
        }
        return null;
      }
    }
  }

  random(n: number): Buffer {
    return this.withSession((p11, s) => p11.C_GenerateRandom(s, Buffer.alloc(n)), 'C_GenerateRandom');
  }

  // ---------------------------------------------------------------- object lookup

  private label(kind: ObjectKind, id: string): string {
    return LABEL_PREFIX[kind] + id;
  }

  /**
   * Handle of a token object; null when the token does not hold it. From the index; before a walk
   * has gone over the whole token, a key it has not reached yet is looked up on its own (a wrapping
   * key pair shares its label: the handle used is the private half).
   */
  private handleOf(kind: ObjectKind, id: string): Handle | null {
    const label = this.label(kind, id);
    const known = this.index.get(label);
    if (known) return known;
    if (this.index.complete && !this.shared) return null;
    const h = this.withSession(
      (p11, s) =>
        findOne(
          p11,
          s,
          [
            { type: pkcs11js.CKA_TOKEN, value: true },
            { type: pkcs11js.CKA_LABEL, value: label },
            { type: pkcs11js.CKA_CLASS, value: usedClass(kind) },
          ],
          label,
        ),
      'C_FindObjects',
    );
    if (h) this.index.set(label, h);
    return h;
  }

  /**
   * Does the token hold any object under this kind's label, in any class (half a key pair left by
   * an interrupted generation counts)? Looked up on its own, not from the index.
   */
  holdsLabel(kind: ObjectKind, id: string): boolean {
    const label = this.label(kind, id);
    return this.withSession(
      (p11, s) =>
        findObjects(
          p11,
          s,
          [
            { type: pkcs11js.CKA_TOKEN, value: true },
            { type: pkcs11js.CKA_LABEL, value: label },
          ],
          1,
        ).length > 0,
      'C_FindObjects',
    );
  }

  /**
   * CKR_GENERAL_ERROR is how SoftHSM answers once its view of the token has gone bad, and it stays
   * bad in this process, for good, until C_Finalize: a read of an object file or of token.object
   * that raced another process's rewrite (every C_Login, an operator's pkcs11-tool included,
   * rewrites token.object; on a shared token every replica writes) marks the copy corrupt, and the
   * next re-index then marks the whole token invalid, after which every creation fails. The token is
   * read again and the caller gets a retryable error. On a token no other kmsd writes, only when
   * the module cannot describe the token any more, so a module's CKR_GENERAL_ERROR for one call does
   * not cost a re-read of every object.
   */
  private staleOr(err: HsmError): HsmError {
    // CKR_TEMPLATE_INCONSISTENT: seen once in 200 key-pair generations on a SoftHSM token four
    // processes were writing, with the template that works every other time.
    const suspect = err.code === 'CKR_GENERAL_ERROR' || (this.shared && err.code === 'CKR_TEMPLATE_INCONSISTENT');
    if (!suspect || (!this.shared && this.describesItself())) return err;
    void this.reload().catch(() => undefined);
    return new HsmError(`${err.message}; this process's view of the token is being read again: retry`, 'STALE_VIEW', err.pkcs11Function);
  }

  /** When kmsd's sessions last ended (a reload, a session the module dropped): their session objects with them. */
  private sessionsEndedAt = 0;

  /**
   * For a call on a transient key: CKR_OBJECT_HANDLE_INVALID (CKR_KEY_HANDLE_INVALID from C_WrapKey)
   * soon after kmsd's sessions ended means the key ended with them (a call that awaited something
   * between making it and using it). Nothing was kept, so the call can be repeated.
   */
  private transientGone(err: HsmError): HsmError {
    if ((err.code !== 'CKR_OBJECT_HANDLE_INVALID' && err.code !== 'CKR_KEY_HANDLE_INVALID') || Date.now() - this.sessionsEndedAt > 10_000) return err;
    return new HsmError(`${err.message}: the session key ended with its session when the token was read again; nothing was kept: retry`, 'STALE_VIEW', err.pkcs11Function);
  }

  /** Does the module still answer C_GetTokenInfo for the token? */
  private describesItself(): boolean {
    const p11 = this.p11;
    if (!p11) return true;
    try {
      p11.C_GetTokenInfo(this.slot);
      return true;
    } catch {
      return false;
    } finally {
      clearCryptoErrors();
    }
  }

  /** See CmkObjects.reloading. */
  reloading: Promise<void> | null = null;
  private lastReload = 0;

  /**
   * The module forgets what it read of the token and reads it again (C_Finalize, C_Initialize, a
   * new login session, new worker sessions): after staleOr found its view gone bad, and on a shared
   * token whenever an object another replica made stays out of sight. SoftHSM's file store can keep,
   * for good, a torn copy of an object file another process was writing while this one read it (its
   * writes go through stdio buffers flushed after the file lock is released): the object then stays
   * invisible to this process, and only a new C_Initialize reads the file again. Off-loop
   * generations and the workers' running operations finish first; handles and session objects
   * (transient keys) die with the old sessions, so a call using one at that moment fails and can be
   * repeated. At most once a second. C_Initialize reads every object file, on the event loop: with
   * 100,000 keys that stalls every call for seconds, the price of a token this process could not
   * use at all.
   */
  reload(): Promise<void> {
    if (!this.p11) return Promise.resolve();
    if (this.reloading) return this.reloading;
    if (Date.now() - this.lastReload < 1000) return Promise.resolve();
    this.reloading = (async () => {
      // Checked again after each wait: a generation may have started while the last one ran.
      do await this.drain();
      while (this.offLoop.size > 0);
      const p11 = this.p11;
      if (!p11) return;
      // From here to the end nothing yields: no other call reaches the module on this thread.
      const threads = this.dataPath.detachWorkers();
      this.idleSessions = []; // gone with C_Finalize
      try {
        p11.C_Finalize();
      } catch {
        /* re-initialized below either way */
      }
      p11.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
      this.newLoginSession(p11);
      if (threads > 0) this.startWorkers(threads);
    })().finally(() => {
      this.reloading = null;
      this.lastReload = Date.now();
    });
    return this.reloading;
  }

  /**
   * holdsLabel, but on a shared token a "no" is only believed after the object has stayed out of
   * sight for `waitMs` (see CmkDataPath.retryMissing): for decisions that mark material missing or
   * drop a row, never for the data path.
   */
  holdsLabelSettled(kind: ObjectKind, id: string, waitMs = 5000): Promise<boolean> {
    return this.settled(kind, id, waitMs, () => this.holdsLabel(kind, id));
  }

  /** has() (the object kmsd uses, in its class), settled as holdsLabelSettled. */
  hasSettled(kind: ObjectKind, id: string, waitMs = 3000): Promise<boolean> {
    return this.settled(kind, id, waitMs, () => this.has(kind, id));
  }

  private async settled(kind: ObjectKind, id: string, waitMs: number, probe: () => boolean): Promise<boolean> {
    if (probe()) return true;
    if (!this.shared) return false;
    const until = Date.now() + waitMs;
    for (let delay = 100, tries = 0; Date.now() < until; delay = Math.min(delay * 2, 1000), tries++) {
      await new Promise((r) => setTimeout(r, delay));
      if (tries >= 1) await this.reload().catch(() => undefined);
      this.index.forget(this.label(kind, id));
      if (probe()) return true;
    }
    return false;
  }

  /** Records an object this process just created, so the index stays true without a walk. */
  private created(kind: ObjectKind, id: string, h: Handle): void {
    this.index.set(this.label(kind, id), h);
    this.index.created(kind, id);
  }

  private requireHandle(kind: ObjectKind, id: string): Handle {
    const h = this.handleOf(kind, id);
    if (!h) throw new HsmError(`token object ${this.label(kind, id)} not found`, 'NOT_FOUND');
    return h;
  }

  has(kind: ObjectKind, id: string): boolean {
    return this.handleOf(kind, id) !== null;
  }

  /**
   * An operation with this object's handle failed: on a shared token another process may have
   * destroyed (or re-created) it, so the next lookup asks the token. Alone, the handle stays.
   */
  refresh(kind: ObjectKind, id: string): void {
    if (this.shared) this.index.forget(this.label(kind, id));
  }

  /** Numeric handle for the native addon (CK_OBJECT_HANDLE fits in 53 bits on every module we know). */
  numericHandle(kind: ObjectKind, id: string): number {
    return Number(this.requireHandle(kind, id).readBigUInt64LE(0));
  }

  /** Ids of every token object of a kind (walks the token). */
  listIds(kind: ObjectKind): string[] {
    return [...this.inventory()[kind]];
  }

  /**
   * Every kmsd object of the token, from a walk made now, on the event loop: ids by kind (a key
   * pair counts once), the signing keys, and how many kmsd:instance objects there are. Objects of
   * other applications sharing the token are left out. A background walk under way is superseded.
   */
  inventory(): TokenInventory {
    const generation = ++this.walkGeneration;
    for (;;) {
      const epoch = this.sessionEpoch;
      const handles = this.listTokenObjects();
      this.index.beginWalk();
      this.readClassesAndLabels(handles);
      if (epoch === this.sessionEpoch) break; // else the handles died with the session: walk again
    }
    if (generation === this.walkGeneration) this.index.complete = true;
    return copyInventory(this.index.inventory);
  }

  /** What this process knows of the token's kmsd objects: the walk's findings kept up to date. */
  knownInventory(): TokenInventory {
    return copyInventory(this.index.inventory);
  }

  /** True once a walk has gone over the whole token (and no session was lost since). */
  get walked(): boolean {
    return this.index.complete;
  }

  /**
   * The walk of inventory(), in slices of WALK_SLICE objects with the event loop free between
   * them, so calls are served meanwhile; a key they use before the walk reaches it is looked up on
   * its own. Resolves when the index is complete. One walk at a time; a second call joins it.
   */
  walkInBackground(slice = WALK_SLICE): Promise<void> {
    if (this.walking) return this.walking;
    const p = this.walkSliced(slice).finally(() => {
      if (this.walking === p) this.walking = null;
    });
    this.walking = p;
    return p;
  }

  private async walkSliced(slice: number): Promise<void> {
    const generation = ++this.walkGeneration;
    for (;;) {
      const epoch = this.sessionEpoch;
      const handles = this.listTokenObjects();
      this.index.beginWalk();
      for (let i = 0; i < handles.length; i += slice) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (generation !== this.walkGeneration) return; // superseded (or closed)
        if (epoch !== this.sessionEpoch) break;
        this.readClassesAndLabels(handles.slice(i, i + slice));
      }
      if (epoch === this.sessionEpoch) break;
    }
    if (generation === this.walkGeneration) this.index.complete = true;
  }

  /** Handles of every token object, in one C_FindObjects pass. */
  private listTokenObjects(): Handle[] {
    return this.withSession((p11, s) => findObjects(p11, s, [{ type: pkcs11js.CKA_TOKEN, value: true }]), 'C_FindObjects');
  }

  /**
   * Class and label of each object in one C_GetAttributeValue, into the index. An object destroyed
   * since it was listed is skipped; it is no longer in the token.
   */
  private readClassesAndLabels(handles: Handle[]): void {
    this.withSession((p11, s) => {
      for (const h of handles) {
        let a: pkcs11js.Attribute[];
        try {
          a = p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_CLASS }, { type: pkcs11js.CKA_LABEL }]);
        } catch (e) {
          const code = toHsmError(e, 'C_GetAttributeValue').code;
          if (code === 'CKR_OBJECT_HANDLE_INVALID') continue;
          throw e;
        }
        const cls = a[0].value as Buffer;
        this.index.add({ handle: h, cls: Number(cls.length >= 8 ? cls.readBigUInt64LE(0) : cls.readUInt32LE(0)), label: (a[1].value as Buffer).toString('utf8') });
      }
    }, 'C_GetAttributeValue');
  }

  /**
   * Destroys every token object with this kind and id (a key pair has two). Returns how many. When
   * a C_DestroyObject fails, some modules (SoftHSM) hide the object from this process until it is
   * restarted although it is still in the token; a later call that then finds nothing throws
   * DESTROY_UNCONFIRMED instead of reporting success.
   */
  destroy(kind: ObjectKind, id: string): number {
    const label = this.label(kind, id);
    // Found by label, not from the index: every object under the label goes, whoever made it.
    return this.withSession((p11, s) => {
      const found = findObjects(
        p11,
        s,
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
        ],
        16,
      );
      if (found.length === 0 && this.failedDestroys.has(label)) {
        throw new HsmError(`destroying token object ${label} failed earlier, and the module no longer shows it to this process: whether it is gone is known only after a restart`, 'DESTROY_UNCONFIRMED', 'C_DestroyObject');
      }
      for (const h of found) {
        try {
          p11.C_DestroyObject(s, h);
        } catch (e) {
          // Another process sharing the token destroyed it between the find and here: it is gone.
          if (toHsmError(e, 'C_DestroyObject').code === 'CKR_OBJECT_HANDLE_INVALID') continue;
          this.failedDestroys.add(label);
          throw e;
        }
      }
      this.failedDestroys.delete(label);
      // Forgotten only once gone: after a refused destroy the object is still the token's.
      this.index.destroyed(kind, id, label);
      return found.length;
    }, 'C_DestroyObject');
  }

  /** Labels whose C_DestroyObject failed in this process (see destroy). */
  private readonly failedDestroys = new Set<string>();

  // ---------------------------------------------------------------- the store/token binding
  // One CKO_DATA object, kmsd:instance, names the metadata store this token belongs to (CKA_VALUE, the
  // instance id, fixed at creation) and carries in its label the highest creation sequence kmsd took
  // before creating a token object (kmsd:instance:<seq>): a store whose committed sequence is lower
  // is older than the token. The sequence lives here rather than on each object because CMK objects
  // are CKA_MODIFIABLE=false with CKA_LABEL and CKA_ID fixed by the design, and modules reject
  // vendor attributes (SoftHSM: CKR_ATTRIBUTE_TYPE_INVALID); one mark also covers objects created
  // and destroyed since the store was copied.

  private instanceHandle: Handle | null = null;
  private instanceSequence = 0;

  /** The token's kmsd:instance object, or null when it has none; more than one is an error. */
  readInstance(): { instanceId: string; sequence: number } | null {
    return this.withSession((p11, s) => {
      const found = findObjects(
        p11,
        s,
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
          { type: pkcs11js.CKA_APPLICATION, value: INSTANCE_APPLICATION },
        ],
        2,
      );
      if (found.length > 1) throw new HsmError(`the token holds more than one ${INSTANCE_APPLICATION} object; remove the extra one by hand (pkcs11-tool) after checking which one its data directory names`, 'AMBIGUOUS');
      if (found.length === 0) return null;
      const a = p11.C_GetAttributeValue(s, found[0], [{ type: pkcs11js.CKA_VALUE }, { type: pkcs11js.CKA_LABEL }]);
      const instanceId = (a[0].value as Buffer).toString('utf8');
      const label = (a[1].value as Buffer).toString('utf8');
      const m = /^kmsd:instance:(\d{1,15})$/.exec(label);
      if (!m || !label.startsWith(INSTANCE_LABEL_PREFIX)) throw new HsmError(`the token's ${INSTANCE_APPLICATION} object has label "${label.slice(0, 80)}", not kmsd:instance:<sequence>`, 'UNSUPPORTED');
      this.instanceHandle = found[0];
      this.instanceSequence = Number(m[1]);
      return { instanceId, sequence: this.instanceSequence };
    }, 'C_FindObjects');
  }

  /**
   * readInstance; on a shared token a missing object is looked for again (and the token re-read) for
   * up to `waitMs`. Every creation on every replica relabels this one object, so under load a
   * re-read catches it mid-write often: 8 s of re-reads once missed it with three replicas busy on two
   * cores, and a replica that gives up refuses to start.
   */
  async readInstanceSettled(waitMs = 30_000): Promise<{ instanceId: string; sequence: number } | null> {
    let found = this.readInstance();
    if (found || !this.shared) return found;
    const until = Date.now() + waitMs;
    for (let delay = 100; !found && Date.now() < until; delay = Math.min(delay * 2, 1000)) {
      await new Promise((r) => setTimeout(r, delay));
      await this.reload().catch(() => undefined);
      found = this.readInstance();
    }
    return found;
  }

  /** Creates the kmsd:instance object (first start, adoption, binding an existing deployment). */
  createInstance(instanceId: string, sequence: number): void {
    if (this.readInstance()) throw new HsmError('the token already has a kmsd:instance object', 'EXISTS');
    this.instanceHandle = this.withSession(
      (p11, s) =>
        p11.C_CreateObject(s, instanceTemplate(INSTANCE_APPLICATION, instanceId, `${INSTANCE_LABEL_PREFIX}${sequence}`)),
      'C_CreateObject',
    );
    this.instanceSequence = sequence;
  }

  /** Raises the token's creation sequence to `seq` before an object with that sequence is created. */
  raiseSequence(seq: number): void {
    if (seq <= this.instanceSequence) return;
    for (let attempt = 1; ; attempt++) {
      if (!this.instanceHandle) this.readInstance();
      const h = this.instanceHandle;
      if (!h) {
        if (!this.shared) throw new HsmError('the token has no kmsd:instance object', 'NOT_FOUND');
      } else {
        try {
          this.withSession((p11, s) => p11.C_SetAttributeValue(s, h, [{ type: pkcs11js.CKA_LABEL, value: `${INSTANCE_LABEL_PREFIX}${seq}` }]), 'C_SetAttributeValue');
          break;
        } catch (e) {
          // Every replica relabels this one object: another process's write can leave this one's
          // copy stale (see reload). Found again once; then the token is read again and the call,
          // which has created nothing yet, fails as retryable.
          if (!this.shared || toHsmError(e, 'C_SetAttributeValue').code !== 'CKR_OBJECT_HANDLE_INVALID') throw e;
        }
      }
      this.instanceHandle = null;
      if (attempt >= 2) {
        void this.reload().catch(() => undefined);
        throw new HsmError('this process does not see the token kmsd:instance object right now (another replica is changing it); the token is being read again: retry', 'STALE_VIEW');
      }
    }
    // Replicas raise it concurrently, so a lower value may land last: the mark only has to stay at or
    // below the store's sequence, which it does.
    this.instanceSequence = seq;
  }

  /** Security attributes as the token reports them (used by reconciliation checks and tests). */
  keyAttributes(kind: ObjectKind, id: string): { sensitive: boolean; extractable: boolean; token: boolean; modifiable: boolean } {
    return this.withObject(
      kind,
      id,
      (p11, s, h) => {
        const a = p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_TOKEN }, { type: pkcs11js.CKA_MODIFIABLE }]);
        const bool = (v: unknown) => (v as Buffer)[0] === 1;
        return { sensitive: bool(a[0].value), extractable: bool(a[1].value), token: bool(a[2].value), modifiable: bool(a[3].value) };
      },
      'C_GetAttributeValue',
    );
  }

  // ---------------------------------------------------------------- AES-256 keys

  /** Generates AES-256 key material inside the token; it never leaves it. */
  generateAesKey(kind: ObjectKind, id: string): void {
    this.refuseKnown(kind, id);
    const h = this.withSession(
      (p11, s) =>
        p11.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN, parameter: null as unknown as Buffer }, [
          ...cmkKeyTemplate(this.label(kind, id), id, true),
          { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
        ]),
      'C_GenerateKey',
    );
    this.created(kind, id, h);
  }

  /**
   * generateAesKey off the event loop (CreateKey): C_GenerateKey runs on a libuv thread in a session
   * of its own (a session is not for two threads at once; the new one shares the login), so the
   * event loop commits other calls' metadata while the token generates, and creation keeps up with
   * the token's own rate. At most MAX_AES_GENERATIONS at once; close() waits for them (drain).
   */
  generateAesKeyOffLoop(kind: ObjectKind, id: string): Promise<void> {
    return this.createOffLoop(kind, id, () => this.generateAesOffLoop(kind, id));
  }

  /**
   * Runs an off-loop creation, tracked so close() and reload() wait for it. One that failed because
   * the module's view of the token had gone bad (STALE_VIEW, see staleOr) made nothing this process
   * can use: it is made once more after the token was read again, unless an object with its label
   * is there after all (a module that answered an error for an object it made).
   */
  private async createOffLoop<T>(kind: ObjectKind, id: string, create: () => Promise<T>): Promise<T> {
    if (this.reloading) await this.reloading.catch(() => undefined);
    try {
      return await this.track(create());
    } catch (e) {
      if (!(e instanceof HsmError) || e.code !== 'STALE_VIEW') throw e;
      // Awaited outside track(): the reload waits for every tracked creation to settle first.
      await this.reloading?.catch(() => undefined);
      if (this.holdsLabel(kind, id)) throw e;
      return this.track(create());
    }
  }

  /**
   * A generation's id is one the caller has just minted (a new key version), so only the index is
   * asked whether it exists: asking the token would be a find by label, which SoftHSM answers by
   * reading every object (seconds at 100,000 keys), on every CreateKey while the start-up walk is
   * under way and on every CreateKey of a replica sharing its token.
   */
  private refuseKnown(kind: ObjectKind, id: string): void {
    if (this.index.get(this.label(kind, id))) throw new HsmError(`token object ${this.label(kind, id)} already exists`, 'EXISTS');
  }

  private async generateAesOffLoop(kind: ObjectKind, id: string): Promise<void> {
    this.refuseKnown(kind, id);
    const template = [...cmkKeyTemplate(this.label(kind, id), id, true), { type: pkcs11js.CKA_VALUE_LEN, value: 32 }];
    const release = await this.aesSlots.acquire();
    try {
      const h = await this.inOwnSession((p11, s) => p11.C_GenerateKeyAsync(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN, parameter: null as unknown as Buffer }, template), 'C_GenerateKey');
      this.created(kind, id, h);
    } finally {
      release();
    }
  }

  private readonly aesSlots = new Slots(MAX_AES_GENERATIONS);

  /**
   * Runs an async pkcs11js call in a session of its own (a session is not for two threads at once),
   * taken from the idle ones or opened for it. A session that served a call goes back idle instead
   * of being closed: SoftHSM's C_CloseSession walks every object handle the process holds (88 µs on
   * the event loop with 12,000 objects known, growing with them), and it came once per CreateKey.
   * One whose call failed is closed, since the failure may have been the session's.
   */
  private async inOwnSession<T>(fn: (p11: pkcs11js.PKCS11, s: Handle) => Promise<T>, name: string): Promise<T> {
    const p11 = this.p11;
    if (!p11) throw new HsmClosedError();
    const pooled = this.idleSessions.pop();
    if (pooled !== undefined) {
      const first = await this.runInOwnSession(p11, pooled, fn, name);
      if (first.ok) return first.value;
      // A session kept idle may have died meanwhile (a module that closed every session of the slot
      // logged the user out too): once more, logged in again, in a new session.
      if (!isSessionLost(first.error) || this.p11 !== p11) throw this.staleOr(first.error);
      this.reopenSession(p11);
    }
    let s: Handle;
    try {
      s = p11.C_OpenSession(this.slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
    } catch (e) {
      throw toHsmError(e, 'C_OpenSession');
    }
    const out = await this.runInOwnSession(p11, s, fn, name);
    if (!out.ok) throw this.staleOr(out.error);
    return out.value;
  }

  /** One call of inOwnSession's in session `s`, which goes back idle after a success and is closed after a failure. */
  private async runInOwnSession<T>(p11: pkcs11js.PKCS11, s: Handle, fn: (p11: pkcs11js.PKCS11, s: Handle) => Promise<T>, name: string): Promise<{ ok: true; value: T } | { ok: false; error: HsmError }> {
    const epoch = this.sessionEpoch;
    let value: T;
    try {
      value = await fn(p11, s);
    } catch (e) {
      this.closeSession(p11, s);
      return { ok: false, error: toHsmError(e, name) };
    } finally {
      clearCryptoErrors();
    }
    if (this.p11 !== p11) throw new HsmClosedError();
    if (epoch === this.sessionEpoch && this.idleSessions.length < MAX_IDLE_SESSIONS) this.idleSessions.push(s);
    else this.closeSession(p11, s);
    return { ok: true, value };
  }

  /** Sessions inOwnSession keeps open between calls, all of the current sessionEpoch. */
  private idleSessions: Handle[] = [];

  /**
   * Closes a session of inOwnSession's. None is in use across a C_Initialize (reload drains them
   * first), so its handle still names it while this context is open.
   */
  private closeSession(p11: pkcs11js.PKCS11, s: Handle): void {
    if (this.p11 === p11) closeQuietly(p11, s);
  }

  /** Closes the idle sessions (before the login session goes, or a new one replaces it). */
  private closeIdleSessions(p11: pkcs11js.PKCS11): void {
    for (const s of this.idleSessions.splice(0)) closeQuietly(p11, s);
  }

  /** Generic secret for HMAC-SHA256 (import-token authentication); sign and verify only. */
  generateMacKey(id: string): void {
    if (this.handleOf('mac', id)) return;
    const h = this.withSession(
      (p11, s) =>
        p11.C_GenerateKey(s, { mechanism: pkcs11js.CKM_GENERIC_SECRET_KEY_GEN, parameter: null as unknown as Buffer }, macKeyTemplate(this.label('mac', id), id)),
      'C_GenerateKey',
    );
    this.created('mac', id, h);
  }

  hmacSha256(id: string, data: Buffer): Buffer {
    return this.withObject(
      'mac',
      id,
      (p11, s, h) => {
        p11.C_SignInit(s, { mechanism: pkcs11js.CKM_SHA256_HMAC, parameter: null as unknown as Buffer }, h);
        return p11.C_Sign(s, data, Buffer.alloc(32));
      },
      'C_Sign',
    );
  }

  private gcm(iv: Buffer, aad: Buffer): pkcs11js.Mechanism {
    return {
      mechanism: pkcs11js.CKM_AES_GCM,
      parameter: { type: pkcs11js.CK_PARAMS_AES_GCM, iv, aad, ivBits: iv.length * 8, tagBits: 128 } as pkcs11js.AesGCM,
    };
  }

  /** AES-256-GCM inside the token; returns ciphertext || 16-byte tag. */
  encryptGcm(kind: ObjectKind, id: string, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
    return this.withObject(kind, id, (p11, s, h) => this.gcmEncrypt(p11, s, h, iv, aad, plaintext), 'C_Encrypt');
  }

  /** encryptGcm for a key that is not a labelled token object (a transient key, a handle in hand). */
  private encryptGcmHandle(h: Handle, iv: Buffer, aad: Buffer, plaintext: Buffer, mapError?: (e: HsmError) => HsmError): Buffer {
    return this.withSession((p11, s) => this.gcmEncrypt(p11, s, h, iv, aad, plaintext), 'C_Encrypt', mapError);
  }

  private gcmEncrypt(p11: pkcs11js.PKCS11, s: Handle, h: Handle, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
    if (this.gcmPathInUse === 'composed') return composedGcmEncrypt((blocks) => this.ecb(p11, s, h, blocks), iv, aad, plaintext);
    p11.C_EncryptInit(s, this.gcm(iv, aad), h);
    return p11.C_Encrypt(s, plaintext, Buffer.alloc(plaintext.length + 16));
  }

  private gcmDecrypt(p11: pkcs11js.PKCS11, s: Handle, h: Handle, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Buffer {
    if (this.gcmPathInUse === 'composed') return composedGcmDecrypt((blocks) => this.ecb(p11, s, h, blocks), iv, aad, ciphertextWithTag);
    p11.C_DecryptInit(s, this.gcm(iv, aad), h);
    return p11.C_Decrypt(s, ciphertextWithTag, Buffer.alloc(ciphertextWithTag.length));
  }

  /** CKM_AES_ECB over whole blocks in one call: the composed path's only use of the key. */
  private ecb(p11: pkcs11js.PKCS11, s: Handle, h: Handle, blocks: Buffer): Buffer {
    p11.C_EncryptInit(s, { mechanism: pkcs11js.CKM_AES_ECB, parameter: null as unknown as Buffer }, h);
    return p11.C_Encrypt(s, blocks, Buffer.alloc(blocks.length));
  }

  /** Which GCM path every AES-GCM call of this token takes; the capability probe chooses it. */
  private gcmPathInUse: GcmPath = 'in-token';

  get gcmPath(): GcmPath {
    return this.gcmPathInUse;
  }

  /** Set by the capability probe (src/hsm/unwrap.ts) after checking the path against node:crypto. */
  useGcmPath(path: GcmPath): void {
    this.gcmPathInUse = path;
  }

  /** AES-256-GCM decrypt inside the token; any authentication failure is one DecryptFailedError. */
  decryptGcm(kind: ObjectKind, id: string, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Buffer {
    try {
      return this.withObject(kind, id, (p11, s, h) => this.gcmDecrypt(p11, s, h, iv, aad, ciphertextWithTag), 'C_Decrypt');
    } catch (e) {
      const err = e as HsmError;
      if (isGcmAuthFailure(err.code)) {
        throw new DecryptFailedError();
      }
      throw err;
    }
  }

  /**
   * A CMK-bound fingerprint of a key, computed inside the token: SHA-256 of an AES-GCM encryption of
   * a zero block, with IV and AAD derived from the CMK id (an IV that random-IV encryption never
   * meets in practice). It identifies the material for this CMK only: two CMKs with the same
   * material get different fingerprints, and it reveals nothing of the material.
   */
  fingerprint(key: TransientKey | { kind: ObjectKind; id: string }, cmkId: string): Buffer {
    const h = key instanceof TransientKey ? key[HANDLE] : this.requireHandle(key.kind, key.id);
    const binding = Buffer.from(`kmsd/material-fingerprint/v1:${cmkId}`, 'utf8');
    const iv = crypto.createHash('sha256').update(binding).digest().subarray(0, 12);
    // (pkcs11js hands an empty buffer to the module as NULL, which SoftHSM rejects: use one block.)
    const out = this.encryptGcmHandle(h, iv, binding, Buffer.alloc(16), key instanceof TransientKey ? (e) => this.transientGone(e) : undefined);
    return crypto.createHash('sha256').update(out).digest();
  }

  /**
   * Turns a transient key into the token object for a CMK version: copied with CKA_TOKEN=true,
   * CKA_EXTRACTABLE=false and CKA_MODIFIABLE=false (permitted one-way changes); the caller then
   * destroys the transient.
   */
  persistTransient(key: TransientKey, kind: ObjectKind, id: string): void {
    if (this.handleOf(kind, id)) throw new HsmError(`token object ${this.label(kind, id)} already exists`, 'EXISTS');
    const h = this.withSession((p11, s) => {
      const now = p11.C_GetAttributeValue(s, key[HANDLE], [{ type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_SENSITIVE }]);
      const copy = p11.C_CopyObject(s, key[HANDLE], [
        { type: pkcs11js.CKA_TOKEN, value: true },
        // Only the one-way changes the transient still needs: restating false on a key that is already
        // non-extractable is CKR_ATTRIBUTE_READ_ONLY on SoftHSM. opencryptoki 3.8 ignores CKA_SENSITIVE
        // and CKA_EXTRACTABLE in a C_UnwrapKey template, so its transients need both here.
        ...((now[0].value as Buffer)[0] === 1 ? [{ type: pkcs11js.CKA_EXTRACTABLE, value: false }] : []),
        ...((now[1].value as Buffer)[0] !== 1 ? [{ type: pkcs11js.CKA_SENSITIVE, value: true }] : []),
        { type: pkcs11js.CKA_LABEL, value: this.label(kind, id) },
        { type: pkcs11js.CKA_ID, value: Buffer.from(id, 'utf8') },
        // Read-only like a generated CMK key: its usage cannot be widened later.
        { type: pkcs11js.CKA_MODIFIABLE, value: false },
      ]);
      // Never keep a CMK object the token did not make sensitive and non-extractable.
      const got = p11.C_GetAttributeValue(s, copy, [{ type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }]);
      if ((got[0].value as Buffer)[0] !== 1 || (got[1].value as Buffer)[0] !== 0) {
        p11.C_DestroyObject(s, copy);
        throw new HsmError(`the token did not make ${this.label(kind, id)} sensitive and non-extractable; it was not kept`, 'UNSUPPORTED', 'C_CopyObject');
      }
      return copy;
    }, 'C_CopyObject', (err) => this.transientGone(err));
    this.created(kind, id, h);
  }

  destroyTransient(key: TransientKey | null | undefined): void {
    if (!key || !this.p11) return;
    try {
      this.p11.C_DestroyObject(this.session, key[HANDLE]);
    } catch {
      // A session object dies with its session anyway; nothing to leak.
    }
  }

  /**
   * Puts known AES material into the token as a transient key (host-assisted unwrap, and the
   * ephemeral key of the composed RSA+AES-KWP path). The caller zeroes `value`.
   */
  createTransientAesKey(value: Buffer, usage: 'data' | 'unwrap', extractable = false): TransientKey {
    const h = this.withSession(
      (p11, s) =>
        p11.C_CreateObject(s, transientAesTemplate(value, usage, extractable)),
      'C_CreateObject',
    );
    return new TransientKey(h);
  }

  /** CKA_VALUE_LEN as the token reports it (0 when it does not record it for unwrapped keys). */
  keyLengthReported(key: TransientKey): number {
    return this.withSession((p11, s) => {
      const reported = p11.C_GetAttributeValue(s, key[HANDLE], [{ type: pkcs11js.CKA_VALUE_LEN }])[0].value as Buffer;
      return Number(reported.length >= 8 ? reported.readBigUInt64LE(0) : reported.readUInt32LE(0));
    }, 'C_GetAttributeValue', (e) => this.transientGone(e));
  }

  encryptGcmTransient(key: TransientKey, iv: Buffer, aad: Buffer, plaintext: Buffer): Buffer {
    return this.encryptGcmHandle(key[HANDLE], iv, aad, plaintext, (e) => this.transientGone(e));
  }

  /** decryptGcm for a transient key (probes and vector tests). */
  decryptGcmTransient(key: TransientKey, iv: Buffer, aad: Buffer, ciphertextWithTag: Buffer): Buffer {
    try {
      return this.withSession((p11, s) => this.gcmDecrypt(p11, s, key[HANDLE], iv, aad, ciphertextWithTag), 'C_Decrypt', (e) => this.transientGone(e));
    } catch (e) {
      if (isGcmAuthFailure((e as HsmError).code)) throw new DecryptFailedError();
      throw e;
    }
  }

  /** Length in bytes of a transient AES key, without ever reading its value. */
  keyLength(key: TransientKey): number {
    const len = this.keyLengthReported(key);
    if (len > 0) return len;
    return this.withSession((p11, s) => {
      // The token does not record the length of unwrapped keys (SoftHSM): measure it. AES key wrap
      // output is 8 + the key length rounded up to 8; only an AES key of 16, 24 or 32 bytes can be used
      // for AES at all, so a 40-byte wrap plus a working AES operation means exactly 32 bytes.
      const kek = p11.C_GenerateKey(s, { mechanism: pkcs11js.CKM_AES_KEY_GEN, parameter: null as unknown as Buffer }, measuringKekTemplate()); // destroyed in the finally below
      let wrapped: Buffer | null = null;
      try {
        wrapped = p11.C_WrapKey(s, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD, parameter: null as unknown as Buffer }, kek, key[HANDLE], Buffer.alloc(1024));
        const rounded = wrapped.length - 8;
        return rounded;
      } finally {
        wrapped?.fill(0);
        p11.C_DestroyObject(s, kek);
      }
    }, 'C_WrapKey', (e) => this.transientGone(e));
  }

  /** True when the key works for AES at all (a 25..31-byte "AES key" wraps like a 32-byte one but cannot encrypt). */
  usableForAes(key: TransientKey): boolean {
    try {
      this.encryptGcmHandle(key[HANDLE], Buffer.alloc(12), Buffer.alloc(0), Buffer.alloc(16), (e) => this.transientGone(e));
      return true;
    } catch (e) {
      // A key that ended with its session says nothing of its length.
      if (e instanceof HsmError && e.code === 'STALE_VIEW') throw e;
      return false;
    }
  }

  // ---------------------------------------------------------------- SOFTWARE level: the root key (root-key.ts)

  /**
   * The root key: an AES-256 key-encryption key that never leaves the token. SOFTWARE-level
   * material is stored in SQLite only as RFC 5649 wraps under it.
   */
  ensureRootKey(id: string): void {
    this.rootKey.ensure(id);
  }

  /** How SOFTWARE material is wrapped under the root key: CKM_AES_KEY_WRAP_PAD, or RFC 5649 composed from CKM_AES_ECB. */
  get rootWrapPath(): GcmPath {
    return this.rootKey.wrapPath;
  }

  /** Fresh AES-256 material generated by the token as an extractable session key, to be wrapped under the root key. */
  generateTransientExtractableAesKey(): TransientKey {
    return this.rootKey.generateExtractableAesKey();
  }

  /** RFC 5649 wrap of an extractable transient key under the root key. */
  wrapUnderRoot(rootId: string, key: TransientKey): Buffer {
    try {
      return this.rootKey.wrapKey(rootId, key);
    } catch (e) {
      throw e instanceof HsmError ? this.transientGone(e) : e;
    }
  }

  /**
   * Unwraps SOFTWARE material under the root key and returns its bytes for in-process use.
   * The caller owns (and zeroes) the buffer; the session object is destroyed before returning.
   */
  unwrapFromRoot(rootId: string, wrapped: Buffer): Buffer {
    return this.rootKey.unwrapMaterial(rootId, wrapped);
  }

  // ---------------------------------------------------------------- imported key material

  /** What the capability probe found (src/hsm/unwrap.ts); null until it has run. */
  private capabilities: HsmCapabilities | null = null;

  /** Called by the capability probe: what unwrapInto goes by. */
  adoptCapabilities(caps: HsmCapabilities): void {
    this.capabilities = caps;
  }

  /**
   * Unwraps imported key material (wrapped under wrapping key `wrapId` as `plan` says) into the
   * token as the pending material of a CMK version of protection level `level`, checked to be
   * exactly 256 bits. The caller gets a key reference back: it fingerprints and persists it
   * (persistTransient, or wrapUnderRoot for SOFTWARE, whose material is then extractable) and
   * releases it with destroyTransient. Fails with UnwrapFailedError or MaterialLengthError on bad
   * input; nothing is left in the token then.
   */
  unwrapInto(level: 'HSM' | 'SOFTWARE', wrapId: string, plan: UnwrapPlan, wrapped: Buffer): TransientKey {
    if (!this.p11) throw new HsmClosedError();
    if (!this.capabilities) throw new HsmError('the token has not been probed for its unwrap paths yet', 'UNSUPPORTED');
    return unwrapKeyMaterial(this, this.capabilities, wrapId, plan, wrapped, level === 'SOFTWARE');
  }

  // ---------------------------------------------------------------- RSA wrapping keys (wrapping-keys.ts)

  /** A fresh RSA key pair on the event loop, for session-only pairs (capability probes, tests). */
  generateWrappingKeyPair(id: string, bits: number, allowDecrypt: boolean, token = true): Buffer {
    return this.wrapping.generate(id, bits, allowDecrypt, token);
  }

  /** A fresh token RSA key pair off the event loop (GetParametersForImport and the pool). */
  generateWrappingKeyPairOffLoop(id: string, bits: number, allowDecrypt: boolean): Promise<Buffer> {
    return this.wrapping.generateOffLoop(id, bits, allowDecrypt);
  }

  /** Keeps an off-loop generation in offLoop until it settles, for drain(). */
  private track<T>(p: Promise<T>): Promise<T> {
    this.offLoop.add(p);
    p.then(
      () => this.offLoop.delete(p),
      () => this.offLoop.delete(p),
    );
    return p;
  }

  /** Resolves once no off-loop generation is running or queued (shutdown, before close()). */
  async drain(): Promise<void> {
    while (this.offLoop.size > 0) await Promise.allSettled([...this.offLoop]);
  }

  private readonly offLoop = new Set<Promise<unknown>>();

  /** Destroys a session-only key pair made with token=false (capability probes). */
  destroyTransientPair(id: string): void {
    this.wrapping.destroyTransientPair(id);
  }

  /** C_UnwrapKey with the wrapping private key into a transient AES key; input failures are one UnwrapFailedError. */
  rsaUnwrap(wrapId: string, padding: RsaPadding, wrapped: Buffer, usage: 'data' | 'unwrap', measurable: boolean): TransientKey {
    return this.wrapping.rsaUnwrap(wrapId, padding, wrapped, usage, measurable);
  }

  /** Raw RSA (CKM_RSA_X_509) inside the token, for host-assisted OAEP decoding. The caller zeroes the result. */
  rsaRawDecrypt(wrapId: string, data: Buffer, modulusBytes: number): Buffer {
    return this.wrapping.rsaRawDecrypt(wrapId, data, modulusBytes);
  }

  /** One AES-ECB block decryption with a transient key (composed RFC 5649 unwrap of imports). The caller zeroes the result. */
  aesBlockDecrypt(key: TransientKey, block: Buffer): Buffer {
    return this.wrapping.aesBlockDecrypt(key, block);
  }

  /** RFC 5649 unwrap (CKM_AES_KEY_WRAP_PAD) with a transient key-encryption key. */
  aesKwpUnwrap(kek: TransientKey, wrapped: Buffer, usage: 'data' | 'unwrap', measurable: boolean): TransientKey {
    return this.wrapping.aesKwpUnwrap(kek, wrapped, usage, measurable);
  }

  /** Attribute CKA_MODULUS length of a wrapping key, in bytes. */
  wrappingModulusBytes(wrapId: string): number {
    return this.wrapping.modulusBytes(wrapId);
  }

  // ---------------------------------------------------------------- signing key (signing-key.ts)

  /** Creates the audit signing key pair once; returns the public key as DER SubjectPublicKeyInfo. */
  ensureSigningKeyPair(id: string): Buffer {
    return this.signingKey.ensure(id);
  }

  /** The mechanism the audit signing key signs with, once ensureSigningKeyPair has run. */
  get signingMechanism(): string | null {
    return this.signingKey.mechanism;
  }

  /** Signs an audit checkpoint inside the token (ECDSA P-256, or RSASSA-PKCS1-v1_5 on tokens without ECDSA). */
  signCheckpoint(id: string, data: Buffer): Buffer {
    return this.signingKey.sign(id, data);
  }

  /**
   * Which mechanism each token-side operation of kmsd runs on, and whether kmsd composes it
   * (DescribeHsm). The unwrap paths are planned separately (src/hsm/unwrap.ts).
   */
  mechanismPaths(): Array<{ Operation: string; Mechanism: string; Path: string }> {
    const rootWrap = this.rootKey.wrapPath;
    const signing = this.signingKey.mechanism;
    return [
      { Operation: 'AES_256_GCM', Mechanism: this.gcmPathInUse === 'in-token' ? 'CKM_AES_GCM' : 'CKM_AES_ECB', Path: this.gcmPathInUse },
      { Operation: 'SOFTWARE_MATERIAL_WRAP', Mechanism: rootWrap === 'in-token' ? 'CKM_AES_KEY_WRAP_PAD' : 'CKM_AES_ECB', Path: rootWrap },
      ...(signing ? [{ Operation: 'AUDIT_SIGNATURE', Mechanism: signing, Path: 'in-token' }] : []),
    ];
  }
}

export { DecryptFailedError, UnwrapFailedError };

function copyInventory(inv: TokenInventory): TokenInventory {
  return { cmk: new Set(inv.cmk), wrap: new Set(inv.wrap), root: new Set(inv.root), mac: new Set(inv.mac), sign: new Set(inv.sign), instanceObjects: inv.instanceObjects };
}
