// A state change and its audit record commit together or not at all. kmsd is killed with SIGKILL
// inside the transaction of a change, after the change and its record were written and before the
// commit: through the failpoint module (crash-failpoints.c), at the token signature of the audit
// checkpoint that the record triggers (KMS_AUDIT_CHECKPOINT_RECORDS=1 puts one in every other
// record's transaction). The file kmsd leaves must hold neither the change nor its record; a record
// appended after the change (its own transaction) would leave the change without it. After a normal
// restart the same calls commit both, and the chain verifies.

import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Kmsd, makeTempDir, startKmsd } from '../helpers/daemon';

let buildDir = '';
let failpointModule = '';
let dataDir = '';
let keyId = '';
const started: Kmsd[] = [];

/** What the file kmsd left holds: the CMK's state, and the records of an action. */
function onDisk(action: string): { keyState: string | undefined; cmks: number; records: { outcome: string; key_id: string }[] } {
  const db = new Database(path.join(dataDir, 'kmsd.sqlite'), { fileMustExist: true });
  try {
    const row = db.prepare('SELECT key_state FROM cmks WHERE key_id = ?').get(keyId) as { key_state: string } | undefined;
    const cmks = (db.prepare('SELECT COUNT(*) AS n FROM cmks').get() as { n: number }).n;
    const records = db.prepare('SELECT outcome, key_id FROM audit_log WHERE action = ? ORDER BY seq').all(action) as { outcome: string; key_id: string }[];
    return { keyState: row?.key_state, cmks, records };
  } finally {
    db.close();
  }
}

async function start(failpoint?: string): Promise<Kmsd> {
  const softhsm = path.join(dataDir, 'softhsm');
  const k = failpoint
    ? await startKmsd({
        dataDir,
        keep: true,
        args: ['--pkcs11-module', failpointModule, '--token-label', 'kmsd-dev', '--pin-file', path.join(softhsm, 'user.pin')],
        env: { SOFTHSM2_CONF: path.join(softhsm, 'softhsm2.conf'), KMSD_REAL_PKCS11: '/usr/lib/softhsm/libsofthsm2.so', KMSD_FAILPOINT: failpoint, KMS_AUDIT_CHECKPOINT_RECORDS: '1' },
      })
    : await startKmsd({ dataDir, keep: true });
  started.push(k);
  return k;
}

beforeAll(async () => {
  buildDir = makeTempDir('kmsd-audit-atomic-fp-');
  failpointModule = path.join(buildDir, 'failpoints.so');
  const cc = spawnSync('cc', ['-shared', '-fPIC', '-O1', '-I/usr/include/p11-kit-1', '-o', failpointModule, path.join(__dirname, 'crash-failpoints.c'), '-ldl'], { encoding: 'utf8' });
  expect(cc.status, `building crash-failpoints.so needs cc and p11-kit's pkcs11.h (apt-get install build-essential libp11-kit-dev): ${cc.stderr}`).toBe(0);
  dataDir = makeTempDir('kmsd-audit-atomic-');
  const k = await start();
  const r = k.kmsctl(['CreateKey', '--ProtectionLevel', 'SOFTWARE']);
  expect(r.code, r.stderr).toBe(0);
  keyId = r.json.KeyMetadata.KeyId;
  // A clean stop ends the log on a checkpoint: the next start counts checkpoints from there.
  expect(await k.stop()).toBe(0);
}, 120_000);

afterAll(async () => {
  for (const k of started) await k.kill().catch(() => undefined);
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
  if (buildDir) fs.rmSync(buildDir, { recursive: true, force: true });
});

describe('a change and its audit record', () => {
  it('are both gone when kmsd dies inside their transaction (DisableKey, then CreateKey), and both there when it commits', async () => {
    // DaemonStarted is the first record after the stop's checkpoint; DisableKey's record is the
    // second, so its transaction signs a checkpoint, and the failpoint kills kmsd there.
    const before = onDisk('DisableKey');
    expect(before).toMatchObject({ keyState: 'Enabled', records: [] });
    let k = await start('C_Sign:1');
    const r = k.kmsctl(['DisableKey', '--KeyId', keyId]);
    expect(r.code, 'the call cannot have been answered: kmsd died before its commit').not.toBe(0);
    await k.kill();
    expect(k.logs()).toContain('crash-failpoints: SIGKILL at C_Sign');
    expect(onDisk('DisableKey')).toMatchObject({ keyState: 'Enabled', records: [] });

    // The same for a CMK's creation: neither the CMK nor a CreateKey record for it. A clean start
    // and stop first, so the log ends on a checkpoint again (the killed run's DaemonStarted did not).
    k = await start();
    expect(await k.stop()).toBe(0);
    const cmksBefore = onDisk('CreateKey');
    k = await start('C_Sign:1');
    expect(k.kmsctl(['CreateKey', '--ProtectionLevel', 'SOFTWARE']).code).not.toBe(0);
    await k.kill();
    expect(k.logs()).toContain('crash-failpoints: SIGKILL at C_Sign');
    const cmksAfter = onDisk('CreateKey');
    expect(cmksAfter.cmks).toBe(cmksBefore.cmks);
    expect(cmksAfter.records).toEqual(cmksBefore.records);

    // Without the failpoint the same calls commit both halves, and the chain verifies.
    k = await start();
    expect(k.kmsctl(['DisableKey', '--KeyId', keyId]).code).toBe(0);
    const created = k.kmsctl(['CreateKey', '--ProtectionLevel', 'SOFTWARE']);
    expect(created.code, created.stderr).toBe(0);
    const verdict = k.kmsctl(['VerifyAudit']);
    expect(verdict.json).toMatchObject({ Valid: true, Problem: '' });
    expect(await k.stop()).toBe(0);
    expect(onDisk('DisableKey')).toMatchObject({ keyState: 'Disabled', records: [{ outcome: 'ok', key_id: keyId }] });
    const after = onDisk('CreateKey');
    expect(after.cmks).toBe(cmksBefore.cmks + 1);
    expect(after.records.map((x) => x.key_id)).toEqual([...cmksBefore.records.map((x) => x.key_id), created.json.KeyMetadata.KeyId]);
  });
});
