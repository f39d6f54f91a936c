// The audit trail: every control-plane action, every proposal event and every host-assisted unwrap
// is one record in an append-only SQLite table, each carrying the hash of the one before it
// (src/audit/chain.ts), with periodic checkpoints signed by an ECDSA P-256 key that lives in the
// token. Data-plane calls (Encrypt, Decrypt, ...) are counted per CMK, principal and action instead
// of logged one by one, unless KMS_AUDIT_DATA_PLANE=1.
//
// Details never carry secrets: a fixed list of parameters is recorded as given, a second list
// (wrapped material, import tokens, signatures, ciphertexts) only as SHA-256, and the rest not at all.

import crypto from 'node:crypto';
import { AuditRow, AuditStore, CounterRow } from '../store/audit-store';
import { KmsError, invalid } from '../kms/errors';
import * as v from '../kms/validate';
import { AuditRecord, CHECKPOINT_ACTION, ChainVerdict, GENESIS_HASH, canonicalJson, checkpointBytes, isoMs, recordHash, verifyChain } from './chain';

export interface AuditSigner {
  /** DER SubjectPublicKeyInfo of the checkpoint key. */
  publicKeyDer(): Buffer;
  /** ECDSA P-256 / SHA-256 signature, r || s. */
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
}

export const DEFAULT_AUDIT_CONFIG: AuditConfig = { checkpointEveryRecords: 256, checkpointIntervalMs: 60_000, dataPlaneEvents: false, exportPageBytes: 2 * 1024 * 1024 };

