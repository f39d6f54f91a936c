// Wycheproof vectors through the unwrap code ImportKeyMaterial uses (issue 3, "An outside test suite").
//
// One throwaway SoftHSM token. Each vector group's RSA private key is loaded into it as a session
// wrapping key (test/helpers/wrapping-key-import.ts), then every ciphertext goes through
// unwrapKeyMaterial with the plan the capability probe gives for the matching wrapping algorithm:
//   RSAES_OAEP_SHA_1    in-token (and, as an extra check of the host-side decoder, host-assisted)
//   RSAES_OAEP_SHA_256  host-assisted on SoftHSM 2.6.1 (in-token where a token can)
//   RSAES_PKCS1_V1_5    in-token
//   RSA_AES_KEY_WRAP_*  composed / composed-host-assisted: RSA-OAEP(vector KEK) || vector KWP ct
// Rules: a valid case with a 32-byte message yields a transient key that encrypts exactly like
// node:crypto's aes-256-gcm under that message; every other case is refused; every OAEP padding
// failure is the one UnwrapFailedError; nothing is left behind in the token.

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { UnwrapFailedError } from '../../src/hsm/errors.js';
import { HsmToken, type TransientKey } from '../../src/hsm/token.js';
import {
  MaterialLengthError,
  needsRawDecrypt,
  planUnwrap,
  probeCapabilities,
  unwrapKeyMaterial,
  type HsmCapabilities,
  type UnwrapPath,
  type UnwrapPlan,
  type WrappingAlgorithm,
} from '../../src/hsm/unwrap.js';
import { createSoftHsmToken, type SoftHsmToken } from '../helpers/softhsm-token.js';
import { loadWycheproof } from '../helpers/wycheproof.js';
import { importWrappingPrivateKey } from '../helpers/wrapping-key-import.js';

// ---------------------------------------------------------------------------------------------
// Vector files

type Result = 'valid' | 'invalid' | 'acceptable';

interface RsaTest {
  tcId: number;
  comment: string;
  flags: string[];
  msg: string; // hex
  ct: string; // hex
  label?: string; // hex, OAEP only
  result: Result;
}

interface RsaGroup {
  keySize: number;
  sha?: string;
  mgfSha?: string;
  privateKeyPkcs8: string; // hex DER
  tests: RsaTest[];
}

interface KwpTest {
  tcId: number;
  comment: string;
  flags: string[];
  key: string; // hex KEK
  msg: string; // hex
  ct: string; // hex
  result: Result;
}

interface KwpGroup {
  keySize: number;
  tests: KwpTest[];
}

const RSA_FILES: ReadonlyArray<{ file: string; algorithm: WrappingAlgorithm; schema: string; sha?: string }> = [
  { file: 'rsa_oaep_2048_sha1_mgf1sha1_test.json', algorithm: 'RSAES_OAEP_SHA_1', schema: 'rsaes_oaep_decrypt_schema_v1.json', sha: 'SHA-1' },
  { file: 'rsa_oaep_2048_sha256_mgf1sha256_test.json', algorithm: 'RSAES_OAEP_SHA_256', schema: 'rsaes_oaep_decrypt_schema_v1.json', sha: 'SHA-256' },
  { file: 'rsa_oaep_3072_sha256_mgf1sha256_test.json', algorithm: 'RSAES_OAEP_SHA_256', schema: 'rsaes_oaep_decrypt_schema_v1.json', sha: 'SHA-256' },
  { file: 'rsa_oaep_4096_sha256_mgf1sha256_test.json', algorithm: 'RSAES_OAEP_SHA_256', schema: 'rsaes_oaep_decrypt_schema_v1.json', sha: 'SHA-256' },
  { file: 'rsa_pkcs1_2048_test.json', algorithm: 'RSAES_PKCS1_V1_5', schema: 'rsaes_pkcs1_decrypt_schema_v1.json' },
];
const KWP_FILE = 'aes_kwp_test.json';

// ---------------------------------------------------------------------------------------------
// Expectations and bookkeeping

const IV = Buffer.from('wycheproof-iv', 'utf8').subarray(0, 12);
const AAD = Buffer.from('kmsd wycheproof unwrap', 'utf8');
const PLAINTEXT = crypto.createHash('sha256').update('kmsd wycheproof plaintext').digest(); // 32 bytes, non-empty

