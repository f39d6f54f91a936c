// What reaches the audit log, the log lines and the usage counters when callers send hostile
// identifiers, floods and malformed frames: identifiers are validated and bounded where a call is
// first seen, records have a maximum size (an oversized field keeps its SHA-256 and length),
// listing and export page past any record (even one an older kmsd wrote unbounded), refusals
// before the action runs are recorded (aggregated per principal, action and reason), refused calls
// name the CMK the caller meant, and `kmsctl VerifyAudit` fails when the check fails.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, makeTempDir, startKmsd } from '../helpers/daemon';
import { SCRIPTS, refused } from '../helpers/ceremony';
import { KmsdClient } from '../../src/client/kmsd-client';
import { loadApi } from '../../src/api/proto';
import { canonicalJson, isoMs, recordHash } from '../../src/audit/chain';
import type { AuditRow } from '../../src/store/audit-store';

/* eslint-disable @typescript-eslint/no-explicit-any */
type J = Record<string, any>;

const FOUR_MIB = 4 * 1024 * 1024;
const sha256 = (s: string) => crypto.createHash('sha256').update(s, 'utf8').digest('hex');

let dir: string;
let dataDir: string;
let policyFile: string;
let k: Kmsd;
let c: KmsdClient;

// Everything but DisableKey, so a DisableKey is a denial.
const POLICY = {
  version: 1,
  admins: [],
  custodians: [],
  grants: [
    {
      principals: ['anonymous'],
      actions: ['CreateKey', 'CreateAlias', 'DescribeKey', 'Encrypt', 'GenerateDataKey', 'ListAuditEvents', 'ExportAudit', 'GetUsageCounters', 'VerifyAudit'],
      keys: ['*'],
    },
  ],
};

async function start(): Promise<void> {
  k = await startKmsd({ dataDir, keep: true, args: ['--policy', policyFile] });
  c = new KmsdClient({ endpoint: k.endpoint });
}

async function stop(): Promise<void> {
  c.close();
  expect(await k.stop()).toBe(0);
}

/** Every record there was at the first page, paging ListAuditEvents (which is audited itself) to there. */
async function allEvents(pageSize = 1000): Promise<J[]> {
  const out: J[] = [];
  let total = Infinity;
  for (let page = 1; ; page++) {
    const r = (await c.call('ListAuditEvents', { PageNumber: page, PageSize: pageSize })) as J;
    out.push(...r.Events);
    total = Math.min(total, r.TotalCount);
    if (page * pageSize >= total) return out;
  }
}

function verifyOffline(file: string, extra: string[] = []) {
  const r = spawnSync(process.execPath, [path.join(SCRIPTS, 'verify-audit-export.js'), file, ...extra], { encoding: 'utf8' });
  return { code: r.status, json: r.stdout ? JSON.parse(r.stdout) : undefined, stderr: r.stderr };
}

/** A raw frame to DescribeKey that is not a protobuf message. */
function malformed(endpoint: string): Promise<grpc.ServiceError | null> {
  const m = (loadApi().definition['kms.v1.KeyManagementService'] as any).DescribeKey;
  const ch = new grpc.Client(endpoint, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    ch.makeUnaryRequest(m.path, (b: Buffer) => b, m.responseDeserialize, Buffer.from([0xff]), new grpc.Metadata(), { deadline: Date.now() + 30_000 }, (err) => {
      ch.close();
      resolve(err);
    });
  });
}

const longestRun = (s: string, ch: string) => Math.max(0, ...(s.match(new RegExp(`${ch}+`, 'g')) ?? []).map((m) => m.length));

beforeAll(async () => {
  dir = makeTempDir('kmsd-audit-bounds-');
  dataDir = path.join(dir, 'data');
  fs.mkdirSync(dataDir);
  policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify(POLICY));
  await start();
});

