// The CMK lifecycle end to end, against the real kmsd (dist/) on its development SoftHSM token:
// every action of issue 2 through kmsctl (exit codes, JSON on stdout, {"Code","Message"} on stderr)
// and through the gRPC client (error code + gRPC status from the one error table), each state error,
// the end of a deletion window (CMK and token objects gone), and what pkcs11-tool sees in the token.
//
// One daemon for the file. A "day" of PendingWindowInDays is one second here, so a CMK scheduled
// for deletion with the minimum window (7) disappears after ~7 s; the scheduler ticks every 200 ms.

import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/client';
import { ERROR_TABLE, ErrorCode } from '../../src/kms/errors';
import { Kmsd, listTokenObjects, startKmsd } from '../helpers/daemon';
import { auditArgsFor, auditToken, describeFindings } from '../helpers/audit-token';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$/;
const METADATA_FIELDS = [
  'KeyId',
  'Arn',
  'KeyState',
  'Origin',
  'KeySpec',
  'KeyUsage',
  'ProtectionLevel',
  'Description',
  'CreationDate',
  'DeleteDate',
  'MaterialExpireTime',
  'AutomaticRotation',
  'RotationInterval',
  'NextRotationDate',
  'LastRotationDate',
  'PrimaryKeyVersion',
];

let k: Kmsd;

beforeAll(async () => {
  // Kept after stop: the token auditor reads the store at the end.
  k = await startKmsd({ keep: true, env: { KMS_PENDING_WINDOW_DAY_SECONDS: '1', KMS_SCHEDULER_INTERVAL_MS: '200' } });
});

afterAll(async () => {
  await k?.stop();
  k?.cleanup();
});

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** kmsctl that must succeed: exit 0, JSON on stdout, nothing on stderr. */
function ctl(args: string[]): any {
  const r = k.kmsctl(args);
  expect(r.code, `kmsctl ${args.join(' ')}\n${r.stderr}`).toBe(0);
  expect(r.stderr).toBe('');
  expect(r.json).toBeTypeOf('object');
  return r.json;
}

/** kmsctl that must fail with an API error: exit 1, nothing on stdout, one JSON line {Code, Message} on stderr. */
function ctlFails(args: string[], code: ErrorCode): { Code: string; Message: string } {
  const r = k.kmsctl(args);
  expect(r.code, `kmsctl ${args.join(' ')}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`).toBe(1);
  expect(r.stdout).toBe('');
  expect(r.stderr.trim().split('\n')).toHaveLength(1);
  expect(r.json).toMatchObject({ Code: code, Message: expect.any(String) });
  expect(r.json.Message.length).toBeGreaterThan(0);
  return r.json;
}

/** A gRPC call that must fail with `code` and the gRPC status the error table gives it. */
async function rpcFails(action: string, req: Record<string, unknown>, code: ErrorCode): Promise<KmsClientError> {
  const e = await k.client.call(action, req).then(
    () => null,
    (err: unknown) => err,
  );
  expect(e, `${action} should fail with ${code}`).toBeInstanceOf(KmsClientError);
  const err = e as KmsClientError;
  expect({ code: err.code, message: err.message }).toMatchObject({ code });
  expect(err.grpcCode).toBe(grpc.status[ERROR_TABLE[code].status]);
  expect(err.requestId).toMatch(UUID);
  return err;
}

async function describeKey(keyId: string): Promise<any> {
  return (await k.client.call('DescribeKey', { KeyId: keyId })).KeyMetadata;
}

async function createKey(req: Record<string, unknown> = {}): Promise<any> {
  return (await k.client.call('CreateKey', req)).KeyMetadata;
}

function cmkObjects() {
  return listTokenObjects(k).filter((o) => o.label.startsWith('kmsd:cmk:'));
}

