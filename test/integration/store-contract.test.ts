// One store contract, run on every backend of src/store/api.ts (SQLite and PostgreSQL): the same
// cases, the same answers. On PostgreSQL "two replicas" are two Store objects opened on the same
// database, each with its own connection pool; the rules of the seed (alias uniqueness, a proposal executes once, the failed-import counter,
// CMK state transitions, the audit chain) must hold between them. PostgreSQL is a real throwaway
// cluster (test/helpers/postgres.ts), one per file, one database per backend instance.

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../../src/store/migrations';
import { StoreConflictError, type AuditRow, type ProposalRow, type Store, type StoreTx, type WrappingKeyRow } from '../../src/store/api';
import { PgStore, StoreUnavailableError } from '../../src/store/pg/pg-store';
import { SqliteStore } from '../../src/store/sqlite';
import { poolOn, startPostgres, type PgCluster, type PgDatabase } from '../helpers/postgres';
import { cmkRow } from '../helpers/store-rows';
import { until } from '../helpers/poll';

interface Backend {
  name: string;
  /** A fresh, empty store and a second "replica" on the same data (the same object where a backend has one writer). */
  open(): Promise<{ a: Store; b: Store; close(): Promise<void> }>;
  /** Whether `b` is a separate process-like replica with its own connections (row locks matter). */
  replicas: boolean;
}

let cluster: PgCluster;

const postgres: Backend = {
  name: 'postgres',
  replicas: true,
  async open() {
    // A linguistic collation (as production databases often have): listings must still sort as SQLite's.
    const db = await cluster.createDatabase(undefined, { icuLocale: 'en-US' });
    const a = await PgStore.open(options(db));
    const b = await PgStore.open(options(db));
    return {
      a,
      b,
      async close() {
        await a.close();
        await b.close();
      },
    };
  },
};

function options(db: PgDatabase) {
  return { host: db.host, port: db.port, user: db.user, password: db.password, database: db.database, maxConnections: 4 };
}

// SQLite has one writer per data directory (kmsd holds its lock): its "second replica" is the same
// store, and the rules hold because its transactions run one at a time.
const sqlite: Backend = {
  name: 'sqlite',
  replicas: false,
  async open() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-contract-'));
    const s = new SqliteStore(dir);
    return {
      a: s,
      b: s,
      async close() {
        await s.close();
        fs.rmSync(dir, { recursive: true, force: true });
      },
    };
  },
};

const BACKENDS: Backend[] = [sqlite, postgres];

beforeAll(async () => {
  cluster = await startPostgres();
});

afterAll(async () => {
  await cluster?.stop();
});

let n = 0;
const id = (p: string) => `${p}-${++n}-${crypto.randomBytes(4).toString('hex')}`;


function wrappingKey(wrapId: string, over: Partial<WrappingKeyRow> = {}): WrappingKeyRow {
  return { wrap_id: wrapId, key_spec: 'RSA_2048', raw_decrypt: 0, public_key: Buffer.from([1, 2, 3]), created: Date.now(), key_id: null, algorithm: null, expires: null, ...over };
}

function proposal(pid: string): ProposalRow {
  return {
    proposal_id: pid,
    revision: 1,
    action: 'ScheduleKeyDeletion',
    key_id: null,
    parameters: '{}',
    document: Buffer.from('doc'),
    requester: 'alice',
    created_at: Date.now(),
    expires_at: Date.now() + 60_000,
    state: 'Open',
    closed_at: null,
    outcome: null,
    result: null,
  };
}

/** Appends one record to the chain, linked to the head read under the chain lock. */
async function appendAudit(s: Store, action: string): Promise<AuditRow> {
  return s.transaction(async (tx) => {
    const head = await tx.lastAuditForUpdate();
    const seq = (head?.seq ?? 0) + 1;
    const prev = head?.hash ?? '0'.repeat(64);
    const row: AuditRow = { seq, time: Date.now(), request_id: id('r'), principal: 'p', action, key_id: '', proposal_id: '', outcome: 'ok', details: '{}', prev_hash: prev, hash: '' };
    row.hash = crypto.createHash('sha256').update(`${prev}|${seq}|${action}|${row.request_id}`).digest('hex');
    await tx.audit.insert(row);
    return row;
  });
}

