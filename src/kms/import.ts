// Bring your own key: the seed's GetParametersForImport / ImportKeyMaterial / DeleteKeyMaterial.
//
// Import tokens are self-contained and authenticated by an HMAC key that never leaves the token:
//   "kmsd-it1." base64url(JSON payload) "." base64url(HMAC-SHA256(token MAC key, "kmsd-import-token/v1." payload))
// The payload binds one CMK, one wrapping key and one wrapping algorithm, and carries the expiry.
// A token is reusable until it expires; its wrapping key pair is destroyed by the scheduler then.

import crypto from 'node:crypto';
import { KmsService, iso } from './service';
import { KmsError, invalid } from './errors';
import * as v from './validate';
import { HsmCapabilities, MaterialLengthError, WRAPPING_ALGORITHMS, WRAPPING_KEY_SPECS, WrappingAlgorithm, WrappingKeySpec, needsRawDecrypt, planUnwrap } from '../hsm/unwrap';
import { UnwrapFailedError } from '../hsm/errors';
import type { CmkRow, StoreTx, WrappingKeyRow } from '../store/api';
import type { CallContext } from './types';
import type { TokenInventory, TransientKey } from '../hsm/token';

export const MAC_KEY_ID = 'import-token-v1';
const TOKEN_PREFIX = 'kmsd-it1.';
const MAX_EXPIRE_UNIX = 253402300799;

/**
 * Failed imports an import token (its wrapping key) survives. Bleichenbacher-style attacks on RSA
 * decryption need thousands of queries against one key; an honest custodian who wrapped the wrong
 * file needs a few tries. At this count the wrapping key is destroyed in the token, so nothing
 * wrapped under it (a legitimate import's EncryptedKeyMaterial included) can ever be decrypted.
 */
export const MAX_FAILED_IMPORTS_PER_TOKEN = 10;

export interface ImportConfig {
  /** Life of an import token and its wrapping key, seconds (24 h). */
  importTokenTtlSeconds: number;
  /** Allow the host-assisted OAEP path where the token cannot do the hash itself. */
  allowHostAssistedUnwrap: boolean;
  /** Pre-generated RSA_2048 wrapping key pairs kept ready (per CKA_DECRYPT variant). */
  wrappingKeyPoolSize: number;
}

export const DEFAULT_IMPORT_CONFIG: ImportConfig = {
  importTokenTtlSeconds: 86400,
  allowHostAssistedUnwrap: false,
  wrappingKeyPoolSize: 2,
};

interface TokenPayload {
  kid: string;
  wid: string;
  alg: WrappingAlgorithm;
  spec: WrappingKeySpec;
  iat: number;
  exp: number;
}

export class ImportService {
  constructor(
    private readonly kms: KmsService,
    readonly caps: HsmCapabilities,
    readonly config: ImportConfig,
  ) {}

  private get token() {
    return this.kms.keyring.token;
  }

  private get store() {
    return this.kms.store;
  }

  // ---------------------------------------------------------------- import tokens

  private mac(payload: Buffer): Buffer {
    return this.token.hmacSha256(MAC_KEY_ID, Buffer.concat([Buffer.from('kmsd-import-token/v1.'), payload]));
  }

  private issueToken(p: TokenPayload): string {
    const payload = Buffer.from(JSON.stringify(p), 'utf8');
    return `${TOKEN_PREFIX}${payload.toString('base64url')}.${this.mac(payload).toString('base64url')}`;
  }