describe('CreateKey and DescribeKey', () => {
  it('creates HSM, SOFTWARE and EXTERNAL CMKs through kmsctl with every KeyMetadata field', () => {
    const before = Date.now();
    const hsm = ctl(['CreateKey', '--ProtectionLevel', 'HSM', '--Description', 'an HSM key']).KeyMetadata;
    const sw = ctl(['CreateKey', '--ProtectionLevel', 'SOFTWARE']).KeyMetadata;
    const dflt = ctl(['CreateKey']).KeyMetadata;
    const ext = ctl(['CreateKey', '--Origin', 'EXTERNAL', '--Description', 'External key', '--ProtectionLevel', 'HSM']).KeyMetadata;
    for (const m of [hsm, sw, dflt, ext]) {
      for (const f of METADATA_FIELDS) expect(m, f).toHaveProperty(f);
      for (const f of METADATA_FIELDS) expect(typeof m[f], f).toBe('string');
      expect(m.KeyId).toMatch(UUID);
      expect(m.Arn).toBe(`acs:kms:local:kmsd:key/${m.KeyId}`);
      expect(m.KeySpec).toBe('Aliyun_AES_256');
      expect(m.KeyUsage).toBe('ENCRYPT/DECRYPT');
      expect(m.CreationDate).toMatch(ISO);
      expect(Date.parse(m.CreationDate)).toBeGreaterThanOrEqual(Math.floor(before / 1000) * 1000);
      expect(Date.parse(m.CreationDate)).toBeLessThanOrEqual(Date.now());
      expect(m.DeleteDate).toBe('');
      expect(m.MaterialExpireTime).toBe('');
      expect(m.AutomaticRotation).toBe('Disabled');
      expect(m.RotationInterval).toBe('');
      expect(m.NextRotationDate).toBe('');
      expect(m.PrimaryKeyVersion).toMatch(UUID);
    }
    expect(hsm).toMatchObject({ KeyState: 'Enabled', Origin: 'Aliyun_KMS', ProtectionLevel: 'HSM', Description: 'an HSM key' });
    expect(sw).toMatchObject({ KeyState: 'Enabled', Origin: 'Aliyun_KMS', ProtectionLevel: 'SOFTWARE', Description: '' });
    // Defaults: Aliyun_KMS, SOFTWARE.
    expect(dflt).toMatchObject({ KeyState: 'Enabled', Origin: 'Aliyun_KMS', ProtectionLevel: 'SOFTWARE' });
    expect(ext).toMatchObject({ KeyState: 'PendingImport', Origin: 'EXTERNAL', ProtectionLevel: 'HSM', Description: 'External key' });
    expect(new Set([hsm.KeyId, sw.KeyId, dflt.KeyId, ext.KeyId]).size).toBe(4);

    // DescribeKey answers the same metadata.
    expect(ctl(['DescribeKey', '--KeyId', hsm.KeyId]).KeyMetadata).toEqual(hsm);
    expect(ctl(['DescribeKey', '--KeyId', ext.KeyId]).KeyMetadata).toEqual(ext);
  });

  it('creates and describes through the gRPC client', async () => {
    const m = await createKey({ ProtectionLevel: 'HSM', Description: 'via grpc' });
    expect(m).toMatchObject({ KeyState: 'Enabled', ProtectionLevel: 'HSM', Description: 'via grpc', Origin: 'Aliyun_KMS' });
    for (const f of METADATA_FIELDS) expect(m, f).toHaveProperty(f);
    expect(await describeKey(m.KeyId)).toEqual(m);
    const ext = await createKey({ Origin: 'EXTERNAL' });
    expect(ext.KeyState).toBe('PendingImport');
    expect(ext.PrimaryKeyVersion).toMatch(UUID);
  });

  it('answers Forbidden.KeyNotFound (NOT_FOUND) for a well-formed id that does not exist', async () => {
    const missing = '00000000-0000-4000-8000-000000000000';
    const e = ctlFails(['DescribeKey', '--KeyId', missing], 'Forbidden.KeyNotFound');
    expect(e.Message).toContain(missing);
    await rpcFails('DescribeKey', { KeyId: missing }, 'Forbidden.KeyNotFound');
    await rpcFails('Encrypt', { KeyId: missing, Plaintext: b64('x') }, 'Forbidden.KeyNotFound');
  });
});

describe('ListKeys paging', () => {
  it('pages through every CMK exactly once with PageNumber/PageSize/TotalCount', async () => {
    for (let i = 0; i < 3; i++) await createKey();
    const all = await k.client.call('ListKeys', { PageSize: 100 });
    const total = all.TotalCount;
    expect(total).toBeGreaterThanOrEqual(9);
    expect(all.Keys).toHaveLength(total);
    expect(all).toMatchObject({ PageNumber: 1, PageSize: 100 });

    const seen: string[] = [];
    const pages = Math.ceil(total / 2);
    for (let p = 1; p <= pages; p++) {
      const page = await k.client.call('ListKeys', { PageNumber: p, PageSize: 2 });
      expect(page).toMatchObject({ PageNumber: p, PageSize: 2, TotalCount: total });
      expect(page.Keys.length).toBe(p < pages ? 2 : total - 2 * (pages - 1));
      for (const key of page.Keys) {
        expect(key.KeyArn).toBe(`acs:kms:local:kmsd:key/${key.KeyId}`);
        seen.push(key.KeyId);
      }
    }
    expect(new Set(seen).size).toBe(total);
    expect(seen.sort()).toEqual(all.Keys.map((x: any) => x.KeyId).sort());

    // Beyond the last page: empty, same total.
    const past = await k.client.call('ListKeys', { PageNumber: pages + 1, PageSize: 2 });
    expect(past.Keys).toEqual([]);
    expect(past.TotalCount).toBe(total);

    // Defaults (PageNumber 1, PageSize 10) and kmsctl.
    const def = ctl(['ListKeys']);
    expect(def).toMatchObject({ PageNumber: 1, PageSize: 10, TotalCount: total });
    expect(def.Keys).toHaveLength(Math.min(10, total));
    const p2 = ctl(['ListKeys', '--PageNumber', '2', '--PageSize', '3']);
    expect(p2).toMatchObject({ PageNumber: 2, PageSize: 3, TotalCount: total });
    expect(p2.Keys.map((x: any) => x.KeyId)).toEqual(all.Keys.slice(3, 6).map((x: any) => x.KeyId));

    ctlFails(['ListKeys', '--PageSize', '101'], 'InvalidParameter');
    await rpcFails('ListKeys', { PageNumber: -1 }, 'InvalidParameter');
  });
});

// Scheduled early; checked at the end of the file, so the 7 s window overlaps the other tests.
let doomed: { keyId: string; versions: string[]; scheduledAt: number; deleteDate: string; alias: string; blob: string } | undefined;

