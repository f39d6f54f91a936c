// Persistence across restarts, against the real kmsd on its development token: every CMK, alias,
// version and state survives a graceful restart (SIGTERM → exit 0) and a crash (SIGKILL); every
// ciphertext made before decrypts after, for HSM and SOFTWARE keys. Then, with the daemon stopped,
// the test reads the SOFTWARE material through the token's root key and checks that those bytes
// appear nowhere in the data directory. Last, start-up reconciliation: an HSM version whose token
// object was destroyed behind kmsd's back is reported and marked, not dropped.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import Database from 'better-sqlite3';
import * as grpc from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { clientErrorOf } from '../helpers/errors';
import { HsmToken } from '../../src/hsm/token';
import { ROOT_KEY_ID } from '../../src/kms/keyring';
import { Kmsd, listTokenObjects, makeTempDir, startKmsd } from '../helpers/daemon';

const dataDir = makeTempDir('kmsd-persist-');
let k: Kmsd | undefined;

afterAll(async () => {
  await k?.stop();
  fs.rmSync(dataDir, { recursive: true, force: true });
});

async function start(): Promise<Kmsd> {
  k = await startKmsd({ dataDir, keep: true });
  return k;
}

interface Blob {
  blob: string;
  plaintext: string;
  ctx?: Record<string, string>;
  keyId: string;
  versionId: string;
}

/** Everything the daemon answers about its keys, for before/after comparisons. */
async function snapshot(d: Kmsd) {
  const keys = await d.client.call('ListKeys', { PageSize: 100 });
  const out: Record<string, unknown> = { TotalCount: keys.TotalCount };
  for (const key of keys.Keys) {
    out[key.KeyId] = {
      meta: (await d.client.call('DescribeKey', { KeyId: key.KeyId })).KeyMetadata,
      versions: (await d.client.call('ListKeyVersions', { KeyId: key.KeyId, PageSize: 100 })).KeyVersions,
      aliases: (await d.client.call('ListAliasesByKeyId', { KeyId: key.KeyId, PageSize: 100 })).Aliases,
    };
  }
  out.aliases = (await d.client.call('ListAliases', { PageSize: 100 })).Aliases;
  return out;
}

const ids: Record<string, string> = {};
const blobs: Blob[] = [];
let before: Record<string, unknown>;

