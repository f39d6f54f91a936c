// Bad input (issue 2) against the real kmsd: each malformed or out-of-place request answers with a
// clear error that names the field and the rule, leaves every CMK, alias and version as it was, and
// the daemon keeps serving. Through gRPC for the whole table, through kmsctl (exit 1, JSON on
// stderr) for a representative part, and kmsctl's own usage errors (exit 2, nothing sent).

import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/client';
import { ERROR_TABLE, ErrorCode } from '../../src/kms/errors';
import { Kmsd, startKmsd } from '../helpers/daemon';

let k: Kmsd;
const f: Record<'enabled' | 'hsm' | 'disabled' | 'pending' | 'external', any> = {} as never;
let goodBlob: string;
let ctxBlob: string;
const MISSING_ID = '0a0a0a0a-0000-4000-8000-000000000000';

beforeAll(async () => {
  k = await startKmsd();
  const c = k.client;
  f.enabled = (await c.call('CreateKey', { Description: 'fixture' })).KeyMetadata;
  f.hsm = (await c.call('CreateKey', { ProtectionLevel: 'HSM' })).KeyMetadata;
  f.disabled = (await c.call('CreateKey', {})).KeyMetadata;
  f.pending = (await c.call('CreateKey', {})).KeyMetadata;
  f.external = (await c.call('CreateKey', { Origin: 'EXTERNAL' })).KeyMetadata;
  await c.call('CreateAlias', { AliasName: 'alias/bad-input/fixture', KeyId: f.enabled.KeyId });
  goodBlob = (await c.encrypt(f.enabled.KeyId, Buffer.from('fixture data'))).CiphertextBlob;
  ctxBlob = (await c.encrypt(f.hsm.KeyId, Buffer.from('fixture ctx'), { app: 'a' })).CiphertextBlob;
  await c.call('DisableKey', { KeyId: f.disabled.KeyId });
  await c.call('ScheduleKeyDeletion', { KeyId: f.pending.KeyId, PendingWindowInDays: 30 });
});

afterAll(async () => {
  await k?.stop();
});

/** Every observable piece of state: the fixtures' metadata, versions and aliases, and the totals. */
async function state(): Promise<unknown> {
  const c = k.client;
  const out: Record<string, unknown> = {};
  for (const [name, m] of Object.entries(f)) {
    out[name] = {
      meta: (await c.call('DescribeKey', { KeyId: m.KeyId })).KeyMetadata,
      versions: (await c.call('ListKeyVersions', { KeyId: m.KeyId })).KeyVersions,
    };
  }
  out.keys = (await c.call('ListKeys', { PageSize: 100 })).Keys;
  out.aliases = (await c.call('ListAliases', { PageSize: 100 })).Aliases;
  return out;
}

const b64 = (s: string | Buffer) => Buffer.from(s).toString('base64');
const flip = (blobB64: string, i: number) => {
  const b = Buffer.from(blobB64, 'base64');
  b[i] ^= 0x40;
  return b.toString('base64');
};

interface Case {
  name: string;
  action: string;
  req: () => Record<string, unknown>;
  code: ErrorCode;
  /** The message must name the field and say the rule. */
  message: RegExp;
}

