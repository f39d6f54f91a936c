// verify-audit-export: checks a file written by `kmsctl ExportAudit --OutputFile FILE` offline:
// every record's hash and link, and every checkpoint's ECDSA P-256 signature by the token's audit
// key, and that the export ends on a signed checkpoint. Needs only Node (node:crypto); no kmsd, no
// token. Pin the key with --public-key (the PEM from VerifyAudit / DescribeCeremony at install time,
// compared by fingerprint), or at least compare the printed fingerprint with a trusted copy.
//
// A record the export carries truncated (flag Truncated: too big for a page) fails the check, or,
// with --allow-truncated, is taken on trust and listed in TruncatedRecords.
//
// usage: node dist/scripts/ceremony/verify-audit-export.js EXPORT.jsonl [--public-key KEY.pem] [--allow-truncated]
// exit 0: valid; 1: invalid (the first bad record is named); 2: usage or unreadable file.

import fs from 'node:fs';
import crypto from 'node:crypto';
import { AuditRecord, CHECKPOINT_ACTION, verifyChain } from '../../src/audit/chain';

function fail(code: number, msg: string): never {
  process.stderr.write(`verify-audit-export: ${msg}\n`);
  process.exit(code);
}

export function verifyExport(text: string, pinnedPem?: string, opts: { allowTruncated?: boolean } = {}) {
  const lines = text.split('\n').filter((l) => l.trim());
  if (lines.length === 0) throw new Error('empty export');
  const header = JSON.parse(lines[0]) as { Format: string; InstanceId: string; PublicKey: string; PublicKeyFingerprint: string; UpToSeq: number };
  if (header.Format !== 'kmsd-audit-export/v1') throw new Error('not a kmsd audit export (Format)');
  const key = crypto.createPublicKey(header.PublicKey);
  const fingerprint = crypto.createHash('sha256').update(key.export({ type: 'spki', format: 'der' })).digest('hex');
  if (pinnedPem) {
    const pinned = crypto.createHash('sha256').update(crypto.createPublicKey(pinnedPem).export({ type: 'spki', format: 'der' })).digest('hex');
    if (pinned !== fingerprint) return { valid: false, fingerprint, firstBadSeq: 0, problem: `the export's public key (sha256 ${fingerprint}) is not the pinned key (sha256 ${pinned})`, records: 0, checkpoints: 0, truncated: [] as number[] };
  }
  const records = lines.slice(1).map((l, i) => {
    try {
      return JSON.parse(l) as AuditRecord;
    } catch {
      throw new Error(`line ${i + 2} is not JSON`);
    }
  });
  const v = verifyChain(records, key, header.InstanceId, opts);
  let { valid, problem, firstBadSeq } = v;
  if (valid) {
    const last = records[records.length - 1];
    if (!last || last.Action !== CHECKPOINT_ACTION) {
      valid = false;
      firstBadSeq = (last?.Seq ?? 0) + 1;
      problem = 'the export does not end on a signed checkpoint: its end may have been cut off';
    } else if (last.Seq !== header.UpToSeq) {
      valid = false;
      firstBadSeq = last.Seq + 1;
      problem = `the export ends at record ${last.Seq}, but its header says ${header.UpToSeq}: records were cut off`;
    }
  }
  return { valid, fingerprint, firstBadSeq, problem, records: v.recordsChecked, checkpoints: v.checkpointsChecked, instanceId: header.InstanceId, truncated: v.truncated };
}

if (require.main === module) {
  const args = process.argv.slice(2);
  const ki = args.indexOf('--public-key');
  let pinned: string | undefined;
  if (ki >= 0) {
    if (!args[ki + 1]) fail(2, '--public-key needs a file');
    try {
      pinned = fs.readFileSync(args[ki + 1], 'utf8');
    } catch {
      fail(2, `cannot read ${args[ki + 1]}`);
    }
    args.splice(ki, 2);
  }
  const ti = args.indexOf('--allow-truncated');
  if (ti >= 0) args.splice(ti, 1);
  if (args.length !== 1) fail(2, 'usage: verify-audit-export EXPORT.jsonl [--public-key KEY.pem] [--allow-truncated]');
  let text = '';
  try {
    text = fs.readFileSync(args[0], 'utf8');
  } catch {
    fail(2, `cannot read ${args[0]}`);
  }
  let r;
  try {
    r = verifyExport(text, pinned, { allowTruncated: ti >= 0 });
  } catch (e) {
    fail(1, `invalid export: ${(e as Error).message}`);
  }
  process.stdout.write(JSON.stringify({ Valid: r.valid, Records: r.records, Checkpoints: r.checkpoints, FirstBadSeq: r.firstBadSeq, Problem: r.problem, PublicKeyFingerprint: r.fingerprint, TruncatedRecords: r.truncated }, null, 2) + '\n');
  process.exit(r.valid ? 0 : 1);
}