describe('deletion window', () => {

  it('ScheduleKeyDeletion (7 days of 1 s) puts an HSM CMK in PendingDeletion with a DeleteDate', async () => {
    const m = await createKey({ ProtectionLevel: 'HSM' });
    const v2 = (await k.client.call('CreateKeyVersion', { KeyId: m.KeyId })).KeyVersion.KeyVersionId;
    const alias = 'alias/doomed-key';
    await k.client.call('CreateAlias', { AliasName: alias, KeyId: m.KeyId });
    const blob = (await k.client.encrypt(m.KeyId, Buffer.from('gone soon'))).CiphertextBlob;
    const labels = cmkObjects().map((o) => o.label);
    expect(labels).toContain(`kmsd:cmk:${m.PrimaryKeyVersion}`);
    expect(labels).toContain(`kmsd:cmk:${v2}`);

    const scheduledAt = Date.now();
    const r = ctl(['ScheduleKeyDeletion', '--KeyId', m.KeyId, '--PendingWindowInDays', '7']);
    expect(r.KeyId).toBe(m.KeyId);
    expect(r.DeleteDate).toMatch(ISO);
    const due = Date.parse(r.DeleteDate);
    expect(due).toBeGreaterThanOrEqual(Math.floor((scheduledAt + 7000) / 1000) * 1000 - 1000);
    expect(due).toBeLessThanOrEqual(Date.now() + 7000 + 1000);
    const meta = await describeKey(m.KeyId);
    expect(meta).toMatchObject({ KeyState: 'PendingDeletion', DeleteDate: r.DeleteDate });
    // Unusable while pending; the blob made before is refused, not decrypted.
    await rpcFails('Decrypt', { CiphertextBlob: blob }, 'Rejected.PendingDeletion');
    doomed = { keyId: m.KeyId, versions: [m.PrimaryKeyVersion, v2], scheduledAt, deleteDate: r.DeleteDate, alias, blob };
  });

  it('is not deleted before the window ends', async () => {
    // Token objects are listed first: the scheduler destroys them before the metadata, in one
    // synchronous step, so metadata still there afterwards means the objects were there before.
    const labels = cmkObjects().map((o) => o.label);
    const r = await k.client.call('DescribeKey', { KeyId: doomed!.keyId }).then(
      (x) => x.KeyMetadata,
      (e: KmsClientError) => e,
    );
    if (r instanceof KmsClientError) {
      // Only acceptable once the window is over (a very slow machine).
      expect(r.code).toBe('Forbidden.KeyNotFound');
      expect(Date.now()).toBeGreaterThanOrEqual(Date.parse(doomed!.deleteDate));
    } else {
      expect(r.KeyState).toBe('PendingDeletion');
      for (const v of doomed!.versions) expect(labels).toContain(`kmsd:cmk:${v}`);
    }
  });
});

describe('UpdateKeyDescription, EnableKey, DisableKey', () => {
  it('walks Enabled → Disabled → Enabled through kmsctl, with Rejected.Disabled in between', () => {
    const m = ctl(['CreateKey', '--ProtectionLevel', 'HSM']).KeyMetadata;
    const blob = ctl(['Encrypt', '--KeyId', m.KeyId, '--Plaintext', b64('hello')]).CiphertextBlob;

    expect(ctl(['UpdateKeyDescription', '--KeyId', m.KeyId, '--Description', 'new words'])).toEqual({});
    expect(ctl(['DescribeKey', '--KeyId', m.KeyId]).KeyMetadata.Description).toBe('new words');

    expect(ctl(['DisableKey', '--KeyId', m.KeyId])).toEqual({});
    expect(ctl(['DescribeKey', '--KeyId', m.KeyId]).KeyMetadata.KeyState).toBe('Disabled');
    const e = ctlFails(['Encrypt', '--KeyId', m.KeyId, '--Plaintext', b64('x')], 'Rejected.Disabled');
    expect(e.Message).toContain(m.KeyId);
    ctlFails(['Decrypt', '--CiphertextBlob', blob], 'Rejected.Disabled');
    ctlFails(['GenerateDataKey', '--KeyId', m.KeyId], 'Rejected.Disabled');
    ctlFails(['CreateKeyVersion', '--KeyId', m.KeyId], 'Rejected.Disabled');
    // A Disabled CMK keeps its description editable.
    expect(ctl(['UpdateKeyDescription', '--KeyId', m.KeyId, '--Description', 'while disabled'])).toEqual({});

    expect(ctl(['EnableKey', '--KeyId', m.KeyId])).toEqual({});
    const after = ctl(['DescribeKey', '--KeyId', m.KeyId]).KeyMetadata;
    expect(after).toMatchObject({ KeyState: 'Enabled', Description: 'while disabled' });
    expect(Buffer.from(ctl(['Decrypt', '--CiphertextBlob', blob]).Plaintext, 'base64').toString()).toBe('hello');
  });

  it('gives the gRPC status of the error table for each Disabled rejection', async () => {
    const m = await createKey();
    const blob = (await k.client.encrypt(m.KeyId, Buffer.from('x'))).CiphertextBlob;
    const other = await createKey();
    await k.client.call('DisableKey', { KeyId: m.KeyId });
    // Disabling twice is harmless.
    await k.client.call('DisableKey', { KeyId: m.KeyId });
    await rpcFails('Encrypt', { KeyId: m.KeyId, Plaintext: b64('x') }, 'Rejected.Disabled');
    await rpcFails('Decrypt', { CiphertextBlob: blob }, 'Rejected.Disabled');
    await rpcFails('GenerateDataKey', { KeyId: m.KeyId }, 'Rejected.Disabled');
    await rpcFails('GenerateDataKeyWithoutPlaintext', { KeyId: m.KeyId }, 'Rejected.Disabled');
    await rpcFails('ReEncrypt', { CiphertextBlob: blob, DestinationKeyId: other.KeyId }, 'Rejected.Disabled');
    const otherBlob = (await k.client.encrypt(other.KeyId, Buffer.from('y'))).CiphertextBlob;
    await rpcFails('ReEncrypt', { CiphertextBlob: otherBlob, DestinationKeyId: m.KeyId }, 'Rejected.Disabled');
    await rpcFails('CreateKeyVersion', { KeyId: m.KeyId }, 'Rejected.Disabled');
    await rpcFails('CancelKeyDeletion', { KeyId: m.KeyId }, 'Rejected.NotPendingDeletion');
    expect((await describeKey(m.KeyId)).KeyState).toBe('Disabled');
    await k.client.call('EnableKey', { KeyId: m.KeyId });
    // Enabling an Enabled key is harmless.
    await k.client.call('EnableKey', { KeyId: m.KeyId });
    expect((await k.client.decrypt(blob)).Plaintext.toString()).toBe('x');
  });
});

