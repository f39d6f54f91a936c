// The KMS domain: CMK lifecycle state machine, aliases, versions and rotation, and the
// encrypt/decrypt path. It knows nothing of gRPC: requests and responses are plain objects with the
// API's field names, and every failure is a KmsError from the one error table.

import crypto from 'node:crypto';
import type { Store, StoreTx, CmkRow, KeyVersionRow, TokenDestroyRow, TokenIntentRow, TokenObjectKind } from '../store/api';
import { DecryptFailedError, HsmError } from '../hsm/errors';
import { Keyring } from './keyring';
import type { TokenInventory } from '../hsm/token';
import { KmsError, invalid, missing } from './errors';
import { StoreConflictError } from '../store/api';
import { aadFor, buildHeader, freshIv, parseBlob, validateContext } from './ciphertext';
import * as v from './validate';
import type { CallContext, Context, RecordNames, KeyMetadata, KeyState, KeyVersion, Origin, ProtectionLevel } from './types';

export interface KmsConfig {
  /** Arn prefix, e.g. "acs:kms:local:kmsd" → acs:kms:local:kmsd:key/<id>. */
  arnPrefix: string;
  /** Seconds in one "day" of PendingWindowInDays (86400; tests shorten it). */
  pendingWindowDaySeconds: number;
  /** Shortest RotationInterval accepted, seconds (7 days; tests shorten it). */
  minRotationIntervalSeconds: number;
  maxRotationIntervalSeconds: number;
}

export const DEFAULT_KMS_CONFIG: KmsConfig = {
  arnPrefix: 'acs:kms:local:kmsd',
  pendingWindowDaySeconds: 86400,
  minRotationIntervalSeconds: 7 * 86400,
  maxRotationIntervalSeconds: 730 * 86400,
};

