// The Store caches CMK and key-version rows (src/store/store.ts): every write must be seen by the
// next read, a rolled-back transaction must leave no trace in the cache, and callers cannot alter
// a cached row.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Store, type CmkRow, type KeyVersionRow } from '../../src/store/store';
import { freshIv, IV_BYTES } from '../../src/kms/ciphertext';
import { XksStore } from '../../src/store/xks-store';

let dir: string;
let store: Store;

function cmk(keyId: string, versionId: string): CmkRow {
  return {
    key_id: keyId,
    origin: 'Aliyun_KMS',
    key_spec: 'Aliyun_AES_256',
    key_usage: 'ENCRYPT/DECRYPT',
    protection_level: 'SOFTWARE',
    description: 'first',
    key_state: 'Enabled',
    creation_date: Date.now(),
    delete_date: null,
    material_expire_time: null,
    automatic_rotation: 'Disabled',
    rotation_interval_s: null,
    next_rotation_date: null,
    last_rotation_date: null,
    primary_key_version: versionId,
    material_fingerprint: null,
    state_before_deletion: null,
    import_path: null,
  } as CmkRow;
}

function version(keyId: string, versionId: string): KeyVersionRow {
  return { version_id: versionId, key_id: keyId, creation_date: Date.now(), software_wrapped: Buffer.from('wrapped'), material_state: 'Present' } as KeyVersionRow;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-store-cache-'));
  store = new Store(dir);
});

afterEach(() => {
  store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('Store row cache', () => {
  it('every write is seen by the next read', () => {
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    store.tx(() => {
      store.insertCmk(cmk(keyId, versionId));
      store.insertVersion(version(keyId, versionId));
    });
    expect(store.getCmk(keyId)?.key_state).toBe('Enabled');
    expect(store.getVersion(versionId)?.material_state).toBe('Present');
    store.updateCmk(keyId, { key_state: 'Disabled' });
    expect(store.getCmk(keyId)?.key_state).toBe('Disabled');
    store.updateVersion(versionId, { material_state: 'Absent', software_wrapped: null });
    expect(store.getVersion(versionId)).toMatchObject({ material_state: 'Absent', software_wrapped: null });
    store.tx(() => store.deleteCmk(keyId));
    expect(store.getCmk(keyId)).toBeUndefined();
    expect(store.getVersion(versionId)).toBeUndefined();
  });

  it('a rolled-back transaction leaves neither the table nor the cache changed', () => {
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    store.insertCmk(cmk(keyId, versionId));
    store.insertVersion(version(keyId, versionId));
    expect(() =>
      store.tx(() => {
        store.updateCmk(keyId, { key_state: 'PendingImport' });
        store.updateVersion(versionId, { material_state: 'Absent' });
        // Read inside the transaction: these rows never commit.
        expect(store.getCmk(keyId)?.key_state).toBe('PendingImport');
        expect(store.getVersion(versionId)?.material_state).toBe('Absent');
        throw new Error('abort');
      }),
    ).toThrow('abort');
    expect(store.getCmk(keyId)?.key_state).toBe('Enabled');
    expect(store.getVersion(versionId)?.material_state).toBe('Present');
    // And what another connection sees agrees.
    const other = new Database(path.join(dir, 'kmsd.sqlite'), { readonly: true });
    try {
      expect((other.prepare('SELECT key_state FROM cmks WHERE key_id = ?').get(keyId) as { key_state: string }).key_state).toBe('Enabled');
    } finally {
      other.close();
    }
  });

  it('cached rows cannot be altered by a caller', () => {
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    store.insertCmk(cmk(keyId, versionId));
    const row = store.getCmk(keyId) as CmkRow;
    expect(() => {
      (row as { key_state: string }).key_state = 'Disabled';
    }).toThrow(TypeError);
    expect(store.getCmk(keyId)?.key_state).toBe('Enabled');
  });
});

describe('freshIv', () => {
  it('gives 12-byte IVs that never repeat across blocks', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 5000; i++) {
      const iv = freshIv();
      expect(iv.length).toBe(IV_BYTES);
      seen.add(iv.toString('hex'));
    }
    expect(seen.size).toBe(5000);
  });
});

describe('XksStore row cache', () => {
  const cred = (id: string) => ({ access_key_id: id, uri_path_prefix: 'ks', sealed_secret: Buffer.from('sealed'), creation_date: 1 });
  const key = (ext: string, keyId: string) => ({ uri_path_prefix: 'ks', external_key_id: ext, key_id: keyId, operations: 'ENCRYPT,DECRYPT', creation_date: 1 });

  it('serves repeated lookups from memory, and every write and rollback is seen by the next read', () => {
    const xks = new XksStore(store);
    xks.insertKeyStore({ uri_path_prefix: 'ks', creation_date: 1 });
    xks.insertCredential(cred('KMSDXKSAAAA'));
    xks.insertKey(key('k1', 'cmk-1'));
    const first = xks.getKey('ks', 'k1');
    expect(first?.key_id).toBe('cmk-1');
    expect(xks.getCredential('KMSDXKSAAAA')?.uri_path_prefix).toBe('ks');
    // Cached: the same frozen row comes back.
    expect(xks.getKey('ks', 'k1')).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
    expect(xks.getKey('ks', 'k1\nx')).toBeUndefined();

    xks.deleteKey('ks', 'k1');
    expect(xks.getKey('ks', 'k1')).toBeUndefined();
    xks.insertKey(key('k1', 'cmk-2'));
    expect(xks.getKey('ks', 'k1')?.key_id).toBe('cmk-2');
    xks.deleteCredential('KMSDXKSAAAA');
    expect(xks.getCredential('KMSDXKSAAAA')).toBeUndefined();

    // A row read inside a transaction that rolls back is not served afterwards.
    expect(() =>
      store.tx(() => {
        xks.deleteKey('ks', 'k1');
        xks.insertKey(key('k1', 'cmk-rolled-back'));
        expect(xks.getKey('ks', 'k1')?.key_id).toBe('cmk-rolled-back');
        throw new Error('roll back');
      }),
    ).toThrow('roll back');
    expect(xks.getKey('ks', 'k1')?.key_id).toBe('cmk-2');
  });
});