describe('ScheduleKeyDeletion and CancelKeyDeletion', () => {
  it('rejects every use of a PendingDeletion CMK and restores the state before deletion on cancel (kmsctl)', () => {
    const m = ctl(['CreateKey']).KeyMetadata;
    const blob = ctl(['Encrypt', '--KeyId', m.KeyId, '--Plaintext', b64('keep me')]).CiphertextBlob;
    ctl(['DisableKey', '--KeyId', m.KeyId]);
    ctl(['ScheduleKeyDeletion', '--KeyId', m.KeyId, '--PendingWindowInDays', '366']);
    expect(ctl(['DescribeKey', '--KeyId', m.KeyId]).KeyMetadata.KeyState).toBe('PendingDeletion');
    ctlFails(['Encrypt', '--KeyId', m.KeyId, '--Plaintext', b64('x')], 'Rejected.PendingDeletion');
    ctlFails(['Decrypt', '--CiphertextBlob', blob], 'Rejected.PendingDeletion');
    ctlFails(['EnableKey', '--KeyId', m.KeyId], 'Rejected.PendingDeletion');
    ctlFails(['ScheduleKeyDeletion', '--KeyId', m.KeyId, '--PendingWindowInDays', '7'], 'Rejected.PendingDeletion');

    expect(ctl(['CancelKeyDeletion', '--KeyId', m.KeyId])).toEqual({});
    const back = ctl(['DescribeKey', '--KeyId', m.KeyId]).KeyMetadata;
    // Back to Disabled (the state before deletion), with no DeleteDate.
    expect(back).toMatchObject({ KeyState: 'Disabled', DeleteDate: '' });
    ctlFails(['CancelKeyDeletion', '--KeyId', m.KeyId], 'Rejected.NotPendingDeletion');
    ctl(['EnableKey', '--KeyId', m.KeyId]);
    expect(Buffer.from(ctl(['Decrypt', '--CiphertextBlob', blob]).Plaintext, 'base64').toString()).toBe('keep me');
  });

  it('maps each PendingDeletion rejection to FAILED_PRECONDITION through gRPC', async () => {
    const m = await createKey({ ProtectionLevel: 'HSM' });
    const blob = (await k.client.encrypt(m.KeyId, Buffer.from('z'))).CiphertextBlob;
    const r = await k.client.call('ScheduleKeyDeletion', { KeyId: m.KeyId, PendingWindowInDays: 30 });
    expect(r.KeyId).toBe(m.KeyId);
    await rpcFails('Encrypt', { KeyId: m.KeyId, Plaintext: b64('x') }, 'Rejected.PendingDeletion');
    await rpcFails('Decrypt', { CiphertextBlob: blob }, 'Rejected.PendingDeletion');
    await rpcFails('GenerateDataKey', { KeyId: m.KeyId }, 'Rejected.PendingDeletion');
    await rpcFails('CreateKeyVersion', { KeyId: m.KeyId }, 'Rejected.PendingDeletion');
    await rpcFails('EnableKey', { KeyId: m.KeyId }, 'Rejected.PendingDeletion');
    await rpcFails('DisableKey', { KeyId: m.KeyId }, 'Rejected.PendingDeletion');
    await rpcFails('UpdateKeyDescription', { KeyId: m.KeyId, Description: 'x' }, 'Rejected.PendingDeletion');
    await rpcFails('ReEncrypt', { CiphertextBlob: blob, DestinationKeyId: m.KeyId }, 'Rejected.PendingDeletion');
    await rpcFails('ScheduleKeyDeletion', { KeyId: m.KeyId, PendingWindowInDays: 7 }, 'Rejected.PendingDeletion');
    await rpcFails('CreateAlias', { AliasName: 'alias/pending-one', KeyId: m.KeyId }, 'Rejected.PendingDeletion');
    await k.client.call('CancelKeyDeletion', { KeyId: m.KeyId });
    expect(await describeKey(m.KeyId)).toMatchObject({ KeyState: 'Enabled', DeleteDate: '' });
    expect((await k.client.decrypt(blob)).Plaintext.toString()).toBe('z');
    await rpcFails('CancelKeyDeletion', { KeyId: m.KeyId }, 'Rejected.NotPendingDeletion');
  });

  it('an EXTERNAL CMK without material: Rejected.PendingImport, Rejected.ExternalKey, deletion and cancel back to PendingImport', async () => {
    const ext = ctl(['CreateKey', '--Origin', 'EXTERNAL']).KeyMetadata;
    ctlFails(['Encrypt', '--KeyId', ext.KeyId, '--Plaintext', b64('x')], 'Rejected.PendingImport');
    await rpcFails('Encrypt', { KeyId: ext.KeyId, Plaintext: b64('x') }, 'Rejected.PendingImport');
    await rpcFails('GenerateDataKey', { KeyId: ext.KeyId }, 'Rejected.PendingImport');
    await rpcFails('GenerateDataKeyWithoutPlaintext', { KeyId: ext.KeyId }, 'Rejected.PendingImport');
    await rpcFails('EnableKey', { KeyId: ext.KeyId }, 'Rejected.PendingImport');
    await rpcFails('DisableKey', { KeyId: ext.KeyId }, 'Rejected.PendingImport');
    await rpcFails('CreateKeyVersion', { KeyId: ext.KeyId }, 'Rejected.ExternalKey');
    await rpcFails('CreateKey', { Origin: 'EXTERNAL', EnableAutomaticRotation: true, RotationInterval: '30d' }, 'Rejected.ExternalKey');
    const other = await createKey();
    const otherBlob = (await k.client.encrypt(other.KeyId, Buffer.from('q'))).CiphertextBlob;
    await rpcFails('ReEncrypt', { CiphertextBlob: otherBlob, DestinationKeyId: ext.KeyId }, 'Rejected.PendingImport');
    // Description and aliases work without material.
    await k.client.call('UpdateKeyDescription', { KeyId: ext.KeyId, Description: 'waiting for material' });
    await k.client.call('CreateAlias', { AliasName: 'alias/external-waiting', KeyId: ext.KeyId });
    expect((await describeKey('alias/external-waiting')).Description).toBe('waiting for material');
    // Nothing in the token for it.
    expect(cmkObjects().map((o) => o.label)).not.toContain(`kmsd:cmk:${ext.PrimaryKeyVersion}`);

    ctl(['ScheduleKeyDeletion', '--KeyId', ext.KeyId, '--PendingWindowInDays', '100']);
    expect((await describeKey(ext.KeyId)).KeyState).toBe('PendingDeletion');
    ctl(['CancelKeyDeletion', '--KeyId', ext.KeyId]);
    expect(await describeKey(ext.KeyId)).toMatchObject({ KeyState: 'PendingImport', DeleteDate: '' });
  });
});

