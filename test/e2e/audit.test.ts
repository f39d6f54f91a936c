// Issue 5 acceptance: the hash-chained audit trail with token-signed checkpoints. Records are
// tampered with directly in the daemon's store, its SQLite file or its PostgreSQL database (as
// someone with the disk or the database owner's role would), and
// VerifyAudit must name the record; an export verifies offline with only the exported public key.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, listTokenObjects, makeTempDir } from '../helpers/daemon';
import { openAuditLog, type AuditLogAccess } from '../helpers/audit-log';
import { client, prepareDataDir, refused, startCeremonyDaemon, SCRIPTS } from '../helpers/ceremony';
import type { KmsdClient } from '../../src/client/kmsd-client';
import { recordHash, isoMs } from '../../src/audit/chain';
import { spawnSync } from 'node:child_process';
import { within } from '../helpers/poll';

/* eslint-disable @typescript-eslint/no-explicit-any */
type J = Record<string, any>;

let k: Kmsd;
let c: KmsdClient;
let dataDir: string;
let dir: string;
let db: AuditLogAccess | undefined;

async function verify(): Promise<J> {
  return c.call('VerifyAudit', {});
}

function verifyOffline(file: string, extra: string[] = []) {
  const r = spawnSync(process.execPath, [path.join(SCRIPTS, 'verify-audit-export.js'), file, ...extra], { encoding: 'utf8' });
  return { code: r.status, json: r.stdout ? JSON.parse(r.stdout) : undefined, stderr: r.stderr };
}

beforeAll(async () => {
  dir = makeTempDir('kmsd-audit-files-');
  dataDir = prepareDataDir();
  k = await startCeremonyDaemon({}, dataDir, true);
  c = client(k);
});

