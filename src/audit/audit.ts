// The audit trail: every control-plane action, every proposal event and every host-assisted unwrap
// is one record in an append-only table of the metadata store, appended in the same transaction as
// the change it records, each carrying the hash of the one before it
// (src/audit/chain.ts), with periodic checkpoints signed by an ECDSA P-256 key that lives in the
// token. Data-plane calls (Encrypt, Decrypt, ...) are counted per CMK, principal and action instead
// of logged one by one, unless KMS_AUDIT_DATA_PLANE=1.
//
// Details never carry secrets: a fixed list of parameters is recorded as given, a second list
// (wrapped material, import tokens, signatures, ciphertexts) only as SHA-256, and the rest not at all.

import crypto from 'node:crypto';
import type { AuditRow, CounterRow, Store, StoreTx } from '../store/api';
import { KmsError, invalid } from '../kms/errors';
import * as v from '../kms/validate';
import { AuditRecord, CHECKPOINT_ACTION, ChainVerdict, GENESIS_HASH, canonicalJson, checkpointBytes, isoMs, recordHash, verifyChainAsync } from './chain';

export interface AuditSigner {
  /** DER SubjectPublicKeyInfo of the checkpoint key. */
  publicKeyDer(): Buffer;
  /** ECDSA P-256 / SHA-256 signature, r || s (or RSASSA-PKCS1-v1_5 / SHA-256 on a token without ECDSA). */
  sign(data: Buffer): Buffer;
}

export interface AuditConfig {
  /** A checkpoint after this many records... */
  checkpointEveryRecords: number;
  /** ...or, on the scheduler tick, when this long has passed since the last one and records were added. */
  checkpointIntervalMs: number;
  /** Log each data-plane call as a record too (counters are kept either way). */
  dataPlaneEvents: boolean;
  /**
   * Most bytes of record lines in one ExportAudit page, whatever MaxRecords asks for, so a page
   * never outgrows the gRPC message limit (the daemon sets half of it).
   */
  exportPageBytes: number;
  /** Refusals of one principal, action and reason within this long become one record with a count. */
  refusalWindowMs: number;
}

export const DEFAULT_AUDIT_CONFIG: AuditConfig = { checkpointEveryRecords: 256, checkpointIntervalMs: 60_000, dataPlaneEvents: false, exportPageBytes: 2 * 1024 * 1024, refusalWindowMs: 60_000 };

export interface AuditEventInput {
  requestId?: string;
  principal: string;
  action: string;
  keyId?: string;
  proposalId?: string;
  /** "ok" or the error code. */
  outcome: string;
  details?: Record<string, unknown>;
}

/**
 * A refusal before the action ran (rate limit, undecodable request, HSM queue full, the caller gone,
 * an identifier refused where the request was first seen). Floods of these are aggregated.
 */
export interface RefusalInput extends AuditEventInput {
  /** Short reason class: RateLimit, MalformedRequest, HsmBusy, Abandoned, InvalidIdentifier. */
  kind: string;
  /** The message the caller was answered with. */
  error: string;
}

// Sizes of a record. Clients choose most of what goes into one, so every part is bounded: an
// oversized value keeps its beginning and says how long it was and what its SHA-256 is.
/** Longest value of a column: RequestId, Principal, Action, KeyId, ProposalId, Outcome. */
export const MAX_AUDIT_COLUMN_CHARS = 256;
/** Longest string inside Details. */
export const MAX_AUDIT_DETAIL_STRING_CHARS = 2048;
/** Longest Details (its canonical JSON); past it, Details is replaced by a bounded summary. */
export const MAX_AUDIT_DETAILS_CHARS = 16 * 1024;
/** Sizes a record is cut to where a listing or an export page cannot hold it whole. */
const TRUNCATED_COLUMN_CHARS = 160;
const TRUNCATED_DETAILS_CHARS = 512;
/**
 * Most bytes a cut-down record takes in an answer: six columns, Details (its quotes escaped once
 * more inside the summary), the two hashes, the time and the field tags.
 */