/** AES-256-GCM under `key` as node:crypto does it: ciphertext || 16-byte tag. */
function nodeGcm(key: Buffer): Buffer {
  const c = crypto.createCipheriv('aes-256-gcm', key, IV);
  c.setAAD(AAD);
  return Buffer.concat([c.update(PLAINTEXT), c.final(), c.getAuthTag()]);
}

type Outcome = { accepted: TransientKey } | { refused: unknown };

interface Row {
  file: string;
  algorithm: string;
  path: UnwrapPath;
  tests: number;
  'valid-32 accepted': number;
  refused: number;
  'skipped (label)': number;
  'refusal errors': string;
}

const summary: Row[] = [];

function errorName(e: unknown): string {
  return e instanceof Error ? e.constructor.name : typeof e;
}

/** Everything an API client or a log line could tell apart about an error (not the stack). */
function errorShape(e: unknown): string {
  const err = e as Error & { code?: unknown; pkcs11Function?: unknown };
  return JSON.stringify({
    prototype: Object.getPrototypeOf(err)?.constructor?.name,
    name: err.name,
    message: err.message,
    code: err.code,
    pkcs11Function: err.pkcs11Function,
    ownKeys: Reflect.ownKeys(err)
      .filter((k) => k !== 'stack')
      .map(String)
      .sort(),
    cause: 'cause' in err,
  });
}

function countBy(names: string[]): string {
  const m = new Map<string, number>();
  for (const n of names) m.set(n, (m.get(n) ?? 0) + 1);
  return [...m].map(([n, c]) => `${n} ${c}`).join(', ');
}

// ---------------------------------------------------------------------------------------------
// The token

let softhsm: SoftHsmToken;
let token: HsmToken;
let caps: HsmCapabilities;

/**
 * Test-only peek: number of objects of one kind (session or token) visible to the HsmToken's own
 * session. Session objects are what a failed unwrap could leak; HsmToken keeps p11 and the session
 * private, so the test reaches in rather than widen the production interface.
 */
function objectCount(tokenObjects: boolean): number {
  const inner = token as unknown as { p11: pkcs11js.PKCS11 | null; session: Buffer };
  const p11 = inner.p11;
  if (!p11) throw new Error('token closed');
  p11.C_FindObjectsInit(inner.session, [{ type: pkcs11js.CKA_TOKEN, value: tokenObjects }]);
  let n = 0;
  try {
    for (;;) {
      const batch = p11.C_FindObjects(inner.session, 256);
      if (batch.length === 0) break;
      n += batch.length;
    }
  } finally {
    p11.C_FindObjectsFinal(inner.session);
  }
  return n;
}

function planFor(alg: WrappingAlgorithm): UnwrapPlan {
  const plan = planUnwrap(alg, caps, true);
  if ('refused' in plan) throw new Error(`${alg} cannot be planned on this token: ${plan.refused}`);
  return plan;
}

/** One run of the production unwrap; a returned key must be destroyed by the caller. */
function attempt(wrapId: string, plan: UnwrapPlan, wrapped: Buffer): Outcome {
  try {
    return { accepted: unwrapKeyMaterial(token, caps, wrapId, plan, wrapped, false) };
  } catch (e) {
    return { refused: e };
  }
}

/** Checks an accepted key against node:crypto under `expected`, then destroys it. */
function expectKeyEquals(key: TransientKey, expected: Buffer, what: string): void {
  try {
    expect(token.encryptGcmTransient(key, IV, AAD, PLAINTEXT).equals(nodeGcm(expected)), `${what}: key differs from msg`).toBe(true);
  } finally {
    token.destroyTransient(key);
  }
}

let wrapCounter = 0;

/**
 * Loads `key` as a session wrapping key with the CKA_DECRYPT the plan needs (as ImportKeyMaterial's
 * GetParametersForImport does), runs fn, and always removes the pair again.
 */
function withWrappingKey<T>(key: crypto.KeyObject, plan: UnwrapPlan, fn: (wrapId: string) => T): T {
  const wrapId = `wycheproof-${++wrapCounter}`;
  const before = objectCount(false);
  importWrappingPrivateKey(token, wrapId, key, needsRawDecrypt(plan), false);
  try {
    expect(objectCount(false)).toBe(before + 2); // the private and the public half
    return fn(wrapId);
  } finally {
    token.destroyTransientPair(wrapId);
    expect(objectCount(false), 'wrapping key pair not removed').toBe(before);
  }
}