afterAll(async () => {
  await db?.close();
  c?.close();
  await k?.stop();
  k?.cleanup();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('audit records', () => {
  it('record who, what, which key, the outcome and the request id of every control-plane call', async () => {
    const keyId = ((await c.call('CreateKey', { ProtectionLevel: 'HSM', Description: 'audited' })) as J).KeyMetadata.KeyId;
    await c.call('DisableKey', { KeyId: keyId });
    const missing = crypto.randomUUID();
    const failed = k.kmsctl(['DescribeKey', '--KeyId', missing]);
    expect(failed.json.Code).toBe('Forbidden.KeyNotFound');

    const all = ((await c.call('ListAuditEvents', { PageSize: 1000 })) as J).Events as J[];
    expect(all[0]).toMatchObject({ Seq: 1, Action: 'DaemonStarted', Principal: 'kmsd' });
    const created = all.find((e) => e.Action === 'CreateKey');
    expect(created).toMatchObject({ KeyId: keyId, Outcome: 'ok' });
    expect(created!.Principal).toMatch(/^(ipv4:)?127\.0\.0\.1:\d+$/);
    expect(created!.RequestId).toMatch(/^[0-9a-f-]{36}$/);
    expect(JSON.parse(created!.Details)).toMatchObject({ ProtectionLevel: 'HSM', Description: 'audited' });
    expect(all.find((e) => e.Action === 'DisableKey')).toMatchObject({ KeyId: keyId, Outcome: 'ok' });
    const refusal = all.find((e) => e.RequestId === failed.json.RequestId);
    expect(refusal).toMatchObject({ Action: 'DescribeKey', KeyId: missing, Outcome: 'Forbidden.KeyNotFound' });
    for (let i = 1; i < all.length; i++) expect(all[i].PrevHash).toBe(all[i - 1].Hash);

    const byKey = (await c.call('ListAuditEvents', { KeyId: keyId, PageSize: 1, PageNumber: 2 })) as J;
    expect(byKey.TotalCount).toBe(2);
    expect(byKey.Events[0].Action).toBe('DisableKey');
  });

  it('count data-plane calls per CMK and principal instead of logging each', async () => {
    const keyId = ((await c.call('CreateKey', {})) as J).KeyMetadata.KeyId;
    const blobs = [];
    for (let i = 0; i < 3; i++) blobs.push((await k.client.encrypt(keyId, Buffer.from(`m${i}`))).CiphertextBlob);
    await k.client.decrypt(blobs[0]);
    await refused(k.client.encrypt(crypto.randomUUID(), Buffer.from('x')) as Promise<unknown>, 'Forbidden.KeyNotFound');
    const counters = ((await c.call('GetUsageCounters', { KeyId: keyId })) as J).Counters as J[];
    expect(counters).toEqual(
      expect.arrayContaining([
        expect.objectContaining({ KeyId: keyId, Principal: '127.0.0.1', Action: 'Encrypt', Count: 3, Errors: 0 }),
        expect.objectContaining({ KeyId: keyId, Principal: '127.0.0.1', Action: 'Decrypt', Count: 1, Errors: 0 }),
      ]),
    );
    const events = ((await c.call('ListAuditEvents', { KeyId: keyId, PageSize: 100 })) as J).Events as J[];
    expect(events.map((e) => e.Action).filter((a) => a === 'Encrypt' || a === 'Decrypt')).toEqual([]);
    expect(events.map((e) => e.Action)).toContain('CreateKey');
  });

  it('count the items of batches and of each stream message per CMK, like the unary calls they stand for', async () => {
    const a = ((await c.call('CreateKey', {})) as J).KeyMetadata.KeyId;
    const b = ((await c.call('CreateKey', {})) as J).KeyMetadata.KeyId;
    const alias = `alias/batch-${crypto.randomUUID().slice(0, 8)}`;
    await c.call('CreateAlias', { AliasName: alias, KeyId: b });
    const pt = Buffer.from('batch item');
    const bad = { '': 'an empty key' }; // refused: EncryptionContext keys must not be empty
    // Three items on a, one refused on b (named by its alias), one on no CMK at all.
    const eb = await k.client.encryptBatch([
      { KeyId: a, Plaintext: pt },
      { KeyId: a, Plaintext: pt },
      { KeyId: alias, Plaintext: pt, EncryptionContext: bad },
      { KeyId: crypto.randomUUID(), Plaintext: pt },
      { KeyId: a, Plaintext: pt },
    ]);
    expect(eb.Results.map((r) => r.Code)).toEqual(['', '', 'InvalidParameter', 'Forbidden.KeyNotFound', '']);
    const db = await k.client.decryptBatch(eb.Results.filter((r) => !r.Code).map((r) => ({ CiphertextBlob: r.CiphertextBlob })));
    expect(db.ErrorCount).toBe(0);
    const es = k.client.openBatchStream('encrypt');
    await Promise.all([es.send([{ KeyId: a, Plaintext: pt }], 'm1'), es.send([{ KeyId: a, Plaintext: pt }, { KeyId: b, Plaintext: pt, EncryptionContext: bad }], 'm2')]);
    await es.end();
    // A batch refused as a whole is one error under no CMK.
    await refused(k.client.call('EncryptBatch', { Items: [] }) as Promise<unknown>, 'InvalidParameter');

    const counters = ((await c.call('GetUsageCounters', {})) as J).Counters as J[];
    const of = (keyId: string, action: string) => counters.find((x) => x.KeyId === keyId && x.Action === action && x.Principal === '127.0.0.1');
    expect(of(a, 'EncryptBatch')).toMatchObject({ Count: 3, Errors: 0 });
    expect(of(b, 'EncryptBatch')).toMatchObject({ Count: 0, Errors: 1 });
    expect(of(a, 'DecryptBatch')).toMatchObject({ Count: 3, Errors: 0 });
    expect(of(a, 'EncryptStream')).toMatchObject({ Count: 2, Errors: 0 });
    expect(of(b, 'EncryptStream')).toMatchObject({ Count: 0, Errors: 1 });
    expect(of('', 'EncryptBatch')).toMatchObject({ Errors: expect.any(Number) });
    expect(of('', 'EncryptBatch')!.Errors).toBeGreaterThanOrEqual(2); // the unknown CMK's item and the empty batch
    // No record per batch or per message; the chain still verifies.
    const events = ((await c.call('ListAuditEvents', { PageSize: 1000 })) as J).Events as J[];
    expect(events.map((e) => e.Action).filter((x) => /Batch|Stream/.test(x))).toEqual([]);
    expect((await verify()).Valid).toBe(true);
  });

  it('record every host-assisted unwrap', async () => {
    const keyId = ((await c.call('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })) as J).KeyMetadata.KeyId;
    const p = (await c.call('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' })) as J;
    const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
    const ekm = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, crypto.randomBytes(32));
    await c.call('ImportKeyMaterial', { KeyId: keyId, EncryptedKeyMaterial: ekm.toString('base64'), ImportToken: p.ImportToken });
    const path_ = ((await c.call('DescribeKey', { KeyId: keyId })) as J).KeyMetadata.MaterialImportPath as string;
    const events = ((await c.call('ListAuditEvents', { KeyId: keyId, Action: 'HostAssistedUnwrap' })) as J).Events as J[];
    if (path_.includes('host-assisted')) {
      expect(events).toHaveLength(1);
      expect(JSON.parse(events[0].Details)).toEqual({ MaterialImportPath: path_ });
    } else {
      expect(events).toHaveLength(0); // the token did OAEP-SHA-256 itself: nothing was unwrapped on the host
    }
  });
});

describe('VerifyAudit', () => {
  it('accepts the untouched log and checks the token-signed checkpoints', async () => {
    await c.call('ExportAudit', { MaxRecords: 1 }); // forces a checkpoint
    const v = await verify();
    expect(v).toMatchObject({ Valid: true, FirstBadSeq: 0, Problem: '' });
    expect(v.CheckpointsChecked).toBeGreaterThan(0);
    expect(v.PublicKey).toMatch(/BEGIN PUBLIC KEY/);
    // The checkpoint key is an EC key pair in the token whose private half never leaves it.
    const objs = listTokenObjects(k).filter((o) => o.label === 'kmsd:sign:audit-v1');
    const priv = objs.find((o) => o.type.startsWith('Private Key'));
    expect(priv, JSON.stringify(objs)).toBeDefined();
    expect(priv!.raw).toMatch(/EC/);
    expect(priv!.access).toMatch(/never extractable/);
    expect(priv!.access).toMatch(/(^|, )sensitive/);
  });

  it('names an edited, a deleted and a reordered record, and a rewrite that the checkpoint signature exposes', async () => {
    const log = (db = await openAuditLog(dataDir));
    // Someone with the file or the database owner's role drops the append-only triggers first.
    await log.dropAppendOnlyTriggers();
    const target = await log.firstSeqOf('DisableKey');
    const original = await log.row(target);

    // Edited: the outcome of one record.
    await log.setOutcome(target, 'Rejected.QuorumRequired');
    let v = await verify();
    expect(v).toMatchObject({ Valid: false, FirstBadSeq: target });
    expect(v.Problem).toMatch(/edited/);
    await log.put([original]);
    expect((await verify()).Valid).toBe(true);

    // Deleted.
    await log.delete(target);
    v = await verify();
    expect(v).toMatchObject({ Valid: false, FirstBadSeq: target });
    expect(v.Problem).toMatch(/missing/);
    await log.put([original]);
    expect((await verify()).Valid).toBe(true);

    // Reordered: two neighbours swap places.
    const next = await log.row(target + 1);
    await log.put([
      { ...next, seq: target },
      { ...original, seq: target + 1 },
    ]);
    v = await verify();
    expect(v).toMatchObject({ Valid: false, FirstBadSeq: target });
    expect(v.Problem).toMatch(/does not link|reordered/);
    await log.put([original, next]);
    expect((await verify()).Valid).toBe(true);

    // Rewritten consistently (every later hash recomputed): only the token's signature can tell.
    const later = await log.rowsFrom(target);
    const firstCheckpoint = later.find((r) => r.action === 'AuditCheckpoint')!;
    expect(firstCheckpoint).toBeDefined();
    let prev = (await log.row(target - 1)).hash;
    const forged = later.map((r) => {
      const changed = { ...r, prev_hash: prev, outcome: r.seq === target ? 'ok-but-forged' : r.outcome };
      const rec = { Seq: changed.seq, Time: isoMs(changed.time), RequestId: changed.request_id, Principal: changed.principal, Action: changed.action, KeyId: changed.key_id, ProposalId: changed.proposal_id, Outcome: changed.outcome, Details: changed.details, PrevHash: changed.prev_hash };
      changed.hash = recordHash(rec);
      prev = changed.hash;
      return changed;
    });
    await log.put(forged);
    v = await verify();
    expect(v.Valid).toBe(false);
    expect(v.FirstBadSeq).toBe(firstCheckpoint.seq);
    expect(v.Problem).toMatch(/checkpoint/);
    await log.put(later);
    expect((await verify()).Valid).toBe(true);
  });
});

describe('ExportAudit', () => {
  it('writes a log that verifies offline with the exported public key, and fails when altered', async () => {
    const file = path.join(dir, 'audit.jsonl');
    const r = k.kmsctl(['ExportAudit', '--OutputFile', file]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.Records).toBeGreaterThan(10);
    expect(k.kmsctl(['ExportAudit', '--OutputFile', file]).code).toBe(2); // never overwritten

    const ok = verifyOffline(file);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json).toMatchObject({ Valid: true, FirstBadSeq: 0 });
    const v = await verify();
    expect(ok.json.PublicKeyFingerprint).toBe(v.PublicKeyFingerprint);
    const pinned = path.join(dir, 'audit-key.pem');
    fs.writeFileSync(pinned, v.PublicKey);
    expect(verifyOffline(file, ['--public-key', pinned]).code).toBe(0);

    const lines = fs.readFileSync(file, 'utf8').trim().split('\n');
    const edited = [...lines];
    const rec = JSON.parse(edited[5]);
    rec.Principal = 'someone-else';
    edited[5] = JSON.stringify(rec);
    const bad = path.join(dir, 'edited.jsonl');
    fs.writeFileSync(bad, edited.join('\n') + '\n');
    const e = verifyOffline(bad);
    expect(e.code).toBe(1);
    expect(e.json).toMatchObject({ Valid: false, FirstBadSeq: rec.Seq });

    const cut = path.join(dir, 'cut.jsonl');
    fs.writeFileSync(cut, lines.slice(0, -1).join('\n') + '\n');
    expect(verifyOffline(cut).json.Valid).toBe(false);

    const other = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }) as string;
    fs.writeFileSync(path.join(dir, 'other.pem'), other);
    expect(verifyOffline(file, ['--public-key', path.join(dir, 'other.pem')]).json.Problem).toMatch(/not the pinned key/);
  });

  it('keeps verifying across a restart (a final checkpoint at shutdown)', async () => {
    await db?.close();
    db = undefined;
    c.close();
    expect(await k.stop()).toBe(0);
    k = await startCeremonyDaemon({}, dataDir, true);
    c = client(k);
    db = await openAuditLog(dataDir);
    const v = await verify();
    expect(v.Valid).toBe(true);
    const actions = await db.actions();
    const stopped = actions.lastIndexOf('DaemonStopped');
    expect(actions[stopped + 1]).toBe('AuditCheckpoint');
    expect(actions[stopped + 2]).toBe('DaemonStarted');
  });
});