  /** Authenticity first, then binding, then time: each failure has its own error code. */
  private async verifyToken(value: string | undefined, keyId: string): Promise<TokenPayload> {
    const s = v.requireString('ImportToken', value);
    const bad = () => new KmsError('Rejected.ImportTokenInvalid', 'ImportToken: not a valid import token issued by this kmsd (malformed, forged or altered)');
    if (!s.startsWith(TOKEN_PREFIX) || s.length > 4096) throw bad();
    const parts = s.slice(TOKEN_PREFIX.length).split('.');
    if (parts.length !== 2 || !/^[A-Za-z0-9_-]+$/.test(parts[0]) || !/^[A-Za-z0-9_-]+$/.test(parts[1])) throw bad();
    const payload = Buffer.from(parts[0], 'base64url');
    const tag = Buffer.from(parts[1], 'base64url');
    // Canonical encoding only: the unused low bits of a last base64url character are ignored when
    // decoding, so without this one token could be written (altered) several ways and still verify.
    if (payload.toString('base64url') !== parts[0] || tag.toString('base64url') !== parts[1]) throw bad();
    const expected = this.mac(payload);
    if (tag.length !== expected.length || !crypto.timingSafeEqual(tag, expected)) throw bad();
    let p: TokenPayload;
    try {
      p = JSON.parse(payload.toString('utf8')) as TokenPayload;
    } catch {
      throw bad();
    }
    if (p.kid !== keyId) {
      throw new KmsError('Rejected.ImportTokenKeyMismatch', `ImportToken: was issued for CMK ${p.kid}, not ${keyId}; an import token imports into its own CMK only`);
    }
    const wrap = await this.store.getWrappingKey(p.wid);
    if (p.exp <= this.kms.now()) {
      throw new KmsError('Rejected.ImportTokenExpired', `ImportToken: expired at ${iso(p.exp)}; call GetParametersForImport for a new public key and token`);
    }
    // A key pair another replica generated may not show in this process yet (HsmToken.holdsLabelSettled).
    if (wrap && this.token.shared && !(await this.token.hasSettled('wrap', p.wid, 5000))) {
      // Its row says it exists: this process's view of the shared token is behind, not the key gone.
      throw new KmsError('ServiceUnavailable.Hsm', `ImportToken: the wrapping key ${p.wid} is not visible to this replica yet (the shared token is being read again); retry`);
    }
    if (!wrap || !this.token.has('wrap', p.wid)) {
      throw new KmsError('Rejected.ImportTokenExpired', `ImportToken: its wrapping key no longer exists (destroyed after ${MAX_FAILED_IMPORTS_PER_TOKEN} failed imports, or removed from the token); call GetParametersForImport for a new public key and token`);
    }
    return p;
  }

  // ---------------------------------------------------------------- actions

  private requireExternal(row: { origin: string; key_id: string }): void {
    if (row.origin !== 'EXTERNAL') {
      throw new KmsError('Rejected.NotExternalKey', `KeyId: CMK ${row.key_id} has Origin ${row.origin}; key material can only be imported into a CMK created with Origin EXTERNAL`);
    }
  }

  private requireImportState(row: { key_state: string; key_id: string }): void {
    if (row.key_state === 'PendingImport' || row.key_state === 'Enabled') return;
    const code = row.key_state === 'Disabled' ? 'Rejected.Disabled' : 'Rejected.PendingDeletion';
    throw new KmsError(code, `KeyId: CMK ${row.key_id} is ${row.key_state}; importing needs PendingImport or Enabled`);
  }

  private plan(alg: WrappingAlgorithm) {
    const plan = planUnwrap(alg, this.caps, this.config.allowHostAssistedUnwrap);
    if ('refused' in plan) throw new KmsError('Rejected.UnsupportedWrappingAlgorithm', `WrappingAlgorithm: ${plan.refused}`);
    return plan;
  }