afterAll(async () => {
  c?.close();
  await k?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('a 4 MiB KeyId', () => {
  it('is refused naming the field, recorded bounded with its SHA-256 and length, never logged whole; listing and export go on', async () => {
    const huge = 'k'.repeat(FOUR_MIB - 1024);
    const e = await refused(c.call('DisableKey', { KeyId: huge }), 'InvalidParameter');
    expect(e.message).toMatch(/^KeyId: /);
    expect(e.message.length).toBeLessThan(1000);

    const events = await allEvents();
    const rec = events.find((ev) => ev.Action === 'DisableKey' && ev.Outcome === 'InvalidParameter');
    expect(rec, 'the refused DisableKey is on the record').toBeDefined();
    expect(JSON.stringify(rec).length).toBeLessThan(20_000);
    expect(rec!.KeyId).toBe('');
    const details = JSON.parse(rec!.Details);
    expect(details.KeyId).toContain(`truncated: ${Buffer.byteLength(huge)} bytes, sha256 ${sha256(huge)}`);
    expect(details.KeyId.startsWith('kkkk')).toBe(true);

    const file = path.join(dir, 'export-1.jsonl');
    const x = k.kmsctl(['ExportAudit', '--OutputFile', file]);
    expect(x.code, x.stderr).toBe(0);
    const v = verifyOffline(file);
    expect(v.code, v.stderr).toBe(0);
    expect(v.json.Valid).toBe(true);
    expect(fs.statSync(file).size).toBeLessThan(1024 * 1024);

    expect(longestRun(k.logs(), 'k')).toBeLessThan(1000);
    expect(k.logs().length).toBeLessThan(1024 * 1024);
  });
});

describe('usage counters', () => {
  it('count only existing CMKs, under their id, whatever KeyId the refused calls named', async () => {
    const keyId = ((await c.call('CreateKey', { ProtectionLevel: 'SOFTWARE' })) as J).KeyMetadata.KeyId as string;
    await c.call('CreateAlias', { AliasName: 'alias/counted', KeyId: keyId });
    await k.client.encrypt('alias/counted', Buffer.from('x'));
    await k.client.encrypt(keyId, Buffer.from('y'));
    const hugeAlias = `alias/${'a'.repeat(200_000)}`;
    await refused(k.client.encrypt(hugeAlias, Buffer.from('x')) as Promise<unknown>, 'InvalidParameter');
    await refused(c.call('GenerateDataKey', { KeyId: hugeAlias }), 'InvalidParameter');
    const bogus = Array.from({ length: 25 }, () => crypto.randomUUID());
    for (const id of bogus) await refused(k.client.encrypt(id, Buffer.from('x')) as Promise<unknown>, 'Forbidden.KeyNotFound');
    await refused(k.client.encrypt('alias/nowhere', Buffer.from('x')) as Promise<unknown>, 'Forbidden.AliasNotFound');

    const counters = ((await c.call('GetUsageCounters', {})) as J).Counters as J[];
    for (const row of counters) expect(row.KeyId === '' || /^[0-9a-f-]{36}$/.test(row.KeyId), row.KeyId.slice(0, 80)).toBe(true);
    expect(counters.filter((row) => bogus.includes(row.KeyId))).toEqual([]);
    expect(counters.find((row) => row.KeyId === keyId && row.Action === 'Encrypt')).toMatchObject({ Count: 2, Errors: 0 });
    // Refusals that named no existing CMK: one row per principal and action, not one per string.
    const unknown = counters.filter((row) => row.KeyId === '');
    expect(unknown.find((row) => row.Action === 'Encrypt')).toMatchObject({ Count: 0, Errors: 26 });
    expect(new Set(unknown.map((row) => `${row.Principal}|${row.Action}`)).size).toBe(unknown.length);
  });
});

describe('refused calls', () => {
  it('are recorded under the CMK the caller named (an alias, an upper-case id), with the caller form beside it', async () => {
    const keyId = ((await c.call('CreateKey', { ProtectionLevel: 'SOFTWARE' })) as J).KeyMetadata.KeyId as string;
    await c.call('CreateAlias', { AliasName: 'alias/refused-a', KeyId: keyId });
    await refused(c.call('DisableKey', { KeyId: 'alias/refused-a' }), 'Forbidden.NoPermission');
    await refused(c.call('DescribeKey', { KeyId: keyId.toUpperCase() }), 'InvalidParameter');

    const byKey = ((await c.call('ListAuditEvents', { KeyId: keyId, PageSize: 100 })) as J).Events as J[];
    const denial = byKey.find((ev) => ev.Action === 'DisableKey');
    expect(denial).toMatchObject({ KeyId: keyId, Outcome: 'Forbidden.NoPermission' });
    expect(JSON.parse(denial!.Details).KeyId).toBe('alias/refused-a');
    const upper = byKey.find((ev) => ev.Action === 'DescribeKey' && ev.Outcome === 'InvalidParameter');
    expect(upper).toMatchObject({ KeyId: keyId });
    expect(JSON.parse(upper!.Details).KeyId).toBe(keyId.toUpperCase());
  });

  it('that were malformed are recorded: the first at once, the rest of a flood as one record with a count', async () => {
    for (let i = 0; i < 5; i++) {
      const err = await malformed(k.endpoint);
      expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    }
    const events = (await allEvents()).filter((ev) => ev.Action === 'DescribeKey' && ev.Outcome === 'InvalidParameter' && /MalformedRequest/.test(ev.Details));
    expect(events).toHaveLength(1);
    expect(JSON.parse(events[0].Details)).toMatchObject({ Refusal: 'MalformedRequest', Count: 1 });
    expect(JSON.parse(events[0].Details).Error).toMatch(/not a valid DescribeKey request message/);
    // The other four are written when the window closes, at the latest at shutdown.
    await stop();
    await start();
    const after = (await allEvents()).filter((ev) => ev.Action === 'DescribeKey' && ev.Outcome === 'InvalidParameter' && /MalformedRequest/.test(ev.Details));
    expect(after.reduce((n, ev) => n + JSON.parse(ev.Details).Count, 0)).toBe(5);
  });
});

describe('a record an older kmsd wrote unbounded', () => {
  it('never blocks paging: listed and exported truncated with a flag; the offline verifier says so', async () => {
    await stop();
    // Appended as the older kmsd did, with a valid chain link and hash.
    const db = new Database(path.join(dataDir, 'kmsd.sqlite'));
    let legacySeq = 0;
    const huge = 'L'.repeat(FOUR_MIB - 4096);
    try {
      const last = db.prepare('SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1').get() as AuditRow;
      const row: AuditRow = { seq: last.seq + 1, time: Date.now(), request_id: crypto.randomUUID(), principal: 'anonymous', action: 'DisableKey', key_id: huge, proposal_id: '', outcome: 'Forbidden.NoPermission', details: canonicalJson({ Peer: 'ipv4:127.0.0.1:1', Reason: 'no grant' }), prev_hash: last.hash, hash: '' };
      row.hash = recordHash({ Seq: row.seq, Time: isoMs(row.time), RequestId: row.request_id, Principal: row.principal, Action: row.action, KeyId: row.key_id, ProposalId: row.proposal_id, Outcome: row.outcome, Details: row.details, PrevHash: row.prev_hash });
      db.prepare('INSERT INTO audit_log (seq, time, request_id, principal, action, key_id, proposal_id, outcome, details, prev_hash, hash) VALUES (@seq, @time, @request_id, @principal, @action, @key_id, @proposal_id, @outcome, @details, @prev_hash, @hash)').run(row);
      legacySeq = row.seq;
      // And a usage counter row keyed by whatever the caller sent, as the older kmsd kept them.
      db.prepare('INSERT INTO usage_counters (key_id, principal, action, ok, errors, first_at, last_at) VALUES (?, ?, ?, 0, 1, ?, ?)').run(huge, '127.0.0.1', 'Encrypt', Date.now(), Date.now());
    } finally {
      db.close();
    }
    await start();
    expect(((await c.call('VerifyAudit', {})) as J).Valid).toBe(true);
    const counters = ((await c.call('GetUsageCounters', {})) as J).Counters as J[];
    const old = counters.find((row) => row.KeyId.startsWith('LLLL'));
    expect(old!.KeyId).toContain(`truncated: ${huge.length} bytes, sha256 ${sha256(huge)}`);
    expect(old!.KeyId.length).toBeLessThanOrEqual(256);

    for (const size of [1000, 50, 1]) {
      const events = await allEvents(size);
      const legacy = events.find((ev) => ev.Seq === legacySeq);
      expect(legacy, `page size ${size}`).toMatchObject({ Truncated: true, Action: 'DisableKey' });
      expect(legacy!.KeyId).toContain(`truncated: ${huge.length} bytes, sha256 ${sha256(huge)}`);
      expect(events.length).toBeGreaterThan(legacySeq);
    }

    const file = path.join(dir, 'export-2.jsonl');
    const x = k.kmsctl(['ExportAudit', '--OutputFile', file]);
    expect(x.code, x.stderr).toBe(0);
    const line = fs
      .readFileSync(file, 'utf8')
      .split('\n')
      .slice(1)
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .find((r) => r.Seq === legacySeq);
    expect(line).toMatchObject({ Truncated: true });
    const strict = verifyOffline(file);
    expect(strict.code).toBe(1);
    expect(strict.json).toMatchObject({ Valid: false, FirstBadSeq: legacySeq });
    expect(strict.json.Problem).toMatch(/truncated/);
    const lenient = verifyOffline(file, ['--allow-truncated']);
    expect(lenient.code, lenient.stderr).toBe(0);
    expect(lenient.json).toMatchObject({ Valid: true, TruncatedRecords: [legacySeq] });
  });
});

describe('kmsctl VerifyAudit', () => {
  it('exits 0 on an intact log and 1 on a tampered one, printing the verdict either way', async () => {
    const ok = k.kmsctl(['VerifyAudit']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json.Valid).toBe(true);
    const db = new Database(path.join(dataDir, 'kmsd.sqlite'));
    try {
      db.exec('DROP TRIGGER audit_log_no_update;');
      db.prepare("UPDATE audit_log SET outcome = 'forged' WHERE seq = 3").run();
    } finally {
      db.close();
    }
    const bad = k.kmsctl(['VerifyAudit']);
    expect(bad.code).toBe(1);
    const verdict = JSON.parse(bad.stdout);
    expect(verdict).toMatchObject({ Valid: false, FirstBadSeq: 3 });
  });
});

describe('throttled calls', () => {
  it('are recorded: one record at once, then one per principal, action and reason with the count', async () => {
    const t = await startKmsd({ keep: true, env: { KMS_RATE_LIMIT: '1', KMS_RATE_BURST: '1' } });
    let throttled = 0;
    try {
      const results = await Promise.allSettled(Array.from({ length: 30 }, () => t.client.call('ListKeys', {})));
      for (const r of results) if (r.status === 'rejected' && (r.reason as { code?: string }).code === 'Throttling') throttled++;
      expect(throttled).toBeGreaterThan(5);
      expect(await t.stop()).toBe(0);
      const db = new Database(path.join(t.dataDir, 'kmsd.sqlite'), { readonly: true });
      const rows = db.prepare("SELECT * FROM audit_log WHERE action = 'ListKeys' AND outcome = 'Throttling' ORDER BY seq").all() as AuditRow[];
      db.close();
      expect(rows.length).toBeGreaterThanOrEqual(1);
      expect(rows.length).toBeLessThanOrEqual(3);
      const details = rows.map((r) => JSON.parse(r.details));
      expect(details[0]).toMatchObject({ Refusal: 'RateLimit', Count: 1 });
      expect(details.reduce((n, d) => n + d.Count, 0)).toBe(throttled);
    } finally {
      await t.stop();
      t.cleanup();
    }
  });
});