describe('ExportAudit under a small gRPC message limit', () => {
  it('pages by size whatever MaxRecords asks for, and the paged export still verifies', async () => {
    const small = await startCeremonyDaemon({ KMS_MAX_MESSAGE_BYTES: '16384' });
    const sc = client(small);
    try {
      for (let i = 0; i < 60; i++) await sc.call('CreateKey', { ProtectionLevel: 'SOFTWARE', Description: `key ${i} ${'x'.repeat(120)}` });
      const page = (await sc.call('ExportAudit', { MaxRecords: 10_000 })) as J;
      expect(page.Complete).toBe(false);
      expect((page.Lines as string[]).join('').length).toBeLessThanOrEqual(8192);
      expect(page.Lines.length).toBeGreaterThan(1);
      expect(page.NextSeq).toBe(JSON.parse(page.Lines[page.Lines.length - 1]).Seq);

      const file = path.join(dir, 'small-pages.jsonl');
      const r = small.kmsctl(['ExportAudit', '--OutputFile', file]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.json.Records).toBeGreaterThanOrEqual(60);
      const ok = verifyOffline(file);
      expect(ok.code, ok.stderr).toBe(0);
      expect(ok.json).toMatchObject({ Valid: true });
    } finally {
      sc.close();
      await small.stop();
    }
  });
});