  async GetParametersForImport(req: { KeyId?: string; WrappingAlgorithm?: string; WrappingKeySpec?: string }) {
    const row = await this.kms.resolve('KeyId', req.KeyId);
    const alg = v.oneOf('WrappingAlgorithm', req.WrappingAlgorithm, WRAPPING_ALGORITHMS, 'RSAES_PKCS1_V1_5');
    const spec = v.oneOf('WrappingKeySpec', req.WrappingKeySpec, Object.keys(WRAPPING_KEY_SPECS) as WrappingKeySpec[], 'RSA_2048');
    this.requireExternal(row);
    this.requireImportState(row);
    const lacking = this.kms.keyring.cannotImport();
    if (lacking) throw new KmsError('Rejected.TokenLacksMechanism', `KeyId: CMK ${row.key_id} cannot take imported material on this token: ${lacking}`);
    const plan = this.plan(alg);
    const rawDecrypt = needsRawDecrypt(plan);
    const now = this.kms.now();
    // Whole seconds, so the TokenExpireTime shown (RFC 3339 without fractions) is the exact expiry.
    const exp = Math.floor((now + this.config.importTokenTtlSeconds * 1000) / 1000) * 1000;
    let wrap: WrappingKeyRow | undefined = await this.store.issuePooledWrappingKey(spec, rawDecrypt, row.key_id, alg, exp);
    if (!wrap) {
      const wrapId = crypto.randomUUID();
      // Off the event loop (RSA_4096 takes seconds); other calls are served meanwhile.
      const { seq, value: publicKey } = await this.kms.createUnderIntentAsync('wrap', wrapId, () => this.token.generateWrappingKeyPairOffLoop(wrapId, WRAPPING_KEY_SPECS[spec], rawDecrypt));
      const fresh: WrappingKeyRow = { wrap_id: wrapId, key_spec: spec, raw_decrypt: rawDecrypt ? 1 : 0, public_key: publicKey, created: now, key_id: row.key_id, algorithm: alg, expires: exp };
      try {
        // The CMK may have changed state (or gone) while the pair was generated.
        const current = await this.store.getCmk(row.key_id);
        if (!current) throw new KmsError('Forbidden.KeyNotFound', `KeyId: CMK ${row.key_id} no longer exists`);
        this.requireImportState(current);
      } catch (e) {
        await this.kms.abandonIntent('wrap', wrapId, seq);
        throw e;
      }
      await this.commitWrappingKey(fresh, seq);
      wrap = fresh;
    }
    const importToken = this.issueToken({ kid: row.key_id, wid: wrap.wrap_id, alg, spec, iat: now, exp });
    return { KeyId: row.key_id, ImportToken: importToken, PublicKey: wrap.public_key.toString('base64'), TokenExpireTime: iso(exp) };
  }

  /** Metadata and its intent in one transaction; if that fails, the new key pair is destroyed. */
  private async commitWrappingKey(w: WrappingKeyRow, seq: number): Promise<void> {
    try {
      await this.store.transaction(async (tx) => {
        await tx.insertWrappingKey(w);
        await this.kms.closeIntentIn(tx, seq, 'wrap', w.wrap_id);
      });
    } catch (e) {
      await this.kms.abandonIntent('wrap', w.wrap_id, seq);
      throw e;
    }
  }

  /**
   * A wrapping key's row goes, with a pending destroy of its key pair, in one transaction; then the
   * pair is destroyed (retried until the token confirms it). Without its row no import token
   * naming it verifies, so nothing wrapped under it opens even while the destroy is pending.
   */
  private async retireWrappingKey(wrapId: string, keyId: string | null, reason: string): Promise<boolean> {
    await this.store.transaction(async (tx) => {
      await tx.deleteWrappingKey(wrapId);
      await tx.addPendingDestroy('wrap', wrapId, keyId, reason, this.kms.now());
    });
    return this.kms.destroyPending('wrap', wrapId, 'call');
  }

  private async revokeWrappingKey(wrapId: string, keyId: string, failures: number): Promise<void> {
    const gone = await this.retireWrappingKey(wrapId, keyId, 'failed-imports');
    this.kms.log.warn({ keyId, wrapId, failures, destroyPending: !gone }, 'wrapping key destroyed after repeated failed imports');
  }

  async ImportKeyMaterial(req: { KeyId?: string; EncryptedKeyMaterial?: string; ImportToken?: string; KeyMaterialExpireUnix?: number }, ctx?: CallContext) {
    const first = await this.kms.resolve('KeyId', req.KeyId);
    // One material change of a CMK at a time in this process (KmsService.withKeyLock); the CMK is
    // read again once it is this call's turn.
    return this.kms.withKeyLock(first.key_id, async () => {
      const row = await this.store.getCmk(first.key_id);
      if (!row) throw new KmsError('Forbidden.KeyNotFound', `KeyId: CMK ${first.key_id} does not exist`);
      return this.importLocked(row, req, ctx);
    });
  }