const cases: Case[] = [
  // KeyId: unknown, malformed, alias syntax
  { name: 'empty KeyId', action: 'DescribeKey', req: () => ({ KeyId: '' }), code: 'MissingParameter', message: /^KeyId: is required/ },
  { name: 'malformed KeyId', action: 'DescribeKey', req: () => ({ KeyId: 'my-key' }), code: 'InvalidParameter', message: /^KeyId: "my-key" is neither a key id \(a lowercase UUID\) nor an alias/ },
  { name: 'uppercase UUID', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId.toUpperCase(), Plaintext: b64('x') }), code: 'InvalidParameter', message: /^KeyId: .*lowercase UUID/ },
  { name: 'UUID with a trailing space', action: 'DisableKey', req: () => ({ KeyId: `${f.enabled.KeyId} ` }), code: 'InvalidParameter', message: /^KeyId: / },
  { name: 'UUID without dashes', action: 'EnableKey', req: () => ({ KeyId: f.disabled.KeyId.replace(/-/g, '') }), code: 'InvalidParameter', message: /^KeyId: / },
  { name: 'unknown KeyId', action: 'DisableKey', req: () => ({ KeyId: MISSING_ID }), code: 'Forbidden.KeyNotFound', message: new RegExp(`^KeyId: CMK ${MISSING_ID} does not exist`) },
  { name: 'unknown alias', action: 'Encrypt', req: () => ({ KeyId: 'alias/none-such', Plaintext: b64('x') }), code: 'Forbidden.AliasNotFound', message: /^KeyId: alias alias\/none-such does not exist/ },
  { name: 'alias/ alone as KeyId', action: 'DescribeKey', req: () => ({ KeyId: 'alias/' }), code: 'InvalidParameter', message: /^KeyId: must be "alias\/" followed by 1 to 249/ },
  { name: 'alias with a space as KeyId', action: 'ScheduleKeyDeletion', req: () => ({ KeyId: 'alias/has space', PendingWindowInDays: 7 }), code: 'InvalidParameter', message: /^KeyId: must be "alias\/"/ },
  { name: 'bad DestinationKeyId', action: 'ReEncrypt', req: () => ({ CiphertextBlob: goodBlob, DestinationKeyId: 'nope' }), code: 'InvalidParameter', message: /^DestinationKeyId: / },
  { name: 'missing DestinationKeyId', action: 'ReEncrypt', req: () => ({ CiphertextBlob: goodBlob }), code: 'MissingParameter', message: /^DestinationKeyId: is required/ },
  { name: 'malformed KeyId in Decrypt', action: 'Decrypt', req: () => ({ CiphertextBlob: goodBlob, KeyId: 'xyz' }), code: 'InvalidParameter', message: /^KeyId: / },
  { name: 'malformed KeyVersionId', action: 'DescribeKeyVersion', req: () => ({ KeyId: f.enabled.KeyId, KeyVersionId: 'v1' }), code: 'InvalidParameter', message: /^KeyVersionId: "v1" is not a key version id/ },
  { name: 'missing KeyVersionId', action: 'DescribeKeyVersion', req: () => ({ KeyId: f.enabled.KeyId }), code: 'MissingParameter', message: /^KeyVersionId: is required/ },
  { name: 'unknown KeyVersionId', action: 'DescribeKeyVersion', req: () => ({ KeyId: f.enabled.KeyId, KeyVersionId: MISSING_ID }), code: 'Forbidden.KeyVersionNotFound', message: /^KeyVersionId: / },

  // Alias syntax
  { name: 'alias without prefix', action: 'CreateAlias', req: () => ({ AliasName: 'orders', KeyId: f.enabled.KeyId }), code: 'InvalidParameter', message: /^AliasName: must be "alias\/" followed by 1 to 249 letters, digits/ },
  { name: 'alias with a bad character', action: 'CreateAlias', req: () => ({ AliasName: 'alias/bad*char', KeyId: f.enabled.KeyId }), code: 'InvalidParameter', message: /^AliasName: must be "alias\/"/ },
  { name: 'alias too long', action: 'CreateAlias', req: () => ({ AliasName: `alias/${'a'.repeat(250)}`, KeyId: f.enabled.KeyId }), code: 'InvalidParameter', message: /^AliasName: .*249/ },
  { name: 'reserved alias prefix', action: 'CreateAlias', req: () => ({ AliasName: 'alias/acs/kms', KeyId: f.enabled.KeyId }), code: 'InvalidParameter', message: /^AliasName: must not start with "alias\/acs"/ },
  { name: 'missing AliasName', action: 'CreateAlias', req: () => ({ KeyId: f.enabled.KeyId }), code: 'MissingParameter', message: /^AliasName: is required/ },
  { name: 'alias for a missing key', action: 'CreateAlias', req: () => ({ AliasName: 'alias/orphan', KeyId: MISSING_ID }), code: 'Forbidden.KeyNotFound', message: /^KeyId: / },
  { name: 'alias taken', action: 'CreateAlias', req: () => ({ AliasName: 'alias/bad-input/fixture', KeyId: f.hsm.KeyId }), code: 'EntityAlreadyExists.Alias', message: /^AliasName: alias\/bad-input\/fixture already exists/ },
  { name: 'UpdateAlias of a missing alias', action: 'UpdateAlias', req: () => ({ AliasName: 'alias/never', KeyId: f.hsm.KeyId }), code: 'Forbidden.AliasNotFound', message: /^AliasName: / },
  { name: 'DeleteAlias with bad syntax', action: 'DeleteAlias', req: () => ({ AliasName: 'alias/a b' }), code: 'InvalidParameter', message: /^AliasName: / },

  // Enum values
  { name: 'bad Origin', action: 'CreateKey', req: () => ({ Origin: 'AWS_KMS' }), code: 'InvalidParameter', message: /^Origin: must be one of Aliyun_KMS, EXTERNAL \(got "AWS_KMS"\)/ },
  { name: 'bad ProtectionLevel', action: 'CreateKey', req: () => ({ ProtectionLevel: 'hsm' }), code: 'InvalidParameter', message: /^ProtectionLevel: must be one of SOFTWARE, HSM \(got "hsm"\)/ },
  { name: 'bad KeySpec', action: 'CreateKey', req: () => ({ KeySpec: 'Aliyun_SM4' }), code: 'InvalidParameter', message: /^KeySpec: must be one of Aliyun_AES_256/ },
  { name: 'bad KeyUsage', action: 'CreateKey', req: () => ({ KeyUsage: 'SIGN/VERIFY' }), code: 'InvalidParameter', message: /^KeyUsage: must be one of ENCRYPT\/DECRYPT/ },
  { name: 'bad data key KeySpec', action: 'GenerateDataKey', req: () => ({ KeyId: f.enabled.KeyId, KeySpec: 'AES_512' }), code: 'InvalidParameter', message: /^KeySpec: must be one of AES_256, AES_128/ },
  { name: 'NumberOfBytes too large', action: 'GenerateDataKey', req: () => ({ KeyId: f.enabled.KeyId, NumberOfBytes: 1025 }), code: 'InvalidParameter', message: /^NumberOfBytes: must be an integer from 1 to 1024 \(got 1025\)/ },
  { name: 'NumberOfBytes negative', action: 'GenerateDataKeyWithoutPlaintext', req: () => ({ KeyId: f.enabled.KeyId, NumberOfBytes: -5 }), code: 'InvalidParameter', message: /^NumberOfBytes: must be an integer from 1 to 1024/ },

  // Missing parameters, base64, sizes
  { name: 'missing Plaintext', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId }), code: 'MissingParameter', message: /^Plaintext: is required/ },
  { name: 'missing KeyId on Encrypt', action: 'Encrypt', req: () => ({ Plaintext: b64('x') }), code: 'MissingParameter', message: /^KeyId: is required/ },
  { name: 'missing CiphertextBlob', action: 'Decrypt', req: () => ({}), code: 'MissingParameter', message: /^CiphertextBlob: is required/ },
  { name: 'missing Description', action: 'UpdateKeyDescription', req: () => ({ KeyId: f.enabled.KeyId }), code: 'MissingParameter', message: /^Description: is required/ },
  { name: 'Description too long', action: 'UpdateKeyDescription', req: () => ({ KeyId: f.enabled.KeyId, Description: 'd'.repeat(8193) }), code: 'InvalidParameter', message: /^Description: at most 8192 characters/ },
  { name: 'Plaintext not base64', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId, Plaintext: 'hello world!' }), code: 'InvalidParameter', message: /^Plaintext: must be standard base64/ },
  { name: 'Plaintext without padding', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId, Plaintext: 'aGVsbG8' }), code: 'InvalidParameter', message: /^Plaintext: must be standard base64 .*padding/ },
  { name: 'Plaintext base64url', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId, Plaintext: '-_-_' }), code: 'InvalidParameter', message: /^Plaintext: must be standard base64/ },
  { name: 'Plaintext with a newline', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId, Plaintext: 'aGVs\nbG8=' }), code: 'InvalidParameter', message: /^Plaintext: must be standard base64/ },
  { name: 'CiphertextBlob not base64', action: 'Decrypt', req: () => ({ CiphertextBlob: '%%%%' }), code: 'InvalidParameter', message: /^CiphertextBlob: must be standard base64/ },
  { name: 'Plaintext of 6145 bytes', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId, Plaintext: b64(Buffer.alloc(6145, 1)) }), code: 'InvalidParameter', message: /^Plaintext: at most 6144 bytes after base64 decoding \(got 6145\)/ },
  { name: 'Plaintext of 100 KiB', action: 'Encrypt', req: () => ({ KeyId: f.hsm.KeyId, Plaintext: b64(Buffer.alloc(100 * 1024, 2)) }), code: 'InvalidParameter', message: /^Plaintext: at most 6144 bytes/ },
  { name: 'EncryptionContext with 65 entries', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId, Plaintext: b64('x'), EncryptionContext: Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])) }), code: 'InvalidParameter', message: /^EncryptionContext: at most 64 entries/ },
  { name: 'EncryptionContext with an empty key', action: 'GenerateDataKey', req: () => ({ KeyId: f.enabled.KeyId, EncryptionContext: { '': 'v' } }), code: 'InvalidParameter', message: /^EncryptionContext: keys must not be empty/ },
  { name: 'EncryptionContext too large', action: 'Encrypt', req: () => ({ KeyId: f.enabled.KeyId, Plaintext: b64('x'), EncryptionContext: { big: 'v'.repeat(9000) } }), code: 'InvalidParameter', message: /^EncryptionContext: at most 8192 bytes/ },
  { name: 'bad SourceEncryptionContext', action: 'ReEncrypt', req: () => ({ CiphertextBlob: goodBlob, DestinationKeyId: f.hsm.KeyId, SourceEncryptionContext: { '': 'x' } }), code: 'InvalidParameter', message: /^SourceEncryptionContext: / },

  // PendingWindowInDays and paging
  { name: 'PendingWindowInDays 6', action: 'ScheduleKeyDeletion', req: () => ({ KeyId: f.enabled.KeyId, PendingWindowInDays: 6 }), code: 'InvalidParameter', message: /^PendingWindowInDays: must be an integer from 7 to 366 \(got 6\)/ },
  { name: 'PendingWindowInDays 367', action: 'ScheduleKeyDeletion', req: () => ({ KeyId: f.hsm.KeyId, PendingWindowInDays: 367 }), code: 'InvalidParameter', message: /^PendingWindowInDays: must be an integer from 7 to 366 \(got 367\)/ },
  { name: 'PendingWindowInDays missing', action: 'ScheduleKeyDeletion', req: () => ({ KeyId: f.hsm.KeyId }), code: 'InvalidParameter', message: /^PendingWindowInDays: must be an integer from 7 to 366/ },
  { name: 'PendingWindowInDays negative', action: 'ScheduleKeyDeletion', req: () => ({ KeyId: f.disabled.KeyId, PendingWindowInDays: -7 }), code: 'InvalidParameter', message: /^PendingWindowInDays: / },
  { name: 'PageSize 101', action: 'ListKeys', req: () => ({ PageSize: 101 }), code: 'InvalidParameter', message: /^PageSize: must be an integer from 1 to 100 \(got 101\)/ },
  { name: 'PageNumber negative', action: 'ListAliases', req: () => ({ PageNumber: -1 }), code: 'InvalidParameter', message: /^PageNumber: must be an integer from 1/ },
  { name: 'PageSize negative on versions', action: 'ListKeyVersions', req: () => ({ KeyId: f.enabled.KeyId, PageSize: -3 }), code: 'InvalidParameter', message: /^PageSize: / },

  // Ciphertext truncated, altered, wrong context
  { name: 'truncated ciphertext', action: 'Decrypt', req: () => ({ CiphertextBlob: Buffer.from(goodBlob, 'base64').subarray(0, 40).toString('base64') }), code: 'InvalidCiphertext', message: /^CiphertextBlob: too short/ },
  { name: 'ciphertext missing its last byte', action: 'Decrypt', req: () => ({ CiphertextBlob: Buffer.from(goodBlob, 'base64').subarray(0, -1).toString('base64') }), code: 'InvalidCiphertext', message: /^CiphertextBlob: authentication failed/ },
  { name: 'altered ciphertext', action: 'Decrypt', req: () => ({ CiphertextBlob: flip(goodBlob, 50) }), code: 'InvalidCiphertext', message: /^CiphertextBlob: authentication failed/ },
  { name: 'altered header', action: 'Decrypt', req: () => ({ CiphertextBlob: flip(goodBlob, 40) }), code: 'InvalidCiphertext', message: /^CiphertextBlob: / },
  { name: 'wrong EncryptionContext', action: 'Decrypt', req: () => ({ CiphertextBlob: ctxBlob, EncryptionContext: { app: 'b' } }), code: 'InvalidCiphertext', message: /EncryptionContext differs/ },
  { name: 'missing EncryptionContext', action: 'Decrypt', req: () => ({ CiphertextBlob: ctxBlob }), code: 'InvalidCiphertext', message: /EncryptionContext/ },
  { name: 'altered ciphertext on ReEncrypt', action: 'ReEncrypt', req: () => ({ CiphertextBlob: flip(goodBlob, 60), DestinationKeyId: f.hsm.KeyId }), code: 'InvalidCiphertext', message: /^CiphertextBlob: / },
  { name: 'Decrypt with the wrong KeyId', action: 'Decrypt', req: () => ({ CiphertextBlob: goodBlob, KeyId: f.hsm.KeyId }), code: 'IncorrectKeyId', message: /^KeyId: the ciphertext was made by CMK/ },

  // Actions in the wrong state
  { name: 'Encrypt on Disabled', action: 'Encrypt', req: () => ({ KeyId: f.disabled.KeyId, Plaintext: b64('x') }), code: 'Rejected.Disabled', message: /^KeyId: CMK .* is Disabled; this action needs Enabled/ },
  { name: 'Encrypt on PendingDeletion', action: 'Encrypt', req: () => ({ KeyId: f.pending.KeyId, Plaintext: b64('x') }), code: 'Rejected.PendingDeletion', message: /is PendingDeletion/ },
  { name: 'Encrypt on PendingImport', action: 'Encrypt', req: () => ({ KeyId: f.external.KeyId, Plaintext: b64('x') }), code: 'Rejected.PendingImport', message: /is PendingImport/ },
  { name: 'EnableKey on PendingDeletion', action: 'EnableKey', req: () => ({ KeyId: f.pending.KeyId }), code: 'Rejected.PendingDeletion', message: /^KeyId: / },
  { name: 'DisableKey on PendingImport', action: 'DisableKey', req: () => ({ KeyId: f.external.KeyId }), code: 'Rejected.PendingImport', message: /^KeyId: / },
  { name: 'ScheduleKeyDeletion twice', action: 'ScheduleKeyDeletion', req: () => ({ KeyId: f.pending.KeyId, PendingWindowInDays: 7 }), code: 'Rejected.PendingDeletion', message: /^KeyId: / },
  { name: 'CancelKeyDeletion when not pending', action: 'CancelKeyDeletion', req: () => ({ KeyId: f.enabled.KeyId }), code: 'Rejected.NotPendingDeletion', message: /not PendingDeletion/ },
  { name: 'CreateKeyVersion on EXTERNAL', action: 'CreateKeyVersion', req: () => ({ KeyId: f.external.KeyId }), code: 'Rejected.ExternalKey', message: /EXTERNAL/ },
  { name: 'GenerateDataKey on Disabled', action: 'GenerateDataKey', req: () => ({ KeyId: f.disabled.KeyId }), code: 'Rejected.Disabled', message: /Disabled/ },
  { name: 'ReEncrypt into PendingDeletion', action: 'ReEncrypt', req: () => ({ CiphertextBlob: goodBlob, DestinationKeyId: f.pending.KeyId }), code: 'Rejected.PendingDeletion', message: /PendingDeletion/ },
];