describe('aliases', () => {
  it('CreateAlias/UpdateAlias/DeleteAlias/ListAliases/ListAliasesByKeyId through kmsctl', () => {
    const a = ctl(['CreateKey', '--ProtectionLevel', 'HSM']).KeyMetadata;
    const b = ctl(['CreateKey']).KeyMetadata;
    expect(ctl(['CreateAlias', '--AliasName', 'alias/app/orders', '--KeyId', a.KeyId])).toEqual({});
    ctl(['CreateAlias', '--AliasName', 'alias/app-2', '--KeyId', a.KeyId]);
    ctlFails(['CreateAlias', '--AliasName', 'alias/app/orders', '--KeyId', b.KeyId], 'EntityAlreadyExists.Alias');

    const byA = ctl(['ListAliasesByKeyId', '--KeyId', a.KeyId]);
    expect(byA.TotalCount).toBe(2);
    expect(byA.Aliases.map((x: any) => x.AliasName).sort()).toEqual(['alias/app-2', 'alias/app/orders']);
    for (const x of byA.Aliases) {
      expect(x.KeyId).toBe(a.KeyId);
      expect(x.AliasArn).toBe(`acs:kms:local:kmsd:${x.AliasName}`);
    }
    // ListAliasesByKeyId itself takes an alias.
    expect(ctl(['ListAliasesByKeyId', '--KeyId', 'alias/app-2']).TotalCount).toBe(2);

    const all = ctl(['ListAliases', '--PageSize', '100']);
    expect(all.Aliases.map((x: any) => x.AliasName)).toEqual(expect.arrayContaining(['alias/app/orders', 'alias/app-2']));
    const p1 = ctl(['ListAliases', '--PageNumber', '1', '--PageSize', '1']);
    expect(p1).toMatchObject({ PageNumber: 1, PageSize: 1 });
    expect(p1.Aliases).toHaveLength(1);
    // The deletion-window test's CMK, alias and all, may be deleted by the scheduler meanwhile: the
    // count is the one before or the one after.
    const after = ctl(['ListAliases', '--PageSize', '100']);
    expect(p1.TotalCount).toBeLessThanOrEqual(all.TotalCount);
    expect(p1.TotalCount).toBeGreaterThanOrEqual(after.TotalCount);
    expect(after.TotalCount).toBeGreaterThanOrEqual(2);

    // UpdateAlias moves it to b.
    expect(ctl(['UpdateAlias', '--AliasName', 'alias/app/orders', '--KeyId', b.KeyId])).toEqual({});
    expect(ctl(['DescribeKey', '--KeyId', 'alias/app/orders']).KeyMetadata.KeyId).toBe(b.KeyId);
    expect(ctl(['ListAliasesByKeyId', '--KeyId', a.KeyId]).TotalCount).toBe(1);
    expect(ctl(['ListAliasesByKeyId', '--KeyId', b.KeyId]).Aliases).toEqual([
      { AliasName: 'alias/app/orders', AliasArn: 'acs:kms:local:kmsd:alias/app/orders', KeyId: b.KeyId },
    ]);
    ctlFails(['UpdateAlias', '--AliasName', 'alias/never-made', '--KeyId', b.KeyId], 'Forbidden.AliasNotFound');

    expect(ctl(['DeleteAlias', '--AliasName', 'alias/app/orders'])).toEqual({});
    ctlFails(['DescribeKey', '--KeyId', 'alias/app/orders'], 'Forbidden.AliasNotFound');
    ctlFails(['DeleteAlias', '--AliasName', 'alias/app/orders'], 'Forbidden.AliasNotFound');
    // The CMK itself is untouched.
    expect(ctl(['DescribeKey', '--KeyId', b.KeyId]).KeyMetadata.KeyState).toBe('Enabled');
  });

  it('every KeyId parameter accepts alias/... (gRPC)', async () => {
    const m = await createKey({ ProtectionLevel: 'HSM' });
    const other = await createKey();
    const al = 'alias/every-param';
    await k.client.call('CreateAlias', { AliasName: al, KeyId: m.KeyId });
    await k.client.call('CreateAlias', { AliasName: 'alias/every-other', KeyId: other.KeyId });

    expect((await describeKey(al)).KeyId).toBe(m.KeyId);
    await k.client.call('UpdateKeyDescription', { KeyId: al, Description: 'by alias' });
    expect((await describeKey(m.KeyId)).Description).toBe('by alias');
    const enc = await k.client.call('Encrypt', { KeyId: al, Plaintext: b64('via alias'), EncryptionContext: { a: '1' } });
    expect(enc.KeyId).toBe(m.KeyId);
    const dec = await k.client.call('Decrypt', { CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { a: '1' }, KeyId: al });
    expect(Buffer.from(dec.Plaintext, 'base64').toString()).toBe('via alias');
    await rpcFails('Decrypt', { CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { a: '1' }, KeyId: 'alias/every-other' }, 'IncorrectKeyId');
    const dk = await k.client.call('GenerateDataKey', { KeyId: al });
    expect(dk.KeyId).toBe(m.KeyId);
    const dk2 = await k.client.call('GenerateDataKeyWithoutPlaintext', { KeyId: al });
    expect(dk2.KeyId).toBe(m.KeyId);
    const re = await k.client.call('ReEncrypt', { CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: { a: '1' }, DestinationKeyId: 'alias/every-other' });
    expect(re).toMatchObject({ KeyId: other.KeyId, SourceKeyId: m.KeyId });
    const v = (await k.client.call('CreateKeyVersion', { KeyId: al })).KeyVersion;
    expect(v.KeyId).toBe(m.KeyId);
    const list = await k.client.call('ListKeyVersions', { KeyId: al });
    expect(list.TotalCount).toBe(2);
    expect((await k.client.call('DescribeKeyVersion', { KeyId: al, KeyVersionId: v.KeyVersionId })).KeyVersion).toEqual(v);
    expect((await k.client.call('ListAliasesByKeyId', { KeyId: al })).Aliases.map((x: any) => x.AliasName)).toEqual([al]);
    await k.client.call('DisableKey', { KeyId: al });
    expect((await describeKey(m.KeyId)).KeyState).toBe('Disabled');
    await k.client.call('EnableKey', { KeyId: al });
    await k.client.call('ScheduleKeyDeletion', { KeyId: al, PendingWindowInDays: 200 });
    expect((await describeKey(m.KeyId)).KeyState).toBe('PendingDeletion');
    await k.client.call('CancelKeyDeletion', { KeyId: al });
    expect((await describeKey(m.KeyId)).KeyState).toBe('Enabled');

    // An alias that points nowhere, through gRPC: NOT_FOUND.
    await rpcFails('Encrypt', { KeyId: 'alias/nobody-home', Plaintext: b64('x') }, 'Forbidden.AliasNotFound');
    await rpcFails('DeleteAlias', { AliasName: 'alias/nobody-home' }, 'Forbidden.AliasNotFound');
    await rpcFails('CreateAlias', { AliasName: al, KeyId: other.KeyId }, 'EntityAlreadyExists.Alias');
    // CreateAlias/UpdateAlias take an alias as KeyId too: the new alias names that alias's CMK, and
    // stays with it when the first alias moves (aliases never chain).
    await k.client.call('CreateAlias', { AliasName: 'alias/alias-of-alias', KeyId: al });
    await k.client.call('UpdateAlias', { AliasName: al, KeyId: other.KeyId });
    expect((await describeKey('alias/alias-of-alias')).KeyId).toBe(m.KeyId);
    expect((await describeKey(al)).KeyId).toBe(other.KeyId);
    await k.client.call('UpdateAlias', { AliasName: al, KeyId: 'alias/alias-of-alias' });
    expect((await describeKey(al)).KeyId).toBe(m.KeyId);
    const listed = (await k.client.call('ListAliasesByKeyId', { KeyId: m.KeyId })).Aliases.map((x: any) => x.AliasName);
    expect(listed.sort()).toEqual(['alias/alias-of-alias', al].sort());
    await rpcFails('CreateAlias', { AliasName: 'alias/via-missing', KeyId: 'alias/nobody-home' }, 'Forbidden.AliasNotFound');
  });
});