const TRUNCATED_RECORD_BYTES = 2304;
/** Open refusal windows; beyond this, new principals share one window per action and reason. */
const MAX_REFUSAL_WINDOWS = 1024;

function sha256Hex(s: string): string {
  return crypto.createHash('sha256').update(s, 'utf8').digest('hex');
}

/**
 * The string itself when it has at most `max` characters, else its beginning followed by
 * "...[truncated: N bytes, sha256 H]" (N and H of its UTF-8 encoding), `max` characters in all.
 */
export function boundString(s: string, max: number): string {
  if (s.length <= max) return s;
  const marker = `...[truncated: ${Buffer.byteLength(s, 'utf8')} bytes, sha256 ${sha256Hex(s)}]`;
  let head = s.slice(0, Math.max(0, max - marker.length));
  // Never end on half a surrogate pair: SQLite would store U+FFFD and the hash would no longer match.
  if (/[\ud800-\udbff]$/.test(head)) head = head.slice(0, -1);
  return head + marker;
}

function boundValue(v: unknown, depth = 0): unknown {
  if (typeof v === 'string') return boundString(v, MAX_AUDIT_DETAIL_STRING_CHARS);
  if (v === null || typeof v !== 'object') return v;
  if (depth > 8) return boundString(JSON.stringify(v) ?? '', MAX_AUDIT_DETAIL_STRING_CHARS);
  if (Array.isArray(v)) return v.map((x) => boundValue(x, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v as Record<string, unknown>)) out[boundString(k, MAX_AUDIT_COLUMN_CHARS)] = boundValue(x, depth + 1);
  return out;
}

/** Details as stored: every string bounded, and the whole bounded (a summary when it is still too long). */
export function boundDetails(details: Record<string, unknown>): string {
  const json = canonicalJson(boundValue(details));
  if (json.length <= MAX_AUDIT_DETAILS_CHARS) return json;
  return canonicalJson({ DetailsTruncated: boundString(json, MAX_AUDIT_DETAIL_STRING_CHARS) });
}

/**
 * A record cut down to a few KiB for a listing or an export page that cannot hold it whole (one an
 * older kmsd wrote unbounded). Hash and PrevHash stay, so the chain can still be followed; the
 * flag says its contents cannot be checked against Hash.
 */
export function truncatedRecord(r: AuditRecord): AuditRecord & { Truncated: true } {
  // Printable ASCII only, so the cut-down record's size in bytes is bounded too.
  const view = (s: string, max: number) => boundString(s, max).replace(/[^\x20-\x7e]/g, '?');
  const col = (s: string) => view(s, TRUNCATED_COLUMN_CHARS);
  const plain = r.Details.length <= TRUNCATED_DETAILS_CHARS && /^[\x20-\x7e]*$/.test(r.Details);
  return {
    ...r,
    RequestId: col(r.RequestId),
    Principal: col(r.Principal),
    Action: col(r.Action),
    KeyId: col(r.KeyId),
    ProposalId: col(r.ProposalId),
    Outcome: col(r.Outcome),
    Details: plain ? r.Details : canonicalJson({ DetailsTruncated: view(r.Details, TRUNCATED_DETAILS_CHARS - 32) }),
    Truncated: true,
  };
}

