// A creation under a write-ahead intent that will not commit (its metadata transaction failed)
// settles its intent as start-up reconciliation settles a dead replica's: the token finds objects
// by label, and when another replica has meanwhile reclaimed the intent or committed metadata that
// claims the label (an import of the same key version), what the label holds is theirs and stays.
// Run in process against a real SoftHSM token and a real SQLite store.

import crypto from 'node:crypto';
import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HsmToken } from '../../src/hsm/token';
import { bindStoreToToken } from '../../src/kms/binding';
import { Keyring, ROOT_KEY_ID } from '../../src/kms/keyring';
import { DEFAULT_KMS_CONFIG, KmsService, type Logger } from '../../src/kms/service';
import { SqliteStore } from '../../src/store/sqlite';
import { makeTempDir } from '../helpers/daemon';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token';

const quiet: Logger = { info: () => undefined, warn: () => undefined, error: () => undefined };

let softhsm: SoftHsmToken;
let token: HsmToken;
let store: SqliteStore;
let dataDir: string;
let kms: KmsService;

beforeAll(async () => {
  softhsm = createSoftHsmToken({ label: 'abandon' });
  token = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.userPin });
  dataDir = makeTempDir('kmsd-abandon-');
  store = new SqliteStore(dataDir);
  await bindStoreToToken(store, token, { adopt: false, log: quiet, dataDir });
  token.ensureRootKey(ROOT_KEY_ID);
  kms = new KmsService(store, new Keyring(token, store), DEFAULT_KMS_CONFIG, quiet);
});

afterAll(async () => {
  await store?.close();
  token?.close();
  softhsm?.cleanup();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

const openIntents = async () => (await store.allIntents()).map((i) => i.seq);

describe('abandoning a creation whose metadata did not commit', () => {
  it('destroys its object and closes its intent when nothing else claims the label', async () => {
    const id = crypto.randomUUID();
    const { seq } = await kms.createUnderIntent('cmk', id, () => token.generateAesKey('cmk', id));
    expect(token.holdsLabel('cmk', id)).toBe(true);
    await kms.abandonIntent('cmk', id, seq);
    expect(token.holdsLabel('cmk', id)).toBe(false);
    expect(await openIntents()).not.toContain(seq);
  });

  it('leaves the label alone when another replica reclaimed the intent and made the object again', async () => {
    const id = crypto.randomUUID();
    const { seq } = await kms.createUnderIntent('cmk', id, () => token.generateAesKey('cmk', id));
    // The other replica took this one for dead: it claimed the intent, destroyed the object, and
    // then created its own under the same label.
    expect(await store.transaction((tx) => tx.claimIntent(seq))).toBe(true);
    token.destroy('cmk', id);
    token.generateAesKey('cmk', id);
    const theirs = token.fingerprint({ kind: 'cmk', id }, 'probe');
    await kms.abandonIntent('cmk', id, seq);
    expect(token.holdsLabel('cmk', id)).toBe(true);
    expect(token.fingerprint({ kind: 'cmk', id }, 'probe').equals(theirs)).toBe(true);
    token.destroy('cmk', id);
  });

  it('keeps the object when committed metadata claims its key version', async () => {
    const key = (await kms.CreateKey({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM' })).KeyMetadata;
    const versionId = key.PrimaryKeyVersion as string;
    const { seq } = await kms.createUnderIntent('cmk', versionId, () => token.generateAesKey('cmk', versionId));
    // Another replica imported this version's material and committed while this call's commit failed.
    await store.transaction((tx) => tx.updateVersion(versionId, { material_state: 'Present' }));
    await kms.abandonIntent('cmk', versionId, seq);
    expect(token.holdsLabel('cmk', versionId)).toBe(true);
    expect(await openIntents()).not.toContain(seq);
  });
});
