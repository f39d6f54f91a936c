// The metadata store and the token belong to each other. A missing, emptied or older store used to
// make start-up reconciliation destroy every HSM key ("orphans"): a mistyped --data-dir in front of a
// production token, a deleted or truncated kmsd.sqlite, a SIGKILL followed by deleting only
// kmsd.sqlite-wal. Each scenario runs real kmsd processes; the token's objects are counted with
// pkcs11-tool before and after. Also here: --adopt-token and RemoveUnknownTokenObjects, a token
// that refuses to destroy (chattr +i on its directory: root ignores chmod, not the immutable flag),
// and a Disabled CMK across DeleteKeyMaterial and re-import.

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { Kmsd, createExternalToken, makeTempDir, runKmsdToExit, startKmsd, tokenCmkObjects, ExternalToken } from '../helpers/daemon';
import { clientErrorOf } from '../helpers/errors';
import { client as fullClient, custodianKeys } from '../helpers/ceremony';

const started: Kmsd[] = [];
const dirs: string[] = [];
const tokens: ExternalToken[] = [];
const immutable: string[] = [];

afterAll(async () => {
  for (const d of immutable) spawnSync('chattr', ['-i', d]);
  for (const k of started) await k.stop();
  for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  for (const t of tokens) t.cleanup();
});

async function start(dataDir: string, args: string[] = [], env: Record<string, string> = {}): Promise<Kmsd> {
  const k = await startKmsd({ dataDir, args, env, keep: true });
  started.push(k);
  return k;
}

function newDir(prefix: string): string {
  const d = makeTempDir(prefix);
  dirs.push(d);
  return d;
}

async function hsmKeys(k: Kmsd, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId);
  return ids;
}

async function roundTrip(k: Kmsd, keyId: string): Promise<void> {
  const e = await k.client.encrypt(keyId, Buffer.from('still here'));
  expect((await k.client.decrypt(e.CiphertextBlob)).Plaintext.toString()).toBe('still here');
}

function expectRefusal(r: { code: number | null; stderr: string }, ...parts: (string | RegExp)[]): void {
  expect(r.code, `kmsd should have refused to start:\n${r.stderr}`).toBe(1);
  expect(r.stderr).toMatch(/kmsd refuses to start/);
  for (const p of parts) expect(r.stderr).toMatch(p);
  // The ways forward.
  expect(r.stderr).toMatch(/--data-dir/);
  expect(r.stderr).toMatch(/restore/);
  expect(r.stderr).toMatch(/Nothing in the token was changed or destroyed/);
}

const instanceOf = (k: Kmsd) => JSON.parse(k.logs().split('\n').find((l) => l.includes('"msg":"metadata store and token belong together"'))!).instanceId as string;