describe.each(BACKENDS)('store contract on $name', (backend) => {
  let a: Store;
  let b: Store;
  let close: () => Promise<void>;

  beforeAll(async () => {
    ({ a, b, close } = await backend.open());
  });

  afterAll(async () => {
    await close?.();
  });

  it('starts empty, and a CMK round-trips every column (blobs, nulls, millisecond times)', async () => {
    expect(await a.isEmpty()).toBe(true);
    const k = id('key');
    const row = cmkRow(k, { material_fingerprint: Buffer.from('ff00aa', 'hex'), delete_date: 1_800_000_000_000, rotation_interval_s: 86400, state_after_import: 'Disabled' });
    await a.insertCmk(row);
    expect(await b.getCmk(k)).toEqual(row);
    expect(await a.isEmpty()).toBe(false);
    await a.updateCmk(k, { key_state: 'Disabled', description: 'x' });
    // The writer reads its write at once; another replica may serve its cached row until the change
    // reaches it (well within the 1 s the contract allows).
    expect(await a.getCmk(k)).toMatchObject({ key_state: 'Disabled', description: 'x', material_fingerprint: Buffer.from('ff00aa', 'hex') });
    await until('the other replica to see the change', async () => (await b.getCmk(k))?.key_state === 'Disabled');
    expect(await a.countCmks()).toBe(1);
    expect((await a.listCmks(0, 10)).map((r) => r.key_id)).toEqual([k]);
  });

  it('deleting a CMK removes its versions and aliases and unbinds its wrapping keys', async () => {
    const k = id('key');
    await a.insertCmk(cmkRow(k));
    await a.insertVersion({ version_id: `${k}-v1`, key_id: k, creation_date: 1, software_wrapped: Buffer.from('w'), material_state: 'Present' });
    await a.insertAlias({ alias_name: `alias/${k}`, key_id: k, creation_date: 1, update_date: 1 });
    const w = id('wrap');
    await a.insertWrappingKey(wrappingKey(w, { key_id: k, algorithm: 'RSAES_OAEP_SHA_256', expires: Date.now() + 1000 }));
    expect(await a.getVersion(`${k}-v1`)).toMatchObject({ software_wrapped: Buffer.from('w') });
    await a.deleteCmk(k);
    expect(await a.getCmk(k)).toBeUndefined();
    expect(await a.getVersion(`${k}-v1`)).toBeUndefined();
    expect(await b.getAlias(`alias/${k}`)).toBeUndefined();
    expect((await b.getWrappingKey(w))?.key_id).toBeNull();
  });

  it('a failed transaction leaves nothing behind', async () => {
    const k = id('key');
    await a.insertCmk(cmkRow(k));
    await expect(
      a.transaction(async (tx) => {
        await tx.updateCmk(k, { key_state: 'Disabled' });
        await tx.insertAlias({ alias_name: `alias/${k}`, key_id: k, creation_date: 1, update_date: 1 });
        throw new Error('refused');
      }),
    ).rejects.toThrow('refused');
    expect((await a.getCmk(k))?.key_state).toBe('Enabled');
    expect(await b.getAlias(`alias/${k}`)).toBeUndefined();
  });

  it('alias uniqueness: a taken name is a StoreConflictError, and of two replicas racing for a name exactly one wins', async () => {
    const name = `alias/${id('a')}`;
    await a.insertAlias({ alias_name: name, key_id: 'k1', creation_date: 1, update_date: 1 });
    await expect(b.insertAlias({ alias_name: name, key_id: 'k2', creation_date: 1, update_date: 1 })).rejects.toBeInstanceOf(StoreConflictError);
    for (let round = 0; round < 10; round++) {
      const raced = `alias/${id('race')}`;
      const results = await Promise.allSettled([
        a.transaction((tx) => tx.insertAlias({ alias_name: raced, key_id: 'from-a', creation_date: 1, update_date: 1 })),
        b.transaction((tx) => tx.insertAlias({ alias_name: raced, key_id: 'from-b', creation_date: 1, update_date: 1 })),
      ]);
      const won = results.filter((r) => r.status === 'fulfilled');
      expect(won).toHaveLength(1);
      const lost = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
      expect(lost.reason).toBeInstanceOf(StoreConflictError);
      expect((await a.getAlias(raced))?.key_id).toBe(results[0].status === 'fulfilled' ? 'from-a' : 'from-b');
    }
  });

  it('a proposal executes once: of concurrent Open -> Executing transitions on two replicas exactly one succeeds', async () => {
    for (let round = 0; round < 10; round++) {
      const pid = id('prop');
      await a.ceremony.insertProposal(proposal(pid));
      const tries = await Promise.all([
        a.ceremony.transition(pid, 'Open', 'Executing'),
        b.ceremony.transition(pid, 'Open', 'Executing'),
        a.transaction(async (tx) => (await tx.getProposalForUpdate(pid))?.state === 'Open' && tx.ceremony.transition(pid, 'Open', 'Executing')),
        b.transaction(async (tx) => (await tx.getProposalForUpdate(pid))?.state === 'Open' && tx.ceremony.transition(pid, 'Open', 'Executing')),
      ]);
      expect(tries.filter((t) => t === true)).toHaveLength(1);
      expect((await b.ceremony.getProposal(pid))?.state).toBe('Executing');
    }
  });

  it('the failed-import counter counts every failure of both replicas', async () => {
    const w = id('wrap');
    await a.insertWrappingKey(wrappingKey(w, { key_id: 'k', algorithm: 'RSAES_OAEP_SHA_256', expires: Date.now() + 60_000 }));
    const counts = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 ? a : b).countFailedImport(w)));
    expect([...counts].sort((x, y) => x - y)).toEqual(Array.from({ length: 20 }, (_, i) => i + 1));
    expect((await a.getWrappingKey(w))?.failed_imports).toBe(20);
    expect(await a.countFailedImport('no-such-key')).toBe(0);
  });

  it('CMK state transitions under concurrent transactions of two replicas: of two imports of different material exactly one wins', async () => {
    for (let round = 0; round < 20; round++) {
      const k = id('key');
      await a.insertCmk(cmkRow(k, { origin: 'EXTERNAL', key_state: 'PendingImport' }));
      const importInto = (s: Store, material: string) =>
        s.transaction(async (tx) => {
          const row = await tx.getCmkForUpdate(k);
          const fp = Buffer.from(material);
          if (row!.material_fingerprint && !row!.material_fingerprint.equals(fp)) throw new Error('different material');
          await tx.updateCmk(k, { key_state: 'Enabled', material_fingerprint: fp });
          return material;
        });
      const results = await Promise.allSettled([importInto(a, 'material-a'), importInto(b, 'material-b')]);
      const won = results.filter((r): r is PromiseFulfilledResult<string> => r.status === 'fulfilled');
      expect(won).toHaveLength(1);
      expect(String((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason)).toContain('different material');
      const after = await b.getCmk(k);
      expect(after?.key_state).toBe('Enabled');
      expect(after?.material_fingerprint?.toString()).toBe(won[0].value);
    }
  });

  it('the audit chain stays linear when both replicas append at once', async () => {
    const appended = await Promise.all(Array.from({ length: 30 }, (_, i) => appendAudit(i % 2 ? a : b, `Act${i}`)));
    expect(new Set(appended.map((r) => r.seq)).size).toBe(30);
    let prev: AuditRow | undefined;
    let count = 0;
    for await (const r of b.audit.iterate()) {
      count++;
      if (prev) {
        expect(r.seq).toBe(prev.seq + 1);
        expect(r.prev_hash).toBe(prev.hash);
      }
      prev = r;
    }
    expect(count).toBe(await a.audit.count());
    expect((await a.audit.last())?.seq).toBe(prev?.seq);
  });

  it('group commit: units share a transaction, a failing unit is rolled back alone', async () => {
    const before = a.groupStats.commits;
    const k1 = id('key');
    const k2 = id('key');
    const results = await Promise.allSettled([
      a.grouped((tx) => tx.insertCmk(cmkRow(k1))),
      a.grouped(async (tx) => {
        await tx.insertCmk(cmkRow(k2));
        throw new Error('unit refused');
      }),
      a.grouped(async (tx) => (await tx.getCmk(k1))?.key_id),
      // A unit whose statement the database refuses is rolled back alone too.
      a.grouped(async (tx) => {
        await tx.insertAlias({ alias_name: `alias/${k1}`, key_id: k1, creation_date: 1, update_date: 1 });
        await tx.insertAlias({ alias_name: `alias/${k1}`, key_id: k1, creation_date: 1, update_date: 1 });
      }),
      a.grouped((tx) => tx.insertAlias({ alias_name: `alias/${k2}`, key_id: k1, creation_date: 1, update_date: 1 })),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled']);
    expect((results[2] as PromiseFulfilledResult<string>).value).toBe(k1);
    expect((results[3] as PromiseRejectedResult).reason).toBeInstanceOf(StoreConflictError);
    expect(await b.getAlias(`alias/${k1}`)).toBeUndefined();
    expect(await b.getAlias(`alias/${k2}`)).toBeDefined();
    expect(await b.getCmk(k1)).toBeDefined();
    expect(await b.getCmk(k2)).toBeUndefined();
    expect(a.groupStats.commits).toBe(before + 1);
    expect(a.groupStats.largest).toBeGreaterThanOrEqual(5);
  });

  it('a pooled wrapping key is issued to exactly one caller of all replicas', async () => {
    const spec = `RSA_${id('spec')}`;
    for (let i = 0; i < 4; i++) await a.insertWrappingKey(wrappingKey(id('pool'), { key_spec: spec }));
    expect(await b.countPooledWrappingKeys(spec, false)).toBe(4);
    const issued = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).issuePooledWrappingKey(spec, false, `cmk-${i}`, 'RSAES_OAEP_SHA_256', Date.now() + 60_000)));
    const got = issued.filter((w): w is WrappingKeyRow => w !== undefined);
    expect(got.length).toBeLessThanOrEqual(4);
    expect(new Set(got.map((w) => w.wrap_id)).size).toBe(got.length);
    expect((await a.allWrappingKeys()).filter((w) => w.key_spec === spec && w.key_id !== null)).toHaveLength(got.length);
  });

  it('write-ahead intents take distinct creation sequences on every replica', async () => {
    const start = await a.tokenSequence();
    const seqs = await Promise.all(Array.from({ length: 12 }, (_, i) => (i % 2 ? a : b).openIntent('cmk', id('obj'), Date.now())));
    expect([...seqs].sort((x, y) => x - y)).toEqual(Array.from({ length: 12 }, (_, i) => start + i + 1));
    expect(await b.tokenSequence()).toBe(start + 12);
    await a.raiseTokenSequence(start + 5); // never lowers
    expect(await a.tokenSequence()).toBe(start + 12);
    await a.raiseTokenSequence(start + 100);
    expect(await b.tokenSequence()).toBe(start + 100);
    for (const s of seqs) await a.clearIntent(s);
    expect((await a.allIntents()).filter((r) => seqs.includes(r.seq))).toHaveLength(0);
  });

  it('sequence blocks reserved at once are disjoint across replicas, and an intent takes only a reserved number', async () => {
    const start = await a.tokenSequence();
    const tops = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).reserveTokenSequence(64)));
    expect([...tops].sort((x, y) => x - y)).toEqual(Array.from({ length: 6 }, (_, i) => start + 64 * (i + 1)));
    expect(await b.tokenSequence()).toBe(start + 6 * 64);
    const top = tops[0];
    expect(await a.openIntent('cmk', id('obj'), Date.now(), top - 63)).toBe(top - 63);
    expect(await b.openIntent('wrap', id('obj'), Date.now(), top)).toBe(top);
    // A number the store has not reached is refused, and nothing is written.
    const before = (await a.allIntents()).length;
    await expect(a.openIntent('cmk', id('obj'), Date.now(), start + 6 * 64 + 1)).rejects.toThrow(/never reserved/);
    await expect(b.openIntent('cmk', id('obj'), Date.now(), start + 6 * 64 + 1)).rejects.toThrow(/never reserved/);
    expect((await a.allIntents()).length).toBe(before);
    expect(await a.tokenSequence()).toBe(start + 6 * 64);
    // The same number twice is refused too (the intent table's key).
    await expect(a.openIntent('cmk', id('obj'), Date.now(), top)).rejects.toThrow();
    await a.clearIntent(top - 63);
    await a.clearIntent(top);
  });

  it('the first replica to name the instance wins', async () => {
    const ids = await Promise.all([a.ceremony.instanceId(() => 'from-a'), b.ceremony.instanceId(() => 'from-b')]);
    expect(ids[0]).toBe(ids[1]);
    expect(await a.instanceId()).toBe(ids[0]);
  });

  it('listings sort text keys by bytes, as SQLite does, whatever the database locale', async () => {
    const k = id('key');
    for (const name of ['alias/a', 'alias/B', 'alias/_', 'alias/é']) await a.insertAlias({ alias_name: `${name}-${k}`, key_id: k, creation_date: 1, update_date: 1 });
    expect((await b.listAliases(0, 10, k)).map((r) => r.alias_name.slice(0, -k.length - 1))).toEqual(['alias/B', 'alias/_', 'alias/a', 'alias/é']);
    expect(await a.countAliases(k)).toBe(4);
    expect((await a.listAliases(1, 2, k)).map((r) => r.alias_name.slice(0, -k.length - 1))).toEqual(['alias/_', 'alias/a']);
    await a.transaction(async (tx) => {
      const row = await tx.getAliasForUpdate(`alias/a-${k}`);
      await tx.updateAlias(row!.alias_name, 'other', 2);
    });
    expect(await b.getAlias(`alias/a-${k}`)).toMatchObject({ key_id: 'other', update_date: 2 });
    await a.deleteAlias(`alias/a-${k}`);
    expect(await a.countAliases(k)).toBe(3);
  });

  it('scheduled work, token destroys and access keys', async () => {
    const due = id('due');
    await a.insertCmk(cmkRow(`${due}-del`, { key_state: 'PendingDeletion', delete_date: 5 }));
    await a.insertCmk(cmkRow(`${due}-rot`, { automatic_rotation: 'Enabled', next_rotation_date: 5 }));
    await a.insertCmk(cmkRow(`${due}-exp`, { material_expire_time: 5 }));
    await a.insertCmk(cmkRow(`${due}-later`, { key_state: 'PendingDeletion', delete_date: 50 }));
    const d = await b.cmksDue(10);
    expect(d.deletions.map((r) => r.key_id).filter((x) => x.startsWith(due))).toEqual([`${due}-del`]);
    expect(d.rotations.map((r) => r.key_id).filter((x) => x.startsWith(due))).toEqual([`${due}-rot`]);
    expect(d.expiries.map((r) => r.key_id).filter((x) => x.startsWith(due))).toEqual([`${due}-exp`]);
    const obj = id('obj');
    await a.addPendingDestroy('cmk', obj, 'k', 'deleted', 7);
    await b.addPendingDestroy('cmk', obj, 'k', 'other-reason', 8); // the first record stays
    expect(await a.getPendingDestroy('cmk', obj)).toEqual({ kind: 'cmk', object_id: obj, key_id: 'k', reason: 'deleted', since: 7, attempts: 0, last_error: null });
    expect(await b.notePendingDestroyFailure('cmk', obj, 'CKR_DEVICE_ERROR')).toBe(1);
    expect(await a.notePendingDestroyFailure('cmk', obj, 'again')).toBe(2);
    await a.deletePendingDestroy('cmk', obj);
    expect(await b.getPendingDestroy('cmk', obj)).toBeUndefined();
    const ak = id('AK');
    await a.insertAccessKey({ access_key_id: ak, principal: 'alice', status: 'Enabled', sealed_secret: Buffer.from('s'), creation_date: 1, update_date: 1 });
    await b.updateAccessKeyStatus(ak, 'Disabled', 2);
    expect(await a.getAccessKey(ak)).toEqual({ access_key_id: ak, principal: 'alice', status: 'Disabled', sealed_secret: Buffer.from('s'), creation_date: 1, update_date: 2 });
    const before = await a.countAccessKeys();
    await a.deleteAccessKey(ak);
    expect(await b.countAccessKeys()).toBe(before - 1);
  });

  it('audit listings, filters and usage counters', async () => {
    const act = id('Act');
    const r1 = await appendAudit(a, act);
    await appendAudit(b, `${act}-other`);
    const r3 = await appendAudit(a, act);
    expect(await b.audit.count({ action: act })).toBe(2);
    expect((await b.audit.page(0, 10, { action: act })).map((r) => r.seq)).toEqual([r1.seq, r3.seq]);
    expect((await a.audit.range(r1.seq, r3.seq, 10)).map((r) => r.seq)).toEqual([r1.seq + 1, r3.seq]);
    expect((await a.audit.lastOfAction(act))?.seq).toBe(r3.seq);
    const key = id('key');
    await a.audit.addCounters([{ key_id: key, principal: 'p', action: 'Encrypt', ok: 3, errors: 1, first_at: 10, last_at: 20 }]);
    await b.audit.addCounters([
      { key_id: key, principal: 'p', action: 'Encrypt', ok: 2, errors: 0, first_at: 5, last_at: 15 },
      { key_id: key, principal: 'p', action: 'Decrypt', ok: 1, errors: 0, first_at: 30, last_at: 30 },
    ]);
    expect(await a.audit.counters(key)).toEqual([
      { key_id: key, principal: 'p', action: 'Decrypt', ok: 1, errors: 0, first_at: 30, last_at: 30 },
      { key_id: key, principal: 'p', action: 'Encrypt', ok: 5, errors: 1, first_at: 5, last_at: 20 },
    ]);
  });

  it('ceremony: custodian sets, revisions, approvals and listings', async () => {
    const v0 = await a.ceremony.custodianSetVersion();
    await a.ceremony.replaceCustodianSet([{ custodian_id: 'c1', public_key: Buffer.from('k1'), fingerprint: 'f1' }, { custodian_id: 'c2', public_key: Buffer.from('k2'), fingerprint: 'f2' }], 2, 100, true);
    await b.ceremony.replaceCustodianSet([{ custodian_id: 'c2', public_key: Buffer.from('k2b'), fingerprint: 'f2b' }, { custodian_id: 'c3', public_key: Buffer.from('k3'), fingerprint: 'f3' }], 1, 200, false);
    expect((await a.ceremony.activeCustodians()).map((c) => [c.custodian_id, c.fingerprint])).toEqual([['c2', 'f2b'], ['c3', 'f3']]);
    expect((await b.ceremony.getCustodian('c1'))?.removed_at).toBe(200);
    expect(await b.ceremony.threshold()).toBe(1);
    expect(await a.ceremony.custodianSetVersion()).toBe(v0 + 2);
    expect(await a.ceremony.initializedAt()).toBe(100);
    await a.ceremony.setPolicyJson('{"x":1}');
    expect(await b.ceremony.policyJson()).toBe('{"x":1}');
    const pid = id('prop');
    await a.ceremony.insertProposal(proposal(pid));
    await b.ceremony.reviseProposal(pid, 2, Buffer.from('doc2'), 999);
    expect(await a.ceremony.getProposal(pid)).toMatchObject({ revision: 2, document: Buffer.from('doc2'), expires_at: 999 });
    expect(await a.ceremony.olderRevisions(pid, 2)).toEqual([{ revision: 1, document: Buffer.from('doc') }]);
    await a.ceremony.insertApproval({ proposal_id: pid, revision: 2, custodian_id: 'c2', key_fingerprint: 'old', signature: Buffer.from('s1'), approved_at: 1 });
    await b.ceremony.insertApproval({ proposal_id: pid, revision: 2, custodian_id: 'c2', key_fingerprint: 'f2b', signature: Buffer.from('s2'), approved_at: 2 });
    expect(await a.ceremony.approvals(pid, 2)).toEqual([{ proposal_id: pid, revision: 2, custodian_id: 'c2', key_fingerprint: 'f2b', signature: Buffer.from('s2'), approved_at: 2 }]);
    expect(await a.ceremony.approvals(pid, 1)).toEqual([]);
    expect((await b.ceremony.recentOpenDocuments('none', 100)).some((d) => d.proposal_id === pid && d.revision === 2)).toBe(true);
    expect((await b.ceremony.recentOpenDocuments(pid, 100)).some((d) => d.proposal_id === pid)).toBe(false);
    const open = await a.ceremony.countProposals('Open');
    expect(await a.ceremony.transition(pid, 'Open', 'Executing', { outcome: 'running', parameters: '{"h":"x"}' })).toBe(true);
    expect(await a.ceremony.countProposals('Open')).toBe(open - 1);
    expect((await b.ceremony.interruptedProposals()).map((p) => p.proposal_id)).toContain(pid);
    expect((await b.ceremony.listProposals(0, 1000, 'Executing')).map((p) => p.proposal_id)).toContain(pid);
    expect(await b.ceremony.transition(pid, 'Executing', 'Executed', { closed_at: 5, result: 'ok' })).toBe(true);
    expect(await a.ceremony.getProposal(pid)).toMatchObject({ state: 'Executed', closed_at: 5, outcome: 'running', result: 'ok', parameters: '{"h":"x"}' });
  });

  it('external key stores: unique prefixes, credentials and keys', async () => {
    const prefix = id('ks');
    await a.xks.insertKeyStore({ uri_path_prefix: prefix, creation_date: 1 });
    await expect(b.xks.insertKeyStore({ uri_path_prefix: prefix, creation_date: 2 })).rejects.toBeInstanceOf(StoreConflictError);
    await a.xks.insertCredential({ access_key_id: `${prefix}-AK`, uri_path_prefix: prefix, sealed_secret: Buffer.from('x'), creation_date: 1 });
    await a.xks.insertKey({ uri_path_prefix: prefix, external_key_id: 'e1', key_id: 'k1', operations: 'ENCRYPT,DECRYPT', creation_date: 1 });
    await expect(b.xks.insertKey({ uri_path_prefix: prefix, external_key_id: 'e1', key_id: 'k2', operations: 'NONE', creation_date: 2 })).rejects.toBeInstanceOf(StoreConflictError);
    expect(await b.xks.getCredential(`${prefix}-AK`)).toEqual({ access_key_id: `${prefix}-AK`, uri_path_prefix: prefix, sealed_secret: Buffer.from('x'), creation_date: 1 });
    expect(await b.xks.getKey(prefix, 'e1')).toMatchObject({ key_id: 'k1' });
    expect(await b.xks.countKeys(prefix)).toBe(1);
    expect((await b.xks.listKeyStores()).map((k) => k.uri_path_prefix)).toContain(prefix);
    await b.xks.deleteKey(prefix, 'e1');
    await b.xks.deleteKeyStore(prefix);
    expect(await a.xks.getKeyStore(prefix)).toBeUndefined();
    expect(await a.xks.listCredentials(prefix)).toEqual([]);
  });

  it.runIf(backend.replicas)('a change made on one replica drops the other replica\'s cached row and tells its listeners', async () => {
    const k = id('key');
    await a.insertCmk(cmkRow(k));
    // A read that overlaps the insert's notification is not cached; a later one is.
    await until('the replica to cache the CMK', async () => (await b.getCmk(k)) !== undefined && b.cachedCmk(k) !== undefined);
    expect(b.cachedCmk(k)?.key_state).toBe('Enabled');
    let told = 0;
    b.onRollback(() => told++);
    await a.updateCmk(k, { key_state: 'Disabled' });
    await until('the replica to drop its cached CMK', () => b.cachedCmk(k) === undefined);
    expect((await b.getCmk(k))?.key_state).toBe('Disabled');
    await until('the replica to tell its listeners', () => told > 0);
  });
});

