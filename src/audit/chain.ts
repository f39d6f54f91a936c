// The audit chain's format, shared by kmsd (VerifyAudit) and the offline verifier
// (scripts/ceremony/verify-audit-export.ts). Pure functions on plain records; node:crypto only, so an
// auditor can read and run this file on its own.
//
// A record's hash is SHA-256 over "kmsd-audit-record/v1\n" + the canonical JSON (keys sorted, no
// whitespace) of its fields, PrevHash included and Hash excluded. The first record's PrevHash is 64
// zeros. A checkpoint is itself a record (Action "AuditCheckpoint") whose Details carry
// {CheckpointSeq, CheckpointHash, Signature}: an ECDSA P-256 signature by a token-resident key
// (r || s, base64) over "kmsd-audit-checkpoint/v1\n" + canonical JSON of
// {CheckpointHash, CheckpointSeq, InstanceId, Time}, where CheckpointSeq is the record just before
// it. Rewriting any record before a checkpoint therefore needs the token.

import crypto from 'node:crypto';

export const GENESIS_HASH = '0'.repeat(64);
export const CHECKPOINT_ACTION = 'AuditCheckpoint';
const RECORD_PREFIX = 'kmsd-audit-record/v1\n';
const CHECKPOINT_PREFIX = 'kmsd-audit-checkpoint/v1\n';

/** A record as hashed, exported and listed. Time is RFC 3339 with milliseconds. */
export interface AuditRecord {
  Seq: number;
  Time: string;
  RequestId: string;
  Principal: string;
  Action: string;
  KeyId: string;
  ProposalId: string;
  Outcome: string;
  /** Canonical JSON text of the details object (hashed as this exact string). */
  Details: string;
  PrevHash: string;
  Hash: string;
  /**
   * Set on a record that a listing or an export page could only carry cut down (one too big for a
   * page): Hash and PrevHash are the record's, its other fields are not, so it cannot be checked.
   * Not part of the hashed record.
   */
  Truncated?: boolean;
}

export interface CheckpointDetails {
  CheckpointSeq: number;
  CheckpointHash: string;
  Signature: string;
}

/** JSON with object keys sorted at every level and no insignificant whitespace. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v === undefined ? null : v)).join(',')}]`;
  const obj = value as Record<string, unknown>;
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`;
}

export function isoMs(ms: number): string {
  return new Date(ms).toISOString();
}

export function recordBytes(r: Omit<AuditRecord, 'Hash'> | AuditRecord): Buffer {
  const { Seq, Time, RequestId, Principal, Action, KeyId, ProposalId, Outcome, Details, PrevHash } = r;
  return Buffer.from(RECORD_PREFIX + canonicalJson({ Seq, Time, RequestId, Principal, Action, KeyId, ProposalId, Outcome, Details, PrevHash }), 'utf8');
}

export function recordHash(r: Omit<AuditRecord, 'Hash'> | AuditRecord): string {
  return crypto.createHash('sha256').update(recordBytes(r)).digest('hex');
}

export function checkpointBytes(c: { InstanceId: string; CheckpointSeq: number; CheckpointHash: string; Time: string }): Buffer {
  return Buffer.from(CHECKPOINT_PREFIX + canonicalJson({ CheckpointHash: c.CheckpointHash, CheckpointSeq: c.CheckpointSeq, InstanceId: c.InstanceId, Time: c.Time }), 'utf8');
}

export function verifyCheckpointSignature(publicKey: crypto.KeyObject, bytes: Buffer, signatureB64: string): boolean {
  try {
    return crypto.verify('sha256', bytes, { key: publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(signatureB64, 'base64'));
  } catch {
    return false;
  }
}

export interface ChainVerdict {
  valid: boolean;
  recordsChecked: number;
  checkpointsChecked: number;
  lastCheckpointSeq: number;
  /** Records after the last checkpoint: chained, but not yet covered by a token signature. */
  uncheckpointed: number;
  firstBadSeq: number;
  problem: string;
  /** Records taken on trust because they arrived Truncated (only with allowTruncated). */
  truncated: number[];
}

/**
 * Walks records in the order given (seq order) and stops at the first problem, naming the record:
 * a gap or reordering of sequence numbers, a broken link to the previous record, contents that do
 * not match the record's hash, or a checkpoint whose signature or hash does not hold.
 *
 * A record flagged Truncated cannot be checked against its hash: it is a problem, unless
 * `allowTruncated`, when its Hash is taken as given (the links before and after it and the
 * checkpoints after it are still checked) and its Seq is listed in `truncated`.
 */