  private async importLocked(row: CmkRow, req: { EncryptedKeyMaterial?: string; ImportToken?: string; KeyMaterialExpireUnix?: number }, ctx?: CallContext) {
    this.requireExternal(row);
    this.requireImportState(row);
    const p = await this.verifyToken(req.ImportToken, row.key_id);
    const expireUnix = req.KeyMaterialExpireUnix ?? 0;
    // The upper bound keeps the time representable (a JS Date ends in 275760; a larger value used to be
    // stored and then broke every DescribeKey of the CMK with an internal error).
    if (!Number.isInteger(expireUnix) || expireUnix < 0 || expireUnix > MAX_EXPIRE_UNIX) {
      throw invalid('KeyMaterialExpireUnix', `must be 0 (never expires) or a UNIX time in seconds, at most ${MAX_EXPIRE_UNIX} (9999-12-31T23:59:59Z)`);
    }
    const expireMs = expireUnix === 0 ? null : expireUnix * 1000;
    if (expireMs !== null && expireMs <= this.kms.now()) {
      throw invalid('KeyMaterialExpireUnix', `must be 0 (never) or in the future (got ${iso(expireMs)})`);
    }
    const wrapped = v.base64('EncryptedKeyMaterial', req.EncryptedKeyMaterial, { maxBytes: 4096 });
    const plan = this.plan(p.alg);
    const level = row.protection_level;
    let key: TransientKey;
    try {
      key = this.token.unwrapInto(level === 'SOFTWARE' ? 'SOFTWARE' : 'HSM', p.wid, plan, wrapped);
    } catch (e) {
      if (e instanceof UnwrapFailedError) {
        const pkcs1 = p.alg === 'RSAES_PKCS1_V1_5' ? ', or it does not hold a 256-bit AES key (with PKCS#1 v1.5 the two are deliberately not told apart)' : '';
        const failures = await this.store.countFailedImport(p.wid);
        let after = ` (failed import ${failures} of ${MAX_FAILED_IMPORTS_PER_TOKEN} this import token allows)`;
        if (failures >= MAX_FAILED_IMPORTS_PER_TOKEN) {
          await this.revokeWrappingKey(p.wid, row.key_id, failures);
          after = `; that was failed import ${failures}, so this import token's wrapping key is now destroyed: call GetParametersForImport for a new one`;
        }
        throw new KmsError('InvalidParameter.EncryptedKeyMaterial', `EncryptedKeyMaterial: cannot be decrypted with the wrapping key of this import token using ${p.alg}${pkcs1}${after}`);
      }
      if (e instanceof MaterialLengthError) {
        throw new KmsError('InvalidParameter.KeyMaterialLength', `EncryptedKeyMaterial: the key material must be a 256-bit AES key (${e.message})`);
      }
      throw e;
    }
    try {
      // Before any await: the unwrapped key is a session object, and a re-read of the token while
      // this call waits for the store ends it.
      const fp = this.token.fingerprint(key, row.key_id);
      const ver = await this.store.getVersion(row.primary_key_version as string);
      if (!ver) throw new KmsError('InternalFailure', `CMK ${row.key_id} has no key version`);
      const mismatch = () =>
        new KmsError('Rejected.KeyMaterialMismatch', `EncryptedKeyMaterial: CMK ${row.key_id} is bound to different key material; a CMK takes one piece of material for life (create a new CMK for new material)`);
      if (row.material_fingerprint && !crypto.timingSafeEqual(fp, row.material_fingerprint)) throw mismatch();
      // The CMK as its transaction finds it (a row lock where the backend has them): the material it
      // is bound to and its state decide, so of two imports of different material exactly one binds.
      const recheck = async (tx: StoreTx): Promise<CmkRow> => {
        const current = await tx.getCmkForUpdate(row.key_id);
        if (!current) throw new KmsError('Forbidden.KeyNotFound', `KeyId: CMK ${row.key_id} no longer exists`);
        this.requireImportState(current);
        if (current.material_fingerprint && !crypto.timingSafeEqual(fp, current.material_fingerprint)) throw mismatch();
        return current;
      };
      if (ver.material_state === 'Present' && this.kms.keyring.present(level, ver)) {
        // Same material again while it is still there: only the expiry changes.
        await this.kms.change(ctx, async (tx) => {
          await recheck(tx);
          await tx.updateCmk(row.key_id, { material_expire_time: expireMs });
        }, { KeyId: row.key_id });
      } else {
        // A destroy of this version's earlier material that the token refused must finish first:
        // retried later, it would destroy the material imported now.
        if (level === 'HSM' && !(await this.kms.destroyPending('cmk', ver.version_id, 'call'))) throw this.kms.destroyPendingError(row.key_id, [ver.version_id]);
        // Intent, token object, then the commit; a crash in between leaves an open intent, whose
        // object start-up reconciliation destroys, and the client's retry imports again.
        if (level === 'HSM' && this.token.has('cmk', ver.version_id)) this.token.destroy('cmk', ver.version_id);
        let seq: number | null = null;
        let softwareWrapped: Buffer | null = null;
        if (level === 'HSM') seq = (await this.kms.createUnderIntent('cmk', ver.version_id, () => this.kms.keyring.persist(level, ver.version_id, key))).seq;
        else softwareWrapped = this.kms.keyring.persist(level, ver.version_id, key);
        try {
          await this.kms.change(ctx, async (tx) => {
            const current = await recheck(tx);
            await tx.updateVersion(ver.version_id, { material_state: 'Present', software_wrapped: softwareWrapped });
            await tx.updateCmk(row.key_id, {
              // A CMK that was Disabled when its material was deleted stays Disabled.
              key_state: current.key_state === 'PendingImport' ? (current.state_after_import === 'Disabled' ? 'Disabled' : 'Enabled') : current.key_state,
              state_after_import: null,
              material_fingerprint: current.material_fingerprint ?? fp,
              material_expire_time: expireMs,
              import_path: plan.path,
            });
            if (seq !== null) await this.kms.closeIntentIn(tx, seq, 'cmk', ver.version_id);
            // This metadata claims the object just made: a destroy queued meanwhile under the
            // version's id (an expiry found due inside another call) must not take it.
            if (level === 'HSM') await tx.deletePendingDestroy('cmk', ver.version_id);
          }, { KeyId: row.key_id });
        } catch (e) {
          if (seq !== null) await this.kms.abandonIntent('cmk', ver.version_id, seq);
          else this.kms.keyring.forget(ver.version_id);
          throw e;
        }
      }
    } finally {
      this.token.destroyTransient(key);
    }
    const logFields = { keyId: row.key_id, algorithm: p.alg, path: plan.path, expires: iso(expireMs) };
    if (plan.path.includes('host-assisted')) this.kms.log.warn(logFields, 'key material imported through host-assisted unwrap');
    else this.kms.log.info(logFields, 'key material imported');
    return {};
  }