describe('bad input through gRPC', () => {
  it.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const before = await state();
    const e = await k.client.call(c.action, c.req()).then(
      () => null,
      (err: unknown) => err,
    );
    expect(e, `${c.action} was accepted`).toBeInstanceOf(KmsClientError);
    const err = e as KmsClientError;
    expect({ code: err.code, message: err.message }).toMatchObject({ code: c.code, message: expect.stringMatching(c.message) });
    expect(err.grpcCode).toBe(grpc.status[ERROR_TABLE[c.code].status]);
    expect(await state()).toEqual(before);
  });

  it('accepts the limits themselves: 6144-byte plaintext, PendingWindowInDays 7 and 366, 64 context entries', async () => {
    const c = k.client;
    const max = Buffer.alloc(6144, 9);
    const r = await c.encrypt(f.enabled.KeyId, max);
    expect((await c.decrypt(r.CiphertextBlob)).Plaintext.equals(max)).toBe(true);
    const ctx = Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, 'v']));
    const r2 = await c.encrypt(f.hsm.KeyId, Buffer.from('x'), ctx);
    expect((await c.decrypt(r2.CiphertextBlob, ctx)).Plaintext.toString()).toBe('x');
    for (const days of [7, 366]) {
      const m = (await c.call('CreateKey', {})).KeyMetadata;
      const s = await c.call('ScheduleKeyDeletion', { KeyId: m.KeyId, PendingWindowInDays: days });
      const window = Date.parse(s.DeleteDate) - Date.now();
      expect(window).toBeGreaterThan((days - 1) * 86400 * 1000);
      expect(window).toBeLessThanOrEqual(days * 86400 * 1000);
      await c.call('CancelKeyDeletion', { KeyId: m.KeyId });
    }
  });

  it('kept serving: no internal error, the daemon is alive and answers', async () => {
    expect(() => process.kill(k.pid, 0)).not.toThrow();
    expect(k.logs()).not.toContain('internal error');
    expect(k.logs()).not.toContain('InternalFailure');
    expect((await k.client.decrypt(goodBlob)).Plaintext.toString()).toBe('fixture data');
  });
});