describe('PostgreSQL schema', () => {
  let db: PgDatabase;
  let raw: pg.Pool;

  beforeAll(async () => {
    db = await cluster.createDatabase();
    raw = poolOn(db, 2);
  });

  afterAll(async () => {
    await raw?.end();
  });

  it('replicas starting together migrate the database once, and the audit log refuses updates and deletes', async () => {
    const stores = await Promise.all([PgStore.open(options(db)), PgStore.open(options(db)), PgStore.open(options(db))]);
    try {
      const versions = (await raw.query('SELECT version FROM schema_migrations ORDER BY version')).rows.map((r) => r.version);
      // Every SQLite migration has its PostgreSQL twin, applied once.
      expect(versions).toEqual(MIGRATIONS.map((m) => m.version));
      await appendAudit(stores[0], 'CreateKey');
      await expect(raw.query("UPDATE audit_log SET action = 'x'")).rejects.toThrow('audit_log is append-only');
      await expect(raw.query('DELETE FROM audit_log')).rejects.toThrow('audit_log is append-only');
      await expect(raw.query('TRUNCATE audit_log')).rejects.toThrow('audit_log is append-only');
    } finally {
      for (const s of stores) await s.close();
    }
  });

  it('has the tables and columns of the SQLite schema', async () => {
    const cols = (await raw.query("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")).rows.map((r) => `${r.table_name}.${r.column_name}`);
    // Every table the SQLite migrations create, by its columns (the SQLite side is read from its own schema).
    const Database = (await import('better-sqlite3')).default;
    const { MIGRATIONS } = await import('../../src/store/migrations');
    const lite = new Database(':memory:');
    try {
      lite.exec('CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)');
      for (const m of MIGRATIONS) lite.exec(m.sql);
      const tables = (lite.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]).map((t) => t.name);
      const liteCols = tables.flatMap((t) => (lite.prepare(`PRAGMA table_info(${t})`).all() as { name: string }[]).map((c) => `${t}.${c.name}`));
      expect([...cols].sort()).toEqual([...liteCols].sort());
    } finally {
      lite.close();
    }
  });
});