  async DeleteKeyMaterial(req: { KeyId?: string }, ctx?: CallContext) {
    const first = await this.kms.resolve('KeyId', req.KeyId);
    const pending = await this.kms.withKeyLock(first.key_id, async () => {
      const row = await this.store.getCmk(first.key_id);
      if (!row) throw new KmsError('Forbidden.KeyNotFound', `KeyId: CMK ${first.key_id} does not exist`);
      this.requireExternal(row);
      if (row.key_state === 'PendingDeletion') {
        throw new KmsError('Rejected.PendingDeletion', `KeyId: CMK ${row.key_id} is PendingDeletion`);
      }
      if (row.key_state !== 'PendingImport') return this.kms.deleteMaterial(row, 'deleted', ctx, true);
      // Already PendingImport: a destroy the token refused earlier is retried now, and the answer
      // says whether the material is gone.
      const left: string[] = [];
      for (const r of await this.kms.pendingDestroysOf(row.key_id)) if (!(await this.kms.destroyPending('cmk', r.object_id, 'call'))) left.push(r.object_id);
      return left;
    });
    if (pending.length) throw this.kms.destroyPendingError(first.key_id, pending);
    return {};
  }

  // ---------------------------------------------------------------- wrapping key upkeep

  private poolVariants(): boolean[] {
    const variants = new Set<boolean>();
    for (const alg of WRAPPING_ALGORITHMS) {
      const plan = planUnwrap(alg, this.caps, this.config.allowHostAssistedUnwrap);
      if (!('refused' in plan)) variants.add(needsRawDecrypt(plan));
    }
    return [...variants];
  }

  /** Adds at most one RSA_2048 key pair to the pool, generated off the event loop. */
  async refillPoolOnce(): Promise<boolean> {
    for (const rawDecrypt of this.poolVariants()) {
      if ((await this.store.countPooledWrappingKeys('RSA_2048', rawDecrypt)) >= this.config.wrappingKeyPoolSize) continue;
      const wrapId = crypto.randomUUID();
      const { seq, value: publicKey } = await this.kms.createUnderIntentAsync('wrap', wrapId, () => this.token.generateWrappingKeyPairOffLoop(wrapId, 2048, rawDecrypt));
      await this.commitWrappingKey({ wrap_id: wrapId, key_spec: 'RSA_2048', raw_decrypt: rawDecrypt ? 1 : 0, public_key: publicKey, created: this.kms.now(), key_id: null, algorithm: null, expires: null }, seq);
      return true;
    }
    return false;
  }

