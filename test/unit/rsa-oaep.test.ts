// Host-assisted RSA-OAEP decoding (src/hsm/rsa-oaep.ts) against Wycheproof and hand-made cases.
//
// The token's half (raw RSA, CKM_RSA_X_509) is played here by node:crypto with RSA_NO_PADDING:
// EM = c^d mod n, k bytes. The test then checks the host's half, oaepDecode.

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { OaepDecodingError, oaepDecode, type OaepHash } from '../../src/hsm/rsa-oaep.js';
import { loadWycheproof } from '../helpers/wycheproof.js';

// ---------------------------------------------------------------------------------------------
// Wycheproof vector files (rsaes_oaep_decrypt_schema_v1.json)

interface OaepTestVector {
  tcId: number;
  comment: string;
  flags: string[];
  msg: string; // hex
  ct: string; // hex
  label: string; // hex
  result: 'valid' | 'invalid' | 'acceptable';
}

interface OaepTestGroup {
  type: string;
  keySize: number;
  sha: string;
  mgf: string;
  mgfSha: string;
  privateKey: { modulus: string };
  privateKeyPkcs8: string; // hex DER
  tests: OaepTestVector[];
}

const VECTOR_FILES = [
  'rsa_oaep_2048_sha1_mgf1sha1_test.json',
  'rsa_oaep_2048_sha256_mgf1sha256_test.json',
  'rsa_oaep_3072_sha256_mgf1sha256_test.json',
  'rsa_oaep_4096_sha256_mgf1sha256_test.json',
] as const;