describe('bad input through kmsctl (exit 1, {"Code","Message"} on stderr)', () => {
  const ctlCases: [string[], ErrorCode, RegExp][] = [
    [['DescribeKey', '--KeyId', 'my-key'], 'InvalidParameter', /^KeyId: /],
    [['DescribeKey', '--KeyId', MISSING_ID], 'Forbidden.KeyNotFound', /^KeyId: /],
    [['CreateAlias', '--AliasName', 'orders', '--KeyId', MISSING_ID], 'InvalidParameter', /^AliasName: /],
    [['CreateKey', '--Origin', 'AWS_KMS'], 'InvalidParameter', /^Origin: must be one of/],
    [['CreateKey', '--ProtectionLevel', 'Hsm'], 'InvalidParameter', /^ProtectionLevel: must be one of/],
    [['CreateKey', '--KeySpec', 'RSA_2048'], 'InvalidParameter', /^KeySpec: must be one of/],
    [['Encrypt', '--Plaintext', 'eA=='], 'MissingParameter', /^KeyId: is required/],
    [['Encrypt', '--KeyId', '@enabled', '--Plaintext', 'not base64'], 'InvalidParameter', /^Plaintext: must be standard base64/],
    [['Encrypt', '--KeyId', '@enabled', '--Plaintext', b64(Buffer.alloc(6145))], 'InvalidParameter', /^Plaintext: at most 6144 bytes/],
    [['ScheduleKeyDeletion', '--KeyId', '@enabled', '--PendingWindowInDays', '6'], 'InvalidParameter', /^PendingWindowInDays: must be an integer from 7 to 366 \(got 6\)/],
    [['ScheduleKeyDeletion', '--KeyId', '@enabled', '--PendingWindowInDays', '367'], 'InvalidParameter', /^PendingWindowInDays: must be an integer from 7 to 366 \(got 367\)/],
    [['Encrypt', '--KeyId', '@disabled', '--Plaintext', 'eA=='], 'Rejected.Disabled', /Disabled/],
  ];
  it('answers each with the documented code and a message naming the field', async () => {
    const before = await state();
    for (const [args0, code, message] of ctlCases) {
      const args = args0.map((a) => (a === '@enabled' ? f.enabled.KeyId : a === '@disabled' ? f.disabled.KeyId : a));
      const r = k.kmsctl(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(1);
      expect(r.stdout).toBe('');
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.json).toMatchObject({ Code: code, Message: expect.stringMatching(message) });
    }
    const ok = k.kmsctl(['Encrypt', '--KeyId', f.enabled.KeyId, '--Plaintext', b64(Buffer.alloc(6144))]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(await state()).toEqual(before);
  });
});

describe('kmsctl usage errors (exit 2, nothing sent)', () => {
  const usage: [string[], RegExp][] = [
    [['NoSuchAction'], /unknown action "NoSuchAction"/],
    [['describekey', '--KeyId', 'x'], /unknown action "describekey"/],
    [['CreateKey', '--Colour', 'blue'], /CreateKey has no parameter --Colour \(it takes --Origin, /],
    [['DescribeKey', '--keyid', 'x'], /DescribeKey has no parameter --keyid/],
    [['ScheduleKeyDeletion', '--KeyId', MISSING_ID, '--PendingWindowInDays', 'seven'], /--PendingWindowInDays: expected an integer \(got "seven"\)/],
    [['ListKeys', '--PageSize', '1.5'], /--PageSize: expected an integer/],
    // 2^32 + 7 would arrive as 7 after int32 encoding: a 7-day deletion nobody asked for.
    [['ScheduleKeyDeletion', '--KeyId', '@enabled', '--PendingWindowInDays', '4294967303'], /--PendingWindowInDays: 4294967303 is out of range for a 32-bit integer/],
    [['ListKeys', '--PageNumber', '99999999999999999999'], /--PageNumber: .* out of range/],
    [['CreateKey', '--EnableAutomaticRotation', 'yes'], /--EnableAutomaticRotation: expected true or false/],
    [['Encrypt', '--KeyId', MISSING_ID, '--Plaintext', 'eA==', '--EncryptionContext', '{not json'], /--EncryptionContext: expected a JSON object/],
    [['Encrypt', '--KeyId', MISSING_ID, '--Plaintext', 'eA==', '--EncryptionContext', '{"n":1}'], /--EncryptionContext: expected a JSON object whose values are strings/],
    [['DescribeKey', '--KeyId'], /--KeyId needs a value/],
    [['DescribeKey', 'positional'], /unexpected argument "positional"/],
    [['CreateKey', '--Description', 'a', '--Description', 'b'], /--Description given twice/],
  ];
  it('exits 2 with a one-line "kmsctl: ..." message and changes nothing', async () => {
    const before = await state();
    for (const [args0, message] of usage) {
      const args = args0.map((a) => (a === '@enabled' ? f.enabled.KeyId : a));
      const r = k.kmsctl(args);
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(/^kmsctl: /);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toContain('    at ');
    }
    // No action at all: usage (listing the actions) and exit 2.
    const none = k.kmsctl([]);
    expect(none.code).toBe(2);
    expect(none.stdout + none.stderr).toMatch(/usage: kmsctl/);
    expect(none.stdout + none.stderr).toContain('ScheduleKeyDeletion');
    expect(await state()).toEqual(before);
  });
});