export function auditConfigFromEnv(env: NodeJS.ProcessEnv): AuditConfig {
  const int = (name: string, dflt: number, min: number, max: number) => {
    const raw = env[name];
    if (raw === undefined || raw === '') return dflt;
    const n = Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${name} must be an integer from ${min} to ${max} (got ${raw})`);
    return n;
  };
  return {
    checkpointEveryRecords: int('KMS_AUDIT_CHECKPOINT_RECORDS', DEFAULT_AUDIT_CONFIG.checkpointEveryRecords, 1, 1_000_000),
    checkpointIntervalMs: int('KMS_AUDIT_CHECKPOINT_SECONDS', DEFAULT_AUDIT_CONFIG.checkpointIntervalMs / 1000, 1, 86400) * 1000,
    dataPlaneEvents: env.KMS_AUDIT_DATA_PLANE === '1' || env.KMS_AUDIT_DATA_PLANE === 'true',
    exportPageBytes: DEFAULT_AUDIT_CONFIG.exportPageBytes,
  };
}

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
      const max = LONG_PARAMS.has(k) ? 2048 : 512;
      out[k] = typeof val === 'string' && val.length > max ? `${val.slice(0, max - 3)}...` : val;
    } else if (HASHED_PARAMS.has(k) && typeof val === 'string') {
      out[`${k}Sha256`] = crypto.createHash('sha256').update(val, 'utf8').digest('hex');
    }
  }
  return out;
}

function toRecord(r: AuditRow): AuditRecord {
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

export class AuditLog {
  private headSeq: number;
  private headHash: string;
  private lastCheckpointAt: number;
  private lastCheckpointSeq: number;
  private readonly pending = new Map<string, Counter>();
  readonly publicKey: crypto.KeyObject;
  readonly publicKeyPem: string;
  readonly publicKeyFingerprint: string;

  constructor(
    private readonly store: AuditStore,
    private readonly signer: AuditSigner,
    readonly instanceId: string,
    readonly config: AuditConfig,
    private readonly now: () => number = Date.now,
  ) {
    const der = signer.publicKeyDer();
    this.publicKey = crypto.createPublicKey({ key: der, format: 'der', type: 'spki' });
    this.publicKeyPem = this.publicKey.export({ type: 'spki', format: 'pem' }) as string;
    this.publicKeyFingerprint = crypto.createHash('sha256').update(der).digest('hex');
    const last = store.last();
    this.headSeq = last?.seq ?? 0;
    this.headHash = last?.hash ?? GENESIS_HASH;
    const cp = store.lastOfAction(CHECKPOINT_ACTION);
    this.lastCheckpointSeq = cp?.seq ?? 0;
    this.lastCheckpointAt = cp?.time ?? 0;
  }

  // ---------------------------------------------------------------- writing

  /** Appends one record (synchronously committed, so a returned call is always on the record). */
  append(ev: AuditEventInput): AuditRecord {
    const rec = this.appendRaw(ev);
    if (rec.Seq - this.lastCheckpointSeq > this.config.checkpointEveryRecords) this.checkpoint();
    return rec;
  }

  private appendRaw(ev: AuditEventInput, details?: string, time = this.now()): AuditRecord {
    const body: Omit<AuditRecord, 'Hash'> = {
      Seq: this.headSeq + 1,
      Time: isoMs(time),
      RequestId: ev.requestId ?? '',
      Principal: ev.principal,
      Action: ev.action,
      KeyId: ev.keyId ?? '',
      ProposalId: ev.proposalId ?? '',
      Outcome: ev.outcome,
      Details: details ?? canonicalJson(ev.details ?? {}),
      PrevHash: this.headHash,
    };
    const hash = recordHash(body);
    this.store.insert({
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
  checkpoint(): AuditRecord | null {
    if (this.headSeq === this.lastCheckpointSeq) return null;
    const time = this.now();
    const coveredSeq = this.headSeq;
    const coveredHash = this.headHash;
    const signature = this.signer.sign(checkpointBytes({ InstanceId: this.instanceId, CheckpointSeq: coveredSeq, CheckpointHash: coveredHash, Time: isoMs(time) }));
    // The record's Time is the signed Time.
    const rec = this.appendRaw(
      { principal: 'kmsd', action: CHECKPOINT_ACTION, outcome: 'ok' },
      canonicalJson({ CheckpointHash: coveredHash, CheckpointSeq: coveredSeq, Signature: signature.toString('base64') }),
      time,
    );
    this.lastCheckpointSeq = rec.Seq;
    this.lastCheckpointAt = time;
    return rec;
  }

  /** Scheduler tick: flush counters; checkpoint when the interval has passed and the log grew. */
  tick(): void {
    this.flushCounters();
    if (this.headSeq > this.lastCheckpointSeq && this.now() - this.lastCheckpointAt >= this.config.checkpointIntervalMs) this.checkpoint();
  }

  /** Shutdown: counters to disk and a final checkpoint. */
  close(): void {
    this.flushCounters();
    this.checkpoint();
  }

  // ---------------------------------------------------------------- data-plane counters

  count(keyId: string, principal: string, action: string, ok: boolean): void {
    const k = JSON.stringify([keyId, principal, action]);
    const now = this.now();
    let c = this.pending.get(k);
    if (!c) {
      c = { ok: 0, errors: 0, first: now, last: now };
      this.pending.set(k, c);
    }
    if (ok) c.ok++;
    else c.errors++;
    c.last = now;
  }

  flushCounters(): void {
    if (this.pending.size === 0) return;
    const rows: CounterRow[] = [...this.pending].map(([k, c]) => {
      const [key_id, principal, action] = JSON.parse(k) as [string, string, string];
      return { key_id, principal, action, ok: c.ok, errors: c.errors, first_at: c.first, last_at: c.last };
    });
    this.store.addCounters(rows);
    this.pending.clear();
  }

  // ---------------------------------------------------------------- API

  ListAuditEvents(req: { PageNumber?: number; PageSize?: number; KeyId?: string; Action?: string; ProposalId?: string }) {
    const page = v.intInRange('PageNumber', req.PageNumber, 1, 1_000_000_000, 1);
    const size = v.intInRange('PageSize', req.PageSize, 1, 1000, 50);
    const filter = { keyId: req.KeyId || undefined, action: req.Action || undefined, proposalId: req.ProposalId || undefined };
    return {
      Events: this.store.page((page - 1) * size, size, filter).map(toRecord),
      TotalCount: this.store.count(filter),
      PageNumber: page,
      PageSize: size,
    };
  }

  /** Checks the whole chain and every checkpoint signature against the token's key. */
  VerifyAudit(): {
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
  } {
    const store = this.store;
    const records = (function* () {
      for (const r of store.iterate()) yield toRecord(r);
    })();
    let verdict: ChainVerdict = verifyChain(records, this.publicKey, this.instanceId);
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
  ExportAudit(req: { AfterSeq?: number; UpToSeq?: number; MaxRecords?: number }) {
    const after = req.AfterSeq ?? 0;
    if (!Number.isInteger(after) || after < 0) throw invalid('AfterSeq', 'must be a non-negative integer');
    const max = v.intInRange('MaxRecords', req.MaxRecords, 1, 10_000, 1000);
    let upTo = req.UpToSeq ?? 0;
    if (!upTo) {
      this.checkpoint();
      upTo = this.headSeq;
    } else if (!Number.isInteger(upTo) || upTo < 0 || upTo > this.headSeq) {
      throw invalid('UpToSeq', `must be 0 (start a new export) or a sequence number up to ${this.headSeq}`);
    }
    if (after > upTo) throw new KmsError('InvalidParameter', `AfterSeq: must not be beyond UpToSeq ${upTo}`);
    const lines: string[] = [];
    let bytes = 0;
    let next = after;
    for (const row of this.store.range(after, upTo, max)) {
      const rec = toRecord(row);
      const line = canonicalJson(rec);
      // The first line always goes, so every page makes progress.
      if (lines.length > 0 && bytes + line.length > this.config.exportPageBytes) break;
      lines.push(line);
      bytes += line.length;
      next = rec.Seq;
    }
    return {
      Header: canonicalJson({
        Format: 'kmsd-audit-export/v1',
        InstanceId: this.instanceId,
        PublicKey: this.publicKeyPem,
        PublicKeyFingerprint: this.publicKeyFingerprint,
        SignatureAlgorithm: 'ECDSA-P256-SHA256 (r||s, IEEE P1363, base64)',
        UpToSeq: upTo,
      }),
      Lines: lines,
      NextSeq: next,
      UpToSeq: upTo,
      Complete: next >= upTo,
    };
  }

  GetUsageCounters(req: { KeyId?: string }) {
    this.flushCounters();
    return {
      Counters: this.store.counters(req.KeyId || undefined).map((c) => ({
        KeyId: c.key_id,
        Principal: c.principal,
        Action: c.action,
        Count: c.ok,
        Errors: c.errors,
        FirstCallTime: isoMs(c.first_at),
        LastCallTime: isoMs(c.last_at),
      })),
    };
  }
}