describe('Encrypt, Decrypt, data keys, ReEncrypt', () => {
  for (const level of ['HSM', 'SOFTWARE']) {
    it(`round-trips through kmsctl on a ${level} CMK, with an EncryptionContext`, async () => {
      const m = ctl(['CreateKey', '--ProtectionLevel', level]).KeyMetadata;
      const pt = Buffer.from(`secret for ${level} ✓`);
      const ctx = JSON.stringify({ purpose: 'test', tenant: 't1' });
      const enc = ctl(['Encrypt', '--KeyId', m.KeyId, '--Plaintext', pt.toString('base64'), '--EncryptionContext', ctx]);
      expect(enc).toMatchObject({ KeyId: m.KeyId, KeyVersionId: m.PrimaryKeyVersion });
      const blob = Buffer.from(enc.CiphertextBlob, 'base64');
      expect(blob.length).toBe(48 + pt.length + 16);
      expect(blob.toString('base64')).toBe(enc.CiphertextBlob);
      // Same plaintext twice → different blobs (fresh IV).
      const enc2 = await k.client.encrypt(m.KeyId, pt, JSON.parse(ctx));
      expect(enc2.CiphertextBlob).not.toBe(enc.CiphertextBlob);

      // Context keys in another order are the same context.
      const dec = ctl(['Decrypt', '--CiphertextBlob', enc.CiphertextBlob, '--EncryptionContext', JSON.stringify({ tenant: 't1', purpose: 'test' })]);
      expect(dec).toMatchObject({ KeyId: m.KeyId, KeyVersionId: m.PrimaryKeyVersion });
      expect(Buffer.from(dec.Plaintext, 'base64').equals(pt)).toBe(true);
      ctlFails(['Decrypt', '--CiphertextBlob', enc.CiphertextBlob], 'InvalidCiphertext');

      const dk = ctl(['GenerateDataKey', '--KeyId', m.KeyId, '--EncryptionContext', ctx]);
      expect(Buffer.from(dk.Plaintext, 'base64')).toHaveLength(32);
      const dkDec = ctl(['Decrypt', '--CiphertextBlob', dk.CiphertextBlob, '--EncryptionContext', ctx]);
      expect(dkDec.Plaintext).toBe(dk.Plaintext);

      const wp = ctl(['GenerateDataKeyWithoutPlaintext', '--KeyId', m.KeyId, '--KeySpec', 'AES_128']);
      expect(wp.Plaintext ?? '').toBe('');
      expect(Buffer.from(ctl(['Decrypt', '--CiphertextBlob', wp.CiphertextBlob]).Plaintext, 'base64')).toHaveLength(16);
    });
  }

  it('data key sizes, ReEncrypt between protection levels and contexts, Decrypt KeyId check (gRPC)', async () => {
    const hsm = await createKey({ ProtectionLevel: 'HSM' });
    const sw = await createKey({ ProtectionLevel: 'SOFTWARE' });
    for (const [req, n] of [
      [{}, 32],
      [{ KeySpec: 'AES_256' }, 32],
      [{ KeySpec: 'AES_128' }, 16],
      [{ NumberOfBytes: 64 }, 64],
      [{ NumberOfBytes: 1 }, 1],
      [{ NumberOfBytes: 1024 }, 1024],
    ] as const) {
      const dk = await k.client.call('GenerateDataKey', { KeyId: hsm.KeyId, ...req });
      const plain = Buffer.from(dk.Plaintext, 'base64');
      expect(plain).toHaveLength(n);
      expect((await k.client.decrypt(dk.CiphertextBlob)).Plaintext.equals(plain)).toBe(true);
    }
    // Two data keys differ.
    const d1 = await k.client.call('GenerateDataKey', { KeyId: sw.KeyId });
    const d2 = await k.client.call('GenerateDataKey', { KeyId: sw.KeyId });
    expect(d1.Plaintext).not.toBe(d2.Plaintext);

    const enc = await k.client.encrypt(hsm.KeyId, Buffer.from('move me'), { from: 'hsm' });
    const re = await k.client.call('ReEncrypt', {
      CiphertextBlob: enc.CiphertextBlob,
      SourceEncryptionContext: { from: 'hsm' },
      DestinationKeyId: sw.KeyId,
      DestinationEncryptionContext: { to: 'software' },
    });
    expect(re).toMatchObject({ KeyId: sw.KeyId, KeyVersionId: sw.PrimaryKeyVersion, SourceKeyId: hsm.KeyId, SourceKeyVersionId: hsm.PrimaryKeyVersion });
    const back = await k.client.decrypt(re.CiphertextBlob, { to: 'software' });
    expect(back).toMatchObject({ KeyId: sw.KeyId });
    expect(back.Plaintext.toString()).toBe('move me');
    await rpcFails('Decrypt', { CiphertextBlob: re.CiphertextBlob, EncryptionContext: { from: 'hsm' } }, 'InvalidCiphertext');
    // The source context is checked.
    await rpcFails('ReEncrypt', { CiphertextBlob: enc.CiphertextBlob, SourceEncryptionContext: { from: 'elsewhere' }, DestinationKeyId: sw.KeyId }, 'InvalidCiphertext');

    // Decrypt with the right KeyId works; with another CMK's id it is IncorrectKeyId.
    expect((await k.client.decrypt(enc.CiphertextBlob, { from: 'hsm' }, hsm.KeyId)).Plaintext.toString()).toBe('move me');
    const e = await rpcFails('Decrypt', { CiphertextBlob: enc.CiphertextBlob, EncryptionContext: { from: 'hsm' }, KeyId: sw.KeyId }, 'IncorrectKeyId');
    expect(e.message).toContain(hsm.KeyId);

    // The largest plaintext.
    const big = Buffer.alloc(6144, 7);
    const bigEnc = await k.client.encrypt(sw.KeyId, big);
    expect((await k.client.decrypt(bigEnc.CiphertextBlob)).Plaintext.equals(big)).toBe(true);
  });
});