export interface Logger {
  debug?(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const MAX_PLAINTEXT_BYTES = 6144;
/** Creation sequence numbers reserved in the store at once (see KmsService.nextSequence). */
export const SEQUENCE_BLOCK = 64;
/** Most bytes one GenerateRandom returns (AWS KMS's bound). */
export const MAX_RANDOM_BYTES = 1024;

export function iso(ms: number | null | undefined): string {
  if (ms === null || ms === undefined) return '';
  return new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/**
 * What kmsd did to a CMK on its own (no caller asked): the end of a deletion window, expired key
 * material, an automatic rotation. The composition root sends these to the audit log.
 */
export interface KeyEvent {
  action: 'ScheduledKeyDeletion' | 'KeyMaterialExpired' | 'AutomaticRotation' | 'KeyMaterialDestroyFailed' | 'KeyMaterialDestroyed' | 'UnknownTokenObjectRemoved';
  keyId: string;
  details: Record<string, unknown>;
}

/** A token object that looks like kmsd's but that the store does not explain: reported and kept. */
export interface UnknownTokenObject {
  Kind: TokenObjectKind;
  ObjectId: string;
}

/** `fn`, then the call's audit record (ctx.record) in the same transaction: change()'s unit of work. */
function recorded<T>(ctx: CallContext | undefined, fn: (tx: StoreTx) => Promise<T>, names?: RecordNames | ((value: T) => RecordNames)): (tx: StoreTx) => Promise<T> {
  return async (tx) => {
    const value = await fn(tx);
    if (ctx?.record) await ctx.record(tx, typeof names === 'function' ? names(value) : names);
    return value;
  };
}

export class KmsService {
  /**
   * Receives every KeyEvent (src/daemon.ts wires it to the audit log), inside the transaction that
   * makes the change it records when there is one, so a crash keeps both or neither.
   */
  onKeyEvent: (ev: KeyEvent, tx?: StoreTx) => Promise<void> = async () => undefined;

  /** Token objects the store does not explain, as last found (start-up, RemoveUnknownTokenObjects). */
  unknownObjects: UnknownTokenObject[] = [];

  /** When a pending destroy may next be retried by the scheduler (backoff after failures). */
  private readonly destroyRetryAt = new Map<string, number>();

  constructor(
    readonly store: Store,
    readonly keyring: Keyring,
    readonly config: KmsConfig,
    readonly log: Logger,
    readonly now: () => number = Date.now,
  ) {}

  private readonly keyLocks = new Map<string, Promise<void>>();

  /**
   * `fn` alone among this process's material changes of one CMK (import, material deletion, expiry,
   * scheduled deletion): each of them works on the token between store transactions, and two
   * interleaved could destroy what the other just created. Not reentrant.
   */
  async withKeyLock<T>(keyId: string, fn: () => Promise<T>): Promise<T> {
    const before = this.keyLocks.get(keyId);
    let release!: () => void;
    const mine = new Promise<void>((r) => (release = r));
    const tail = before ? before.then(() => mine) : mine;
    this.keyLocks.set(keyId, tail);
    try {
      if (before) await before;
      // And across replicas sharing the store.
      return await this.store.keyLease(keyId, fn);
    } finally {
      release();
      if (this.keyLocks.get(keyId) === tail) this.keyLocks.delete(keyId);
    }
  }

  /**
   * `fn` in one transaction together with the call's audit record (ctx.record, set by the audit
   * recorder; `names` what the answer names, such as a new CMK's id): a crash keeps both or
   * neither. Inside `fn`, await only calls on `tx` (src/store/api.ts).
   */
  async change<T>(ctx: CallContext | undefined, fn: (tx: StoreTx) => Promise<T>, names?: RecordNames | ((value: T) => RecordNames)): Promise<T> {
    return this.store.transaction(recorded(ctx, fn, names));
  }

  /**
   * change() whose transaction is shared with the units other calls submit in the same turn (group
   * commit: store.grouped): for calls that come in bursts and only insert rows of their own, such as
   * CreateKey, so that eight creations in flight cost one durable commit instead of eight.
   */
  async changeInGroup<T>(ctx: CallContext | undefined, fn: (tx: StoreTx) => Promise<T>, names?: RecordNames | ((value: T) => RecordNames)): Promise<T> {
    return this.store.grouped(recorded(ctx, fn, names));
  }

  // ================================================================ lookups and state checks

  /** Resolves a KeyId parameter (id or alias) to its CMK, or Forbidden.KeyNotFound / AliasNotFound. */
  async resolve(field: string, value: string | undefined, tx?: StoreTx): Promise<CmkRow> {
    const ref = v.keyIdOrAlias(field, value);
    let keyId = ref.keyId as string;
    if (ref.alias) {
      const a = await (tx ?? this.store).getAlias(ref.alias);
      if (!a) throw new KmsError('Forbidden.AliasNotFound', `${field}: alias ${ref.alias} does not exist`);
      keyId = a.key_id;
    }
    // In a transaction: the row as the table holds it, locked until the end (the change decides on it).
    const row = tx ? await tx.getCmkForUpdate(keyId) : (this.store.cachedCmk(keyId) ?? (await this.store.getCmk(keyId)));
    if (!row) throw new KmsError('Forbidden.KeyNotFound', `${field}: CMK ${keyId} does not exist`);
    return this.expireIfDue(row, tx);
  }

  /**
   * Expired key material is deleted the moment it is looked at, not only by the scheduler, so there
   * is no window in which it can still be used.
   */
  async expireIfDue(row: CmkRow, tx?: StoreTx): Promise<CmkRow> {
    if (row.material_expire_time !== null && row.material_expire_time <= this.now() && row.key_state !== 'PendingImport' && row.key_state !== 'PendingDeletion') {
      if (tx) {
        // Inside a caller's transaction: the metadata changes with it; the token objects go after
        // (the pending destroys are retried by the scheduler).
        await this.expireMetadata(tx, row, 'expired');
        return (await tx.getCmkForUpdate(row.key_id)) as CmkRow;
      }
      await this.deleteMaterial(row, 'expired');
      return (await this.store.getCmk(row.key_id)) as CmkRow;
    }
    return row;
  }

  /**
   * Destroys an EXTERNAL CMK's material and moves it to PendingImport; the CMK and its fingerprint
   * stay. Returns the key versions whose token object could not be destroyed yet (retried until
   * gone). A Disabled CMK remembers it: material imported again leaves it Disabled.
   */
  async deleteMaterial(row: CmkRow, reason: 'expired' | 'deleted', ctx?: CallContext, locked = false): Promise<string[]> {
    if (!locked) return this.withKeyLock(row.key_id, () => this.deleteMaterial(row, reason, ctx, true));
    // Metadata, the pending destroys and the record commit together, then the token objects go: a
    // crash or a token refusal in between leaves destroys that are retried (scheduler, start-up)
    // until done, never an Enabled CMK whose material is gone.
    const versions = await this.change(ctx, async (tx) => {
      const current = await tx.getCmkForUpdate(row.key_id);
      // Expiry found due by a reader outside this transaction: nothing to do if material was
      // imported again (or the CMK deleted) since.
      if (!current || (reason === 'expired' && (current.material_expire_time === null || current.material_expire_time > this.now() || current.key_state === 'PendingImport'))) return [];
      return this.expireMetadata(tx, current, reason);
    }, { KeyId: row.key_id });
    const hsm = row.protection_level === 'HSM';
    const pending: string[] = [];
    if (hsm) for (const ver of versions) if (!(await this.destroyPending('cmk', ver.version_id, 'call'))) pending.push(ver.version_id);
    this.log.info({ keyId: row.key_id, reason, destroyPending: pending }, 'key material deleted');
    return pending;
  }

  /**
   * deleteMaterial's metadata half, in the caller's transaction: versions Absent, a pending destroy
   * per HSM version, the CMK PendingImport; expiry (which has no caller) is recorded in the same
   * transaction. Returns the versions whose material went.
   */
  private async expireMetadata(tx: StoreTx, row: CmkRow, reason: 'expired' | 'deleted'): Promise<KeyVersionRow[]> {
    const versions = await tx.listVersions(row.key_id);
    const hsm = row.protection_level === 'HSM';
    const now = this.now();
    for (const ver of versions) {
      await tx.updateVersion(ver.version_id, { material_state: 'Absent', software_wrapped: null });
      if (hsm) await tx.addPendingDestroy('cmk', ver.version_id, row.key_id, reason, now);
    }
    const fields: Partial<CmkRow> = { material_expire_time: null, import_path: null };
    if (row.key_state !== 'PendingDeletion') {
      fields.key_state = 'PendingImport';
      fields.state_after_import = row.key_state === 'Disabled' ? 'Disabled' : null;
    } else if (row.state_before_deletion === 'Disabled') {
      fields.state_after_import = 'Disabled';
    }
    await tx.updateCmk(row.key_id, fields);
    for (const ver of versions) this.keyring.forget(ver.version_id);
    // DeleteKeyMaterial is audited as the call it is; expiry has no caller.
    if (reason === 'expired') await this.onKeyEvent({ action: 'KeyMaterialExpired', keyId: row.key_id, details: { ExpiredAt: iso(row.material_expire_time) } }, tx);
    return versions;
  }

  // ================================================================ token objects: intents and destroys

  /**
   * The creation sequence for the next token object: from a block of SEQUENCE_BLOCK numbers the
   * store reserved at once, the token's mark raised to the block's top before any number of it is
   * used. The mark stays at or below the store's committed sequence (a store restored from an older
   * backup is still recognised at start), while the token's kmsd:instance object, which every
   * replica relabels, is written once a block instead of once an object (on SoftHSM that object is a
   * file that several processes rewrite: a replica reading it while another writes it may not see it).
   */
  private async nextSequence(): Promise<number> {
    for (;;) {
      const b = this.sequenceBlock;
      if (b && b.next <= b.top) return b.next++;
      this.reservingSequence ??= (async () => {
        try {
          const top = await this.store.reserveTokenSequence(SEQUENCE_BLOCK);
          // Only a block whose top the token holds is used: a failed raise wastes the block.
          this.keyring.token.raiseSequence(top);
          this.sequenceBlock = { next: top - SEQUENCE_BLOCK + 1, top };
        } finally {
          this.reservingSequence = null;
        }
      })();
      await this.reservingSequence;
    }
  }

  private sequenceBlock: { next: number; top: number } | null = null;
  private reservingSequence: Promise<void> | null = null;

  /**
   * Creates a token object under a write-ahead intent: the intent (with the next creation sequence,
   * which the token's mark already covers) is committed first, then the object created. The caller
   * clears the intent (store.clearIntent) in the transaction that commits the object's metadata; an
   * intent left open by a crash is what lets start-up reconciliation destroy the object, and nothing
   * else does.
   */
  async createUnderIntent<T>(kind: TokenObjectKind, id: string, create: () => T): Promise<{ seq: number; value: T }> {
    const seq = await this.store.openIntent(kind, id, this.now(), await this.nextSequence());
    try {
      return { seq, value: create() };
    } catch (e) {
      await this.abandonIntent(kind, id, seq);
      throw e;
    }
  }

  /**
   * createUnderIntent for a creation that runs off the event loop (CMK material, RSA key pairs). The
   * intent shares a group commit with those of other calls in flight: it is still durable before the
   * token object is created.
   */
  async createUnderIntentAsync<T>(kind: TokenObjectKind, id: string, create: () => Promise<T>): Promise<{ seq: number; value: T }> {
    const reserved = await this.nextSequence();
    const seq = await this.store.grouped((tx) => tx.openIntent(kind, id, this.now(), reserved));
    try {
      return { seq, value: await create() };
    } catch (e) {
      await this.abandonIntent(kind, id, seq);
      throw e;
    }
  }

  /**
   * In the transaction that commits an object's metadata: closes its intent, which must still be
   * open. Another replica's start-up claims the intents of replicas it cannot see (one whose store
   * connection broke looks dead) and destroys their objects; metadata must then not commit.
   */
  async closeIntentIn(tx: StoreTx, seq: number, kind: TokenObjectKind, id: string): Promise<void> {
    if (!(await tx.claimIntent(seq))) {
      throw new KmsError('ServiceUnavailable.Store', `the token object ${kind}:${id} this call created was reclaimed as an interrupted creation while this replica could not reach the metadata store; nothing was committed, retry`);
    }
  }

  /**
   * The object of an intent will not get metadata from this call: settled as any interrupted
   * creation is (reclaimIntent). The token finds objects by label, and what holds this label by now
   * need not be this call's object: when another replica has reclaimed the intent (it took this one
   * for dead) or committed metadata that claims the label (it imported the same key version), the
   * object is theirs and stays.
   */
  async abandonIntent(kind: TokenObjectKind, id: string, seq: number): Promise<void> {
    try {
      this.keyring.forget(id);
      await this.reclaimIntent({ seq, kind, object_id: id }, true);
    } catch (e) {
      // The intent stays open: start-up reconciliation settles it.
      this.log.error({ kind, objectId: id, err: (e as Error).message }, 'could not settle a token object whose metadata was not committed');
    }
  }

  /**
   * One attempt at a pending destroy. True when the token confirms the object is gone (the row is
   * removed); false when it refused (the row stays, with the attempt counted). The first failure and
   * a success after failures are audited (failures at start-up too); the rest are logged.
   */
  async destroyPending(kind: TokenObjectKind, id: string, when: 'call' | 'scheduler' | 'start-up'): Promise<boolean> {
    const row = await this.store.getPendingDestroy(kind, id);
    if (!row) return true;
    const keyId = row.key_id ?? '';
    // The row is deleted (and so locked) before the object is destroyed, and the destroy happens only
    // if this call deleted it: a re-import of the same version on another replica first deletes the
    // row itself (waiting for this lock) and creates the new object only after, so a destroy that
    // read the row earlier never takes the new material.
    let refused: unknown = null;
    const done = await this.store
      .transaction(async (tx) => {
        if (!(await tx.deletePendingDestroy(kind, id))) return false;
        try {
          this.keyring.token.destroy(kind, id);
        } catch (e) {
          refused = e;
          throw e;
        }
        // The row goes with the record of the destroy that finally worked.
        if (row.attempts > 0 && kind === 'cmk') await this.onKeyEvent({ action: 'KeyMaterialDestroyed', keyId, details: { KeyVersionId: id, Reason: row.reason, Attempts: row.attempts + 1, Retried: when } }, tx);
        return true;
      })
      .catch((e: unknown) => {
        if (refused === null) throw e;
        return null;
      });
    if (done === false) return true; // destroyed by another call or replica meanwhile
    if (done === null) {
      const e = refused as unknown;
      const err = e as { code?: string; message?: string };
      const reason = err.code ? `${err.code}` : String(err.message ?? e);
      const attempts = await this.store.notePendingDestroyFailure(kind, id, reason);
      this.destroyRetryAt.set(`${kind}:${id}`, this.now() + Math.min(300_000, 1000 * 2 ** Math.min(attempts, 9)));
      this.log.warn({ kind, objectId: id, keyId, attempts, err: err.message ?? String(e) }, 'the token refused to destroy an object; retrying later');
      if (kind === 'cmk' && (attempts === 1 || when === 'start-up')) {
        await this.keyEvent({ action: 'KeyMaterialDestroyFailed', keyId, details: { KeyVersionId: id, Reason: row.reason, Error: reason, Attempts: attempts, Retried: when } });
      }
      return false;
    }
    this.destroyRetryAt.delete(`${kind}:${id}`);
    if (row.attempts > 0) this.log.info({ kind, objectId: id, keyId, attempts: row.attempts + 1 }, 'token object destroyed after earlier failures');
    return true;
  }

  /** Retries every pending destroy (the scheduler honours the backoff; start-up tries them all). */
  async retryPendingDestroys(when: 'scheduler' | 'start-up'): Promise<{ destroyed: string[]; failed: string[] }> {
    const out = { destroyed: [] as string[], failed: [] as string[] };
    const now = this.now();
    for (const row of await this.store.pendingDestroys()) {
      if (when === 'scheduler' && (this.destroyRetryAt.get(`${row.kind}:${row.object_id}`) ?? 0) > now) continue;
      ((await this.destroyPending(row.kind, row.object_id, when)) ? out.destroyed : out.failed).push(`${row.kind}:${row.object_id}`);
    }
    return out;
  }

  /** Pending destroys of one CMK's versions (DeleteKeyMaterial answers with them). */
  async pendingDestroysOf(keyId: string): Promise<TokenDestroyRow[]> {
    return (await this.store.pendingDestroys()).filter((r) => r.key_id === keyId);
  }

  /** The error a caller gets while a CMK's material is deleted in the metadata but not yet in the token. */
  destroyPendingError(keyId: string, versionIds: string[]): KmsError {
    return new KmsError(
      'ServiceUnavailable.KeyMaterialDestroyPending',
      `KeyId: CMK ${keyId} is PendingImport, but the token refused to destroy the material of key version ${versionIds.join(', ')}; kmsd retries until it is gone (audited), and this call can be repeated`,
    );
  }

  /** Throws the state's Rejected.* error unless the CMK is in an allowed state (also used by src/kms/batch.ts). */
  requireState(row: CmkRow, allowed: KeyState[], field = 'KeyId'): void {
    if (allowed.includes(row.key_state as KeyState)) return;
    const state = row.key_state as KeyState;
    const code = state === 'Disabled' ? 'Rejected.Disabled' : state === 'PendingImport' ? 'Rejected.PendingImport' : state === 'PendingDeletion' ? 'Rejected.PendingDeletion' : 'InvalidParameter';
    throw new KmsError(code, `${field}: CMK ${row.key_id} is ${state}; this action needs ${allowed.join(' or ')}`);
  }

  /** The primary version of an Enabled CMK whose material is present (also used by src/kms/batch.ts). */
  async requireUsable(row: CmkRow): Promise<KeyVersionRow> {
    this.requireState(row, ['Enabled']);
    const id = row.primary_key_version;
    const ver = id ? (this.store.cachedVersion(id) ?? (await this.store.getVersion(id))) : undefined;
    if (!ver) throw new KmsError('InternalFailure', `CMK ${row.key_id} has no primary key version`);
    if (ver.material_state === 'Missing') {
      throw new KmsError('Rejected.KeyMaterialMissing', `KeyId: the token no longer holds key version ${ver.version_id} of CMK ${row.key_id}`);
    }
    return ver;
  }

  metadata(row: CmkRow): KeyMetadata {
    return {
      KeyId: row.key_id,
      Arn: `${this.config.arnPrefix}:key/${row.key_id}`,
      KeyState: row.key_state as KeyState,
      Origin: row.origin as Origin,
      KeySpec: row.key_spec,
      KeyUsage: row.key_usage,
      ProtectionLevel: row.protection_level as ProtectionLevel,
      Description: row.description,
      CreationDate: iso(row.creation_date),
      DeleteDate: iso(row.delete_date),
      MaterialExpireTime: iso(row.material_expire_time),
      AutomaticRotation: row.automatic_rotation,
      RotationInterval: row.rotation_interval_s ? `${row.rotation_interval_s}s` : '',
      NextRotationDate: iso(row.next_rotation_date),
      LastRotationDate: iso(row.last_rotation_date),
      PrimaryKeyVersion: row.primary_key_version ?? '',
      MaterialImportPath: row.import_path ?? '',
    };
  }

  // ================================================================ lifecycle

  async CreateKey(
    req: {
    Origin?: string;
    KeySpec?: string;
    KeyUsage?: string;
    ProtectionLevel?: string;
    Description?: string;
    EnableAutomaticRotation?: boolean;
    RotationInterval?: string;
    },
    ctx?: CallContext,
  ): Promise<{ KeyMetadata: KeyMetadata }> {
    const origin = v.oneOf('Origin', req.Origin, ['Aliyun_KMS', 'EXTERNAL'] as const, 'Aliyun_KMS');
    const keySpec = v.oneOf('KeySpec', req.KeySpec, ['Aliyun_AES_256'] as const, 'Aliyun_AES_256');
    const keyUsage = v.oneOf('KeyUsage', req.KeyUsage, ['ENCRYPT/DECRYPT'] as const, 'ENCRYPT/DECRYPT');
    const level = v.oneOf('ProtectionLevel', req.ProtectionLevel, ['SOFTWARE', 'HSM'] as const, 'SOFTWARE');
    const description = v.description('Description', req.Description);
    let interval: number | null = null;
    if (req.EnableAutomaticRotation) {
      if (origin === 'EXTERNAL') {
        throw new KmsError('Rejected.ExternalKey', 'EnableAutomaticRotation: a CMK with Origin EXTERNAL cannot rotate; a different key material needs a new CMK');
      }
      interval = v.rotationIntervalSeconds('RotationInterval', req.RotationInterval || '365d', this.config.minRotationIntervalSeconds, this.config.maxRotationIntervalSeconds);
    } else if (req.RotationInterval) {
      throw invalid('RotationInterval', 'only allowed with EnableAutomaticRotation=true');
    }
    const lacking = this.keyring.cannotCreate(level, origin !== 'EXTERNAL');
    if (lacking) throw new KmsError('Rejected.TokenLacksMechanism', `ProtectionLevel: ${lacking}; create the CMK at another ProtectionLevel, or use a token that has it`);
    const now = this.now();
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    const row: CmkRow = {
      key_id: keyId,
      origin,
      key_spec: keySpec,
      key_usage: keyUsage,
      protection_level: level,
      description,
      key_state: origin === 'EXTERNAL' ? 'PendingImport' : 'Enabled',
      creation_date: now,
      delete_date: null,
      material_expire_time: null,
      automatic_rotation: interval ? 'Enabled' : 'Disabled',
      rotation_interval_s: interval,
      next_rotation_date: interval ? now + interval * 1000 : null,
      last_rotation_date: null,
      primary_key_version: versionId,
      material_fingerprint: null,
      state_before_deletion: null,
      import_path: null,
    };
    // Intent, token object, metadata: a crash in between leaves an open intent, and start-up
    // reconciliation destroys the object it names; never metadata that points at missing material.
    let wrapped: Buffer | null = null;
    let seq: number | null = null;
    // HSM material is generated off the event loop: other calls' store commits overlap the token's work.
    if (origin !== 'EXTERNAL' && level === 'HSM') seq = (await this.createUnderIntentAsync('cmk', versionId, () => this.keyring.generateOffLoop(level, versionId))).seq;
    else if (origin !== 'EXTERNAL') wrapped = this.keyring.generate(level, versionId);
    try {
      await this.changeInGroup(ctx, async (tx) => {
        await tx.insertCmk(row);
        await tx.insertVersion({ version_id: versionId, key_id: keyId, creation_date: now, software_wrapped: wrapped, material_state: origin === 'EXTERNAL' ? 'Absent' : 'Present' });
        if (seq !== null) await this.closeIntentIn(tx, seq, 'cmk', versionId);
      }, { KeyId: keyId });
    } catch (e) {
      if (seq !== null) await this.abandonIntent('cmk', versionId, seq);
      throw e;
    }
    this.log.info({ keyId, origin, protectionLevel: level }, 'CMK created');
    return { KeyMetadata: this.metadata(row) };
  }

  async DescribeKey(req: { KeyId?: string }): Promise<{ KeyMetadata: KeyMetadata }> {
    return { KeyMetadata: this.metadata(await this.resolve('KeyId', req.KeyId)) };
  }

  async ListKeys(req: { PageNumber?: number; PageSize?: number }): Promise<{ Keys: { KeyId: string; KeyArn: string }[]; TotalCount: number; PageNumber: number; PageSize: number }> {
    const page = v.intInRange('PageNumber', req.PageNumber, 1, 1_000_000, 1);
    const size = v.intInRange('PageSize', req.PageSize, 1, 100, 10);
    const rows = await this.store.listCmks((page - 1) * size, size);
    return {
      Keys: rows.map((r) => ({ KeyId: r.key_id, KeyArn: `${this.config.arnPrefix}:key/${r.key_id}` })),
      TotalCount: await this.store.countCmks(),
      PageNumber: page,
      PageSize: size,
    };
  }

  // State transitions read the CMK in their transaction (resolve with tx: a row lock where the
  // backend has them), so two replicas changing one CMK are serialized and each decides on the
  // state the other left.

  async UpdateKeyDescription(req: { KeyId?: string; Description?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    v.keyIdOrAlias('KeyId', req.KeyId);
    const d = v.description('Description', v.requireString('Description', req.Description));
    return this.change(ctx, async (tx) => {
      const row = await this.resolve('KeyId', req.KeyId, tx);
      this.requireState(row, ['Enabled', 'Disabled', 'PendingImport']);
      await tx.updateCmk(row.key_id, { description: d });
      return {};
    });
  }

  async EnableKey(req: { KeyId?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    v.keyIdOrAlias('KeyId', req.KeyId);
    return this.change(ctx, async (tx) => {
      const row = await this.resolve('KeyId', req.KeyId, tx);
      this.requireState(row, ['Enabled', 'Disabled']);
      if (row.key_state === 'Disabled') await tx.updateCmk(row.key_id, { key_state: 'Enabled' });
      return {};
    });
  }

  async DisableKey(req: { KeyId?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    v.keyIdOrAlias('KeyId', req.KeyId);
    return this.change(ctx, async (tx) => {
      const row = await this.resolve('KeyId', req.KeyId, tx);
      this.requireState(row, ['Enabled', 'Disabled']);
      if (row.key_state === 'Enabled') {
        await tx.updateCmk(row.key_id, { key_state: 'Disabled' });
        for (const ver of await tx.listVersions(row.key_id)) this.keyring.forget(ver.version_id);
      }
      return {};
    });
  }

  async ScheduleKeyDeletion(req: { KeyId?: string; PendingWindowInDays?: number }, ctx?: CallContext): Promise<{ KeyId: string; DeleteDate: string }> {
    v.keyIdOrAlias('KeyId', req.KeyId);
    const days = v.intInRange('PendingWindowInDays', req.PendingWindowInDays, 7, 366);
    const out = await this.change(ctx, async (tx) => {
      const row = await this.resolve('KeyId', req.KeyId, tx);
      this.requireState(row, ['Enabled', 'Disabled', 'PendingImport']);
      const deleteDate = this.now() + days * this.config.pendingWindowDaySeconds * 1000;
      await tx.updateCmk(row.key_id, { key_state: 'PendingDeletion', delete_date: deleteDate, state_before_deletion: row.key_state });
      for (const ver of await tx.listVersions(row.key_id)) this.keyring.forget(ver.version_id);
      return { KeyId: row.key_id, DeleteDate: iso(deleteDate) };
    }, (r) => ({ KeyId: r.KeyId }));
    this.log.info({ keyId: out.KeyId, deleteDate: out.DeleteDate }, 'CMK scheduled for deletion');
    return out;
  }

  async CancelKeyDeletion(req: { KeyId?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    v.keyIdOrAlias('KeyId', req.KeyId);
    return this.change(ctx, async (tx) => {
      const row = await this.resolve('KeyId', req.KeyId, tx);
      if (row.key_state !== 'PendingDeletion') {
        throw new KmsError('Rejected.NotPendingDeletion', `KeyId: CMK ${row.key_id} is ${row.key_state}, not PendingDeletion`);
      }
      // Material may have expired or been deleted meanwhile: then it waits for an import again.
      const hasMaterial = (await tx.listVersions(row.key_id)).some((x) => x.material_state === 'Present');
      let next = (row.state_before_deletion ?? 'Enabled') as KeyState;
      if (row.origin === 'EXTERNAL' && !hasMaterial) next = 'PendingImport';
      if (next === 'PendingImport' && hasMaterial) next = row.state_after_import === 'Disabled' ? 'Disabled' : 'Enabled';
      await tx.updateCmk(row.key_id, { key_state: next, delete_date: null, state_before_deletion: null });
      return {};
    });
  }

  /**
   * Called by the scheduler when the deletion window has passed. Metadata (with a pending destroy
   * per HSM version) first, then material: a crash or a token refusal in between leaves destroys
   * that are retried until done. The other order left a PendingDeletion CMK whose token objects
   * were gone, which CancelKeyDeletion could bring back as an Enabled CMK without material.
   */
  async destroyCmk(due: CmkRow): Promise<void> {
    return this.withKeyLock(due.key_id, () => this.destroyCmkLocked(due));
  }

  private async destroyCmkLocked(due: CmkRow): Promise<void> {
    const hsm = due.protection_level === 'HSM';
    const now = this.now();
    // The record commits with the deletion; it lists the HSM versions whose token objects are still
    // to be destroyed at that moment (each refusal after it is a KeyMaterialDestroyFailed record).
    const versions = await this.store.transaction(async (tx) => {
      const row = await tx.getCmkForUpdate(due.key_id);
      // Cancelled (or deleted by another replica) since the scheduler read it.
      if (!row || row.key_state !== 'PendingDeletion' || row.delete_date === null || row.delete_date > now) return null;
      const list = await tx.listVersions(row.key_id);
      // Versions whose token object may still exist: with material, or with a destroy still pending.
      const queued: string[] = [];
      if (hsm) for (const ver of list) if (ver.material_state !== 'Absent' || (await tx.getPendingDestroy('cmk', ver.version_id))) queued.push(ver.version_id);
      await tx.deleteCmk(row.key_id);
      if (hsm) for (const ver of list) await tx.addPendingDestroy('cmk', ver.version_id, row.key_id, 'key-deleted', now);
      await this.onKeyEvent({ action: 'ScheduledKeyDeletion', keyId: row.key_id, details: { KeyVersions: list.map((x) => x.version_id), MaterialDestroyPending: queued } }, tx);
      return list;
    });
    if (!versions) return;
    for (const ver of versions) this.keyring.forget(ver.version_id);
    const pending: string[] = [];
    if (hsm) for (const ver of versions) if (!(await this.destroyPending('cmk', ver.version_id, 'call'))) pending.push(ver.version_id);
    this.log.info({ keyId: due.key_id, destroyPending: pending }, 'CMK deleted at the end of its deletion window');
  }

  /** A key event with no state change of its own to commit with (a failed destroy, a removal). */
  private async keyEvent(ev: KeyEvent): Promise<void> {
    try {
      await this.onKeyEvent(ev);
    } catch (e) {
      // The action is done; a failure to record it must not undo or repeat it.
      this.log.error({ keyId: ev.keyId, action: ev.action, err: (e as Error).message }, 'could not record a key event');
    }
  }

  // ================================================================ aliases

  // Alias uniqueness: the name is the table's primary key, so of two concurrent CreateAlias calls
  // (on any replicas) one insert fails with StoreConflictError, answered as EntityAlreadyExists.
  async CreateAlias(req: { AliasName?: string; KeyId?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    const name = v.aliasName('AliasName', req.AliasName);
    v.keyIdOrAlias('KeyId', req.KeyId);
    const exists = () => new KmsError('EntityAlreadyExists.Alias', `AliasName: ${name} already exists`);
    try {
      return await this.change(ctx, async (tx) => {
        // Like every KeyId parameter, this one also takes an alias: the new alias is bound to the CMK
        // that alias names now (aliases never point at aliases).
        const row = await this.resolve('KeyId', req.KeyId, tx);
        this.requireState(row, ['Enabled', 'Disabled', 'PendingImport']);
        if (await tx.getAlias(name)) throw exists();
        const now = this.now();
        await tx.insertAlias({ alias_name: name, key_id: row.key_id, creation_date: now, update_date: now });
        return {};
      });
    } catch (e) {
      if (e instanceof StoreConflictError) throw exists();
      throw e;
    }
  }

  async UpdateAlias(req: { AliasName?: string; KeyId?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    const name = v.aliasName('AliasName', req.AliasName);
    v.keyIdOrAlias('KeyId', req.KeyId);
    return this.change(ctx, async (tx) => {
      if (!(await tx.getAliasForUpdate(name))) throw new KmsError('Forbidden.AliasNotFound', `AliasName: ${name} does not exist`);
      const row = await this.resolve('KeyId', req.KeyId, tx);
      this.requireState(row, ['Enabled', 'Disabled', 'PendingImport']);
      await tx.updateAlias(name, row.key_id, this.now());
      return {};
    });
  }

  async DeleteAlias(req: { AliasName?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    const name = v.aliasName('AliasName', req.AliasName);
    return this.change(ctx, async (tx) => {
      if (!(await tx.getAliasForUpdate(name))) throw new KmsError('Forbidden.AliasNotFound', `AliasName: ${name} does not exist`);
      await tx.deleteAlias(name);
      return {};
    });
  }

  private async aliasPage(page: number, size: number, keyId?: string) {
    const rows = await this.store.listAliases((page - 1) * size, size, keyId);
    return {
      Aliases: rows.map((a) => ({ AliasName: a.alias_name, AliasArn: `${this.config.arnPrefix}:${a.alias_name}`, KeyId: a.key_id })),
      TotalCount: await this.store.countAliases(keyId),
      PageNumber: page,
      PageSize: size,
    };
  }

  ListAliases(req: { PageNumber?: number; PageSize?: number }) {
    return this.aliasPage(v.intInRange('PageNumber', req.PageNumber, 1, 1_000_000, 1), v.intInRange('PageSize', req.PageSize, 1, 100, 10));
  }

  async ListAliasesByKeyId(req: { KeyId?: string; PageNumber?: number; PageSize?: number }) {
    const row = await this.resolve('KeyId', req.KeyId);
    return this.aliasPage(v.intInRange('PageNumber', req.PageNumber, 1, 1_000_000, 1), v.intInRange('PageSize', req.PageSize, 1, 100, 10), row.key_id);
  }

  // ================================================================ versions and rotation

  private version(row: CmkRow, ver: KeyVersionRow): KeyVersion {
    return { KeyId: row.key_id, KeyVersionId: ver.version_id, CreationDate: iso(ver.creation_date) };
  }

  /** A new version, made primary; older versions keep decrypting. */
  async rotate(row: CmkRow, reason: 'manual' | 'automatic', ctx?: CallContext): Promise<KeyVersionRow> {
    if (row.origin === 'EXTERNAL') {
      throw new KmsError('Rejected.ExternalKey', `KeyId: CMK ${row.key_id} has Origin EXTERNAL; a different key material needs a new CMK`);
    }
    this.requireState(row, ['Enabled']);
    const now = this.now();
    const versionId = crypto.randomUUID();
    const hsm = row.protection_level === 'HSM';
    let seq: number | null = null;
    let wrapped: Buffer | null = null;
    if (hsm) seq = (await this.createUnderIntent('cmk', versionId, () => this.keyring.generate('HSM', versionId))).seq;
    else wrapped = this.keyring.generate(row.protection_level, versionId);
    const ver: KeyVersionRow = { version_id: versionId, key_id: row.key_id, creation_date: now, software_wrapped: wrapped, material_state: 'Present' };
    try {
      await this.change(ctx, async (tx) => {
        // The CMK as it is now: disabled or scheduled for deletion meanwhile (on any replica), it does not rotate.
        const current = await tx.getCmkForUpdate(row.key_id);
        if (!current) throw new KmsError('Forbidden.KeyNotFound', `KeyId: CMK ${row.key_id} does not exist`);
        this.requireState(current, ['Enabled']);
        await tx.insertVersion(ver);
        await tx.updateCmk(row.key_id, {
          primary_key_version: versionId,
          last_rotation_date: now,
          next_rotation_date: current.rotation_interval_s ? now + current.rotation_interval_s * 1000 : null,
        });
        if (seq !== null) await this.closeIntentIn(tx, seq, 'cmk', versionId);
        if (reason === 'automatic') await this.onKeyEvent({ action: 'AutomaticRotation', keyId: row.key_id, details: { KeyVersionId: versionId } }, tx);
      }, { KeyId: row.key_id });
    } catch (e) {
      if (seq !== null) await this.abandonIntent('cmk', versionId, seq);
      else this.keyring.forget(versionId);
      throw e;
    }
    this.log.info({ keyId: row.key_id, keyVersionId: versionId, reason }, 'CMK rotated');
    return ver;
  }

  /**
   * Turns a CMK's automatic rotation on (with CreateKey's interval rules) or off. An EXTERNAL CMK
   * cannot rotate, as in CreateKey. Changing the interval of a rotating CMK counts from its last
   * rotation (or creation); a date already past rotates it at the scheduler's next pass.
   */
  async UpdateRotationPolicy(req: { KeyId?: string; EnableAutomaticRotation?: boolean; RotationInterval?: string }, ctx?: CallContext): Promise<Record<string, never>> {
    v.keyIdOrAlias('KeyId', req.KeyId);
    const interval = await this.change(ctx, async (tx) => {
      const row = await this.resolve('KeyId', req.KeyId, tx);
      if (req.EnableAutomaticRotation === undefined || req.EnableAutomaticRotation === null) throw missing('EnableAutomaticRotation');
      if (typeof req.EnableAutomaticRotation !== 'boolean') throw invalid('EnableAutomaticRotation', 'must be true or false');
      if (!req.EnableAutomaticRotation) {
        if (req.RotationInterval) throw invalid('RotationInterval', 'only allowed with EnableAutomaticRotation=true');
        this.requireState(row, ['Enabled', 'Disabled', 'PendingImport']);
        await tx.updateCmk(row.key_id, { automatic_rotation: 'Disabled', rotation_interval_s: null, next_rotation_date: null });
        return null;
      }
      if (row.origin === 'EXTERNAL') {
        throw new KmsError('Rejected.ExternalKey', `EnableAutomaticRotation: CMK ${row.key_id} has Origin EXTERNAL and cannot rotate; a different key material needs a new CMK`);
      }
      const seconds = v.rotationIntervalSeconds('RotationInterval', req.RotationInterval || '365d', this.config.minRotationIntervalSeconds, this.config.maxRotationIntervalSeconds);
      this.requireState(row, ['Enabled', 'Disabled']);
      const now = this.now();
      const from = row.automatic_rotation === 'Enabled' ? (row.last_rotation_date ?? row.creation_date) : now;
      await tx.updateCmk(row.key_id, { automatic_rotation: 'Enabled', rotation_interval_s: seconds, next_rotation_date: Math.max(now, from + seconds * 1000) });
      return { keyId: row.key_id, seconds };
    });
    if (interval) this.log.info({ keyId: interval.keyId, rotationIntervalSeconds: interval.seconds }, 'CMK automatic rotation set');
    return {};
  }

  async CreateKeyVersion(req: { KeyId?: string }, ctx?: CallContext): Promise<{ KeyVersion: KeyVersion }> {
    const row = await this.resolve('KeyId', req.KeyId);
    return { KeyVersion: this.version(row, await this.rotate(row, 'manual', ctx)) };
  }

  async ListKeyVersions(req: { KeyId?: string; PageNumber?: number; PageSize?: number }) {
    const row = await this.resolve('KeyId', req.KeyId);
    const page = v.intInRange('PageNumber', req.PageNumber, 1, 1_000_000, 1);
    const size = v.intInRange('PageSize', req.PageSize, 1, 100, 10);
    const all = await this.store.listVersions(row.key_id);
    return {
      KeyVersions: all.slice((page - 1) * size, page * size).map((x) => this.version(row, x)),
      TotalCount: all.length,
      PageNumber: page,
      PageSize: size,
    };
  }

  async DescribeKeyVersion(req: { KeyId?: string; KeyVersionId?: string }): Promise<{ KeyVersion: KeyVersion }> {
    const row = await this.resolve('KeyId', req.KeyId);
    const id = v.keyVersionId('KeyVersionId', req.KeyVersionId);
    const ver = await this.store.getVersion(id);
    if (!ver || ver.key_id !== row.key_id) throw new KmsError('Forbidden.KeyVersionNotFound', `KeyVersionId: CMK ${row.key_id} has no version ${id}`);
    return { KeyVersion: this.version(row, ver) };
  }

  // ================================================================ cryptography

  private context(field: string, ctx: Context | undefined): Context | undefined {
    validateContext(field, ctx);
    return ctx && Object.keys(ctx).length > 0 ? ctx : undefined;
  }

  private async seal(row: CmkRow, ver: KeyVersionRow, plaintext: Buffer, ctx: Context | undefined): Promise<string> {
    const iv = freshIv();
    const header = buildHeader(row.key_id, ver.version_id, iv);
    const sealed = await this.keyring.encrypt(row.protection_level, ver, iv, aadFor(header, ctx), plaintext);
    return Buffer.concat([header, sealed]).toString('base64');
  }

  /**
   * The checks before opening a blob: parse it, find the CMK and version it names, check state and
   * material (also used by src/kms/batch.ts, which decrypts many blobs in one call).
   */
  async locate(blobB64: string | undefined, field = 'CiphertextBlob'): Promise<{ row: CmkRow; ver: KeyVersionRow; parsed: ReturnType<typeof parseBlob> }> {
    const blob = v.base64(field, blobB64, { maxBytes: 64 * 1024 });
    const parsed = parseBlob(blob);
    const row = this.store.cachedCmk(parsed.keyId) ?? (await this.store.getCmk(parsed.keyId));
    if (!row) throw new KmsError('Forbidden.KeyNotFound', `${field}: was made by CMK ${parsed.keyId}, which does not exist`);
    const current = await this.expireIfDue(row);
    const ver = this.store.cachedVersion(parsed.keyVersionId) ?? (await this.store.getVersion(parsed.keyVersionId));
    if (!ver || ver.key_id !== current.key_id) throw new KmsError('InvalidCiphertext', `${field}: CMK ${current.key_id} has no key version ${parsed.keyVersionId}`);
    this.requireState(current, ['Enabled']);
    if (ver.material_state !== 'Present') {
      throw new KmsError('Rejected.KeyMaterialMissing', `${field}: the material of key version ${ver.version_id} is not available`);
    }
    return { row: current, ver, parsed };
  }

  /** Opens a blob: parse, find the CMK and version it names, check state, authenticate and decrypt. */
  private async open(blobB64: string | undefined, ctx: Context | undefined, field = 'CiphertextBlob'): Promise<{ row: CmkRow; ver: KeyVersionRow; plaintext: Buffer }> {
    const { row: current, ver, parsed } = await this.locate(blobB64, field);
    try {
      const plaintext = await this.keyring.decrypt(current.protection_level, ver, parsed.iv, aadFor(parsed.header, ctx), parsed.sealed);
      return { row: current, ver, plaintext };
    } catch (e) {
      if (e instanceof DecryptFailedError) {
        throw new KmsError('InvalidCiphertext', `${field}: authentication failed (the blob was altered, or the EncryptionContext differs from the one used to encrypt)`);
      }
      throw e;
    }
  }

  async Encrypt(req: { KeyId?: string; Plaintext?: string; EncryptionContext?: Context }) {
    const row = await this.resolve('KeyId', req.KeyId);
    const pt = v.base64('Plaintext', req.Plaintext, { maxBytes: MAX_PLAINTEXT_BYTES, allowEmpty: false });
    try {
      const ctx = this.context('EncryptionContext', req.EncryptionContext);
      const ver = await this.requireUsable(row);
      return { KeyId: row.key_id, KeyVersionId: ver.version_id, CiphertextBlob: await this.seal(row, ver, pt, ctx) };
    } finally {
      pt.fill(0);
    }
  }

  async Decrypt(req: { CiphertextBlob?: string; EncryptionContext?: Context; KeyId?: string }) {
    const ctx = this.context('EncryptionContext', req.EncryptionContext);
    let expected: CmkRow | undefined;
    if (req.KeyId) expected = await this.resolve('KeyId', req.KeyId);
    const blob = v.base64('CiphertextBlob', req.CiphertextBlob, { maxBytes: 64 * 1024 });
    if (expected) {
      const parsed = parseBlob(blob);
      if (parsed.keyId !== expected.key_id) {
        throw new KmsError('IncorrectKeyId', `KeyId: the ciphertext was made by CMK ${parsed.keyId}, not ${expected.key_id}`);
      }
    }
    const { row, ver, plaintext } = await this.open(req.CiphertextBlob, ctx);
    try {
      return { KeyId: row.key_id, KeyVersionId: ver.version_id, Plaintext: plaintext.toString('base64') };
    } finally {
      plaintext.fill(0);
    }
  }

  private dataKeyBytes(req: { KeySpec?: string; NumberOfBytes?: number }): number {
    if (req.NumberOfBytes) return v.intInRange('NumberOfBytes', req.NumberOfBytes, 1, 1024);
    const spec = v.oneOf('KeySpec', req.KeySpec, ['AES_256', 'AES_128'] as const, 'AES_256');
    return spec === 'AES_256' ? 32 : 16;
  }

  async GenerateDataKey(req: { KeyId?: string; KeySpec?: string; NumberOfBytes?: number; EncryptionContext?: Context }) {
    const row = await this.resolve('KeyId', req.KeyId);
    const n = this.dataKeyBytes(req);
    const ctx = this.context('EncryptionContext', req.EncryptionContext);
    const ver = await this.requireUsable(row);
    const dataKey = row.protection_level === 'HSM' ? this.keyring.token.random(n) : crypto.randomBytes(n);
    try {
      const blob = await this.seal(row, ver, dataKey, ctx);
      return { KeyId: row.key_id, KeyVersionId: ver.version_id, Plaintext: dataKey.toString('base64'), CiphertextBlob: blob };
    } finally {
      dataKey.fill(0);
    }
  }

  async GenerateDataKeyWithoutPlaintext(req: { KeyId?: string; KeySpec?: string; NumberOfBytes?: number; EncryptionContext?: Context }) {
    const r = await this.GenerateDataKey(req);
    return { KeyId: r.KeyId, KeyVersionId: r.KeyVersionId, CiphertextBlob: r.CiphertextBlob };
  }

  /**
   * Random bytes for the caller, from the token's C_GenerateRandom: the token keeps a session pool,
   * so the call is one cheap round trip, and the bytes come from the HSM's RNG as a KMS's
   * GenerateRandom promises (node:crypto would be no better than the caller's own).
   */
  GenerateRandom(req: { NumberOfBytes?: number }): { Plaintext: string } {
    const n = v.intInRange('NumberOfBytes', req.NumberOfBytes, 1, MAX_RANDOM_BYTES);
    const bytes = this.keyring.token.random(n);
    try {
      return { Plaintext: bytes.toString('base64') };
    } finally {
      bytes.fill(0);
    }
  }

  async ReEncrypt(req: { CiphertextBlob?: string; DestinationKeyId?: string; SourceEncryptionContext?: Context; DestinationEncryptionContext?: Context }) {
    const dest = await this.resolve('DestinationKeyId', req.DestinationKeyId);
    const srcCtx = this.context('SourceEncryptionContext', req.SourceEncryptionContext);
    const dstCtx = this.context('DestinationEncryptionContext', req.DestinationEncryptionContext);
    const destVer = await this.requireUsable(dest);
    const { row, ver, plaintext } = await this.open(req.CiphertextBlob, srcCtx);
    try {
      return {
        KeyId: dest.key_id,
        KeyVersionId: destVer.version_id,
        CiphertextBlob: await this.seal(dest, destVer, plaintext, dstCtx),
        SourceKeyId: row.key_id,
        SourceKeyVersionId: ver.version_id,
      };
    } finally {
      plaintext.fill(0);
    }
  }

  // ================================================================ background work

  /** One pass of the scheduler: deletions, material expiry, automatic rotation. Errors are logged per key. */
  async runDueWork(): Promise<{ deleted: number; expired: number; rotated: number }> {
    await this.guard('-', 'destroy retry', () => this.retryPendingDestroys('scheduler'));
    const due = await this.store.cmksDue(this.now());
    const result = { deleted: 0, expired: 0, rotated: 0 };
    for (const row of due.deletions) {
      await this.guard(row.key_id, 'deletion', async () => {
        await this.destroyCmk(row);
        result.deleted++;
      });
    }
    for (const row of due.expiries) {
      await this.guard(row.key_id, 'expiry', async () => {
        await this.deleteMaterial(row, 'expired');
        result.expired++;
      });
    }
    for (const row of due.rotations) {
      await this.guard(row.key_id, 'rotation', async () => {
        await this.rotate(row, 'automatic');
        result.rotated++;
      });
    }
    return result;
  }

  private async guard(keyId: string, what: string, fn: () => Promise<unknown>): Promise<void> {
    try {
      await fn();
    } catch (e) {
      this.log.error({ keyId, err: e instanceof HsmError || e instanceof KmsError ? e.message : String(e) }, `scheduled ${what} failed`);
    }
  }

  /**
   * Start-up reconciliation of metadata with the token (after the store/token binding check, with
   * the token's inventory from one pass). Destroys only what the store itself recorded as being
   * created and never finished: CMK objects named by an open intent and claimed by no key version.
   * Versions whose material is missing from the token are reported and marked Missing, never
   * dropped. Wrapping keys are ImportService.reconcileWrappingKeys; unknown objects findUnknown.
   */
  /** Start-up reconciliation: still running (the token walk runs after kmsd listens), and how long it took. */
  reconciliation: { running: boolean; millis: number } = { running: false, millis: 0 };

  async reconcile(inventory: TokenInventory | (() => TokenInventory), upToIntentSeq = Number.POSITIVE_INFINITY, intentsOnly = false): Promise<{ destroyedOrphans: string[]; missing: string[] }> {
    const versions = new Map((await this.store.allVersions()).map((x) => [x.version_id, x]));
    const cmks = new Map((await this.store.allCmks()).map((r) => [r.key_id, r]));
    // The token's objects as of now, after the rows were read: an object whose row those reads saw
    // was created before its row committed, so it is in this inventory (calls run meanwhile).
    const inv = typeof inventory === 'function' ? inventory() : inventory;
    const destroyedOrphans: string[] = [];
    for (const intent of await this.store.allIntents()) {
      // Intents opened since start-up belong to calls still running (reconciliation in the
      // background), and so do those of replicas that are alive.
      if (intent.kind !== 'cmk' || intent.seq > upToIntentSeq) continue;
      if (await this.store.replicaAlive(intent.owner)) continue;
      if (await this.reclaimIntent(intent, inv.cmk.has(intent.object_id))) {
        inv.cmk.delete(intent.object_id);
        destroyedOrphans.push(intent.object_id);
      }
    }
    const missing: string[] = [];
    // intentsOnly: `inv` holds only the objects the intents name (looked up one by one before kmsd
    // listens, so no call can race a destroy); the rest waits for the walk.
    if (intentsOnly) return { destroyedOrphans, missing };
    for (const ver of versions.values()) {
      const row = cmks.get(ver.key_id);
      if (!row || ver.material_state === 'Absent') continue;
      const present = row.protection_level === 'HSM' ? inv.cmk.has(ver.version_id) : ver.software_wrapped !== null;
      if (!present && ver.material_state === 'Present') {
        // Another replica may have created the object after this one walked the token: looked up
        // on its own before anything is marked.
        if (row.protection_level === 'HSM' && (await this.keyring.token.holdsLabelSettled('cmk', ver.version_id))) continue;
        if (await this.markVersion(ver.version_id, 'Present', 'Missing')) missing.push(ver.version_id);
      } else if (present && ver.material_state === 'Missing') {
        await this.markVersion(ver.version_id, 'Missing', 'Present');
      }
    }
    if (destroyedOrphans.length || missing.length) this.log.warn({ destroyedOrphans, missing }, 'reconciled metadata with the token');
    return { destroyedOrphans, missing };
  }

  /**
   * Claims an intent whose owner is gone (or that its own call abandons) and destroys its object
   * (when the token holds it and no metadata claims it), in one transaction: a late commit of the owner's metadata (its claim of the
   * same intent) waits for this one and then fails, so the two never both win. True when destroyed;
   * a destroy the token refuses is queued as a pending destroy.
   */
  async reclaimIntent(intent: Pick<TokenIntentRow, 'seq' | 'kind' | 'object_id'>, present: boolean): Promise<boolean> {
    const { kind, object_id: id } = intent;
    return this.store.transaction(async (tx) => {
      if (!(await tx.claimIntent(intent.seq))) return false; // committed or reclaimed meanwhile
      if (!present) return false;
      if (kind === 'cmk') {
        const ver = await tx.getVersion(id);
        const row = ver ? await tx.getCmk(ver.key_id) : undefined;
        if (row && this.claimsCmkObject(ver, new Map([[row.key_id, row]]))) return false;
      } else if (kind === 'wrap' && (await tx.getWrappingKey(id))) {
        return false;
      }
      try {
        this.keyring.forget(id);
        this.keyring.token.destroy(kind, id);
        return true;
      } catch (e) {
        await tx.addPendingDestroy(kind, id, null, 'creation-interrupted', this.now());
        this.log.warn({ kind, objectId: id, err: (e as Error).message }, 'could not destroy the token object of an interrupted creation; retrying later');
        return false;
      }
    });
  }

  /** Sets a version's material state only if it still is `from` (another replica may have changed it since it was read). */
  private markVersion(versionId: string, from: 'Present' | 'Missing', to: 'Present' | 'Missing'): Promise<boolean> {
    return this.store.transaction(async (tx) => {
      const ver = await tx.getVersion(versionId);
      if (ver?.material_state !== from) return false;
      await tx.updateVersion(versionId, { material_state: to });
      return true;
    });
  }

  /** Does this key version's metadata claim a token object (an HSM version with material)? */
  private claimsCmkObject(ver: KeyVersionRow | undefined, cmks: Map<string, CmkRow>): boolean {
    if (!ver || ver.material_state === 'Absent') return false;
    return cmks.get(ver.key_id)?.protection_level === 'HSM';
  }

  /**
   * Token objects (CMK material, wrapping keys) that nothing in the store explains: no metadata
   * claims them, no creation is in flight (open intent), no destroy is pending. They are kept and
   * reported (log, DescribeHsm) until an operator removes them (RemoveUnknownTokenObjects).
   */
  async findUnknown(inventory: TokenInventory | (() => TokenInventory)): Promise<UnknownTokenObject[]> {
    const busy = new Set([...(await this.store.allIntents()), ...(await this.store.pendingDestroys())].map((r) => `${r.kind}:${r.object_id}`));
    const versions = new Map((await this.store.allVersions()).map((x) => [x.version_id, x]));
    const cmks = new Map((await this.store.allCmks()).map((r) => [r.key_id, r]));
    const wraps = new Set((await this.store.allWrappingKeys()).map((w) => w.wrap_id));
    // Taken after the reads (see reconcile).
    const inv = typeof inventory === 'function' ? inventory() : inventory;
    const out: UnknownTokenObject[] = [];
    for (const id of inv.cmk) if (!busy.has(`cmk:${id}`) && !this.claimsCmkObject(versions.get(id), cmks)) out.push({ Kind: 'cmk', ObjectId: id });
    for (const id of inv.wrap) if (!busy.has(`wrap:${id}`) && !wraps.has(id)) out.push({ Kind: 'wrap', ObjectId: id });
    // An inventory kept since a walk still lists what other replicas destroyed since: each
    // candidate is looked up on its own (unknown objects are few).
    return out.filter((u) => this.keyring.token.holdsLabel(u.Kind, u.ObjectId));
  }

  /** Refreshes unknownObjects from the token; logs them when there are any. */
  async reportUnknown(inv: TokenInventory | (() => TokenInventory) = () => this.keyring.token.inventory()): Promise<UnknownTokenObject[]> {
    this.unknownObjects = await this.findUnknown(inv);
    if (this.unknownObjects.length) {
      this.log.warn(
        { unknown: this.unknownObjects.slice(0, 100), count: this.unknownObjects.length },
        'the token holds objects the store does not explain; they are kept (kmsctl DescribeHsm lists them, kmsctl RemoveUnknownTokenObjects removes them)',
      );
    }
    return this.unknownObjects;
  }

  /**
   * The operator's removal of unknown token objects: each named id (or all with All) must be unknown
   * right now, checked against a fresh inventory; nothing is destroyed unless every id checks out.
   * Each removal is audited.
   */
  async RemoveUnknownTokenObjects(req: { ObjectIds?: string; All?: boolean }): Promise<{ Removed: UnknownTokenObject[]; Failed: { Kind: string; ObjectId: string; Error: string }[] }> {
    const ids = (req.ObjectIds ?? '').split(',').map((x) => x.trim()).filter(Boolean);
    if (req.All && ids.length) throw invalid('ObjectIds', 'give either ObjectIds or All, not both');
    if (!req.All && ids.length === 0) throw invalid('ObjectIds', 'name the unknown token objects to remove (comma-separated ObjectId values from DescribeHsm UnknownTokenObjects), or give All=true');
    if (ids.length > 1000) throw invalid('ObjectIds', 'at most 1000 ids per call');
    for (const id of ids) if (!/^[A-Za-z0-9._-]{1,64}$/.test(id)) throw invalid('ObjectIds', `"${id.slice(0, 64)}" is not an object id (letters, digits, '.', '_', '-'; at most 64)`);
    const unknown = await this.findUnknown(() => this.keyring.token.inventory());
    const byId = new Map(unknown.map((u) => [u.ObjectId, u]));
    const targets = req.All ? unknown : ids.map((id) => byId.get(id) ?? null);
    const notUnknown = ids.filter((id) => !byId.has(id));
    if (notUnknown.length) {
      throw invalid('ObjectIds', `${notUnknown.slice(0, 10).join(', ')} ${notUnknown.length === 1 ? 'is' : 'are'} not unknown token objects (claimed by metadata, being created or destroyed, or not in the token); nothing was removed`);
    }
    const removed: UnknownTokenObject[] = [];
    const failed: { Kind: string; ObjectId: string; Error: string }[] = [];
    for (const t of targets as UnknownTokenObject[]) {
      try {
        this.keyring.token.destroy(t.Kind, t.ObjectId);
        removed.push(t);
        await this.keyEvent({ action: 'UnknownTokenObjectRemoved', keyId: '', details: { Kind: t.Kind, ObjectId: t.ObjectId } });
      } catch (e) {
        // The token's own word for the refusal (its return value's name) is what an operator acts on.
        failed.push({ Kind: t.Kind, ObjectId: t.ObjectId, Error: e instanceof HsmError ? e.code : 'InternalFailure' });
      }
    }
    this.log.warn({ removed, failed }, 'unknown token objects removed by an operator');
    this.unknownObjects = await this.findUnknown(() => this.keyring.token.inventory());
    return { Removed: removed, Failed: failed };
  }
}
