// The audit chain format (src/audit/chain.ts), shared by VerifyAudit and the offline verifier.

import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AuditRecord, CHECKPOINT_ACTION, GENESIS_HASH, canonicalJson, checkpointBytes, recordHash, verifyChain } from '../../src/audit/chain';

const { publicKey, privateKey } = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const INSTANCE = 'test-instance';

function chain(n: number, checkpointAt: number[] = []): AuditRecord[] {
  const out: AuditRecord[] = [];
  let prev = GENESIS_HASH;
  for (let seq = 1; seq <= n; seq++) {
    const time = new Date(1_700_000_000_000 + seq * 1000).toISOString();
    let action = 'CreateKey';
    let details = canonicalJson({ KeyId: `k${seq}` });
    if (checkpointAt.includes(seq)) {
      action = CHECKPOINT_ACTION;
      const sig = crypto.sign('sha256', checkpointBytes({ InstanceId: INSTANCE, CheckpointSeq: seq - 1, CheckpointHash: prev, Time: time }), { key: privateKey, dsaEncoding: 'ieee-p1363' });
      details = canonicalJson({ CheckpointHash: prev, CheckpointSeq: seq - 1, Signature: sig.toString('base64') });
    }
    const body = { Seq: seq, Time: time, RequestId: `r${seq}`, Principal: '127.0.0.1:1', Action: action, KeyId: '', ProposalId: '', Outcome: 'ok', Details: details, PrevHash: prev };
    const rec = { ...body, Hash: recordHash(body) };
    out.push(rec);
    prev = rec.Hash;
  }
  return out;
}

describe('audit chain', () => {
  it('canonical JSON sorts keys at every level', () => {
    expect(canonicalJson({ b: 1, a: { d: [2, { z: 1, y: 2 }], c: 'x' } })).toBe('{"a":{"c":"x","d":[2,{"y":2,"z":1}]},"b":1}');
  });

  it('accepts an intact chain and counts checkpoints', () => {
    const v = verifyChain(chain(10, [5, 10]), publicKey, INSTANCE);
    expect(v).toMatchObject({ valid: true, recordsChecked: 10, checkpointsChecked: 2, lastCheckpointSeq: 10, uncheckpointed: 0 });
  });

  it('names an edited, a deleted, a reordered record and a forged checkpoint', () => {
    const edited = chain(8, [8]);
    edited[3] = { ...edited[3], Outcome: 'InternalFailure' };
    expect(verifyChain(edited, publicKey, INSTANCE)).toMatchObject({ valid: false, firstBadSeq: 4 });

    const deleted = chain(8, [8]);
    deleted.splice(2, 1);
    expect(verifyChain(deleted, publicKey, INSTANCE)).toMatchObject({ valid: false, firstBadSeq: 3 });

    const swapped = chain(8, [8]);
    [swapped[4], swapped[5]] = [swapped[5], swapped[4]];
    expect(verifyChain(swapped, publicKey, INSTANCE).firstBadSeq).toBe(5);

    // Rewritten and re-hashed to the end: the checkpoint's signature no longer holds.
    const rewritten = chain(8, [8]);
    let prev = rewritten[1].Hash;
    for (let i = 2; i < 8; i++) {
      const body = { ...rewritten[i], PrevHash: prev, Outcome: i === 2 ? 'forged' : rewritten[i].Outcome };
      if (i === 7) {
        const d = JSON.parse(body.Details);
        body.Details = canonicalJson({ ...d, CheckpointHash: prev });
      }
      rewritten[i] = { ...body, Hash: recordHash(body) };
      prev = rewritten[i].Hash;
    }
    const v = verifyChain(rewritten, publicKey, INSTANCE);
    expect(v).toMatchObject({ valid: false, firstBadSeq: 8 });
    expect(v.problem).toMatch(/signature/);

    // Another daemon's key, or another instance id, does not verify the checkpoints.
    expect(verifyChain(chain(4, [4]), crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey, INSTANCE).valid).toBe(false);
    expect(verifyChain(chain(4, [4]), publicKey, 'other-instance').valid).toBe(false);
  });
});