describe('what kmsd does to keys on its own', () => {
  it('is audited: the end of a deletion window, expired key material, an automatic rotation', async () => {
    // A "day" of PendingWindowInDays is 1 s and the scheduler looks every 100 ms.
    const d = await startCeremonyDaemon({ KMS_PENDING_WINDOW_DAY_SECONDS: '1', KMS_SCHEDULER_INTERVAL_MS: '100', KMS_MIN_ROTATION_INTERVAL_SECONDS: '1' });
    const dc = client(d);
    try {
      const doomed = ((await dc.call('CreateKey', { ProtectionLevel: 'HSM' })) as J).KeyMetadata.KeyId as string;
      await dc.call('ScheduleKeyDeletion', { KeyId: doomed, PendingWindowInDays: 7 });
      const rotating = ((await dc.call('CreateKey', { ProtectionLevel: 'SOFTWARE', EnableAutomaticRotation: true, RotationInterval: '1s' })) as J).KeyMetadata.KeyId as string;
      const external = ((await dc.call('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })) as J).KeyMetadata.KeyId as string;
      const p = (await dc.call('GetParametersForImport', { KeyId: external, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' })) as J;
      const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
      const wrapped = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, crypto.randomBytes(32));
      const expireUnix = Math.floor(Date.now() / 1000) + 2;
      await dc.call('ImportKeyMaterial', { KeyId: external, EncryptedKeyMaterial: wrapped.toString('base64'), ImportToken: p.ImportToken, KeyMaterialExpireUnix: expireUnix });

      const want = [
        { Action: 'ScheduledKeyDeletion', KeyId: doomed },
        { Action: 'KeyMaterialExpired', KeyId: external },
        { Action: 'AutomaticRotation', KeyId: rotating },
      ];
      let events: J[] = [];
      await within(20_000, async () => {
        events = ((await dc.call('ListAuditEvents', { PageSize: 1000 })) as J).Events as J[];
        return want.every((w) => events.some((e) => e.Action === w.Action && e.KeyId === w.KeyId));
      }, 200);
      for (const w of want) expect(events.find((e) => e.Action === w.Action && e.KeyId === w.KeyId), w.Action).toMatchObject({ ...w, Principal: 'kmsd', Outcome: 'ok' });
      const expired = events.find((e) => e.Action === 'KeyMaterialExpired') as J;
      const details = typeof expired.Details === 'string' ? JSON.parse(expired.Details) : expired.Details;
      expect(details.ExpiredAt).toBe(new Date(expireUnix * 1000).toISOString().replace('.000Z', 'Z'));
      expect(((await dc.call('VerifyAudit', {})) as J).Valid).toBe(true);
    } finally {
      dc.close();
      await d.stop();
    }
  }, 40_000);
});