/** Parameters recorded verbatim: identifiers and settings, never data or material. */
const PLAIN_PARAMS = new Set([
  'KeyId',
  // The external key store proxy: where a call came from in AWS (the spec's requestMetadata).
  'UriPathPrefix',
  'ExternalKeyId',
  'Operations',
  'AwsPrincipalArn',
  'AwsSourceVpc',
  'AwsSourceVpce',
  'KmsKeyArn',
  'KmsOperation',
  'KmsRequestId',
  'KmsViaService',
  'Principal',
  'AccessKeyId',
  'Status',
  'AliasName',
  'Origin',
  'KeySpec',
  'KeyUsage',
  'ProtectionLevel',
  'Description',
  'EnableAutomaticRotation',
  'RotationInterval',
  'PendingWindowInDays',
  'KeyVersionId',
  'WrappingAlgorithm',
  'WrappingKeySpec',
  'KeyMaterialExpireUnix',
  'DestinationKeyId',
  'NumberOfBytes',
  'PageNumber',
  'PageSize',
  'ProposalId',
  'CustodianId',
  'Action',
  'Requester',
  'ExpiresInSeconds',
  'Threshold',
  'State',
  'AfterSeq',
  'UpToSeq',
]);
/** Parameters recorded only as SHA-256 (of the string as sent). */
const HASHED_PARAMS = new Set(['EncryptedKeyMaterial', 'ImportToken', 'Signature', 'CiphertextBlob']);

/** ARNs are recorded whole (up to 2,048 characters, the longest AWS makes). */
const LONG_PARAMS = new Set(['AwsPrincipalArn', 'KmsKeyArn']);

export function safeParams(req: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (!req || typeof req !== 'object') return out;
  for (const [k, val] of Object.entries(req as Record<string, unknown>)) {
    if (val === undefined || val === null || val === '' || (typeof val === 'number' && val === 0 && k !== 'KeyMaterialExpireUnix')) continue;
    if (PLAIN_PARAMS.has(k) && (typeof val === 'string' || typeof val === 'number' || typeof val === 'boolean')) {
      out[k] = typeof val === 'string' ? boundString(val, LONG_PARAMS.has(k) ? 2048 : 512) : val;
    } else if (HASHED_PARAMS.has(k) && typeof val === 'string') {
      out[`${k}Sha256`] = crypto.createHash('sha256').update(val, 'utf8').digest('hex');
    }
  }
  return out;
}

/** Bytes a record takes in a ListAuditEvents answer: its strings and the field tags. */
function answerBytes(r: AuditRecord): number {
  let n = 64;
  for (const s of [r.Time, r.RequestId, r.Principal, r.Action, r.KeyId, r.ProposalId, r.Outcome, r.Details, r.PrevHash, r.Hash]) n += Buffer.byteLength(s, 'utf8');
  return n;
}

/** An audit row as hashed, listed and exported (also what `kmsd migrate` re-hashes). */
export function toRecord(r: AuditRow): AuditRecord {
  return {
    Seq: r.seq,
    Time: isoMs(r.time),
    RequestId: r.request_id,
    Principal: r.principal,
    Action: r.action,
    KeyId: r.key_id,
    ProposalId: r.proposal_id,
    Outcome: r.outcome,
    Details: r.details,
    PrevHash: r.prev_hash,
    Hash: r.hash,
  };
}

interface Counter {
  ok: number;
  errors: number;
  first: number;
  last: number;
}

/** Refusals of one (principal, action, outcome, kind) since the record that opened the window. */
interface RefusalWindow {
  opened: number;
  /** Refusals after the first (which was recorded when the window opened). */
  count: number;
  first: number;
  last: number;
  ev: RefusalInput;
}

export class AuditLog {
  /**
   * The head of the chain as this process last appended or read it. Each append reads the table's
   * head in its transaction (another replica may have appended further); when the table's head is
   * not further than this one (its tail deleted or rewritten behind this process's back), the next
   * record still links to the head this process knows, so the change stays visible to VerifyAudit.
   */
  private headSeq: number;
  private headHash: string;
  /** False after a rollback: the head kept here may be one that was rolled back. */
  private headKnown = false;
  private lastCheckpointAt: number;
  private lastCheckpointSeq: number;
  private readonly pending = new Map<string, Counter>();
  private readonly refusals = new Map<string, RefusalWindow>();
  /**
   * The CMK id a KeyId as typed stands for (an alias, a CMK id in another case), when that CMK
   * exists; set by the composition root, which knows the store. Records and counters carry it.
   */
  resolveKeyId: (ref: string, tx?: StoreTx) => Promise<string | undefined> = async () => undefined;
  readonly publicKey: crypto.KeyObject;
  readonly publicKeyPem: string;
  readonly publicKeyFingerprint: string;