beforeAll(() => {
  softhsm = createSoftHsmToken({ label: 'wycheproof' });
  token = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.userPin });
  caps = probeCapabilities(token, token.tokenInfo().mechanisms);
  expect(caps.aesGcm).toBe(true);
  expect(objectCount(false), 'the probe left session objects').toBe(0);
  expect(objectCount(true)).toBe(0);
});

afterAll(() => {
  try {
    if (summary.length > 0) console.table(summary);
    if (token && !token.closed) {
      expect(objectCount(true), 'token objects left behind').toBe(0);
      token.close();
    }
  } finally {
    softhsm?.cleanup();
  }
});

// ---------------------------------------------------------------------------------------------
// The loader itself

describe('the test helper importWrappingPrivateKey', () => {
  const kp = crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });

  it('makes a sensitive, never extractable token key pair that unwraps, and refuses to overwrite it', () => {
    importWrappingPrivateKey(token, 'import-check', kp.privateKey, false, true);
    try {
      expect(token.keyAttributes('wrap', 'import-check')).toEqual({ sensitive: true, extractable: false, token: true, modifiable: false });
      expect(token.listIds('wrap')).toEqual(['import-check']);
      expect(token.wrappingModulusBytes('import-check')).toBe(256);
      expect(() => importWrappingPrivateKey(token, 'import-check', kp.privateKey, false, true)).toThrow(/already exists/);
      // In-token unwrap works without CKA_DECRYPT; raw RSA (the host-assisted half) is not permitted.
      const known = crypto.randomBytes(32);
      const ct = crypto.publicEncrypt({ key: kp.publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, known);
      expectKeyEquals(unwrapKeyMaterial(token, caps, 'import-check', { algorithm: 'RSAES_OAEP_SHA_1', path: 'in-token' }, ct, false), known, 'import-check');
      expect(() => token.rsaRawDecrypt('import-check', ct, 256)).toThrow(expect.objectContaining({ code: 'CKR_KEY_FUNCTION_NOT_PERMITTED' }));
    } finally {
      expect(token.destroy('wrap', 'import-check')).toBe(2); // the private and the public half
    }
    expect(objectCount(true)).toBe(0);
  });

  it('registers a session pair that destroyTransientPair removes', () => {
    const before = objectCount(false);
    importWrappingPrivateKey(token, 'import-session', kp.privateKey, true, false);
    try {
      expect(objectCount(false)).toBe(before + 2);
      expect(objectCount(true)).toBe(0);
      expect(() => importWrappingPrivateKey(token, 'import-session', kp.privateKey, true, false)).toThrow(/already exists/);
    } finally {
      token.destroyTransientPair('import-session');
    }
    expect(objectCount(false)).toBe(before);
    expect(() => importWrappingPrivateKey(token, 'x', kp.publicKey, true, false)).toThrow(/RSA private key/);
  });
});

// ---------------------------------------------------------------------------------------------
// RSA files

// Every vector key is parsed here, before any unwrap runs. SoftHSM runs on the same OpenSSL as node
// (same process, same thread-local error queue) and does not clear the queue when a decryption
// fails; the next crypto.createPrivateKey (PKCS#8 DER) then throws that stale error ("rsa routines::
// padding check failed"). The results for the vectors must not depend on that.
const RSA_VECTORS = new Map(
  RSA_FILES.map((spec) => {
    const vectors = loadWycheproof<RsaGroup>(spec.file, spec.schema);
    const keys = vectors.testGroups.map((g) => crypto.createPrivateKey({ key: Buffer.from(g.privateKeyPkcs8, 'hex'), format: 'der', type: 'pkcs8' }));
    return [spec.file, { vectors, keys }] as const;
  }),
);