/**
 * A transaction that has run `first` and then waits, holding its connection and locks, until
 * released (awaiting something else inside a transaction, which the interface forbids kmsd's own
 * code to do: here it stands in for a replica that froze).
 */
async function holdTransaction(store: PgStore, first: (tx: StoreTx) => Promise<unknown>): Promise<{ release(): Promise<void> }> {
  let release!: () => void;
  const holding = new Promise<void>((r) => (release = r));
  let inside!: () => void;
  const isInside = new Promise<void>((r) => (inside = r));
  const done = store.transaction(async (tx) => {
    await first(tx);
    inside();
    await holding;
  });
  await isInside;
  return {
    release: async () => {
      release();
      await done;
    },
  };
}

describe('PostgreSQL locks held by a stuck replica', () => {
  it('a call waiting for a row another replica holds too long fails as StoreUnavailableError, and nothing changes', async () => {
    const db = await cluster.createDatabase();
    const stuck = await PgStore.open(options(db));
    const waiter = await PgStore.open({ ...options(db), lockTimeoutMs: 300 });
    try {
      await stuck.insertCmk(cmkRow('held'));
      // The stuck replica holds the CMK's row.
      const held = await holdTransaction(stuck, (tx) => tx.getCmkForUpdate('held'));
      await expect(waiter.transaction(async (tx) => tx.updateCmk('held', { key_state: 'Disabled' }))).rejects.toBeInstanceOf(StoreUnavailableError);
      await held.release();
      expect((await waiter.getCmk('held'))?.key_state).toBe('Enabled');
    } finally {
      await stuck.close();
      await waiter.close();
    }
  });

  it('a call finding every connection of the pool in use for too long fails as StoreUnavailableError (busy), and the pool serves again once one is free', async () => {
    const db = await cluster.createDatabase();
    const s = await PgStore.open({ ...options(db), maxConnections: 1, connectTimeoutMs: 300 });
    try {
      // The pool's one connection stays in a transaction (as under a commit stalled by a slow disk).
      const held = await holdTransaction(s, (tx) => tx.getCmk('x'));
      const busy = await s.transaction(async (tx) => tx.insertCmk(cmkRow('later'))).catch((e: unknown) => e);
      expect(busy).toBeInstanceOf(StoreUnavailableError);
      expect((busy as Error).message).toMatch(/busy: no connection of the pool came free in time/);
      await held.release();
      expect(await s.getCmk('later')).toBeUndefined();
      await s.insertCmk(cmkRow('later'));
      expect((await s.getCmk('later'))?.key_state).toBe('Enabled');
    } finally {
      await s.close();
    }
  });
});

