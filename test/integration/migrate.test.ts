// kmsd migrate: a single-node SQLite store copied into an empty PostgreSQL store, every row of every
// table, the audit chain record for record; a non-empty target, a running kmsd on the source and a
// password in the URL refused. Real PostgreSQL (test/helpers/postgres.ts), the real kmsd binary.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toRecord } from '../../src/audit/audit';
import { loadMigrateConfig } from '../../src/config';
import { GENESIS_HASH, recordHash } from '../../src/audit/chain';
import { AuditStore, type AuditRow } from '../../src/store/audit-store';
import { CeremonyStore } from '../../src/store/ceremony-store';
import { lockDataDir } from '../../src/store/data-dir-lock';
import { PgStore } from '../../src/store/pg/pg-store';
import { Store } from '../../src/store/store';
import { XksStore } from '../../src/store/xks-store';
import { startPostgres, type PgCluster, type PgDatabase } from '../helpers/postgres';

let cluster: PgCluster;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-migrate-'));
const dataDir = path.join(tmp, 'data');

beforeAll(async () => {
  cluster = await startPostgres();
  fillSqlite(dataDir);
});

afterAll(async () => {
  await cluster?.stop();
  fs.rmSync(tmp, { recursive: true, force: true });
});

const AUDIT_RECORDS = 7;

/** A single-node store with a row in every table, written through the SQLite store's own calls. */
function fillSqlite(dir: string): void {
  const store = new Store(dir);
  try {
    const now = 1_760_000_000_000;
    store.setInstanceId('inst-0123456789abcdef');
    store.raiseTokenSequence(41);
    for (const [i, origin] of ['Aliyun_KMS', 'EXTERNAL'].entries()) {
      const keyId = `key-${i}`;
      store.insertCmk({
        key_id: keyId, origin, key_spec: 'Aliyun_AES_256', key_usage: 'ENCRYPT/DECRYPT', protection_level: i ? 'HSM' : 'SOFTWARE', description: `café ${i}`,
        key_state: i ? 'PendingImport' : 'Enabled', creation_date: now + i, delete_date: null, material_expire_time: i ? now + 86_400_000 : null,
        automatic_rotation: 'Disabled', rotation_interval_s: null, next_rotation_date: null, last_rotation_date: null, primary_key_version: `${keyId}-v1`,
        material_fingerprint: i ? Buffer.from('fingerprint') : null, state_before_deletion: null, import_path: i ? 'host-assisted' : null,
      });
      store.insertVersion({ version_id: `${keyId}-v1`, key_id: keyId, creation_date: now, software_wrapped: i ? null : Buffer.from([0, 1, 2, 255]), material_state: 'Present' });
      store.insertAlias({ alias_name: `alias/k${i}`, key_id: keyId, creation_date: now, update_date: now });
    }
    store.updateCmk('key-1', { state_after_import: 'Disabled' });
    store.insertWrappingKey({ wrap_id: 'wrap-issued', key_spec: 'RSA_2048', raw_decrypt: 0, public_key: Buffer.from('spki'), created: now, key_id: 'key-1', algorithm: 'RSAES_OAEP_SHA_256', expires: now + 1000 });
    store.insertWrappingKey({ wrap_id: 'wrap-pooled', key_spec: 'RSA_2048', raw_decrypt: 1, public_key: Buffer.from('spki2'), created: now, key_id: null, algorithm: null, expires: null });
    store.countFailedImport('wrap-issued');
    store.openIntent('cmk', 'key-9-v1', now);
    store.addPendingDestroy('wrap', 'wrap-old', null, 'wrapping-key-expired', now);
    store.insertAccessKey({ access_key_id: 'AK1', principal: 'alice', status: 'Enabled', sealed_secret: Buffer.from('sealed'), creation_date: now, update_date: now });
    const xks = new XksStore(store);
    xks.insertKeyStore({ uri_path_prefix: 'ks1', creation_date: now });
    xks.insertCredential({ access_key_id: 'XKSAK', uri_path_prefix: 'ks1', sealed_secret: Buffer.from('xsealed'), creation_date: now });
    xks.insertKey({ uri_path_prefix: 'ks1', external_key_id: 'ext-1', key_id: 'key-0', operations: 'ENCRYPT,DECRYPT', creation_date: now });
    const ceremony = new CeremonyStore(store);
    ceremony.replaceCustodianSet([{ custodian_id: 'c1', public_key: Buffer.from('pk1'), fingerprint: 'f1' }, { custodian_id: 'c2', public_key: Buffer.from('pk2'), fingerprint: 'f2' }], 2, now, true);
    ceremony.setPolicyJson('{"ScheduleKeyDeletion":2}');
    ceremony.insertProposal({ proposal_id: 'p1', revision: 1, action: 'ScheduleKeyDeletion', key_id: 'key-0', parameters: '{}', document: Buffer.from('doc1'), requester: 'bob', created_at: now, expires_at: now + 1000, state: 'Open', closed_at: null, outcome: null, result: null });
    ceremony.reviseProposal('p1', 2, Buffer.from('doc2'), now + 2000);
    ceremony.insertApproval({ proposal_id: 'p1', revision: 2, custodian_id: 'c1', key_fingerprint: 'f1', signature: Buffer.from('sig'), approved_at: now });
    const audit = new AuditStore(store);
    let prev = GENESIS_HASH;
    for (let seq = 1; seq <= AUDIT_RECORDS; seq++) {
      const row: AuditRow = { seq, time: now + seq, request_id: `req-${seq}`, principal: 'alice', action: seq === AUDIT_RECORDS ? 'AuditCheckpoint' : 'CreateKey', key_id: 'key-0', proposal_id: '', outcome: 'Success', details: JSON.stringify({ n: seq, s: 'ü' }), prev_hash: prev, hash: '' };
      row.hash = recordHash(toRecord(row));
      audit.insert(row);
      prev = row.hash;
    }
    audit.addCounters([{ key_id: 'key-0', principal: 'alice', action: 'Encrypt', ok: 10, errors: 1, first_at: now, last_at: now + 5 }]);
  } finally {
    store.close();
  }
}