function runRsaFile(spec: (typeof RSA_FILES)[number], pathOverride?: UnwrapPath): void {
  const { vectors, keys } = RSA_VECTORS.get(spec.file)!;
  const planned = planFor(spec.algorithm);
  const plan: UnwrapPlan = pathOverride ? { algorithm: spec.algorithm, path: pathOverride } : planned;
  const oaep = spec.algorithm !== 'RSAES_PKCS1_V1_5';
  const row: Row = {
    file: spec.file.replace(/_test\.json$/, ''),
    algorithm: spec.algorithm,
    path: plan.path,
    tests: 0,
    'valid-32 accepted': 0,
    refused: 0,
    'skipped (label)': 0,
    'refusal errors': '',
  };
  const refusalNames: string[] = [];
  const paddingFailures: Array<{ tcId: number; error: unknown }> = [];
  const problems: string[] = [];

  vectors.testGroups.forEach((group, g) => {
    if (oaep) expect(group.sha, `${spec.file}: group hash`).toBe(spec.sha);
    if (oaep) expect(group.mgfSha, `${spec.file}: MGF1 hash`).toBe(spec.sha);
    withWrappingKey(keys[g]!, plan, (wrapId) => {
      const baseline = objectCount(false);
      for (const t of group.tests) {
        row.tests++;
        const msg = Buffer.from(t.msg, 'hex');
        const labelled = oaep && (t.label ?? '') !== '';
        if (labelled) row['skipped (label)']++;
        const what = `${spec.file} tcId ${t.tcId} (${t.result}, ${t.comment || t.flags.join(',')})`;
        const outcome = attempt(wrapId, plan, Buffer.from(t.ct, 'hex'));
        const shouldAccept = t.result === 'valid' && msg.length === 32 && !labelled;
        if ('accepted' in outcome) {
          if (shouldAccept) {
            expectKeyEquals(outcome.accepted, msg, what);
            row['valid-32 accepted']++;
          } else {
            token.destroyTransient(outcome.accepted);
            problems.push(`${what}: accepted`);
          }
        } else {
          const e = outcome.refused;
          row.refused++;
          refusalNames.push(errorName(e));
          if (shouldAccept) {
            problems.push(`${what}: refused with ${errorName(e)}: ${(e as Error).message}`);
          } else if (t.result === 'invalid' || labelled) {
            // A labelled ciphertext cannot decode with the empty label: a padding failure too.
            if (oaep) paddingFailures.push({ tcId: t.tcId, error: e });
            else if (!(e instanceof UnwrapFailedError)) problems.push(`${what}: refused with ${errorName(e)}, not UnwrapFailedError`);
          } else if (!(e instanceof MaterialLengthError) && !(e instanceof UnwrapFailedError)) {
            // valid (or acceptable) padding around a message that is not 32 bytes
            problems.push(`${what}: refused with ${errorName(e)}: ${(e as Error).message}`);
          }
        }
        expect(objectCount(false), `${what}: session objects left behind`).toBe(baseline);
      }
    });
  });

  row['refusal errors'] = countBy(refusalNames);
  summary.push(row);
  expect(problems).toEqual([]);
  expect(row.tests).toBe(vectors.numberOfTests);

  if (oaep) {
    // Manger: one error for every padding failure, indistinguishable in class, name, message, code.
    const notUnwrapFailed = paddingFailures.filter((f) => Object.getPrototypeOf(f.error) !== UnwrapFailedError.prototype);
    expect(notUnwrapFailed.map((f) => `tcId ${f.tcId}: ${errorName(f.error)} ${(f.error as Error).message}`)).toEqual([]);
    const shapes = new Set(paddingFailures.map((f) => errorShape(f.error)));
    expect(paddingFailures.length).toBeGreaterThan(0);
    expect([...shapes]).toEqual([errorShape(new UnwrapFailedError())]);
  }
}

describe('Wycheproof RSA vectors through unwrapKeyMaterial', () => {
  it('plans the paths the vectors are meant to exercise on this token', () => {
    expect(planFor('RSAES_OAEP_SHA_1').path).toBe(caps.rsaUnwrap.OAEP_SHA_1 ? 'in-token' : 'host-assisted');
    expect(planFor('RSAES_OAEP_SHA_256').path).toBe(caps.rsaUnwrap.OAEP_SHA_256 ? 'in-token' : 'host-assisted');
    expect(planFor('RSAES_PKCS1_V1_5').path).toBe('in-token');
    expect(planFor('RSA_AES_KEY_WRAP_SHA_1').path).toBe(caps.rsaUnwrap.OAEP_SHA_1 ? 'composed' : 'composed-host-assisted');
    expect(planFor('RSA_AES_KEY_WRAP_SHA_256').path).toBe(caps.rsaUnwrap.OAEP_SHA_256 ? 'composed' : 'composed-host-assisted');
    if (softhsm.modulePath.includes('softhsm')) {
      // SoftHSM 2.6.1: OAEP with SHA-1 only inside the token.
      expect(caps.rsaUnwrap).toEqual({ PKCS1_V1_5: true, OAEP_SHA_1: true, OAEP_SHA_256: false });
      expect(caps.rawRsa).toBe(true);
      expect(caps.aesKeyWrapPad).toBe(true);
    }
  });

  for (const spec of RSA_FILES) {
    it(`${spec.file} (${spec.algorithm}, planned path)`, () => runRsaFile(spec), 300_000);
  }

  // The host-side OAEP decoder with the SHA-1 vectors as well, where the token would take the in-token path.
  it('rsa_oaep_2048_sha1_mgf1sha1_test.json (RSAES_OAEP_SHA_1, host-assisted)', () => {
    if (!caps.rawRsa) throw new Error('the token cannot do raw RSA; the host-assisted path cannot be tested');
    runRsaFile(RSA_FILES[0]!, 'host-assisted');
  }, 300_000);
});