describe('PostgreSQL outage', () => {
  it('calls fail with StoreUnavailableError while PostgreSQL is down, and the same store works and caches again once it is back', async () => {
    const db = await cluster.createDatabase();
    const s = await PgStore.open(options(db));
    try {
      await s.insertCmk(cmkRow('before'));
      await until('the CMK to be cached', async () => (await s.getCmk('before')) !== undefined && s.cachedCmk('before') !== undefined);
      expect(s.reachable).toBe(true);
      await cluster.halt();
      await expect(s.getCmk('other')).rejects.toBeInstanceOf(StoreUnavailableError);
      await expect(s.transaction((tx) => tx.getCmkForUpdate('before'))).rejects.toBeInstanceOf(StoreUnavailableError);
      await expect(s.grouped((tx) => tx.insertCmk(cmkRow('during')))).rejects.toBeInstanceOf(StoreUnavailableError);
      // Nobody listens for other replicas' writes now: nothing is served from the cache.
      await until('the cache to be off', () => s.cachedCmk('before') === undefined);
      expect(s.reachable).toBe(false);
      await cluster.start();
      await until('the store to answer again', () => s.getCmk('before').then((r) => r?.key_id === 'before', () => false));
      await s.insertCmk(cmkRow('after'));
      expect(await s.getCmk('during')).toBeUndefined();
      await until('the cache to be back', async () => (await s.getCmk('after')) !== undefined && s.cachedCmk('after') !== undefined);
      expect(s.reachable).toBe(true);
    } finally {
      await s.close();
    }
  });
});

describe('PostgreSQL read-only opening (the token auditor)', () => {
  it('refuses a database kmsd never started on, reads what a replica wrote, and cannot write', async () => {
    const db = await cluster.createDatabase();
    await expect(PgStore.openReadOnly(options(db))).rejects.toThrow(/holds no kmsd store/);
    const writer = await PgStore.open(options(db));
    await writer.insertCmk(cmkRow('written'));
    await writer.close();
    const reader = await PgStore.openReadOnly(options(db));
    try {
      expect((await reader.allCmks()).map((r) => r.key_id)).toEqual(['written']);
      await expect(reader.insertCmk(cmkRow('refused'))).rejects.toThrow(/read-only transaction/);
    } finally {
      await reader.close();
    }
    // Opening read-only migrated nothing and wrote nothing: a schema newer than this build's is refused by it too.
    const admin = poolOn(db, 1);
    try {
      await admin.query('INSERT INTO schema_migrations (version, applied_at) VALUES (999999, 0)');
    } finally {
      await admin.end();
    }
    await expect(PgStore.openReadOnly(options(db))).rejects.toThrow(/schema version 999999, this build reads/);
  });
});
