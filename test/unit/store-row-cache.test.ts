// The SQLite store caches CMK and key-version rows (src/store/store.ts): every write must be seen by
// the next read, a rolled-back transaction must leave no trace in the cache, a row read inside a
// transaction is never served to a reader outside it, and callers cannot alter a cached row.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite';
import { StoreConflictError, type CmkRow, type KeyVersionRow } from '../../src/store/api';
import { freshIv, IV_BYTES } from '../../src/kms/ciphertext';
import { cmkRow } from '../helpers/store-rows';

let dir: string;
let store: SqliteStore;

function cmk(keyId: string, versionId: string): CmkRow {
  return cmkRow(keyId, { protection_level: 'SOFTWARE', description: 'first', creation_date: Date.now(), primary_key_version: versionId });
}

function version(keyId: string, versionId: string): KeyVersionRow {
  return { version_id: versionId, key_id: keyId, creation_date: Date.now(), software_wrapped: Buffer.from('wrapped'), material_state: 'Present' } as KeyVersionRow;
}

beforeEach(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kmsd-store-cache-'));
  store = new SqliteStore(dir);
});

afterEach(async () => {
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('Store row cache', () => {
  it('every write is seen by the next read', async () => {
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    await store.transaction(async (tx) => {
      await tx.insertCmk(cmk(keyId, versionId));
      await tx.insertVersion(version(keyId, versionId));
    });
    expect((await store.getCmk(keyId))?.key_state).toBe('Enabled');
    expect((await store.getVersion(versionId))?.material_state).toBe('Present');
    expect(store.cachedCmk(keyId)?.key_state).toBe('Enabled');
    await store.updateCmk(keyId, { key_state: 'Disabled' });
    expect(store.cachedCmk(keyId)).toBeUndefined();
    expect((await store.getCmk(keyId))?.key_state).toBe('Disabled');
    await store.updateVersion(versionId, { material_state: 'Absent', software_wrapped: null });
    expect(await store.getVersion(versionId)).toMatchObject({ material_state: 'Absent', software_wrapped: null });
    await store.transaction((tx) => tx.deleteCmk(keyId));
    expect(await store.getCmk(keyId)).toBeUndefined();
    expect(await store.getVersion(versionId)).toBeUndefined();
  });

  it('a rolled-back transaction leaves neither the table nor the cache changed', async () => {
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    await store.insertCmk(cmk(keyId, versionId));
    await store.insertVersion(version(keyId, versionId));
    await expect(
      store.transaction(async (tx) => {
        await tx.updateCmk(keyId, { key_state: 'PendingImport' });
        await tx.updateVersion(versionId, { material_state: 'Absent' });
        // Read inside the transaction: these rows never commit.
        expect((await tx.getCmk(keyId))?.key_state).toBe('PendingImport');
        expect((await tx.getVersion(versionId))?.material_state).toBe('Absent');
        // ...and are not cached for readers outside it.
        expect(store.cachedCmk(keyId)).toBeUndefined();
        expect(store.cachedVersion(versionId)).toBeUndefined();
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    expect((await store.getCmk(keyId))?.key_state).toBe('Enabled');
    expect((await store.getVersion(versionId))?.material_state).toBe('Present');
    // And what another connection sees agrees.
    const other = new Database(path.join(dir, 'kmsd.sqlite'), { readonly: true });
    try {
      expect((other.prepare('SELECT key_state FROM cmks WHERE key_id = ?').get(keyId) as { key_state: string }).key_state).toBe('Enabled');
    } finally {
      other.close();
    }
  });

  it('a call outside an open transaction waits for it, and reads only committed rows', async () => {
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    await store.insertCmk(cmk(keyId, versionId));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const order: string[] = [];
    const tx = store.transaction(async (t) => {
      await t.updateCmk(keyId, { description: 'uncommitted' });
      order.push('tx changed');
      // Held open across an await that is not the store's (the misuse the lock makes safe).
      await gate;
      order.push('tx ends');
      throw new Error('roll back');
    });
    const outside = store.getCmk(keyId).then((r) => {
      order.push(`outside read ${r?.description}`);
    });
    await new Promise((r) => setImmediate(r));
    expect(order).toEqual(['tx changed']);
    release();
    await expect(tx).rejects.toThrow('roll back');
    await outside;
    expect(order).toEqual(['tx changed', 'tx ends', 'outside read first']);
  });

  it('cached rows cannot be altered by a caller', async () => {
    const keyId = crypto.randomUUID();
    const versionId = crypto.randomUUID();
    await store.insertCmk(cmk(keyId, versionId));
    const row = (await store.getCmk(keyId)) as CmkRow;
    expect(() => {
      (row as { key_state: string }).key_state = 'Disabled';
    }).toThrow(TypeError);
    expect((await store.getCmk(keyId))?.key_state).toBe('Enabled');
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

describe('XKS row cache', () => {
  const cred = (id: string) => ({ access_key_id: id, uri_path_prefix: 'ks', sealed_secret: Buffer.from('sealed'), creation_date: 1 });
  const key = (ext: string, keyId: string) => ({ uri_path_prefix: 'ks', external_key_id: ext, key_id: keyId, operations: 'ENCRYPT,DECRYPT', creation_date: 1 });

  it('serves repeated lookups from memory, and every write and rollback is seen by the next read', async () => {
    const xks = store.xks;
    await xks.insertKeyStore({ uri_path_prefix: 'ks', creation_date: 1 });
    await xks.insertCredential(cred('KMSDXKSAAAA'));
    await xks.insertKey(key('k1', 'cmk-1'));
    const first = await xks.getKey('ks', 'k1');
    expect(first?.key_id).toBe('cmk-1');
    expect((await xks.getCredential('KMSDXKSAAAA'))?.uri_path_prefix).toBe('ks');
    // Cached: the same frozen row comes back.
    expect(await xks.getKey('ks', 'k1')).toBe(first);
    expect(Object.isFrozen(first)).toBe(true);
    expect(await xks.getKey('ks', 'k1\nx')).toBeUndefined();

    await xks.deleteKey('ks', 'k1');
    expect(await xks.getKey('ks', 'k1')).toBeUndefined();
    await xks.insertKey(key('k1', 'cmk-2'));
    expect((await xks.getKey('ks', 'k1'))?.key_id).toBe('cmk-2');
    await xks.deleteCredential('KMSDXKSAAAA');
    expect(await xks.getCredential('KMSDXKSAAAA')).toBeUndefined();

    // A row read inside a transaction that rolls back is not served afterwards.
    await expect(
      store.transaction(async (tx) => {
        await tx.xks.deleteKey('ks', 'k1');
        await tx.xks.insertKey(key('k1', 'cmk-rolled-back'));
        expect((await tx.xks.getKey('ks', 'k1'))?.key_id).toBe('cmk-rolled-back');
        throw new Error('roll back');
      }),
    ).rejects.toThrow('roll back');
    expect((await xks.getKey('ks', 'k1'))?.key_id).toBe('cmk-2');
  });

  it('a taken key store or external key id is a StoreConflictError', async () => {
    await store.xks.insertKeyStore({ uri_path_prefix: 'ks', creation_date: 1 });
    await expect(store.xks.insertKeyStore({ uri_path_prefix: 'ks', creation_date: 2 })).rejects.toBeInstanceOf(StoreConflictError);
    await store.xks.insertKey(key('k1', 'cmk-1'));
    await expect(store.xks.insertKey(key('k1', 'cmk-2'))).rejects.toBeInstanceOf(StoreConflictError);
    await store.insertAlias({ alias_name: 'alias/a', key_id: 'cmk-1', creation_date: 1, update_date: 1 });
    await expect(store.insertAlias({ alias_name: 'alias/a', key_id: 'cmk-2', creation_date: 1, update_date: 1 })).rejects.toBeInstanceOf(StoreConflictError);
  });
});