function hashName(wycheproofSha: string): OaepHash {
  switch (wycheproofSha) {
    case 'SHA-1':
      return 'sha1';
    case 'SHA-256':
      return 'sha256';
    default:
      throw new Error(`unsupported hash in vectors: ${wycheproofSha}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

const EXPECTED_MESSAGE = 'RSA-OAEP decoding failed';

/** What a caller could observe about an error. */
interface ErrorShape {
  constructorName: string;
  name: string;
  message: string;
  ownKeys: string[];
  hasCause: boolean;
}

function errorShape(err: unknown): ErrorShape {
  if (!(err instanceof Error)) {
    throw new Error(`not an Error: ${String(err)}`);
  }
  return {
    constructorName: err.constructor.name,
    name: err.name,
    message: err.message,
    ownKeys: Reflect.ownKeys(err)
      .map((k) => String(k))
      .sort(),
    hasCause: 'cause' in err,
  };
}

/** Runs fn and returns what it threw (failing the test if it did not throw). */
function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  throw new Error('expected an error, none was thrown');
}

function expectDecodingError(err: unknown): void {
  expect(err).toBeInstanceOf(OaepDecodingError);
  expect((err as Error).message).toBe(EXPECTED_MESSAGE);
  expect('cause' in (err as Error)).toBe(false);
}

/** The token's half: raw RSA decryption, EM = c^d mod n as k bytes. */
function rawRsaDecrypt(key: crypto.KeyObject, ct: Buffer): Buffer {
  return crypto.privateDecrypt({ key, padding: crypto.constants.RSA_NO_PADDING }, ct);
}

function modulusBytesOf(key: crypto.KeyObject): number {
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (bits === undefined) {
    throw new Error('not an RSA key');
  }
  return Math.ceil(bits / 8);
}

// ---------------------------------------------------------------------------------------------
// Wycheproof

type Outcome =
  | { kind: 'decoded'; msg: Buffer }
  | { kind: 'refused-by-rsa'; reason: string } // refused before decoding: length != k, or raw RSA refused c >= n
  | { kind: 'decoding-error'; error: unknown };

interface FileSummary {
  valid: number;
  invalid: number;
  acceptable: number;
  invalidRefusedByRsa: number;
  invalidDecodingError: number;
  acceptableOutcomes: string[];
}

const summaries = new Map<string, FileSummary>();

describe('oaepDecode against Wycheproof', () => {
  for (const fileName of VECTOR_FILES) {
    describe(fileName, () => {
      const file = loadWycheproof<OaepTestGroup>(fileName, 'rsaes_oaep_decrypt_schema_v1.json');
      const summary: FileSummary = {
        valid: 0,
        invalid: 0,
        acceptable: 0,
        invalidRefusedByRsa: 0,
        invalidDecodingError: 0,
        acceptableOutcomes: [],
      };
      summaries.set(fileName, summary);
      // Every error oaepDecode raised for this file's padding failures, for the indistinguishability check.
      const paddingErrors: { tcId: number; error: unknown }[] = [];

      it('has the expected number of tests', () => {
        const total = file.testGroups.reduce((n, g) => n + g.tests.length, 0);
        expect(total).toBe(file.numberOfTests);
      });

      for (const group of file.testGroups) {
        const hash = hashName(group.sha);
        const key = crypto.createPrivateKey({
          key: Buffer.from(group.privateKeyPkcs8, 'hex'),
          format: 'der',
          type: 'pkcs8',
        });
        const k = modulusBytesOf(key);
        const n = BigInt(`0x${group.privateKey.modulus}`);

        it(`group parameters (RSA-${group.keySize}, ${group.sha}, ${group.mgf} ${group.mgfSha})`, () => {
          expect(group.type).toBe('RsaesOaepDecrypt');
          expect(group.mgf).toBe('MGF1');
          // oaepDecode uses MGF1 with the label hash; the vectors must agree.
          expect(group.mgfSha).toBe(group.sha);
          expect(k * 8).toBe(group.keySize);
        });

        const decode = (tc: OaepTestVector): Outcome => {
          const ct = Buffer.from(tc.ct, 'hex');
          // The daemon checks the public ciphertext length before the token sees it (RFC 8017
          // §7.1.2 step 1b). OpenSSL's raw RSA would accept a short one (empty, truncated) as a
          // small integer, so this is not left to it.
          if (ct.length !== k) {
            return { kind: 'refused-by-rsa', reason: `ciphertext is ${ct.length} bytes, not ${k}` };
          }
          let em: Buffer;
          try {
            em = rawRsaDecrypt(key, ct);
          } catch (err) {
            return { kind: 'refused-by-rsa', reason: err instanceof Error ? err.message : String(err) };
          }
          try {
            return { kind: 'decoded', msg: oaepDecode(em, k, hash, Buffer.from(tc.label, 'hex')) };
          } catch (err) {
            return { kind: 'decoding-error', error: err };
          } finally {
            em.fill(0);
          }
        };

        for (const tc of group.tests) {
          const title = `tcId ${tc.tcId} ${tc.result} [${tc.flags.join(',')}] ${tc.comment}`;
          summary[tc.result] += 1;

          it(title, () => {
            const outcome = decode(tc);
            switch (tc.result) {
              case 'valid': {
                if (outcome.kind !== 'decoded') {
                  throw new Error(`valid case not decoded: ${outcome.kind}`);
                }
                expect(outcome.msg.toString('hex')).toBe(tc.msg);
                break;
              }
              case 'invalid': {
                expect(outcome.kind).not.toBe('decoded');
                if (outcome.kind === 'refused-by-rsa') {
                  // Only a malformed ciphertext may stop before decoding: wrong length, or c >= n.
                  const ct = Buffer.from(tc.ct, 'hex');
                  const malformed = ct.length !== k || BigInt(`0x${tc.ct}`) >= n;
                  expect(malformed, `raw RSA refused a well-formed ciphertext: ${outcome.reason}`).toBe(true);
                  summary.invalidRefusedByRsa += 1;
                } else if (outcome.kind === 'decoding-error') {
                  expectDecodingError(outcome.error);
                  paddingErrors.push({ tcId: tc.tcId, error: outcome.error });
                  summary.invalidDecodingError += 1;
                }
                break;
              }
              case 'acceptable': {
                // Recorded, never a failure.
                const what =
                  outcome.kind === 'decoded'
                    ? `decoded (${outcome.msg.toString('hex') === tc.msg ? 'matches msg' : 'differs from msg'})`
                    : outcome.kind === 'refused-by-rsa'
                      ? `refused by raw RSA: ${outcome.reason}`
                      : `decoding error: ${errorShape(outcome.error).message}`;
                summary.acceptableOutcomes.push(`tcId ${tc.tcId} (${tc.comment}): ${what}`);
                break;
              }
            }
            if (outcome.kind === 'decoded') {
              outcome.msg.fill(0);
            }
          });
        }
      }

      it('every padding failure raises an indistinguishable error', () => {
        // Every InvalidOaepPadding case reaches the decoder (the ciphertext is well formed).
        const paddingCases = file.testGroups
          .flatMap((g) => g.tests)
          .filter((t) => t.flags.includes('InvalidOaepPadding'));
        expect(paddingCases.length).toBeGreaterThan(0);
        const seen = new Set(paddingErrors.map((e) => e.tcId));
        for (const tc of paddingCases) {
          expect(seen.has(tc.tcId), `tcId ${tc.tcId} did not reach oaepDecode`).toBe(true);
        }

        const shapes = paddingErrors.map((e) => errorShape(e.error));
        const first = shapes[0]!;
        expect(first).toEqual({
          constructorName: 'OaepDecodingError',
          name: 'OaepDecodingError',
          message: EXPECTED_MESSAGE,
          ownKeys: first.ownKeys,
          hasCause: false,
        });
        for (const shape of shapes) {
          expect(shape).toEqual(first);
        }
        // All thrown from the same place, through the same caller: even the stacks agree.
        const stacks = new Set(paddingErrors.map((e) => (e.error as Error).stack));
        expect(stacks.size).toBe(1);
      });
    });
  }

  afterAll(() => {
    const rows = [...summaries.entries()].map(([file, s]) => ({
      file,
      valid: s.valid,
      invalid: s.invalid,
      acceptable: s.acceptable,
      'invalid: refused before decoding': s.invalidRefusedByRsa,
      'invalid: OaepDecodingError': s.invalidDecodingError,
    }));
    console.table(rows);
    for (const [file, s] of summaries) {
      for (const line of s.acceptableOutcomes) {
        console.info(`${file} acceptable ${line}`);
      }
    }
  });
});

// ---------------------------------------------------------------------------------------------
// Hand-made cases

describe('oaepDecode hand-made cases', () => {
  let privateKey: crypto.KeyObject;
  let publicKey: crypto.KeyObject;
  let k: number;

  beforeAll(() => {
    ({ privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }));
    k = modulusBytesOf(privateKey);
  });

  const encrypt = (plaintext: Buffer, hash: OaepHash, label?: Buffer): Buffer =>
    crypto.publicEncrypt(
      {
        key: publicKey,
        padding: crypto.constants.RSA_PKCS1_OAEP_PADDING,
        oaepHash: hash,
        ...(label === undefined ? {} : { oaepLabel: label }),
      },
      plaintext,
    );

  for (const hash of ['sha1', 'sha256'] as const) {
    it(`a 32-byte key material round-trips with node's OAEP ${hash} encryption`, () => {
      const material = crypto.randomBytes(32);
      const em = rawRsaDecrypt(privateKey, encrypt(material, hash));
      expect(em.length).toBe(k);
      const emBefore = Buffer.from(em);
      const out = oaepDecode(em, k, hash);
      expect(out.equals(material)).toBe(true);
      // The input is left as it was, and the output does not alias it.
      expect(em.equals(emBefore)).toBe(true);
      out.fill(0);
      expect(em.equals(emBefore)).toBe(true);
    });

    it(`${hash}: a label round-trips, and a label mismatch fails`, () => {
      const material = crypto.randomBytes(32);
      const label = Buffer.from('kmsd import token label');
      const em = rawRsaDecrypt(privateKey, encrypt(material, hash, label));
      expect(oaepDecode(em, k, hash, label).equals(material)).toBe(true);

      expectDecodingError(thrownBy(() => oaepDecode(em, k, hash, Buffer.from('another label'))));
      expectDecodingError(thrownBy(() => oaepDecode(em, k, hash)));
      expectDecodingError(thrownBy(() => oaepDecode(em, k, hash, Buffer.alloc(0))));

      const emNoLabel = rawRsaDecrypt(privateKey, encrypt(material, hash));
      expectDecodingError(thrownBy(() => oaepDecode(emNoLabel, k, hash, label)));
    });
  }

  it('a hash mismatch fails', () => {
    const material = crypto.randomBytes(32);
    const em = rawRsaDecrypt(privateKey, encrypt(material, 'sha256'));
    expectDecodingError(thrownBy(() => oaepDecode(em, k, 'sha1')));
  });

  it('an EM of the wrong length fails with the same error', () => {
    const material = crypto.randomBytes(32);
    const em = rawRsaDecrypt(privateKey, encrypt(material, 'sha256'));
    const cases: [string, Buffer, number][] = [
      ['one byte short', em.subarray(1), k],
      ['one byte long', Buffer.concat([Buffer.alloc(1), em]), k],
      ['empty', Buffer.alloc(0), k],
      ['k does not match the EM', em, k - 1],
      ['k too small for the hash', Buffer.alloc(2 * 32 + 1), 2 * 32 + 1],
      ['k not an integer', em, k + 0.5],
    ];
    const reference = errorShape(thrownBy(() => oaepDecode(em, k, 'sha256', Buffer.from('wrong label'))));
    for (const [what, input, modulusBytes] of cases) {
      const err = thrownBy(() => oaepDecode(input, modulusBytes, 'sha256'));
      expectDecodingError(err);
      expect(errorShape(err), what).toEqual(reference);
    }
  });

  it('single-byte corruptions anywhere in EM all fail with the same error', () => {
    const material = crypto.randomBytes(32);
    const em = rawRsaDecrypt(privateKey, encrypt(material, 'sha256'));
    const reference = errorShape(thrownBy(() => oaepDecode(Buffer.alloc(k), k, 'sha256')));
    for (const position of [0, 1, 32, 33, 64, 65, k - 33, k - 1]) {
      const bad = Buffer.from(em);
      bad[position] = bad[position]! ^ 0x01;
      const err = thrownBy(() => oaepDecode(bad, k, 'sha256'));
      expectDecodingError(err);
      expect(errorShape(err), `position ${position}`).toEqual(reference);
    }
  });

  it('decodes the empty message and the longest message', () => {
    for (const hash of ['sha1', 'sha256'] as const) {
      const hLen = hash === 'sha1' ? 20 : 32;
      for (const length of [0, k - 2 * hLen - 2]) {
        const material = crypto.randomBytes(length);
        const em = rawRsaDecrypt(privateKey, encrypt(material, hash));
        expect(oaepDecode(em, k, hash).equals(material), `${hash}, ${length} bytes`).toBe(true);
      }
    }
  });
});