  /** Destroys wrapping key pairs whose import tokens have expired. */
  async destroyExpiredWrappingKeys(): Promise<number> {
    const expired = await this.store.expiredWrappingKeys(this.kms.now());
    for (const w of expired) await this.retireWrappingKey(w.wrap_id, w.key_id, 'expired');
    return expired.length;
  }

  /**
   * Start-up: key pairs named by an open intent and by no wrapping key row are destroyed (their
   * GetParametersForImport or pool refill never committed); rows whose key pair the token does not
   * hold are dropped (nothing wrapped under it can be opened anyway). Any other key pair without a
   * row is unknown: kept and reported (KmsService.findUnknown).
   */
  async reconcileWrappingKeys(inventory: TokenInventory | (() => TokenInventory), upToIntentSeq = Number.POSITIVE_INFINITY, intentsOnly = false): Promise<{ destroyed: number; dropped: number }> {
    const rows = new Map((await this.store.allWrappingKeys()).map((w) => [w.wrap_id, w]));
    // Taken after the rows were read (see KmsService.reconcile).
    const inv = typeof inventory === 'function' ? inventory() : inventory;
    let destroyed = 0;
    let dropped = 0;
    for (const intent of await this.store.allIntents()) {
      if (intent.kind !== 'wrap' || intent.seq > upToIntentSeq) continue;
      // A live replica's intent is a creation still under way (KmsService.reconcile).
      if (await this.store.replicaAlive(intent.owner)) continue;
      if (await this.kms.reclaimIntent(intent, inv.wrap.has(intent.object_id))) {
        inv.wrap.delete(intent.object_id);
        destroyed++;
      }
    }
    if (intentsOnly) return { destroyed, dropped };
    for (const w of rows.values()) {
      // Looked up on its own first: another replica may have made it after this one walked the token.
      if (!inv.wrap.has(w.wrap_id) && !(await this.token.holdsLabelSettled('wrap', w.wrap_id))) {
        await this.store.deleteWrappingKey(w.wrap_id);
        dropped++;
      }
    }
    return { destroyed, dropped };
  }

  async DescribeHsm() {
    const info = this.token.tokenInfo();
    const algorithms = WRAPPING_ALGORITHMS.map((alg) => {
      const plan = planUnwrap(alg, this.caps, this.config.allowHostAssistedUnwrap);
      return 'refused' in plan ? { WrappingAlgorithm: alg, Supported: false, Path: '', Reason: plan.refused } : { WrappingAlgorithm: alg, Supported: true, Path: plan.path, Reason: '' };
    });
    return {
      TokenLabel: info.label,
      Manufacturer: info.manufacturer,
      Model: info.model,
      SerialNumber: info.serialNumber,
      ModulePath: this.token.modulePath,
      Capabilities: {
        RsaPkcs1Unwrap: this.caps.rsaUnwrap.PKCS1_V1_5,
        RsaOaepSha1Unwrap: this.caps.rsaUnwrap.OAEP_SHA_1,
        RsaOaepSha256Unwrap: this.caps.rsaUnwrap.OAEP_SHA_256,
        RawRsa: this.caps.rawRsa,
        AesKeyWrapPad: this.caps.aesKeyWrapPad,
        RsaAesKeyWrapMechanism: this.caps.rsaAesKeyWrapMechanism,
        AesGcm: this.caps.aesGcm,
        ReportsUnwrappedKeyLength: this.caps.reportsUnwrappedLength,
        AesGcmPath: this.caps.gcmPath ?? '',
      },
      Mechanisms: this.token.mechanismPaths(),
      AllowHostAssistedUnwrap: this.config.allowHostAssistedUnwrap,
      WrappingAlgorithms: algorithms,
      NativeAddon: this.kms.keyring.nativeAttached,
      Counters: { ...this.kms.keyring.stats },
      UnknownTokenObjects: this.kms.unknownObjects,
      PendingTokenDestroys: (await this.store.pendingDestroys()).map((r) => ({ Kind: r.kind, ObjectId: r.object_id, KeyId: r.key_id ?? '', Reason: r.reason, Attempts: r.attempts, LastError: r.last_error ?? '' })),
      ReconciliationRunning: this.kms.reconciliation.running,
      TokenState: 'Ready',
      ReconciliationMillis: this.kms.reconciliation.millis,
    };
  }
}