describe('restart', () => {
  it('builds state: HSM and SOFTWARE keys with two versions, aliases, Disabled, PendingDeletion, PendingImport, auto-rotation', async () => {
    const d = await start();
    const c = d.client;
    for (const level of ['HSM', 'SOFTWARE']) {
      const m = (await c.call('CreateKey', { ProtectionLevel: level, Description: `persisted ${level}` })).KeyMetadata;
      ids[level] = m.KeyId;
      await c.call('CreateAlias', { AliasName: `alias/persist/${level.toLowerCase()}`, KeyId: m.KeyId });
      const e1 = await c.encrypt(m.KeyId, Buffer.from(`${level} v1`), { app: 'persist' });
      blobs.push({ blob: e1.CiphertextBlob, plaintext: `${level} v1`, ctx: { app: 'persist' }, keyId: m.KeyId, versionId: e1.KeyVersionId });
      const v2 = (await c.call('CreateKeyVersion', { KeyId: m.KeyId })).KeyVersion.KeyVersionId;
      const e2 = await c.encrypt(m.KeyId, Buffer.from(`${level} v2`));
      expect(e2.KeyVersionId).toBe(v2);
      blobs.push({ blob: e2.CiphertextBlob, plaintext: `${level} v2`, keyId: m.KeyId, versionId: v2 });
      const dk = await c.call('GenerateDataKey', { KeyId: m.KeyId, EncryptionContext: { dk: level } });
      blobs.push({ blob: dk.CiphertextBlob, plaintext: Buffer.from(dk.Plaintext, 'base64').toString('latin1'), ctx: { dk: level }, keyId: m.KeyId, versionId: v2 });
    }
    const disabled = (await c.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata;
    ids.disabled = disabled.KeyId;
    const de = await c.encrypt(disabled.KeyId, Buffer.from('disabled data'));
    blobs.push({ blob: de.CiphertextBlob, plaintext: 'disabled data', keyId: disabled.KeyId, versionId: de.KeyVersionId });
    await c.call('DisableKey', { KeyId: disabled.KeyId });

    const pending = (await c.call('CreateKey', {})).KeyMetadata;
    ids.pending = pending.KeyId;
    const pe = await c.encrypt(pending.KeyId, Buffer.from('pending data'));
    blobs.push({ blob: pe.CiphertextBlob, plaintext: 'pending data', keyId: pending.KeyId, versionId: pe.KeyVersionId });
    await c.call('ScheduleKeyDeletion', { KeyId: pending.KeyId, PendingWindowInDays: 30 });

    ids.external = (await c.call('CreateKey', { Origin: 'EXTERNAL', Description: 'no material yet' })).KeyMetadata.KeyId;
    await c.call('CreateAlias', { AliasName: 'alias/persist/external', KeyId: ids.external });
    ids.rotating = (await c.call('CreateKey', { EnableAutomaticRotation: true, RotationInterval: '30d' })).KeyMetadata.KeyId;
    // An alias moved to another key, and one deleted: the final bindings must survive.
    await c.call('CreateAlias', { AliasName: 'alias/persist/moved', KeyId: ids.HSM });
    await c.call('UpdateAlias', { AliasName: 'alias/persist/moved', KeyId: ids.SOFTWARE });
    await c.call('CreateAlias', { AliasName: 'alias/persist/deleted', KeyId: ids.HSM });
    await c.call('DeleteAlias', { AliasName: 'alias/persist/deleted' });

    before = await snapshot(d);
    expect(before.TotalCount).toBe(6);
  });

  it('SIGTERM exits 0; after restart every key, alias, version and state is the same', async () => {
    expect(await k!.stop()).toBe(0);
    const d = await start();
    expect(await snapshot(d)).toEqual(before);
    expect((await d.client.call('DescribeKey', { KeyId: 'alias/persist/moved' })).KeyMetadata.KeyId).toBe(ids.SOFTWARE);
    expect((await clientErrorOf(d.client.call('DescribeKey', { KeyId: 'alias/persist/deleted' }))).code).toBe('Forbidden.AliasNotFound');
    const meta = (id: string) => (before[id] as { meta: any }).meta;
    expect(meta(ids.disabled).KeyState).toBe('Disabled');
    expect(meta(ids.pending).KeyState).toBe('PendingDeletion');
    expect(meta(ids.pending).DeleteDate).not.toBe('');
    expect(meta(ids.external).KeyState).toBe('PendingImport');
    expect(meta(ids.rotating)).toMatchObject({ AutomaticRotation: 'Enabled', RotationInterval: '2592000s' });
  });

  it('every ciphertext made before the restart decrypts after it (HSM and SOFTWARE, both versions, data keys)', async () => {
    const c = k!.client;
    for (const b of blobs) {
      if (b.keyId === ids.disabled || b.keyId === ids.pending) continue;
      const r = await c.decrypt(b.blob, b.ctx);
      expect(r.KeyId).toBe(b.keyId);
      expect(r.KeyVersionId).toBe(b.versionId);
      expect(r.Plaintext.toString('latin1')).toBe(b.plaintext);
    }
    // States still enforce, and are reversible after the restart.
    const dis = blobs.find((b) => b.keyId === ids.disabled)!;
    const e1 = await clientErrorOf(c.decrypt(dis.blob));
    expect(e1.code).toBe('Rejected.Disabled');
    expect(e1.grpcCode).toBe(grpc.status.FAILED_PRECONDITION);
    await c.call('EnableKey', { KeyId: ids.disabled });
    expect((await c.decrypt(dis.blob)).Plaintext.toString()).toBe('disabled data');
    const pen = blobs.find((b) => b.keyId === ids.pending)!;
    expect((await clientErrorOf(c.decrypt(pen.blob))).code).toBe('Rejected.PendingDeletion');
    await c.call('CancelKeyDeletion', { KeyId: ids.pending });
    expect((await c.decrypt(pen.blob)).Plaintext.toString()).toBe('pending data');
    expect((await clientErrorOf(c.encrypt(ids.external, Buffer.from('x')))).code).toBe('Rejected.PendingImport');
    // New work after the restart uses the newest versions.
    const e = await c.encrypt('alias/persist/hsm', Buffer.from('after'));
    expect(e.KeyVersionId).toBe(blobs[1].versionId);
  });

  it('a crash (SIGKILL) loses nothing that was acknowledged', async () => {
    const c = k!.client;
    const m = (await c.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata;
    await c.call('CreateAlias', { AliasName: 'alias/persist/crash', KeyId: m.KeyId });
    const v2 = (await c.call('CreateKeyVersion', { KeyId: m.KeyId })).KeyVersion.KeyVersionId;
    const e = await c.encrypt(m.KeyId, Buffer.from('acknowledged'));
    const sw = (await c.call('CreateKey', {})).KeyMetadata;
    const se = await c.encrypt(sw.KeyId, Buffer.from('acknowledged too'));
    await c.call('DisableKey', { KeyId: ids.SOFTWARE });
    await k!.kill();

    const d = await start();
    expect((await d.client.call('DescribeKey', { KeyId: 'alias/persist/crash' })).KeyMetadata).toMatchObject({ KeyId: m.KeyId, PrimaryKeyVersion: v2 });
    expect((await d.client.decrypt(e.CiphertextBlob)).Plaintext.toString()).toBe('acknowledged');
    expect((await d.client.decrypt(se.CiphertextBlob)).Plaintext.toString()).toBe('acknowledged too');
    expect((await d.client.call('DescribeKey', { KeyId: ids.SOFTWARE })).KeyMetadata.KeyState).toBe('Disabled');
    await d.client.call('EnableKey', { KeyId: ids.SOFTWARE });
    // No orphan and nothing missing: reconciliation had nothing to do.
    expect(d.logs()).toMatch(/"destroyedOrphans":\[\],"missing":\[\]/);
  });
});

describe('SOFTWARE key material at rest', () => {
  it('appears nowhere in the data directory in the clear (read through the root key with the daemon stopped)', async () => {
    expect(await k!.stop()).toBe(0);
    const env = k!.tokenEnv();

    const db = new Database(path.join(dataDir, 'kmsd.sqlite'), { readonly: true, fileMustExist: true });
    const rows = db
      .prepare("SELECT v.version_id, v.key_id, v.software_wrapped FROM key_versions v JOIN cmks c ON c.key_id = v.key_id WHERE c.protection_level = 'SOFTWARE' AND v.software_wrapped IS NOT NULL")
      .all() as { version_id: string; key_id: string; software_wrapped: Buffer }[];
    const hsmRows = db
      .prepare("SELECT v.software_wrapped FROM key_versions v JOIN cmks c ON c.key_id = v.key_id WHERE c.protection_level = 'HSM'")
      .all() as { software_wrapped: Buffer | null }[];
    db.close();
    // SOFTWARE keys: SOFTWARE, its second version, pending, rotating, the crash one.
    expect(rows.length).toBeGreaterThanOrEqual(5);
    // HSM-level material is never in the store at all.
    expect(hsmRows.length).toBeGreaterThanOrEqual(4);
    for (const r of hsmRows) expect(r.software_wrapped).toBeNull();

    process.env.SOFTHSM2_CONF = env.SOFTHSM2_CONF;
    const token = HsmToken.open({ modulePath: env.module, tokenLabel: 'kmsd-dev', pin: env.pin });
    const materials: { versionId: string; keyId: string; material: Buffer; wrapped: Buffer }[] = [];
    try {
      for (const r of rows) {
        const material = token.unwrapFromRoot(ROOT_KEY_ID, r.software_wrapped);
        expect(material).toHaveLength(32);
        // The wrap is not the material (RFC 5649 adds 8 bytes and changes every byte).
        expect(r.software_wrapped.length).toBe(40);
        expect(r.software_wrapped.includes(material)).toBe(false);
        materials.push({ versionId: r.version_id, keyId: r.key_id, material, wrapped: r.software_wrapped });
      }
    } finally {
      token.close();
    }
    expect(new Set(materials.map((m) => m.material.toString('hex'))).size).toBe(materials.length);

    // It is the real material: a blob made before decrypts offline with it.
    const sample = blobs.find((b) => b.keyId === ids.SOFTWARE && !b.ctx)!;
    const mat = materials.find((m) => m.versionId === sample.versionId)!.material;
    const raw = Buffer.from(sample.blob, 'base64');
    const dec = crypto.createDecipheriv('aes-256-gcm', mat, raw.subarray(36, 48));
    dec.setAAD(raw.subarray(0, 48));
    dec.setAuthTag(raw.subarray(raw.length - 16));
    expect(Buffer.concat([dec.update(raw.subarray(48, raw.length - 16)), dec.final()]).toString()).toBe(sample.plaintext);

    // Every file under the data directory, binary, recursively (SQLite, WAL, token files, logs...).
    const files: string[] = [];
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) walk(p);
        else if (e.isFile()) files.push(p);
      }
    };
    walk(dataDir);
    expect(files.some((f) => f.endsWith('kmsd.sqlite'))).toBe(true);
    expect(files.some((f) => f.includes(`${path.sep}tokens${path.sep}`))).toBe(true);
    const contents = files.map((f) => ({ f, bytes: fs.readFileSync(f) }));
    for (const m of materials) {
      // Positive control: the search does find the wrapped form where it is stored.
      expect(contents.some((c) => c.bytes.includes(m.wrapped)), `wrapped ${m.versionId} found`).toBe(true);
      for (const form of [m.material, Buffer.from(m.material.toString('hex')), Buffer.from(m.material.toString('base64'))]) {
        const hit = contents.find((c) => c.bytes.includes(form));
        expect(hit?.f, `material of ${m.versionId} in the clear`).toBeUndefined();
      }
    }
    // Nor in what the daemon printed.
    for (const m of materials) {
      expect(k!.logs()).not.toContain(m.material.toString('base64'));
      expect(k!.logs()).not.toContain(m.material.toString('hex'));
    }
    for (const m of materials) m.material.fill(0);
  });
});