  constructor(
    private readonly store: Store,
    private readonly signer: AuditSigner,
    readonly instanceId: string,
    readonly config: AuditConfig,
    private readonly now: () => number = Date.now,
  ) {
    const der = signer.publicKeyDer();
    this.publicKey = crypto.createPublicKey({ key: der, format: 'der', type: 'spki' });
    this.publicKeyPem = this.publicKey.export({ type: 'spki', format: 'pem' }) as string;
    this.publicKeyFingerprint = crypto.createHash('sha256').update(der).digest('hex');
    this.headSeq = 0;
    this.headHash = GENESIS_HASH;
    this.lastCheckpointSeq = 0;
    this.lastCheckpointAt = 0;
    // A record inserted in a transaction that was then rolled back is not in the chain: the next
    // record must link to what the table holds.
    store.onRollback(() => {
      this.headKnown = false;
    });
  }

  /** Reads the head of the chain and the last checkpoint (before the first record; after a rollback). */
  async init(): Promise<this> {
    await this.readHead(this.store);
    return this;
  }

  /** The head of the chain and the last checkpoint, as the table holds them. */
  private async readHead(on: Store | StoreTx): Promise<void> {
    const last = await on.audit.last();
    this.headSeq = last?.seq ?? 0;
    this.headHash = last?.hash ?? GENESIS_HASH;
    const cp = await on.audit.lastOfAction(CHECKPOINT_ACTION);
    this.lastCheckpointSeq = cp?.seq ?? 0;
    this.lastCheckpointAt = cp?.time ?? 0;
    this.headKnown = true;
  }

  /** The head to link the next record to, read in the appending transaction (see headSeq). */
  private async linkHead(tx: StoreTx): Promise<void> {
    // The head's lock first, held until the transaction ends: whatever is read after it is the
    // last record committed by any replica, and no other append can come in between.
    const last = await tx.lastAuditForUpdate();
    if (!this.headKnown) {
      await this.readHead(tx);
      return;
    }
    // Only a head further than this process's (another replica appended) is taken from the table: a
    // record this process appended that now reads differently was altered, and the next record
    // links to the one this process wrote, so VerifyAudit names the alteration.
    if (last && last.seq > this.headSeq) {
      this.headSeq = last.seq;
      this.headHash = last.hash;
    }
  }

  // ---------------------------------------------------------------- writing

  /**
   * Appends one record in a transaction of its own; resolves once it is committed, so a returned
   * call is always on the record. For a record of a state change, appendIn inside the transaction
   * of the change instead.
   */
  append(ev: AuditEventInput): Promise<AuditRecord> {
    return this.store.transaction((tx) => this.appendIn(tx, ev));
  }

  /**
   * Appends one record in the caller's transaction: it commits, or rolls back, with whatever else
   * that transaction does. The KeyId column holds the CMK id the caller's KeyId resolves to (or the
   * id itself when it has the form of one); when that differs from what the caller typed,
   * Details.KeyId keeps the typed form. Every part is bounded (MAX_AUDIT_* above).
   */
  async appendIn(tx: StoreTx, ev: AuditEventInput): Promise<AuditRecord> {
    const given = ev.keyId ?? '';
    const keyId = await this.keyIdColumn(given, tx);
    let details = ev.details ?? {};
    if (given !== keyId && details.KeyId === undefined) details = { ...details, KeyId: given };
    const rec = await this.appendRaw(tx, { ...ev, keyId }, boundDetails(details));
    if (rec.Seq - this.lastCheckpointSeq > this.config.checkpointEveryRecords) await this.checkpointIn(tx);
    return rec;
  }