describe('key versions', () => {
  it('CreateKeyVersion/ListKeyVersions/DescribeKeyVersion through kmsctl; old versions keep decrypting', () => {
    const m = ctl(['CreateKey', '--ProtectionLevel', 'HSM']).KeyMetadata;
    const v1 = m.PrimaryKeyVersion;
    const old = ctl(['Encrypt', '--KeyId', m.KeyId, '--Plaintext', b64('v1 data')]);
    expect(old.KeyVersionId).toBe(v1);
    const nv = ctl(['CreateKeyVersion', '--KeyId', m.KeyId]).KeyVersion;
    expect(nv.KeyId).toBe(m.KeyId);
    expect(nv.KeyVersionId).toMatch(UUID);
    expect(nv.KeyVersionId).not.toBe(v1);
    expect(nv.CreationDate).toMatch(ISO);
    expect(ctl(['DescribeKey', '--KeyId', m.KeyId]).KeyMetadata.PrimaryKeyVersion).toBe(nv.KeyVersionId);

    const list = ctl(['ListKeyVersions', '--KeyId', m.KeyId]);
    expect(list).toMatchObject({ TotalCount: 2, PageNumber: 1, PageSize: 10 });
    expect(list.KeyVersions.map((x: any) => x.KeyVersionId).sort()).toEqual([v1, nv.KeyVersionId].sort());
    const page2 = ctl(['ListKeyVersions', '--KeyId', m.KeyId, '--PageNumber', '2', '--PageSize', '1']);
    expect(page2.KeyVersions).toHaveLength(1);
    expect(page2.TotalCount).toBe(2);

    expect(ctl(['DescribeKeyVersion', '--KeyId', m.KeyId, '--KeyVersionId', v1]).KeyVersion).toMatchObject({ KeyId: m.KeyId, KeyVersionId: v1 });
    ctlFails(['DescribeKeyVersion', '--KeyId', m.KeyId, '--KeyVersionId', '00000000-0000-4000-8000-000000000001'], 'Forbidden.KeyVersionNotFound');

    const fresh = ctl(['Encrypt', '--KeyId', m.KeyId, '--Plaintext', b64('v2 data')]);
    expect(fresh.KeyVersionId).toBe(nv.KeyVersionId);
    const d1 = ctl(['Decrypt', '--CiphertextBlob', old.CiphertextBlob]);
    expect(d1.KeyVersionId).toBe(v1);
    expect(Buffer.from(d1.Plaintext, 'base64').toString()).toBe('v1 data');
    expect(ctl(['Decrypt', '--CiphertextBlob', fresh.CiphertextBlob]).KeyVersionId).toBe(nv.KeyVersionId);
  });

  it('a version of another CMK is Forbidden.KeyVersionNotFound (gRPC NOT_FOUND)', async () => {
    const a = await createKey();
    const b = await createKey();
    await rpcFails('DescribeKeyVersion', { KeyId: a.KeyId, KeyVersionId: b.PrimaryKeyVersion }, 'Forbidden.KeyVersionNotFound');
    expect((await k.client.call('DescribeKeyVersion', { KeyId: b.KeyId, KeyVersionId: b.PrimaryKeyVersion })).KeyVersion.KeyId).toBe(b.KeyId);
  });
});