/** The chain check one record at a time: push answers a verdict at the first bad record, end the verdict of all. */
function chainVerifier(publicKey: crypto.KeyObject, instanceId: string, opts: { allowTruncated?: boolean }): { push(r: AuditRecord): ChainVerdict | null; end(): ChainVerdict } {
  const v: ChainVerdict = { valid: true, recordsChecked: 0, checkpointsChecked: 0, lastCheckpointSeq: 0, uncheckpointed: 0, firstBadSeq: 0, problem: '', truncated: [] };
  const bad = (seq: number, problem: string): ChainVerdict => ({ ...v, valid: false, firstBadSeq: seq, problem });
  let expectedSeq = 1;
  let prevHash = GENESIS_HASH;
  const push = (r: AuditRecord): ChainVerdict | null => {
    if (r.Seq !== expectedSeq) {
      if (r.Seq > expectedSeq) {
        return bad(expectedSeq, `record ${expectedSeq} is missing (the next record is ${r.Seq}): records were deleted`);
      }
      return bad(r.Seq, `record ${r.Seq} appears after record ${expectedSeq - 1}: records were reordered or duplicated`);
    }
    if (r.PrevHash !== prevHash) {
      return bad(r.Seq, `record ${r.Seq} does not link to record ${r.Seq - 1} (PrevHash differs): a record was removed, inserted, reordered or rewritten here`);
    }
    if (r.Truncated === true) {
      if (!opts.allowTruncated) {
        return bad(r.Seq, `record ${r.Seq} was truncated in the export (too big for a page), so its contents cannot be checked; export with a larger message limit, or accept it unchecked with --allow-truncated`);
      }
      if (r.Action === CHECKPOINT_ACTION) return bad(r.Seq, `checkpoint record ${r.Seq} was truncated in the export`);
      v.truncated.push(r.Seq);
    } else if (recordHash(r) !== r.Hash) {
      return bad(r.Seq, `record ${r.Seq} does not match its hash: its contents were edited`);
    }
    if (r.Action === CHECKPOINT_ACTION) {
      let d: CheckpointDetails;
      try {
        d = JSON.parse(r.Details) as CheckpointDetails;
      } catch {
        return bad(r.Seq, `checkpoint record ${r.Seq} has unreadable details`);
      }
      if (d.CheckpointSeq !== r.Seq - 1 || d.CheckpointHash !== prevHash) {
        return bad(r.Seq, `checkpoint record ${r.Seq} does not cover the record before it`);
      }
      if (!verifyCheckpointSignature(publicKey, checkpointBytes({ InstanceId: instanceId, CheckpointSeq: d.CheckpointSeq, CheckpointHash: d.CheckpointHash, Time: r.Time }), d.Signature)) {
        return bad(r.Seq, `checkpoint record ${r.Seq} has no valid signature by the token's audit key (instance ${instanceId}): the log up to it was rewritten`);
      }
      v.checkpointsChecked++;
      v.lastCheckpointSeq = r.Seq;
    }
    prevHash = r.Hash;
    expectedSeq++;
    v.recordsChecked++;
    return null;
  };
  const end = (): ChainVerdict => {
    v.uncheckpointed = v.recordsChecked - v.lastCheckpointSeq;
    return v;
  };
  return { push, end };
}

export function verifyChain(records: Iterable<AuditRecord>, publicKey: crypto.KeyObject, instanceId: string, opts: { allowTruncated?: boolean } = {}): ChainVerdict {
  const c = chainVerifier(publicKey, instanceId, opts);
  for (const r of records) {
    const bad = c.push(r);
    if (bad) return bad;
  }
  return c.end();
}

/** verifyChain over records read a page at a time (a long log is never loaded whole). */
export async function verifyChainAsync(records: AsyncIterable<AuditRecord>, publicKey: crypto.KeyObject, instanceId: string, opts: { allowTruncated?: boolean } = {}): Promise<ChainVerdict> {
  const c = chainVerifier(publicKey, instanceId, opts);
  for await (const r of records) {
    const bad = c.push(r);
    if (bad) return bad;
  }
  return c.end();
}