  /**
   * Appends one record in the store's next group transaction, with whatever other calls append
   * meanwhile; resolves once it is committed (the caller answers only then, so an acknowledged call
   * is always on the record). Its place in the chain is taken when the transaction runs, so the
   * chain stays one line whatever mix of grouped and immediate appends there is.
   */
  appendCommitted(ev: AuditEventInput): Promise<AuditRecord> {
    return this.store.grouped((tx) => this.appendIn(tx, ev));
  }

  /** A CMK id, or '' when the reference neither resolves nor has the form of a CMK id. */
  private async keyIdColumn(ref: string, tx: StoreTx): Promise<string> {
    if (!ref || ref.length > v.MAX_IDENTIFIER_CHARS) return '';
    return (await this.resolveKeyId(ref, tx)) ?? (v.isUuid(ref) ? ref : '');
  }

  private async appendRaw(tx: StoreTx, ev: AuditEventInput, details?: string, time = this.now()): Promise<AuditRecord> {
    await this.linkHead(tx);
    const col = (s: string | undefined) => boundString(s ?? '', MAX_AUDIT_COLUMN_CHARS);
    const body: Omit<AuditRecord, 'Hash'> = {
      Seq: this.headSeq + 1,
      Time: isoMs(time),
      RequestId: col(ev.requestId),
      Principal: col(ev.principal),
      Action: col(ev.action),
      KeyId: col(ev.keyId),
      ProposalId: col(ev.proposalId),
      Outcome: col(ev.outcome),
      Details: details ?? boundDetails(ev.details ?? {}),
      PrevHash: this.headHash,
    };
    const hash = recordHash(body);
    await tx.audit.insert({
      seq: body.Seq,
      time,
      request_id: body.RequestId,
      principal: body.Principal,
      action: body.Action,
      key_id: body.KeyId,
      proposal_id: body.ProposalId,
      outcome: body.Outcome,
      details: body.Details,
      prev_hash: body.PrevHash,
      hash,
    });
    this.headSeq = body.Seq;
    this.headHash = hash;
    return { ...body, Hash: hash };
  }

  /** Signs the head of the chain with the token key, as a record of its own. Null when nothing is new. */
  checkpoint(): Promise<AuditRecord | null> {
    return this.store.transaction((tx) => this.checkpointIn(tx));
  }

  /** checkpoint, in the caller's transaction (the token's signature is synchronous: nothing else is awaited). */
  private async checkpointIn(tx: StoreTx): Promise<AuditRecord | null> {
    await this.linkHead(tx);
    if (this.headSeq === this.lastCheckpointSeq) return null;
    const time = this.now();
    const coveredSeq = this.headSeq;
    const coveredHash = this.headHash;
    const signature = this.signer.sign(checkpointBytes({ InstanceId: this.instanceId, CheckpointSeq: coveredSeq, CheckpointHash: coveredHash, Time: isoMs(time) }));
    // The record's Time is the signed Time.
    const rec = await this.appendRaw(
      tx,
      { principal: 'kmsd', action: CHECKPOINT_ACTION, outcome: 'ok' },
      canonicalJson({ CheckpointHash: coveredHash, CheckpointSeq: coveredSeq, Signature: signature.toString('base64') }),
      time,
    );
    this.lastCheckpointSeq = rec.Seq;
    this.lastCheckpointAt = time;
    return rec;
  }