// ---------------------------------------------------------------------------------------------
// AES-KWP: the second half of RSA_AES_KEY_WRAP_*

describe('Wycheproof AES-KWP vectors through the composed RSA + AES-KWP paths', () => {
  const vectors = loadWycheproof<KwpGroup>(KWP_FILE, 'keywrap_test_schema_v1.json');
  // One generated wrapping key: the RSA half is ours, the AES-KWP half is the vector's.
  const wrapping = crypto.generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });

  for (const [algorithm, hash] of [
    ['RSA_AES_KEY_WRAP_SHA_1', 'sha1'],
    ['RSA_AES_KEY_WRAP_SHA_256', 'sha256'],
  ] as const) {
    it(`${KWP_FILE} with 256-bit KEKs (${algorithm})`, () => {
      const plan = planFor(algorithm);
      const row: Row = {
        file: KWP_FILE.replace(/_test\.json$/, '') + ' (keySize 256)',
        algorithm,
        path: plan.path,
        tests: 0,
        'valid-32 accepted': 0,
        refused: 0,
        'skipped (label)': 0,
        'refusal errors': '',
      };
      const refusalNames: string[] = [];
      const integrityFailures: Array<{ tcId: number; error: unknown }> = [];
      const problems: string[] = [];
      let otherKeySizes = 0;

      withWrappingKey(wrapping.privateKey, plan, (wrapId) => {
        const baseline = objectCount(false);
        for (const group of vectors.testGroups) {
          if (group.keySize !== 256) {
            otherKeySizes += group.tests.length; // the ephemeral key of RSA_AES_KEY_WRAP_* is AES-256
            continue;
          }
          for (const t of group.tests) {
            row.tests++;
            const kek = Buffer.from(t.key, 'hex');
            expect(kek.length).toBe(32);
            const msg = Buffer.from(t.msg, 'hex');
            const head = crypto.publicEncrypt({ key: wrapping.publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash }, kek);
            const composed = Buffer.concat([head, Buffer.from(t.ct, 'hex')]);
            const what = `${KWP_FILE} tcId ${t.tcId} (${t.result}, ${t.comment || t.flags.join(',')})`;
            const outcome = attempt(wrapId, plan, composed);
            const shouldAccept = t.result === 'valid' && msg.length === 32;
            if ('accepted' in outcome) {
              if (shouldAccept) {
                expectKeyEquals(outcome.accepted, msg, what);
                row['valid-32 accepted']++;
              } else {
                token.destroyTransient(outcome.accepted);
                problems.push(`${what}: accepted`);
              }
            } else {
              const e = outcome.refused;
              row.refused++;
              refusalNames.push(errorName(e));
              if (shouldAccept) problems.push(`${what}: refused with ${errorName(e)}: ${(e as Error).message}`);
              else if (t.result === 'invalid') integrityFailures.push({ tcId: t.tcId, error: e });
              else if (!(e instanceof MaterialLengthError) && !(e instanceof UnwrapFailedError)) {
                problems.push(`${what}: refused with ${errorName(e)}: ${(e as Error).message}`);
              }
            }
            expect(objectCount(false), `${what}: session objects left behind`).toBe(baseline);
          }
        }
      });

      row['refusal errors'] = countBy(refusalNames);
      summary.push(row);
      expect(problems).toEqual([]);
      expect(row.tests + otherKeySizes).toBe(vectors.numberOfTests);
      expect(row['valid-32 accepted']).toBeGreaterThan(0);
      // An AES-KWP integrity failure is the same single error as an RSA padding failure.
      const shapes = new Set(integrityFailures.map((f) => errorShape(f.error)));
      expect([...shapes]).toEqual([errorShape(new UnwrapFailedError())]);
    }, 300_000);
  }
});
