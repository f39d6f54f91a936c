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
import Database from 'better-sqlite3';
import type { AuditRow } from '../../src/store/api';
import { lockDataDir } from '../../src/store/data-dir-lock';
import { MIGRATIONS } from '../../src/store/migrations';
import { PgStore } from '../../src/store/pg/pg-store';
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

/**
 * A single-node store with rows in every table: the SQLite file made by the SQLite migrations
 * themselves, rows written as kmsd writes them (this test reads and writes the file directly, so it
 * does not depend on the SQLite store's calls, which are being made asynchronous).
 */
function fillSqlite(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const db = new Database(path.join(dir, 'kmsd.sqlite'));
  try {
    db.pragma('journal_mode = WAL');
    db.pragma('foreign_keys = ON');
    db.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
    for (const m of MIGRATIONS) {
      db.exec(m.sql);
      db.prepare('INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)').run(m.version, Date.now());
    }
    const ins = (table: string, row: Record<string, unknown>) => {
      const cols = Object.keys(row);
      db.prepare(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map((c) => `@${c}`).join(', ')})`).run(row);
    };
    const now = 1_760_000_000_000;
    for (const [name, value] of [['instance.id', 'inst-0123456789abcdef'], ['token.sequence', '42'], ['ceremony.threshold', '2'], ['ceremony.custodian_set_version', '1'], ['ceremony.policy', '{"ScheduleKeyDeletion":2}']]) ins('settings', { name, value });
    for (const [i, origin] of ['Aliyun_KMS', 'EXTERNAL'].entries()) {
      const keyId = `key-${i}`;
      ins('cmks', {
        key_id: keyId, origin, key_spec: 'Aliyun_AES_256', key_usage: 'ENCRYPT/DECRYPT', protection_level: i ? 'HSM' : 'SOFTWARE', description: `café ${i}`,
        key_state: i ? 'PendingImport' : 'Enabled', creation_date: now + i, delete_date: null, material_expire_time: i ? now + 86_400_000 : null,
        automatic_rotation: 'Disabled', rotation_interval_s: null, next_rotation_date: null, last_rotation_date: null, primary_key_version: `${keyId}-v1`,
        material_fingerprint: i ? Buffer.from('fingerprint') : null, state_before_deletion: null, import_path: i ? 'host-assisted' : null, state_after_import: i ? 'Disabled' : null,
      });
      ins('key_versions', { version_id: `${keyId}-v1`, key_id: keyId, creation_date: now, software_wrapped: i ? null : Buffer.from([0, 1, 2, 255]), material_state: 'Present' });
      ins('aliases', { alias_name: `alias/k${i}`, key_id: keyId, creation_date: now, update_date: now });
    }
    ins('wrapping_keys', { wrap_id: 'wrap-issued', key_spec: 'RSA_2048', raw_decrypt: 0, public_key: Buffer.from('spki'), created: now, key_id: 'key-1', algorithm: 'RSAES_OAEP_SHA_256', expires: now + 1000, failed_imports: 1 });
    ins('wrapping_keys', { wrap_id: 'wrap-pooled', key_spec: 'RSA_2048', raw_decrypt: 1, public_key: Buffer.from('spki2'), created: now, key_id: null, algorithm: null, expires: null });
    ins('token_intents', { seq: 42, kind: 'cmk', object_id: 'key-9-v1', created: now, owner: 'a-process-that-ended' });
    ins('key_leases', { key_id: 'key-9', owner: 'a-process-that-ended', since: now });
    ins('token_destroys', { kind: 'wrap', object_id: 'wrap-old', key_id: null, reason: 'wrapping-key-expired', since: now, attempts: 2, last_error: 'CKR_DEVICE_ERROR' });
    ins('access_keys', { access_key_id: 'AK1', principal: 'alice', status: 'Enabled', sealed_secret: Buffer.from('sealed'), creation_date: now, update_date: now });
    ins('xks_key_stores', { uri_path_prefix: 'ks1', creation_date: now });
    ins('xks_credentials', { access_key_id: 'XKSAK', uri_path_prefix: 'ks1', sealed_secret: Buffer.from('xsealed'), creation_date: now });
    ins('xks_keys', { uri_path_prefix: 'ks1', external_key_id: 'ext-1', key_id: 'key-0', operations: 'ENCRYPT,DECRYPT', creation_date: now });
    ins('ceremony_custodians', { custodian_id: 'c1', public_key: Buffer.from('pk1'), fingerprint: 'f1', added_at: now, removed_at: null });
    ins('ceremony_custodians', { custodian_id: 'c0', public_key: Buffer.from('pk0'), fingerprint: 'f0', added_at: now - 5, removed_at: now });
    ins('ceremony_proposals', { proposal_id: 'p1', revision: 2, action: 'ScheduleKeyDeletion', key_id: 'key-0', parameters: '{}', document: Buffer.from('doc2'), requester: 'bob', created_at: now, expires_at: now + 2000, state: 'Open', closed_at: null, outcome: null, result: null });
    ins('ceremony_proposal_revisions', { proposal_id: 'p1', revision: 1, document: Buffer.from('doc1') });
    ins('ceremony_proposal_revisions', { proposal_id: 'p1', revision: 2, document: Buffer.from('doc2') });
    ins('ceremony_approvals', { proposal_id: 'p1', revision: 2, custodian_id: 'c1', key_fingerprint: 'f1', signature: Buffer.from('sig'), approved_at: now });
    let prev = GENESIS_HASH;
    for (let seq = 1; seq <= AUDIT_RECORDS; seq++) {
      const row: AuditRow = { seq, time: now + seq, request_id: `req-${seq}`, principal: 'alice', action: seq === AUDIT_RECORDS ? 'AuditCheckpoint' : 'CreateKey', key_id: 'key-0', proposal_id: '', outcome: 'Success', details: JSON.stringify({ n: seq, s: 'ü' }), prev_hash: prev, hash: '' };
      row.hash = recordHash(toRecord(row));
      ins('audit_log', { ...row });
      prev = row.hash;
    }
    ins('usage_counters', { key_id: 'key-0', principal: 'alice', action: 'Encrypt', ok: 10, errors: 1, first_at: now, last_at: now + 5 });
  } finally {
    db.close();
  }
}

/** Every row of a table of the source file, as the SQLite driver returns them. */
function sourceRows(dir: string, table: string): Record<string, unknown>[] {
  const db = new Database(path.join(dir, 'kmsd.sqlite'), { readonly: true });
  try {
    return db.prepare(`SELECT * FROM ${table} ORDER BY rowid`).all() as Record<string, unknown>[];
  } finally {
    db.close();
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
    const pgStore = await open(db);
    try {
      // Every table of the source, with the same count of rows.
      const counts = Object.fromEntries(report.tables.map((t: { table: string; rows: number }) => [t.table, t.rows]));
      const tables = ['settings', 'cmks', 'key_versions', 'aliases', 'wrapping_keys', 'ceremony_custodians', 'ceremony_proposals', 'ceremony_proposal_revisions', 'ceremony_approvals', 'audit_log', 'usage_counters', 'token_intents', 'token_destroys', 'access_keys', 'xks_key_stores', 'xks_credentials', 'xks_keys', 'key_leases'];
      expect(Object.keys(counts).sort()).toEqual([...tables].sort());
      for (const t of tables) expect(counts[t], t).toBe(sourceRows(dataDir, t).length);
      // Row for row, as the replicas will read them.
      const src = (t: string) => sourceRows(dataDir, t);
      for (const k of src('cmks')) expect(await pgStore.getCmk(k.key_id as string)).toEqual(k);
      for (const v of src('key_versions')) expect(await pgStore.getVersion(v.version_id as string)).toEqual(v);
      expect(await pgStore.listAliases(0, 10)).toEqual(src('aliases'));
      for (const w of src('wrapping_keys')) expect(await pgStore.getWrappingKey(w.wrap_id as string)).toEqual(w);
      expect(await pgStore.allIntents()).toEqual(src('token_intents'));
      expect(await pgStore.pendingDestroys()).toEqual(src('token_destroys'));
      expect(await pgStore.listAccessKeys()).toEqual(src('access_keys'));
      expect(await pgStore.instanceId()).toBe('inst-0123456789abcdef');
      expect(await pgStore.tokenSequence()).toBe(42);
      expect(await pgStore.ceremony.activeCustodians()).toEqual(src('ceremony_custodians').filter((c) => c.removed_at === null));
      expect(await pgStore.ceremony.getCustodian('c0')).toEqual(src('ceremony_custodians').find((c) => c.custodian_id === 'c0'));
      expect(await pgStore.ceremony.getProposal('p1')).toEqual(src('ceremony_proposals')[0]);
      expect(await pgStore.ceremony.olderRevisions('p1', 2)).toEqual([{ revision: 1, document: Buffer.from('doc1') }]);
      expect(await pgStore.ceremony.approvals('p1')).toEqual(src('ceremony_approvals'));
      expect(await pgStore.ceremony.threshold()).toBe(2);
      expect(await pgStore.ceremony.policyJson()).toBe('{"ScheduleKeyDeletion":2}');
      expect(await pgStore.xks.listKeyStores()).toEqual(src('xks_key_stores'));
      expect(await pgStore.xks.getCredential('XKSAK')).toEqual(src('xks_credentials')[0]);
      expect(await pgStore.xks.listKeys('ks1')).toEqual(src('xks_keys'));
      const rows: AuditRow[] = [];
      for await (const row of pgStore.audit.iterate()) rows.push(row);
      expect(rows).toEqual(src('audit_log'));
      expect(await pgStore.audit.counters()).toEqual(src('usage_counters'));
    } finally {
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