  /**
   * A call refused before its action ran. `aggregate`: the first refusal of a principal, action,
   * outcome and kind is recorded at once (Details.Count 1) and opens a window of refusalWindowMs;
   * the refusals that follow within it become one record when it closes (Details.Count, FirstTime,
   * LastTime), so a flood costs two records per window. Otherwise one record, as for any call.
   */
  async refusal(ev: RefusalInput, aggregate: boolean): Promise<void> {
    const details = { ...(ev.details ?? {}), Refusal: ev.kind, Error: ev.error };
    if (!aggregate) {
      await this.append({ ...ev, details });
      return;
    }
    const now = this.now();
    const principal = boundString(ev.principal, MAX_AUDIT_COLUMN_CHARS);
    let key = JSON.stringify([principal, ev.action, ev.outcome, ev.kind]);
    let w = this.refusals.get(key);
    if (w && now - w.opened >= this.config.refusalWindowMs) {
      await this.closeRefusalWindow(key, w);
      w = undefined;
    }
    if (!w && this.refusals.size >= MAX_REFUSAL_WINDOWS) {
      // Too many distinct principals at once: the rest share one window per action and reason.
      key = JSON.stringify(['*', ev.action, ev.outcome, ev.kind]);
      w = this.refusals.get(key);
      ev = { ...ev, principal: '*' };
    }
    // What a window keeps of a request is bounded too: a flood must not pin what it sent.
    const kept = (): RefusalInput => ({
      principal: boundString(ev.principal, MAX_AUDIT_COLUMN_CHARS),
      action: boundString(ev.action, MAX_AUDIT_COLUMN_CHARS),
      keyId: ev.keyId === undefined ? undefined : boundString(ev.keyId, MAX_AUDIT_COLUMN_CHARS),
      outcome: boundString(ev.outcome, MAX_AUDIT_COLUMN_CHARS),
      kind: ev.kind,
      error: boundString(ev.error, MAX_AUDIT_DETAIL_STRING_CHARS),
      details: boundValue(ev.details ?? {}) as Record<string, unknown>,
    });
    if (w) {
      w.count++;
      if (w.count === 1) w.first = now;
      w.last = now;
      w.ev = kept();
      return;
    }
    // The window opens before the record is awaited: refusals arriving meanwhile are counted in it.
    this.refusals.set(key, { opened: now, count: 0, first: 0, last: 0, ev: kept() });
    await this.append({ ...ev, details: { ...details, Count: 1 } });
  }

  private async closeRefusalWindow(key: string, w: RefusalWindow): Promise<void> {
    this.refusals.delete(key);
    if (w.count === 0) return;
    const { ev } = w;
    // The tally has no single request: the last refusal's message and parameters stand for it.
    await this.append({ principal: ev.principal, action: ev.action, keyId: ev.keyId, outcome: ev.outcome, details: { ...(ev.details ?? {}), Refusal: ev.kind, Error: ev.error, Count: w.count, FirstTime: isoMs(w.first), LastTime: isoMs(w.last) } });
  }

  /** Closes refusal windows older than refusalWindowMs (all of them with `all`). */
  async flushRefusals(all = false): Promise<void> {
    const now = this.now();
    for (const [key, w] of [...this.refusals]) if (all || now - w.opened >= this.config.refusalWindowMs) await this.closeRefusalWindow(key, w);
  }

  /** Scheduler tick: flush counters and refusal tallies; checkpoint when the interval has passed and the log grew. */
  async tick(): Promise<void> {
    await this.flushCounters();
    await this.flushRefusals();
    if (this.headSeq > this.lastCheckpointSeq && this.now() - this.lastCheckpointAt >= this.config.checkpointIntervalMs) await this.checkpoint();
  }

  /** Shutdown: counters to disk and a final checkpoint. */
  async close(): Promise<void> {
    await this.flushCounters();
    await this.flushRefusals(true);
    await this.checkpoint();
  }

  // ---------------------------------------------------------------- data-plane counters

  /**
   * One data-plane call. `keyId` must be the id of an existing CMK (resolved by the caller); calls
   * that named no existing CMK are counted under '' for their principal and action, so no client
   * string ever becomes a row. `calls`: that many alike at once (the items of a batch).
   */
  count(keyId: string, principal: string, action: string, ok: boolean, calls = 1): void {
    const id = keyId.length === 36 && v.isUuid(keyId) ? keyId : '';
    const k = JSON.stringify([id, boundString(principal, MAX_AUDIT_COLUMN_CHARS), action]);
    const now = this.now();
    let c = this.pending.get(k);
    if (!c) {
      c = { ok: 0, errors: 0, first: now, last: now };
      this.pending.set(k, c);
    }
    if (ok) c.ok += calls;
    else c.errors += calls;
    c.last = now;
  }

