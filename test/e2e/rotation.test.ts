// Key versions and rotation against the real kmsd: CreateKeyVersion makes a new primary version
// while every older version keeps decrypting (HSM and SOFTWARE), and automatic rotation happens on
// schedule. The daemon accepts rotation intervals down to 1 s here and its scheduler ticks every
// 200 ms, so a CMK with RotationInterval 2s rotates about every two seconds.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { clientErrorOf } from '../helpers/errors';
import { Kmsd, listTokenObjects, startKmsd } from '../helpers/daemon';
import { within } from '../helpers/poll';

let k: Kmsd;

beforeAll(async () => {
  k = await startKmsd({ env: { KMS_MIN_ROTATION_INTERVAL_SECONDS: '1', KMS_SCHEDULER_INTERVAL_MS: '200' } });
});

afterAll(async () => {
  await k?.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function describeKey(id: string): Promise<any> {
  return (await k.client.call('DescribeKey', { KeyId: id })).KeyMetadata;
}

async function versions(id: string): Promise<string[]> {
  const r = await k.client.call('ListKeyVersions', { KeyId: id, PageSize: 100 });
  expect(r.KeyVersions).toHaveLength(r.TotalCount);
  return r.KeyVersions.map((v: any) => v.KeyVersionId);
}

/** Polls DescribeKey until pred holds or the timeout passes; returns the last metadata. */
/** The CMK's metadata once `pred` holds for it, or as it is when `timeoutMs` has passed. */
async function waitFor(id: string, pred: (m: any) => boolean, timeoutMs: number): Promise<any> {
  let m: any;
  await within(timeoutMs, async () => pred((m = await describeKey(id))), 100);
  return m;
}

describe('CreateKeyVersion', () => {
  for (const level of ['HSM', 'SOFTWARE']) {
    it(`makes a new primary version; every older version keeps decrypting (${level})`, async () => {
      const m = (await k.client.call('CreateKey', { ProtectionLevel: level })).KeyMetadata;
      const made: { blob: string; version: string; text: string }[] = [];
      let primary = m.PrimaryKeyVersion;
      for (let i = 0; i < 4; i++) {
        const text = `${level} generation ${i}`;
        const e = await k.client.encrypt(m.KeyId, Buffer.from(text), { gen: String(i) });
        expect(e.KeyVersionId).toBe(primary);
        made.push({ blob: e.CiphertextBlob, version: primary, text });
        if (i < 3) {
          const v = (await k.client.call('CreateKeyVersion', { KeyId: m.KeyId })).KeyVersion;
          expect(v.KeyId).toBe(m.KeyId);
          expect(v.KeyVersionId).not.toBe(primary);
          const meta = await describeKey(m.KeyId);
          expect(meta.PrimaryKeyVersion).toBe(v.KeyVersionId);
          expect(meta.LastRotationDate).not.toBe('');
          primary = v.KeyVersionId;
        }
      }
      const all = await versions(m.KeyId);
      expect(all).toHaveLength(4);
      expect(new Set(all)).toEqual(new Set(made.map((x) => x.version)));
      for (const [i, x] of made.entries()) {
        const d = await k.client.decrypt(x.blob, { gen: String(i) });
        expect(d.KeyVersionId).toBe(x.version);
        expect(d.Plaintext.toString()).toBe(x.text);
      }
      // ReEncrypt moves an old blob to the current primary version.
      const re = await k.client.call('ReEncrypt', { CiphertextBlob: made[0].blob, SourceEncryptionContext: { gen: '0' }, DestinationKeyId: m.KeyId });
      expect(re).toMatchObject({ SourceKeyVersionId: made[0].version, KeyVersionId: primary });
      expect((await k.client.decrypt(re.CiphertextBlob)).Plaintext.toString()).toBe(made[0].text);

      const labels = listTokenObjects(k).map((o) => o.label);
      for (const v of all) expect(labels.includes(`kmsd:cmk:${v}`)).toBe(level === 'HSM');
    });
  }

  it('is refused for a Disabled CMK (Rejected.Disabled) and an EXTERNAL CMK (Rejected.ExternalKey), state unchanged', async () => {
    const m = (await k.client.call('CreateKey', {})).KeyMetadata;
    await k.client.call('DisableKey', { KeyId: m.KeyId });
    const e = await clientErrorOf(k.client.call('CreateKeyVersion', { KeyId: m.KeyId }));
    expect(e.code).toBe('Rejected.Disabled');
    expect(e.grpcCode).toBe(grpc.status.FAILED_PRECONDITION);
    expect(await versions(m.KeyId)).toEqual([m.PrimaryKeyVersion]);
    const ext = (await k.client.call('CreateKey', { Origin: 'EXTERNAL' })).KeyMetadata;
    const r = k.kmsctl(['CreateKeyVersion', '--KeyId', ext.KeyId]);
    expect(r.code).toBe(1);
    expect(r.json.Code).toBe('Rejected.ExternalKey');
    expect(await describeKey(ext.KeyId)).toEqual(ext);
  });
});

describe('automatic rotation', () => {
  it('rotates on schedule (RotationInterval 2s): PrimaryKeyVersion changes, ListKeyVersions grows, old blobs decrypt', async () => {
    const created: Record<string, any> = {};
    const t0 = Date.now();
    for (const level of ['HSM', 'SOFTWARE']) {
      const r = k.kmsctl(['CreateKey', '--ProtectionLevel', level, '--EnableAutomaticRotation', 'true', '--RotationInterval', '2s']);
      expect(r.code, r.stderr).toBe(0);
      const m = r.json.KeyMetadata;
      expect(m).toMatchObject({ AutomaticRotation: 'Enabled', RotationInterval: '2s', LastRotationDate: '' });
      const next = Date.parse(m.NextRotationDate);
      expect(next - Date.parse(m.CreationDate)).toBeGreaterThanOrEqual(1000);
      expect(next - Date.parse(m.CreationDate)).toBeLessThanOrEqual(3000);
      created[level] = m;
    }
    const firstBlobs: Record<string, { blob: string; version: string }> = {};
    for (const level of ['HSM', 'SOFTWARE']) {
      const e = await k.client.encrypt(created[level].KeyId, Buffer.from(`before rotation ${level}`));
      // A loaded machine may already have rotated the CMK since CreateKey answered: the blob is
      // made with whichever version is primary now, and it is that version that must decrypt later.
      expect(await versions(created[level].KeyId)).toContain(e.KeyVersionId);
      firstBlobs[level] = { blob: e.CiphertextBlob, version: e.KeyVersionId };
    }

    for (const level of ['HSM', 'SOFTWARE']) {
      const m0 = created[level];
      const v0 = firstBlobs[level].version;
      // First rotation after the blob was made: about 2 s after creation.
      const m1 = await waitFor(m0.KeyId, (m) => m.PrimaryKeyVersion !== v0, 10_000);
      expect(m1.PrimaryKeyVersion, `${level} did not rotate`).not.toBe(m0.PrimaryKeyVersion);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
      expect(m1.LastRotationDate).not.toBe('');
      expect(Date.parse(m1.NextRotationDate)).toBeGreaterThan(Date.parse(m0.NextRotationDate));
      // And again: it keeps its schedule.
      const m2 = await waitFor(m0.KeyId, (m) => m.PrimaryKeyVersion !== m1.PrimaryKeyVersion, 10_000);
      expect(m2.PrimaryKeyVersion, `${level} did not rotate twice`).not.toBe(m1.PrimaryKeyVersion);
      const vs = await versions(m0.KeyId);
      expect(vs.length).toBeGreaterThanOrEqual(3);
      expect(vs).toEqual(expect.arrayContaining([m0.PrimaryKeyVersion, m1.PrimaryKeyVersion, m2.PrimaryKeyVersion]));

      // The blob made with the first version still decrypts; new blobs use a newer version.
      const d = await k.client.decrypt(firstBlobs[level].blob);
      expect(d.KeyVersionId).toBe(v0);
      expect(d.Plaintext.toString()).toBe(`before rotation ${level}`);
      const e = await k.client.encrypt(m0.KeyId, Buffer.from('after'));
      expect(e.KeyVersionId).not.toBe(v0);
      expect(vs).toContain(e.KeyVersionId);
      expect((await k.client.decrypt(e.CiphertextBlob)).Plaintext.toString()).toBe('after');
    }
    // HSM versions made by the scheduler are token objects too.
    // Versions first, then the token: the CMK keeps rotating every 2 s, and a version committed after
    // the token was listed would otherwise look missing.
    const hsmVersions = await versions(created.HSM.KeyId);
    const labels = listTokenObjects(k).map((o) => o.label);
    for (const v of hsmVersions) expect(labels).toContain(`kmsd:cmk:${v}`);
    expect(k.logs()).not.toContain('scheduled rotation failed');
  });

  it('does not rotate a Disabled CMK; rotates it once enabled again', async () => {
    const m = (await k.client.call('CreateKey', { EnableAutomaticRotation: true, RotationInterval: '1s' })).KeyMetadata;
    await k.client.call('DisableKey', { KeyId: m.KeyId });
    // The baseline is taken once Disabled (a slow machine may have rotated it before that).
    const baseline = await versions(m.KeyId);
    const primary = (await describeKey(m.KeyId)).PrimaryKeyVersion;
    await sleep(2500);
    expect(await versions(m.KeyId)).toEqual(baseline);
    expect((await describeKey(m.KeyId)).PrimaryKeyVersion).toBe(primary);
    await k.client.call('EnableKey', { KeyId: m.KeyId });
    const after = await waitFor(m.KeyId, (x) => x.PrimaryKeyVersion !== primary, 5000);
    expect(after.PrimaryKeyVersion).not.toBe(primary);
    expect((await versions(m.KeyId)).length).toBeGreaterThan(baseline.length);
  });

  it('validates the rotation parameters', async () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
      [{ RotationInterval: '30d' }, 'InvalidParameter', /RotationInterval.*EnableAutomaticRotation/],
      [{ EnableAutomaticRotation: true, RotationInterval: '2x' }, 'InvalidParameter', /RotationInterval/],
      [{ EnableAutomaticRotation: true, RotationInterval: '10' }, 'InvalidParameter', /RotationInterval/],
      [{ EnableAutomaticRotation: true, RotationInterval: '0s' }, 'InvalidParameter', /RotationInterval/],
      [{ EnableAutomaticRotation: true, RotationInterval: '731d' }, 'InvalidParameter', /RotationInterval.*63072000s/],
      [{ EnableAutomaticRotation: true, RotationInterval: '30d', Origin: 'EXTERNAL' }, 'Rejected.ExternalKey', /EXTERNAL/],
    ];
    const total = (await k.client.call('ListKeys', {})).TotalCount;
    for (const [req, code, msg] of cases) {
      const e = await clientErrorOf(k.client.call('CreateKey', req));
      expect(e.code, JSON.stringify(req)).toBe(code);
      expect(e.message).toMatch(msg);
    }
    expect((await k.client.call('ListKeys', {})).TotalCount).toBe(total);
    // Enabled without an interval: the default of 365 days.
    const d = (await k.client.call('CreateKey', { EnableAutomaticRotation: true })).KeyMetadata;
    expect(d).toMatchObject({ AutomaticRotation: 'Enabled', RotationInterval: '31536000s' });
    const r = k.kmsctl(['CreateKey', '--EnableAutomaticRotation', 'true', '--RotationInterval', '1h']);
    expect(r.code).toBe(0);
    expect(r.json.KeyMetadata.RotationInterval).toBe('3600s');
    const bad = k.kmsctl(['CreateKey', '--EnableAutomaticRotation', 'true', '--RotationInterval', 'weekly']);
    expect(bad.code).toBe(1);
    expect(bad.json.Code).toBe('InvalidParameter');
    expect(bad.json.Message).toMatch(/^RotationInterval: /);
    // The metadata of a CMK without rotation says so.
    const plain = (await k.client.call('CreateKey', {})).KeyMetadata;
    expect(plain).toMatchObject({ AutomaticRotation: 'Disabled', RotationInterval: '', NextRotationDate: '' });
  });
});
