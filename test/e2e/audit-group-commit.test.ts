// Audit records written by group commit survive a crash: kmsd is killed with SIGKILL while 32 XKS
// Encrypt calls (each one audited, with the kmsRequestId AWS KMS sent) are in flight, three times
// over. After each kill, the SQLite file as kmsd left it must hold the record of every call that was
// answered 200 before the kill (a call is answered only once its record's transaction has
// committed), and after the restart the chain verifies.

import crypto from 'node:crypto';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/daemon';
import { HttpKmsd, startHttpKmsd } from '../helpers/http';
import { XksCredential, requestMetadata, xksRequest } from '../helpers/xks';

const UP = '/crash-ks/kms/xks/v1';
const IN_FLIGHT = 32;
const ROUNDS = 3;

let dataDir: string;
let k: HttpKmsd | undefined;
let cred: XksCredential;

function ok<T = any>(r: { code: number; stderr: string; json: any }): T {
  // eslint-disable-line @typescript-eslint/no-explicit-any
  expect(r.code, r.stderr).toBe(0);
  return r.json as T;
}

/** kmsRequestIds of the XksEncrypt records in the file kmsd left behind. */
function recordedRequestIds(): Set<string> {
  const db = new Database(path.join(dataDir, 'kmsd.sqlite'), { fileMustExist: true });
  try {
    const details = db.prepare("SELECT details FROM audit_log WHERE action = 'XksEncrypt'").pluck().all() as string[];
    return new Set(details.map((d) => (JSON.parse(d) as { KmsRequestId: string }).KmsRequestId));
  } finally {
    db.close();
  }
}

beforeAll(async () => {
  dataDir = makeTempDir('kmsd-audit-crash-');
  k = await startHttpKmsd({ dataDir, keep: true });
  const keyId = ok(k.kmsctl(['CreateKey', '--ProtectionLevel', 'HSM'])).KeyMetadata.KeyId;
  cred = ok(k.kmsctl(['CreateXksKeyStore', '--UriPathPrefix', 'crash-ks']));
  ok(k.kmsctl(['CreateXksKey', '--UriPathPrefix', 'crash-ks', '--KeyId', keyId, '--ExternalKeyId', 'crash-key', '--Operations', 'ENCRYPT,DECRYPT']));
}, 120_000);

afterAll(async () => {
  await k?.stop();
  k?.cleanup();
});

describe('audit records committed in groups', () => {
  it(`lose no acknowledged call's record when kmsd is killed with ${IN_FLIGHT} calls in flight (${ROUNDS} kills)`, async () => {
    const plaintext = crypto.randomBytes(4096).toString('base64');
    for (let round = 0; round < ROUNDS; round++) {
      const server = k!;
      const acked: string[] = [];
      let inFlight = 0;
      let killing = false;
      let inFlightAtKill = -1;
      const worker = async () => {
        while (!killing) {
          const id = crypto.randomUUID();
          inFlight++;
          try {
            const r = await xksRequest(server.httpPort, { op: 'keys/crash-key/encrypt', uriPath: UP, cred, body: { requestMetadata: requestMetadata('Encrypt', { kmsRequestId: id }), plaintext, encryptionAlgorithm: 'AES_GCM' } });
            if (r.status === 200) acked.push(id);
            else if (!killing) throw new Error(`XKS Encrypt answered ${r.status}: ${r.body}`);
          } catch (e) {
            // The connection dies with kmsd; before the kill, any failure is the test's.
            if (!killing) throw e;
            return;
          } finally {
            inFlight--;
          }
        }
      };
      const workers = Array.from({ length: IN_FLIGHT }, worker);
      // Kill once a different number of calls was answered each round.
      const target = 80 + round * 41;
      while (acked.length < target) await new Promise((r) => setTimeout(r, 5));
      killing = true;
      inFlightAtKill = inFlight;
      const ackedBeforeKill = [...acked];
      await server.kill();
      await Promise.all(workers);
      expect(inFlightAtKill).toBeGreaterThan(0);

      const recorded = recordedRequestIds();
      const lost = ackedBeforeKill.filter((id) => !recorded.has(id));
      expect(lost, `${lost.length} of ${ackedBeforeKill.length} acknowledged calls have no record`).toEqual([]);

      k = await startHttpKmsd({ dataDir, keep: true });
      const v = ok(k.kmsctl(['VerifyAudit']));
      expect(v, JSON.stringify(v)).toMatchObject({ Valid: true, Problem: '' });
    }
  }, 300_000);
});