  async flushCounters(): Promise<void> {
    if (this.pending.size === 0) return;
    const rows: CounterRow[] = [...this.pending].map(([k, c]) => {
      const [key_id, principal, action] = JSON.parse(k) as [string, string, string];
      return { key_id, principal, action, ok: c.ok, errors: c.errors, first_at: c.first, last_at: c.last };
    });
    // Taken before the write is awaited: calls counted meanwhile go to the next flush.
    this.pending.clear();
    await this.store.audit.addCounters(rows);
  }

  // ---------------------------------------------------------------- API

  async ListAuditEvents(req: { PageNumber?: number; PageSize?: number; KeyId?: string; Action?: string; ProposalId?: string }) {
    const page = v.intInRange('PageNumber', req.PageNumber, 1, 1_000_000_000, 1);
    // A page must fit the message limit even when every record on it has to be cut down.
    const maxSize = Math.max(1, Math.min(1000, Math.floor((2 * this.config.exportPageBytes) / TRUNCATED_RECORD_BYTES)));
    if (req.PageSize && Number.isInteger(req.PageSize) && req.PageSize > maxSize && req.PageSize <= 1000) {
      throw invalid('PageSize', `at most ${maxSize} under this daemon's message limit (KMS_MAX_MESSAGE_BYTES)`);
    }
    const size = v.intInRange('PageSize', req.PageSize, 1, 1000, Math.min(50, maxSize));
    const filter = { keyId: req.KeyId || undefined, action: req.Action || undefined, proposalId: req.ProposalId || undefined };
    return {
      Events: this.fitPage((await this.store.audit.page((page - 1) * size, size, filter)).map(toRecord)),
      TotalCount: await this.store.audit.count(filter),
      PageNumber: page,
      PageSize: size,
    };
  }

  /**
   * A listing page within exportPageBytes: records go whole while the rest of the page still fits
   * at their truncated size; a record that does not (one an older kmsd wrote unbounded) is listed
   * truncated, with Truncated set, so no record can make a page unanswerable.
   */
  private fitPage(records: AuditRecord[]): (AuditRecord & { Truncated?: boolean })[] {
    const budget = this.config.exportPageBytes;
    const sizes = records.map(answerBytes);
    // rest[i]: room the records after i need at most, each at its cut-down size.
    const rest = new Array<number>(records.length).fill(0);
    for (let i = records.length - 2; i >= 0; i--) rest[i] = rest[i + 1] + Math.min(sizes[i + 1], TRUNCATED_RECORD_BYTES);
    let used = 0;
    return records.map((rec, i) => {
      if (used + sizes[i] + rest[i] <= budget) {
        used += sizes[i];
        return rec;
      }
      const t = truncatedRecord(rec);
      used += answerBytes(t);
      return t;
    });
  }

  /** Checks the whole chain and every checkpoint signature against the token's key. */
  async VerifyAudit(): Promise<{
    Valid: boolean;
    RecordsChecked: number;
    CheckpointsChecked: number;
    LastCheckpointSeq: number;
    UncheckpointedRecords: number;
    FirstBadSeq: number;
    Problem: string;
    PublicKey: string;
    PublicKeyFingerprint: string;
    InstanceId: string;
  }> {
    if (!this.headKnown) await this.readHead(this.store);
    const store = this.store;
    const records = (async function* () {
      for await (const r of store.audit.iterate()) yield toRecord(r);
    })();
    let verdict: ChainVerdict = await verifyChainAsync(records, this.publicKey, this.instanceId);
    if (verdict.valid && verdict.recordsChecked < this.headSeq) {
      // The daemon appended further than the table now reaches: the tail was cut off.
      verdict = { ...verdict, valid: false, firstBadSeq: verdict.recordsChecked + 1, problem: `records ${verdict.recordsChecked + 1} to ${this.headSeq} are missing: the end of the log was deleted` };
    }
    return {
      Valid: verdict.valid,
      RecordsChecked: verdict.recordsChecked,
      CheckpointsChecked: verdict.checkpointsChecked,
      LastCheckpointSeq: verdict.lastCheckpointSeq,
      UncheckpointedRecords: verdict.uncheckpointed,
      FirstBadSeq: verdict.firstBadSeq,
      Problem: verdict.problem,
      PublicKey: this.publicKeyPem,
      PublicKeyFingerprint: this.publicKeyFingerprint,
      InstanceId: this.instanceId,
    };
  }