describe('start-up reconciliation', () => {
  it('reports and marks an HSM version whose token object is gone; other keys keep working', async () => {
    const victim = (before[ids.HSM] as { meta: any }).meta.PrimaryKeyVersion as string;
    const env = k!.tokenEnv();
    const del = spawnSync(
      'pkcs11-tool',
      ['--module', env.module, '--token-label', 'kmsd-dev', '--login', '--pin', env.pin, '--delete-object', '--type', 'secrkey', '--label', `kmsd:cmk:${victim}`],
      { encoding: 'utf8', env: { ...process.env, SOFTHSM2_CONF: env.SOFTHSM2_CONF } },
    );
    expect(del.status, del.stderr).toBe(0);

    const d = await start();
    expect(listTokenObjects(d).map((o) => o.label)).not.toContain(`kmsd:cmk:${victim}`);
    const line = d
      .logs()
      .split('\n')
      .find((l) => l.includes('reconciled metadata with the token'));
    expect(line).toBeDefined();
    expect(JSON.parse(line!).missing).toEqual([victim]);
    // Still listed, still described: not silently dropped.
    const meta = (await d.client.call('DescribeKey', { KeyId: ids.HSM })).KeyMetadata;
    expect(meta.PrimaryKeyVersion).toBe(victim);
    expect((await d.client.call('ListKeyVersions', { KeyId: ids.HSM })).TotalCount).toBe(2);
    const e = await clientErrorOf(d.client.encrypt(ids.HSM, Buffer.from('x')));
    expect(e.code).toBe('Rejected.KeyMaterialMissing');
    expect(e.grpcCode).toBe(grpc.status.FAILED_PRECONDITION);
    const old = blobs.find((b) => b.versionId === victim)!;
    expect((await clientErrorOf(d.client.decrypt(old.blob, old.ctx))).code).toBe('Rejected.KeyMaterialMissing');
    // The first version of the same CMK and the other CMKs are fine.
    const v1 = blobs.find((b) => b.keyId === ids.HSM && b.versionId !== victim)!;
    expect((await d.client.decrypt(v1.blob, v1.ctx)).Plaintext.toString()).toBe(v1.plaintext);
    const s = blobs.find((b) => b.keyId === ids.SOFTWARE)!;
    expect((await d.client.decrypt(s.blob, s.ctx)).Plaintext.toString()).toBe(s.plaintext);
    expect((await d.client.encrypt(ids.SOFTWARE, Buffer.from('ok'))).KeyId).toBe(ids.SOFTWARE);
  });
});