function kmsdMigrate(args: string[]) {
  return spawnSync(process.execPath, ['bin/kmsd.js', 'migrate', ...args], { encoding: 'utf8', timeout: 60_000 });
}

function open(db: PgDatabase): Promise<PgStore> {
  return PgStore.open({ host: db.host, port: db.port, user: db.user, password: db.password, database: db.database, maxConnections: 2 });
}

describe('kmsd migrate', () => {
  it('copies every row of every table and the audit chain unchanged, then refuses the now non-empty target', async () => {
    const db = await cluster.createDatabase();
    const r = kmsdMigrate(['--from-data-dir', dataDir, '--store', db.url, '--store-password-file', db.passwordFile]);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.store).toBe(db.url);
    expect(report.audit).toMatchObject({ records: AUDIT_RECORDS, lastSeq: AUDIT_RECORDS });
    const source = new Store(dataDir, { readOnly: true });
    const pgStore = await open(db);
    try {
      // Every table of the source, with the same count of rows.
      const counts = Object.fromEntries(report.tables.map((t: { table: string; rows: number }) => [t.table, t.rows]));
      for (const t of ['settings', 'cmks', 'key_versions', 'aliases', 'wrapping_keys', 'ceremony_custodians', 'ceremony_proposals', 'ceremony_proposal_revisions', 'ceremony_approvals', 'audit_log', 'usage_counters', 'token_intents', 'token_destroys', 'access_keys', 'xks_key_stores', 'xks_credentials', 'xks_keys']) {
        expect(counts[t], t).toBeGreaterThan(0);
      }
      expect(Object.keys(counts)).toHaveLength(17);
      // Row for row as the replicas will read them.
      for (const k of source.allCmks()) expect(await pgStore.getCmk(k.key_id)).toEqual(k);
      expect((await pgStore.allVersions()).sort((x, y) => x.version_id.localeCompare(y.version_id))).toEqual(source.allVersions().sort((x, y) => x.version_id.localeCompare(y.version_id)));
      expect(await pgStore.listAliases(0, 10)).toEqual(source.listAliases(0, 10));
      expect(await pgStore.getWrappingKey('wrap-issued')).toEqual(source.getWrappingKey('wrap-issued'));
      expect(await pgStore.getWrappingKey('wrap-pooled')).toEqual(source.getWrappingKey('wrap-pooled'));
      expect(await pgStore.allIntents()).toEqual(source.allIntents());
      expect(await pgStore.pendingDestroys()).toEqual(source.pendingDestroys());
      expect(await pgStore.listAccessKeys()).toEqual(source.listAccessKeys());
      expect(await pgStore.instanceId()).toBe('inst-0123456789abcdef');
      expect(await pgStore.tokenSequence()).toBe(source.tokenSequence());
      const lc = new CeremonyStore(source);
      expect(await pgStore.ceremony.activeCustodians()).toEqual(lc.activeCustodians());
      expect(await pgStore.ceremony.getProposal('p1')).toEqual(lc.getProposal('p1'));
      expect(await pgStore.ceremony.olderRevisions('p1', 2)).toEqual(lc.olderRevisions('p1', 2));
      expect(await pgStore.ceremony.approvals('p1')).toEqual(lc.approvals('p1'));
      expect(await pgStore.ceremony.threshold()).toBe(2);
      expect(await pgStore.ceremony.policyJson()).toBe(lc.policyJson());
      const lx = new XksStore(source);
      expect(await pgStore.xks.getCredential('XKSAK')).toEqual(lx.getCredential('XKSAK'));
      expect(await pgStore.xks.listKeys('ks1')).toEqual(lx.listKeys('ks1'));
      const la = new AuditStore(source);
      const rows: AuditRow[] = [];
      for await (const row of pgStore.audit.iterate()) rows.push(row);
      expect(rows).toEqual([...la.iterate()]);
      expect(await pgStore.audit.counters()).toEqual(la.counters());
    } finally {
      source.close();
      await pgStore.close();
    }
    const again = kmsdMigrate(['--from-data-dir', dataDir, '--store', db.url, '--store-password-file', db.passwordFile]);
    expect(again.status).toBe(1);
    expect(again.stderr).toContain('the target store is not empty');
    expect(again.stderr).toContain('audit_log: 7');
  });

  it('refuses while a kmsd holds the data directory, and writes nothing', async () => {
    const db = await cluster.createDatabase();
    const lock = lockDataDir(dataDir); // this process stands in for the running kmsd
    try {
      const r = kmsdMigrate(['--from-data-dir', dataDir, '--store', db.url, '--store-password-file', db.passwordFile]);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/in use|already/i);
    } finally {
      lock.release();
    }
    const s = await open(db);
    try {
      expect(await s.isEmpty()).toBe(true);
    } finally {
      await s.close();
    }
  });

  it('refuses a password in the URL and a directory without a store, before connecting (exit 2)', () => {
    const pw = kmsdMigrate(['--from-data-dir', dataDir, '--store', 'postgres://u:Sekr1tPw@127.0.0.1:1/d']);
    expect(pw.status).toBe(2);
    expect(pw.stderr).toContain('--store must not hold a password');
    expect(pw.stderr).not.toContain('Sekr1tPw');
    expect(() => loadMigrateConfig(['--from-data-dir', tmp, '--store', 'postgres://u@127.0.0.1:1/d'], {})).toThrow(`--from-data-dir ${tmp} holds no kmsd.sqlite`);
    expect(() => loadMigrateConfig(['--from-data-dir', dataDir], {})).toThrow('--store postgres://USER@HOST:PORT/DB is required');
    expect(loadMigrateConfig(['--from-data-dir', dataDir], { KMS_STORE: 'postgres://u@h:5433/d', PGPASSWORD: 'pw' }).store).toMatchObject({ port: 5433, passwordSource: 'PGPASSWORD' });
  });

  it('says so when the source audit chain does not verify (copied as it is, so it stays visible)', async () => {
    const db = await cluster.createDatabase();
    const tampered = path.join(tmp, 'tampered');
    fs.mkdirSync(tampered, { mode: 0o700 });
    fs.copyFileSync(path.join(dataDir, 'kmsd.sqlite'), path.join(tampered, 'kmsd.sqlite'));
    const Database = (await import('better-sqlite3')).default;
    const raw = new Database(path.join(tampered, 'kmsd.sqlite'));
    raw.exec("DROP TRIGGER audit_log_no_update; UPDATE audit_log SET details = '{}' WHERE seq = 3");
    raw.close();
    const r = kmsdMigrate(['--from-data-dir', tampered, '--store', db.url, '--store-password-file', db.passwordFile]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('the audit chain does not verify');
    expect(r.stderr).toContain('record 3 does not match its hash');
  });

  it('fails cleanly on a wrong password, naming the store and not the password', async () => {
    const db = await cluster.createDatabase();
    const wrong = path.join(tmp, 'wrong-pw');
    fs.writeFileSync(wrong, 'not-the-password\n', { mode: 0o600 });
    const r = kmsdMigrate(['--from-data-dir', dataDir, '--store', db.url, '--store-password-file', wrong]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('password authentication failed');
    expect(r.stderr).not.toContain('not-the-password');
  });
});