describe('a store that is not the token’s own is refused, never reconciled', () => {
  it('a mistyped --data-dir in front of a production token destroys nothing', async () => {
    const token = createExternalToken();
    tokens.push(token);
    const right = newDir('kmsd-right-');
    let k = await start(right, token.args, token.env);
    const ids = await hsmKeys(k, 3);
    const instance = instanceOf(k);
    await k.stop();
    const before = tokenCmkObjects(token);
    expect(before).toHaveLength(3);

    const typo = newDir('kmsd-typo-');
    const r = runKmsdToExit(typo, token.args, token.env);
    expectRefusal(r, new RegExp(`token "${token.label}"`), new RegExp(instance), new RegExp(typo.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')), /--adopt-token/);
    expect(tokenCmkObjects(token)).toEqual(before);

    k = await start(right, token.args, token.env);
    for (const id of ids) await roundTrip(k, id);
    await k.stop();
  }, 120_000);

  it('a deleted or truncated kmsd.sqlite destroys nothing', async () => {
    const dir = newDir('kmsd-deleted-');
    let k = await start(dir);
    await hsmKeys(k, 3);
    await k.stop();
    const before = tokenCmkObjects(k);
    expect(before).toHaveLength(3);
    const saved = fs.readFileSync(path.join(dir, 'kmsd.sqlite'));

    fs.rmSync(path.join(dir, 'kmsd.sqlite'));
    expectRefusal(runKmsdToExit(dir), /new or empty/, /token "kmsd-dev"/);
    expect(tokenCmkObjects(k)).toEqual(before);

    fs.truncateSync(path.join(dir, 'kmsd.sqlite'), 0);
    for (const f of ['kmsd.sqlite-wal', 'kmsd.sqlite-shm']) fs.rmSync(path.join(dir, f), { force: true });
    expectRefusal(runKmsdToExit(dir), /new or empty/);
    expect(tokenCmkObjects(k)).toEqual(before);

    // Restoring the file is a way forward.
    fs.writeFileSync(path.join(dir, 'kmsd.sqlite'), saved);
    for (const f of ['kmsd.sqlite-wal', 'kmsd.sqlite-shm']) fs.rmSync(path.join(dir, f), { force: true });
    k = await start(dir);
    expect((await k.client.call('ListKeys', {})).TotalCount).toBe(3);
    await k.stop();
    expect(tokenCmkObjects(k)).toEqual(before);
  }, 120_000);

  it('SIGKILL and a lost kmsd.sqlite-wal destroy nothing; --adopt-token binds without destroying, and removal is an audited operator action', async () => {
    const dir = newDir('kmsd-wal-');
    let k = await start(dir);
    const ids = await hsmKeys(k, 3);
    await k.kill();
    const before = tokenCmkObjects(k);
    expect(before).toHaveLength(3);
    fs.rmSync(path.join(dir, 'kmsd.sqlite-wal'));
    fs.rmSync(path.join(dir, 'kmsd.sqlite-shm'), { force: true });
    const r = runKmsdToExit(dir);
    expectRefusal(r, /token "kmsd-dev"/);
    expect(tokenCmkObjects(k)).toEqual(before);

    // Adoption: the store takes the token as it is; the three CMK objects are unknown, and kept.
    k = await start(dir, ['--adopt-token']);
    expect(k.logs()).toMatch(/token adopted by this metadata store/);
    expect(tokenCmkObjects(k)).toEqual(before);
    const hsm = await k.client.call('DescribeHsm');
    // (The wrapping keys of the pool, also unknown to the new store, are listed too.)
    expect(hsm.UnknownTokenObjects.filter((o: any) => o.Kind === 'cmk').map((o: any) => o.ObjectId).sort()).toEqual(before);
    for (const id of ids) expect((await clientErrorOf(k.client.describeKey(id))).code).toBe('Forbidden.KeyNotFound');

    // An id that is not unknown (a live CMK's version) is refused, and nothing is removed.
    const live = (await k.client.createKey({ ProtectionLevel: 'HSM' })).KeyMetadata;
    const refused = k.kmsctl(['RemoveUnknownTokenObjects', '--ObjectIds', `${before[0]},${live.PrimaryKeyVersion}`]);
    expect(refused.code).toBe(1);
    expect(refused.json.Code).toBe('InvalidParameter');
    expect(refused.json.Message).toContain(live.PrimaryKeyVersion);
    expect(tokenCmkObjects(k)).toEqual([...before, live.PrimaryKeyVersion].sort());

    const one = k.kmsctl(['RemoveUnknownTokenObjects', '--ObjectIds', before[0]]);
    expect(one.code, one.stderr).toBe(0);
    expect(one.json.Removed).toEqual([{ Kind: 'cmk', ObjectId: before[0] }]);
    const all = k.kmsctl(['RemoveUnknownTokenObjects', '--All', 'true']);
    expect(all.code, all.stderr).toBe(0);
    expect(all.json.Removed.filter((o: any) => o.Kind === 'cmk').map((o: any) => o.ObjectId).sort()).toEqual(before.slice(1));
    expect((await k.client.call('DescribeHsm')).UnknownTokenObjects ?? []).toEqual([]);
    expect(tokenCmkObjects(k)).toEqual([live.PrimaryKeyVersion]);
    await roundTrip(k, live.KeyId);
    const events = (await auditEvents(k, { PageSize: 1000 })).Events as any[];
    const removals = events.filter((e) => e.Action === 'UnknownTokenObjectRemoved' && JSON.parse(e.Details).Kind === 'cmk').map((e) => JSON.parse(e.Details).ObjectId).sort();
    expect(removals).toEqual(before);
    expect(events.filter((e) => e.Action === 'RemoveUnknownTokenObjects').map((e) => e.Outcome)).toEqual(['InvalidParameter', 'ok', 'ok']);
    await k.stop();
  }, 120_000);

  it('a store older than the token (a restored backup) is refused; adopting it keeps the newer objects as unknown', async () => {
    const dir = newDir('kmsd-older-');
    let k = await start(dir);
    const [first] = await hsmKeys(k, 1);
    await k.stop();
    const backup = fs.readFileSync(path.join(dir, 'kmsd.sqlite'));
    k = await start(dir);
    await hsmKeys(k, 2);
    await k.stop();
    const before = tokenCmkObjects(k);
    expect(before).toHaveLength(3);
    fs.writeFileSync(path.join(dir, 'kmsd.sqlite'), backup);
    const r = runKmsdToExit(dir);
    expectRefusal(r, /older than the token/, /--adopt-token/);
    expect(tokenCmkObjects(k)).toEqual(before);

    k = await start(dir, ['--adopt-token']);
    expect(tokenCmkObjects(k)).toEqual(before);
    // The two newer CMK objects; the wrapping-key pool may have made key pairs after the backup too.
    expect(((await k.client.call('DescribeHsm')).UnknownTokenObjects as any[]).filter((o) => o.Kind === 'cmk')).toHaveLength(2);
    await roundTrip(k, first);
    await k.stop();
    // Bound again: a plain restart starts, still destroying nothing.
    k = await start(dir);
    expect(tokenCmkObjects(k)).toEqual(before);
    await k.stop();
  }, 120_000);

  it('a deployment from before the binding is bound on its first start when the store explains the token, refused when it does not', async () => {
    const dir = newDir('kmsd-legacy-');
    let k = await start(dir);
    const ids = await hsmKeys(k, 2);
    await k.stop();
    // What a token of the earlier version looks like: no kmsd:instance object.
    const env = k.tokenEnv();
    const deleteInstanceObject = () => {
      const del = spawnSync('pkcs11-tool', ['--module', env.module, '--token-label', 'kmsd-dev', '--login', '--pin', env.pin, '--delete-object', '--type', 'data', '--application-label', 'kmsd:instance'], {
        encoding: 'utf8',
        env: { ...process.env, SOFTHSM2_CONF: env.SOFTHSM2_CONF },
      });
      expect(del.status, del.stderr).toBe(0);
    };
    deleteInstanceObject();
    k = await start(dir);
    expect(k.logs()).toMatch(/"outcome":"bound-existing-deployment"/);
    for (const id of ids) await roundTrip(k, id);
    const lost = (await k.client.describeKey(ids[1])).KeyMetadata.PrimaryKeyVersion;
    await k.stop();

    // The same, but the store does not know one of the token's CMK objects: refused, then adopted.
    deleteInstanceObject();
    const db = new Database(path.join(dir, 'kmsd.sqlite'));
    db.prepare('DELETE FROM key_versions WHERE key_id = ?').run(ids[1]);
    db.prepare('DELETE FROM cmks WHERE key_id = ?').run(ids[1]);
    db.close();
    expectRefusal(runKmsdToExit(dir), /does not explain 1 of its objects/, new RegExp(`kmsd:cmk:${lost}`), /--adopt-token/);
    expect(tokenCmkObjects(k)).toContain(lost);
    k = await start(dir, ['--adopt-token']);
    expect((await k.client.call('DescribeHsm')).UnknownTokenObjects.filter((o: any) => o.Kind === 'cmk')).toEqual([{ Kind: 'cmk', ObjectId: lost }]);
    await roundTrip(k, ids[0]);
    await k.stop();
  }, 120_000);
});

describe('removing unknown token objects under a ceremony', () => {
  it('is a guarded action once custodians exist: direct calls are refused, an approved proposal removes them', async () => {
    const dir = newDir('kmsd-guarded-');
    let k = await start(dir);
    await hsmKeys(k, 2);
    await k.stop();
    const before = tokenCmkObjects(k);
    for (const f of ['kmsd.sqlite', 'kmsd.sqlite-wal', 'kmsd.sqlite-shm']) fs.rmSync(path.join(dir, f), { force: true });
    k = await start(dir, ['--adopt-token']);
    const keys = custodianKeys(newDir('kmsd-custodians-'), ['alice', 'bob']);
    const init = k.kmsctl(['InitCeremony', '--Custodians', ['alice', 'bob'].map((id) => `${id}=${keys[id].pub}`).join(','), '--Threshold', '2']);
    expect(init.code, init.stderr).toBe(0);

    const direct = k.kmsctl(['RemoveUnknownTokenObjects', '--All', 'true']);
    expect(direct.code).toBe(1);
    expect(direct.json.Code).toBe('Rejected.QuorumRequired');
    expect(direct.json.Message).toMatch(/CreateProposal --Action RemoveUnknownTokenObjects/);
    expect(tokenCmkObjects(k)).toEqual(before);

    const c = fullClient(k);
    try {
      const p = await c.call('CreateProposal', { Action: 'RemoveUnknownTokenObjects', Parameters: { ObjectIds: before.join(',') } });
      for (const id of ['alice', 'bob']) {
        const signature = crypto.sign(null, Buffer.from(p.Document, 'base64'), crypto.createPrivateKey(fs.readFileSync(keys[id].pem))).toString('base64');
        await c.call('ApproveProposal', { ProposalId: p.ProposalId, CustodianId: id, Signature: signature });
      }
      const ex = await c.call('ExecuteProposal', { ProposalId: p.ProposalId });
      expect(ex.Outcome).toBe('Succeeded');
      expect(JSON.parse(ex.Result).Removed.map((o: any) => o.ObjectId).sort()).toEqual(before);
    } finally {
      c.close();
    }
    expect(tokenCmkObjects(k)).toEqual([]);
    const removed = ((await auditEvents(k, { PageSize: 1000 })).Events as any[]).filter((e) => e.Action === 'UnknownTokenObjectRemoved');
    expect(removed.map((e) => JSON.parse(e.Details).ObjectId).sort()).toEqual(before);
    await k.stop();
  }, 120_000);
});

// ---------------------------------------------------------------- BYOK helpers

async function importMaterial(k: Kmsd, keyId: string, material: Buffer): Promise<void> {
  const p = await k.client.call('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: 'RSAES_OAEP_SHA_1', WrappingKeySpec: 'RSA_2048' });
  const pub = crypto.createPublicKey({ key: Buffer.from(p.PublicKey, 'base64'), format: 'der', type: 'spki' });
  const wrapped = crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, material).toString('base64');
  await k.client.call('ImportKeyMaterial', { KeyId: keyId, EncryptedKeyMaterial: wrapped, ImportToken: p.ImportToken, KeyMaterialExpireUnix: 0 });
}

const auditEvents = async (k: Kmsd, req: Record<string, unknown>): Promise<any> => {
  const c = fullClient(k);
  try {
    return await c.call('ListAuditEvents', req);
  } finally {
    c.close();
  }
};

const stateOf = async (k: Kmsd, keyId: string) => (await k.client.describeKey(keyId)).KeyMetadata.KeyState;

describe('key material deletion', () => {
  it('a Disabled CMK stays Disabled across DeleteKeyMaterial and re-import of its material', async () => {
    const k = await start(newDir('kmsd-disabled-'));
    const material = crypto.randomBytes(32);
    for (const level of ['HSM', 'SOFTWARE']) {
      const keyId = (await k.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: level })).KeyMetadata.KeyId;
      await importMaterial(k, keyId, material);
      await k.client.call('DisableKey', { KeyId: keyId });
      await k.client.call('DeleteKeyMaterial', { KeyId: keyId });
      expect(await stateOf(k, keyId)).toBe('PendingImport');
      await importMaterial(k, keyId, material);
      expect(await stateOf(k, keyId), level).toBe('Disabled');
      expect((await clientErrorOf(k.client.encrypt(keyId, Buffer.from('x')))).code).toBe('Rejected.Disabled');
      // The same through a deletion window that was cancelled.
      await k.client.call('DeleteKeyMaterial', { KeyId: keyId }).catch(() => undefined);
      await k.client.call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 7 });
      await k.client.call('CancelKeyDeletion', { KeyId: keyId });
      expect(await stateOf(k, keyId)).toBe('PendingImport');
      await importMaterial(k, keyId, material);
      expect(await stateOf(k, keyId), level).toBe('Disabled');
      await k.client.call('EnableKey', { KeyId: keyId });
      const e = await k.client.encrypt(keyId, Buffer.from('x'));
      expect((await k.client.decrypt(e.CiphertextBlob)).Plaintext.toString()).toBe('x');
    }
    await k.stop();
  }, 120_000);

  it('a token that refuses to destroy: answer, state and audit agree, and the destroy is retried until the material is gone', async () => {
    const dir = newDir('kmsd-readonly-');
    const env = { KMS_PENDING_WINDOW_DAY_SECONDS: '1', KMS_SCHEDULER_INTERVAL_MS: '200' };
    let k = await start(dir, [], env);
    const keyId = (await k.client.createKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
    const versionId = (await k.client.describeKey(keyId)).KeyMetadata.PrimaryKeyVersion;
    await importMaterial(k, keyId, crypto.randomBytes(32));
    expect(tokenCmkObjects(k)).toEqual([versionId]);

    // SoftHSM keeps each object in a file of the token's directory; C_DestroyObject unlinks it.
    // kmsd runs as root here, which chmod does not stop; the immutable flag does.
    const tokenDirs = fs.readdirSync(path.join(dir, 'softhsm', 'tokens')).map((d) => path.join(dir, 'softhsm', 'tokens', d));
    expect(tokenDirs).toHaveLength(1);
    const chattr = spawnSync('chattr', ['+i', tokenDirs[0]], { encoding: 'utf8' });
    expect(chattr.status, `chattr +i needs a file system with the immutable flag (ext4, xfs, btrfs): ${chattr.stderr}`).toBe(0);
    immutable.push(tokenDirs[0]);
    try {
      const err = await clientErrorOf(k.client.call('DeleteKeyMaterial', { KeyId: keyId }));
      expect(err.code).toBe('ServiceUnavailable.KeyMaterialDestroyPending');
      expect(err.message).toContain(versionId);
      expect(await stateOf(k, keyId)).toBe('PendingImport');
      // A retry does not pretend: the material is still in the token.
      expect((await clientErrorOf(k.client.call('DeleteKeyMaterial', { KeyId: keyId }))).code).toBe('ServiceUnavailable.KeyMaterialDestroyPending');
      expect(tokenCmkObjects(k)).toEqual([versionId]);
      const hsm = await k.client.call('DescribeHsm');
      expect(hsm.PendingTokenDestroys).toMatchObject([{ Kind: 'cmk', ObjectId: versionId, KeyId: keyId, Reason: 'deleted' }]);

      // The deletion window ends while the token still refuses: the CMK goes, and the record says what is pending.
      await k.client.call('ScheduleKeyDeletion', { KeyId: keyId, PendingWindowInDays: 7 });
      for (let i = 0; i < 300 && (await k.client.describeKey(keyId).then(() => true, () => false)); i++) await new Promise((r) => setTimeout(r, 100));
      expect((await clientErrorOf(k.client.describeKey(keyId))).code).toBe('Forbidden.KeyNotFound');
      expect(tokenCmkObjects(k)).toEqual([versionId]);
      const events = ((await auditEvents(k, { KeyId: keyId, PageSize: 100 })).Events as any[]).map((e) => ({ Action: e.Action, Outcome: e.Outcome, Details: e.Details ? JSON.parse(e.Details) : {} }));
      // The first call's change (PendingImport, the destroy queued) committed with an ok record; then
      // each call answered with the refusal, recorded as such.
      expect(events.filter((e) => e.Action === 'DeleteKeyMaterial').map((e) => e.Outcome)).toEqual(['ok', 'ServiceUnavailable.KeyMaterialDestroyPending', 'ServiceUnavailable.KeyMaterialDestroyPending']);
      expect(events.filter((e) => e.Action === 'KeyMaterialDestroyFailed').length).toBeGreaterThanOrEqual(1);
      const deletion = events.find((e) => e.Action === 'ScheduledKeyDeletion');
      expect(deletion?.Details).toMatchObject({ KeyVersions: [versionId], MaterialDestroyPending: [versionId] });
      expect(events.some((e) => e.Action === 'KeyMaterialDestroyed')).toBe(false);
    } finally {
      spawnSync('chattr', ['-i', tokenDirs[0]]);
    }
    await k.stop();
    // The next start retries the destroy, the object goes, and that is on the record.
    k = await start(dir, [], env);
    expect(tokenCmkObjects(k)).toEqual([]);
    expect((await k.client.call('DescribeHsm')).PendingTokenDestroys ?? []).toEqual([]);
    const after = (await auditEvents(k, { KeyId: keyId, PageSize: 100 })).Events as any[];
    const destroyed = after.filter((e) => e.Action === 'KeyMaterialDestroyed');
    expect(destroyed).toHaveLength(1);
    expect(JSON.parse(destroyed[0].Details)).toMatchObject({ KeyVersionId: versionId, Retried: 'start-up' });
    await k.stop();
  }, 120_000);
});