  /**
   * One page of an export. The first call (UpToSeq 0) checkpoints the head, so a complete export
   * ends on a signed checkpoint, and fixes the end of the export at it; later calls pass UpToSeq back.
   */
  async ExportAudit(req: { AfterSeq?: number; UpToSeq?: number; MaxRecords?: number }) {
    const after = req.AfterSeq ?? 0;
    if (!Number.isInteger(after) || after < 0) throw invalid('AfterSeq', 'must be a non-negative integer');
    const max = v.intInRange('MaxRecords', req.MaxRecords, 1, 10_000, 1000);
    let upTo = req.UpToSeq ?? 0;
    if (!this.headKnown) await this.readHead(this.store);
    if (!upTo) {
      await this.checkpoint();
      upTo = this.headSeq;
    } else if (!Number.isInteger(upTo) || upTo < 0 || upTo > this.headSeq) {
      throw invalid('UpToSeq', `must be 0 (start a new export) or a sequence number up to ${this.headSeq}`);
    }
    if (after > upTo) throw new KmsError('InvalidParameter', `AfterSeq: must not be beyond UpToSeq ${upTo}`);
    const lines: string[] = [];
    let bytes = 0;
    let next = after;
    for (const row of await this.store.audit.range(after, upTo, max)) {
      const rec = toRecord(row);
      let line = canonicalJson(rec);
      let size = Buffer.byteLength(line, 'utf8');
      // The first line always goes, so every page makes progress; a record too big for a page on
      // its own (one an older kmsd wrote unbounded) goes truncated, flagged Truncated.
      if (lines.length > 0 && bytes + size > this.config.exportPageBytes) break;
      if (size > this.config.exportPageBytes) {
        line = canonicalJson(truncatedRecord(rec));
        size = Buffer.byteLength(line, 'utf8');
      }
      lines.push(line);
      bytes += size;
      next = rec.Seq;
    }
    return {
      Header: canonicalJson({
        Format: 'kmsd-audit-export/v1',
        InstanceId: this.instanceId,
        PublicKey: this.publicKeyPem,
        PublicKeyFingerprint: this.publicKeyFingerprint,
        SignatureAlgorithm: this.publicKey.asymmetricKeyType === 'rsa' ? 'RSASSA-PKCS1-v1_5-SHA256 (base64)' : 'ECDSA-P256-SHA256 (r||s, IEEE P1363, base64)',
        UpToSeq: upTo,
      }),
      Lines: lines,
      NextSeq: next,
      UpToSeq: upTo,
      Complete: next >= upTo,
    };
  }

  async GetUsageCounters(req: { KeyId?: string }) {
    await this.flushCounters();
    return {
      // Bounded on the way out too: rows an older kmsd keyed by whatever the caller sent.
      Counters: (await this.store.audit.counters(req.KeyId || undefined)).map((c) => ({
        KeyId: boundString(c.key_id, MAX_AUDIT_COLUMN_CHARS),
        Principal: boundString(c.principal, MAX_AUDIT_COLUMN_CHARS),
        Action: c.action,
        Count: c.ok,
        Errors: c.errors,
        FirstCallTime: isoMs(c.first_at),
        LastCallTime: isoMs(c.last_at),
      })),
    };
  }
}