describe('the token as pkcs11-tool sees it', () => {
  it('holds each HSM-level CMK version as a sensitive, never-extractable AES secret key; SOFTWARE versions are not token objects', async () => {
    const hsm = await createKey({ ProtectionLevel: 'HSM' });
    const v2 = (await k.client.call('CreateKeyVersion', { KeyId: hsm.KeyId })).KeyVersion.KeyVersionId;
    const sw = await createKey({ ProtectionLevel: 'SOFTWARE' });
    const swV2 = (await k.client.call('CreateKeyVersion', { KeyId: sw.KeyId })).KeyVersion.KeyVersionId;

    const objects = cmkObjects();
    const byLabel = new Map(objects.map((o) => [o.label, o]));
    for (const id of [hsm.PrimaryKeyVersion, v2]) {
      const o = byLabel.get(`kmsd:cmk:${id}`);
      expect(o, `token object for version ${id}`).toBeDefined();
      expect(o!.type).toBe('Secret Key Object');
      expect(o!.raw).toMatch(/AES length 32/);
      const access = o!.access.split(',').map((s) => s.trim());
      expect(access).toContain('sensitive');
      expect(access).toContain('never extractable');
      expect(access).not.toContain('extractable');
      const usage = o!.usage.split(',').map((s) => s.trim());
      expect(usage).toEqual(expect.arrayContaining(['encrypt', 'decrypt']));
      expect(usage).not.toContain('wrap');
      expect(usage).not.toContain('unwrap');
    }
    expect(byLabel.has(`kmsd:cmk:${sw.PrimaryKeyVersion}`)).toBe(false);
    expect(byLabel.has(`kmsd:cmk:${swV2}`)).toBe(false);

    // Every HSM-level version the daemon knows is in the token, and every kmsd:cmk object is sensitive
    // and never extractable.
    for (const o of objects) {
      expect(o.access, o.label).toMatch(/(^|, )sensitive(,|$)/);
      expect(o.access, o.label).toMatch(/never extractable/);
    }
    const listed = await k.client.call('ListKeys', { PageSize: 100 });
    for (const key of listed.Keys) {
      const meta = await describeKey(key.KeyId);
      if (meta.ProtectionLevel !== 'HSM' || meta.Origin === 'EXTERNAL') continue;
      const versions = await k.client.call('ListKeyVersions', { KeyId: key.KeyId, PageSize: 100 });
      for (const ver of versions.KeyVersions) expect(byLabel.has(`kmsd:cmk:${ver.KeyVersionId}`), ver.KeyVersionId).toBe(true);
    }
  });
});

describe('deletion window end', () => {
  it('destroys the CMK, its aliases and its token objects when the window ends (~7 s)', async () => {
    expect(doomed).toBeDefined();
    if (!doomed) return;
    // The tests in between may have outlasted the window already; look at least once.
    const deadline = Math.max(doomed.scheduledAt + 15_000, Date.now() + 2000);
    let gone = false;
    let goneAt = 0;
    while (Date.now() < deadline) {
      const r = await k.client.call('DescribeKey', { KeyId: doomed.keyId }).then(
        () => null,
        (e: KmsClientError) => e,
      );
      if (r) {
        expect(r.code).toBe('Forbidden.KeyNotFound');
        gone = true;
        goneAt = Date.now();
        break;
      }
      await sleep(200);
    }
    expect(gone).toBe(true);
    // Not before the window (7 × 1 s) ended.
    expect(goneAt).toBeGreaterThanOrEqual(Date.parse(doomed.deleteDate));
    expect(goneAt - doomed.scheduledAt).toBeGreaterThanOrEqual(6000);
    await rpcFails('DescribeKey', { KeyId: doomed.keyId }, 'Forbidden.KeyNotFound');
    ctlFails(['DescribeKey', '--KeyId', doomed.keyId], 'Forbidden.KeyNotFound');
    await rpcFails('DescribeKey', { KeyId: doomed.alias }, 'Forbidden.AliasNotFound');
    // Its ciphertexts name a CMK that no longer exists.
    await rpcFails('Decrypt', { CiphertextBlob: doomed.blob }, 'Forbidden.KeyNotFound');
    const labels = cmkObjects().map((o) => o.label);
    for (const v of doomed.versions) expect(labels).not.toContain(`kmsd:cmk:${v}`);
    const keys = await k.client.call('ListKeys', { PageSize: 100 });
    expect(keys.Keys.map((x: any) => x.KeyId)).not.toContain(doomed.keyId);
    // The daemon keeps serving.
    const m = await createKey();
    expect(m.KeyState).toBe('Enabled');
  });
});

describe('the independent token auditor', () => {
  it('finds every object of the token this file left behind in its role and explained by the store (exit 0)', async () => {
    // Stopped first: a settled store and token, with no background wrapping-key generation in flight.
    expect(await k.stop()).toBe(0);
    const audit = auditToken(auditArgsFor(k.dataDir));
    expect(audit.code, `audit-token after the lifecycle: ${describeFindings(audit)}`).toBe(0);
    expect(audit.report.summary.byRole.cmk).toBeGreaterThan(0);
    expect(audit.report.summary.byRole.root).toBe(1);
    expect(audit.report.summary.byRole['sign-private']).toBe(1);
  });
});
