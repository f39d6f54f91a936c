// kmsd as an AWS KMS external key store proxy, against a real kmsd on a SoftHSM token, written from
// the XKS Proxy API spec (github.com/aws/aws-kms-xksproxy-api-spec): every route, every error name
// with its status, the operation sets, the key states, SigV4 for kms-xks-proxy signed by the AWS
// SDK's signer, credential rotation, the Ciphertext Data Integrity Value, 2,048-character ARNs, the
// audit record of each call, and the health check once the token is gone.

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/daemon';
import { makePki, startTlsKmsd } from './tls-fixture';
import { client, custodianKeys, opensslSign, writeDoc } from '../helpers/ceremony';
import { HttpKmsd, rawRequest, startHttpKmsd } from '../helpers/http';
import { XKS_ERRORS as XKS_STATUSES } from '../../src/api/http/xks/errors';
import { ARN_PRINCIPAL, XksCredential, requestMetadata, xksRequest } from '../helpers/xks';

let k: HttpKmsd;
let cred: XksCredential;
let hsmKey: string;
const UP = '/ks-one/kms/xks/v1';

function ok<T = any>(r: { code: number; stdout: string; stderr: string; json: any }): T {
  // eslint-disable-line @typescript-eslint/no-explicit-any
  expect(r.code, r.stderr).toBe(0);
  return r.json as T;
}

function call(op: string, body: unknown, o: { cred?: XksCredential; uriPath?: string; method?: string; date?: Date; service?: string; rawBody?: string } = {}) {
  return xksRequest(k.httpPort, { op, uriPath: o.uriPath ?? UP, body, cred: o.cred ?? cred, method: o.method, date: o.date, service: o.service, rawBody: o.rawBody });
}

const b64 = (b: Buffer | string) => Buffer.from(b).toString('base64');

async function encrypt(keyName: string, plaintext: Buffer, aad?: Buffer, cdiv = false) {
  const body: Record<string, unknown> = { requestMetadata: requestMetadata('Encrypt'), plaintext: b64(plaintext), encryptionAlgorithm: 'AES_GCM' };
  if (aad) body.additionalAuthenticatedData = b64(aad);
  if (cdiv) body.ciphertextDataIntegrityValueAlgorithm = 'SHA_256';
  return call(`keys/${keyName}/encrypt`, body);
}

function decryptBody(enc: Record<string, string>, aad?: Buffer, over: Record<string, unknown> = {}) {
  const body: Record<string, unknown> = {
    requestMetadata: requestMetadata('Decrypt'),
    ciphertext: enc.ciphertext,
    ciphertextMetadata: enc.ciphertextMetadata,
    initializationVector: enc.initializationVector,
    authenticationTag: enc.authenticationTag,
    encryptionAlgorithm: 'AES_GCM',
    ...over,
  };
  if (aad) body.additionalAuthenticatedData = b64(aad);
  return body;
}

function expectError(r: { status: number; json: any }, status: number, errorName: string) {
  expect({ status: r.status, errorName: r.json?.errorName }, JSON.stringify(r.json)).toEqual({ status, errorName });
  expect(typeof r.json.errorMessage).toBe('string');
  expect(r.json.errorMessage.length).toBeLessThan(512);
  expect(r.json.errorMessage).toMatch(/^[\x20-\x7e]*$/);
}

beforeAll(async () => {
  k = await startHttpKmsd();
  hsmKey = ok(k.kmsctl(['CreateKey', '--ProtectionLevel', 'HSM'])).KeyMetadata.KeyId;
  cred = ok(k.kmsctl(['CreateXksKeyStore', '--UriPathPrefix', 'ks-one']));
  for (const [name, ops] of [
    ['both', 'ENCRYPT,DECRYPT'],
    ['enc-only', 'ENCRYPT'],
    ['dec-only', 'DECRYPT'],
    ['none', 'NONE'],
  ]) {
    ok(k.kmsctl(['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', hsmKey, '--ExternalKeyId', name, '--Operations', ops]));
  }
});

afterAll(async () => {
  await k?.stop();
});

describe('operator commands', () => {
  it('CreateXksKeyStore answers the URI path and a credential in the spec alphabets, the secret only this once', () => {
    expect(cred).toMatchObject({ UriPath: UP, UriPathPrefix: 'ks-one' });
    expect(cred.AccessKeyId).toMatch(/^[A-Z2-7]{20,30}$/);
    expect(cred.SecretAccessKey).toMatch(/^[A-Za-z0-9+/=]{43,64}$/);
    const list = ok(k.kmsctl(['ListXksKeyStores']));
    expect(list.KeyStores).toEqual([expect.objectContaining({ UriPathPrefix: 'ks-one', UriPath: UP, AccessKeyIds: [cred.AccessKeyId], KeyCount: 4 })]);
    expect(JSON.stringify(list)).not.toContain(cred.SecretAccessKey);
    // Never on disk in the clear, never in the log.
    expect(k.logs()).not.toContain(cred.SecretAccessKey);
    for (const f of ['kmsd.sqlite', 'kmsd.sqlite-wal']) {
      const file = path.join(k.dataDir, f);
      if (!fs.existsSync(file)) continue;
      const bytes = fs.readFileSync(file);
      expect(bytes.includes(Buffer.from(cred.SecretAccessKey)), f).toBe(false);
      expect(bytes.includes(Buffer.from(cred.SecretAccessKey, 'base64')), f).toBe(false);
    }
  });

  it('refuses a bad or taken prefix, bad external key ids and operations, SOFTWARE CMKs and unknown stores, naming the field', () => {
    const cases: [string[], string, RegExp][] = [
      [['CreateXksKeyStore', '--UriPathPrefix', 'ks-one'], 'EntityAlreadyExists.XksKeyStore', /ks-one/],
      [['CreateXksKeyStore', '--UriPathPrefix', 'bad prefix!'], 'InvalidParameter', /UriPathPrefix/],
      [['CreateXksKeyStore', '--UriPathPrefix', 'x'.repeat(120)], 'InvalidParameter', /UriPathPrefix: at most/],
      [['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', hsmKey, '--ExternalKeyId', 'has space', '--Operations', 'ENCRYPT'], 'InvalidParameter', /ExternalKeyId/],
      [['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', hsmKey, '--ExternalKeyId', 'a'.repeat(129), '--Operations', 'ENCRYPT'], 'InvalidParameter', /ExternalKeyId/],
      [['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', hsmKey, '--ExternalKeyId', 'k2', '--Operations', 'SIGN'], 'InvalidParameter', /Operations/],
      [['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', hsmKey, '--ExternalKeyId', 'both', '--Operations', 'ENCRYPT'], 'EntityAlreadyExists.XksKey', /both/],
      [['CreateXksKey', '--UriPathPrefix', 'nope', '--KeyId', hsmKey, '--ExternalKeyId', 'k2', '--Operations', 'ENCRYPT'], 'Forbidden.XksKeyStoreNotFound', /nope/],
      [['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', crypto.randomUUID(), '--ExternalKeyId', 'k2', '--Operations', 'ENCRYPT'], 'Forbidden.KeyNotFound', /KeyId/],
      [['DeleteXksKey', '--UriPathPrefix', 'ks-one', '--ExternalKeyId', 'nope'], 'Forbidden.XksKeyNotFound', /nope/],
      [['DeleteXksCredential', '--AccessKeyId', 'KMSDXKSAAAAAAAAAAAAAAAAAAAA'], 'Forbidden.XksCredentialNotFound', /AccessKeyId/],
      [['DeleteXksKeyStore', '--UriPathPrefix', 'ks-one'], 'Rejected.XksKeyStoreNotEmpty', /DeleteXksKey/],
    ];
    const soft = ok(k.kmsctl(['CreateKey', '--ProtectionLevel', 'SOFTWARE'])).KeyMetadata.KeyId;
    cases.push([['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', soft, '--ExternalKeyId', 'soft', '--Operations', 'ENCRYPT'], 'InvalidParameter', /KeyId: .*SOFTWARE/]);
    const before = JSON.stringify([ok(k.kmsctl(['ListXksKeyStores'])), ok(k.kmsctl(['ListXksKeys', '--UriPathPrefix', 'ks-one']))]);
    for (const [args, code, message] of cases) {
      const r = k.kmsctl(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.json.Code, args.join(' ')).toBe(code);
      expect(r.json.Message, args.join(' ')).toMatch(message);
    }
    expect(JSON.stringify([ok(k.kmsctl(['ListXksKeyStores'])), ok(k.kmsctl(['ListXksKeys', '--UriPathPrefix', 'ks-one']))])).toBe(before);
  });

  it('ListXksKeys shows each external key with its CMK, operations and state; the commands are audited', () => {
    const keys = ok(k.kmsctl(['ListXksKeys', '--UriPathPrefix', 'ks-one'])).Keys;
    expect(keys.map((x: any) => [x.ExternalKeyId, x.KeyId, x.Operations, x.KeyState])).toEqual([
      ['both', hsmKey, 'ENCRYPT,DECRYPT', 'Enabled'],
      ['dec-only', hsmKey, 'DECRYPT', 'Enabled'],
      ['enc-only', hsmKey, 'ENCRYPT', 'Enabled'],
      ['none', hsmKey, 'NONE', 'Enabled'],
    ]);
    const events = ok(k.kmsctl(['ListAuditEvents', '--PageSize', '200'])).Events as any[];
    const store = events.find((e) => e.Action === 'CreateXksKeyStore' && e.Outcome === 'ok');
    expect(store).toBeDefined();
    expect(JSON.stringify(store)).not.toContain(cred.SecretAccessKey);
    const created = events.filter((e) => e.Action === 'CreateXksKey' && e.Outcome === 'ok');
    expect(created).toHaveLength(4);
    expect(created.every((e) => e.KeyId === hsmKey)).toBe(true);
  });
});

describe('GetHealthStatus', () => {
  it('answers the fleet and the token ACTIVE', async () => {
    const r = await call('health', { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: crypto.randomUUID() } });
    expect(r.status, r.body).toBe(200);
    expect(r.json).toMatchObject({ xksProxyFleetSize: 1, xksProxyVendor: 'kmsd', ekmVendor: expect.any(String), ekmFleetDetails: [{ id: expect.any(String), model: expect.any(String), healthStatus: 'ACTIVE' }] });
  });

  it('refuses a body without requestMetadata or with an empty one (ValidationException)', async () => {
    expectError(await call('health', {}), 400, 'ValidationException');
    expectError(await call('health', { requestMetadata: {} }), 400, 'ValidationException');
  });
});

describe('GetKeyMetadata', () => {
  it('reports AES_256, the operations each external key allows, and ENABLED', async () => {
    const expected: Record<string, string[]> = { both: ['ENCRYPT', 'DECRYPT'], 'enc-only': ['ENCRYPT'], 'dec-only': ['DECRYPT'], none: [] };
    for (const [name, usage] of Object.entries(expected)) {
      const r = await call(`keys/${name}/metadata`, { requestMetadata: { awsPrincipalArn: ARN_PRINCIPAL, kmsOperation: 'CreateKey', kmsRequestId: crypto.randomUUID() } });
      expect(r.status, r.body).toBe(200);
      expect(r.json).toEqual({ keySpec: 'AES_256', keyUsage: usage, keyStatus: 'ENABLED' });
    }
  });

  it('answers KeyNotFoundException for an unknown external key and ValidationException without metadata', async () => {
    expectError(await call('keys/non_existing_key/metadata', { requestMetadata: requestMetadata('DescribeKey') }), 404, 'KeyNotFoundException');
    expectError(await call('keys/both/metadata', {}), 400, 'ValidationException');
    expectError(await call('keys/both/metadata', { requestMetadata: { kmsOperation: 'DescribeKey', kmsRequestId: 'x' } }), 400, 'ValidationException');
  });
});

describe('Encrypt and Decrypt', () => {
  it('round-trips with AAD; the ciphertext is as long as the plaintext, the IV 12 bytes, the tag 16', async () => {
    const pt = Buffer.from('Hello World!');
    const aad = Buffer.from('project=nile,department=marketing');
    const e = await encrypt('both', pt, aad);
    expect(e.status, e.body).toBe(200);
    expect(Buffer.from(e.json.ciphertext, 'base64')).toHaveLength(pt.length);
    expect(Buffer.from(e.json.initializationVector, 'base64')).toHaveLength(12);
    expect(Buffer.from(e.json.authenticationTag, 'base64')).toHaveLength(16);
    expect(Buffer.from(e.json.ciphertextMetadata, 'base64').length).toBeLessThanOrEqual(20);
    expect(e.json.ciphertextDataIntegrityValue).toBeUndefined();
    const d = await call('keys/both/decrypt', decryptBody(e.json, aad));
    expect(d.status, d.body).toBe(200);
    expect(d.json).toEqual({ plaintext: b64(pt) });
    // Plaintext and AAD never in kmsd's log.
    expect(k.logs()).not.toContain(b64(pt));
    expect(k.logs()).not.toContain(b64(aad));
  });

  it('round-trips without AAD, and a decrypt with another AAD (or none, or one where there was none) is InvalidCiphertextException', async () => {
    const pt = crypto.randomBytes(32);
    const aad = Buffer.from('a=1');
    const plain = await encrypt('both', pt);
    expect((await call('keys/both/decrypt', decryptBody(plain.json))).json).toEqual({ plaintext: b64(pt) });
    expectError(await call('keys/both/decrypt', decryptBody(plain.json, aad)), 400, 'InvalidCiphertextException');
    const withAad = await encrypt('both', pt, aad);
    expectError(await call('keys/both/decrypt', decryptBody(withAad.json, Buffer.from('a=2'))), 400, 'InvalidCiphertextException');
    expectError(await call('keys/both/decrypt', decryptBody(withAad.json)), 400, 'InvalidCiphertextException');
    // The metadata cannot stand in for the AAD (the spec's length-prefixed token AAD).
    const moved = decryptBody(withAad.json, undefined, { ciphertextMetadata: undefined, additionalAuthenticatedData: withAad.json.ciphertextMetadata });
    expectError(await call('keys/both/decrypt', moved), 400, 'InvalidCiphertextException');
  });

  it('refuses a tampered tag, IV, ciphertext or ciphertext metadata with InvalidCiphertextException', async () => {
    const e = (await encrypt('both', crypto.randomBytes(48), Buffer.from('ctx'))).json;
    const flip = (s: string, i = 0) => {
      const b = Buffer.from(s, 'base64');
      b[i] ^= 1;
      return b.toString('base64');
    };
    for (const field of ['authenticationTag', 'initializationVector', 'ciphertext', 'ciphertextMetadata']) {
      const r = await call('keys/both/decrypt', decryptBody(e, Buffer.from('ctx'), { [field]: flip(e[field], field === 'ciphertextMetadata' ? 5 : 0) }));
      expectError(r, 400, 'InvalidCiphertextException');
    }
    // A 16-byte IV is valid on the wire but never kmsd's; missing metadata is not kmsd's ciphertext either.
    expectError(await call('keys/both/decrypt', decryptBody(e, Buffer.from('ctx'), { initializationVector: b64(crypto.randomBytes(16)) })), 400, 'InvalidCiphertextException');
    expectError(await call('keys/both/decrypt', decryptBody(e, Buffer.from('ctx'), { ciphertextMetadata: undefined })), 400, 'InvalidCiphertextException');
  });

  it('returns the Ciphertext Data Integrity Value of Appendix C when asked, and the ciphertext decrypts', async () => {
    const pt = crypto.randomBytes(32);
    for (const aad of [Buffer.from('project=nile'), undefined]) {
      const e = await encrypt('both', pt, aad, true);
      expect(e.status, e.body).toBe(200);
      const j = e.json;
      const expected = crypto
        .createHash('sha256')
        .update(Buffer.concat([aad ?? Buffer.alloc(0), ...['ciphertextMetadata', 'initializationVector', 'ciphertext', 'authenticationTag'].map((f) => Buffer.from(j[f], 'base64'))]))
        .digest('base64');
      expect(j.ciphertextDataIntegrityValue).toBe(expected);
      expect((await call('keys/both/decrypt', decryptBody(j, aad))).json).toEqual({ plaintext: b64(pt) });
    }
    const bad = await call('keys/both/encrypt', { requestMetadata: requestMetadata('Encrypt'), plaintext: b64(pt), encryptionAlgorithm: 'AES_GCM', ciphertextDataIntegrityValueAlgorithm: 'MD5' });
    expectError(bad, 501, 'UnsupportedOperationException');
  });

  it('takes 4,300 bytes of plaintext and 8,192 bytes of AAD; beyond kmsd sizes is UnsupportedOperationException', async () => {
    const pt = crypto.randomBytes(4300);
    const aad = crypto.randomBytes(8192);
    const e = await encrypt('both', pt, aad, true);
    expect(e.status, e.body).toBe(200);
    expect((await call('keys/both/decrypt', decryptBody(e.json, aad))).json).toEqual({ plaintext: b64(pt) });
    expectError(await encrypt('both', crypto.randomBytes(6145)), 501, 'UnsupportedOperationException');
    expectError(await encrypt('both', pt, crypto.randomBytes(8193)), 501, 'UnsupportedOperationException');
  });

  it('refuses missing or malformed members with ValidationException and another algorithm with UnsupportedOperationException', async () => {
    const md = requestMetadata('Encrypt');
    const cases: [unknown, number, string][] = [
      [{ requestMetadata: md, encryptionAlgorithm: 'AES_GCM' }, 400, 'ValidationException'],
      [{ requestMetadata: md, plaintext: '!!not base64!!', encryptionAlgorithm: 'AES_GCM' }, 400, 'ValidationException'],
      [{ requestMetadata: md, plaintext: 'AAAA' }, 400, 'ValidationException'],
      [{ requestMetadata: md, plaintext: 'AAAA', encryptionAlgorithm: 'AES_CBC' }, 501, 'UnsupportedOperationException'],
      [{ requestMetadata: { ...md, kmsKeyArn: undefined }, plaintext: 'AAAA', encryptionAlgorithm: 'AES_GCM' }, 400, 'ValidationException'],
      [{ requestMetadata: { ...md, awsPrincipalArn: 42 }, plaintext: 'AAAA', encryptionAlgorithm: 'AES_GCM' }, 400, 'ValidationException'],
      [{ plaintext: 'AAAA', encryptionAlgorithm: 'AES_GCM' }, 400, 'ValidationException'],
    ];
    for (const [body, status, name] of cases) expectError(await call('keys/both/encrypt', body), status, name);
    expectError(await call('keys/both/encrypt', null, { rawBody: '{"requestMetadata":' }), 400, 'ValidationException');
    const e = (await encrypt('both', Buffer.from('x'))).json;
    expectError(await call('keys/both/decrypt', decryptBody(e, undefined, { authenticationTag: b64(crypto.randomBytes(12)) })), 400, 'ValidationException');
    expectError(await call('keys/both/decrypt', decryptBody(e, undefined, { initializationVector: b64(crypto.randomBytes(8)) })), 400, 'ValidationException');
    expectError(await call('keys/both/decrypt', decryptBody(e, undefined, { ciphertextMetadata: b64(crypto.randomBytes(21)) })), 400, 'ValidationException');
    expectError(await call('keys/both/decrypt', decryptBody(e, undefined, { ciphertext: undefined })), 400, 'ValidationException');
  });

  it('accepts ARNs of 2,048 characters in requestMetadata and records them whole in the audit record', async () => {
    const longPrincipal = `arn:aws:iam::123456789012:role/${'p'.repeat(2048 - 'arn:aws:iam::123456789012:role/'.length)}`;
    const longKey = `arn:aws:kms:us-east-2:123456789012:key/${'k'.repeat(2048 - 'arn:aws:kms:us-east-2:123456789012:key/'.length)}`;
    expect(longPrincipal).toHaveLength(2048);
    const kmsRequestId = crypto.randomUUID();
    // With the optional members, and one AWS KMS may add later (Appendix B): accepted, not recorded.
    const md = requestMetadata('GenerateDataKey', { awsPrincipalArn: longPrincipal, kmsKeyArn: longKey, kmsRequestId, awsSourceVpc: 'vpc-0123', awsSourceVpce: 'vpce-0456', kmsFutureMember: 'later' });
    const r = await call('keys/both/encrypt', { requestMetadata: md, plaintext: b64(crypto.randomBytes(32)), encryptionAlgorithm: 'AES_GCM' });
    expect(r.status, r.body).toBe(200);
    const events = ok(k.kmsctl(['ListAuditEvents', '--PageSize', '500', '--Action', 'XksEncrypt'])).Events as any[];
    const ev = events.find((x) => x.Details.includes(kmsRequestId));
    expect(ev).toBeDefined();
    const details = JSON.parse(ev.Details);
    expect(details).toMatchObject({ AwsPrincipalArn: longPrincipal, KmsKeyArn: longKey, KmsOperation: 'GenerateDataKey', KmsRequestId: kmsRequestId, KmsViaService: 'ebs', AwsSourceVpc: 'vpc-0123', AwsSourceVpce: 'vpce-0456', UriPathPrefix: 'ks-one', ExternalKeyId: 'both', AccessKeyId: cred.AccessKeyId });
    expect(ev.Details).not.toContain('later');
    // Neither the plaintext nor anything derived from it is in the record.
    expect(Object.keys(details).filter((x) => /plain|aad|cipher/i.test(x))).toEqual([]);
    expect(ev.KeyId).toBe(hsmKey);
    expect(ev.Principal).toBe('xks:ks-one');
    const tooLong = await call('keys/both/encrypt', { requestMetadata: { ...md, awsPrincipalArn: `${longPrincipal}x` }, plaintext: 'AAAA', encryptionAlgorithm: 'AES_GCM' });
    expectError(tooLong, 400, 'ValidationException');
  });
});

describe('the operations an external key allows', () => {
  it('encrypt-only: Encrypt works, Decrypt is InvalidKeyUsageException, and so is Encrypt with a CDIV', async () => {
    const e = await encrypt('enc-only', Buffer.from('x'));
    expect(e.status, e.body).toBe(200);
    // The CDIV promises that a decrypt with this key will succeed (Appendix C), which it cannot.
    expectError(await encrypt('enc-only', Buffer.from('x'), undefined, true), 400, 'InvalidKeyUsageException');
    expectError(await encrypt('enc-only', Buffer.from('x'), Buffer.from('a'), true), 400, 'InvalidKeyUsageException');
    expectError(await call('keys/enc-only/decrypt', decryptBody(e.json)), 400, 'InvalidKeyUsageException');
    // The same ciphertext decrypts where DECRYPT is allowed (the same CMK).
    expect((await call('keys/dec-only/decrypt', decryptBody(e.json))).json).toEqual({ plaintext: b64('x') });
  });

  it('decrypt-only and none: Encrypt is InvalidKeyUsageException; none refuses Decrypt too', async () => {
    expectError(await encrypt('dec-only', Buffer.from('x')), 400, 'InvalidKeyUsageException');
    expectError(await encrypt('none', Buffer.from('x'), Buffer.from('a'), true), 400, 'InvalidKeyUsageException');
    const e = (await encrypt('both', Buffer.from('x'))).json;
    expectError(await call('keys/none/decrypt', decryptBody(e)), 400, 'InvalidKeyUsageException');
  });
});

describe('CMK states', () => {
  it('a Disabled or PendingDeletion CMK is InvalidStateException (metadata says DISABLED), and works again after', async () => {
    const e = (await encrypt('both', Buffer.from('state'))).json;
    ok(k.kmsctl(['DisableKey', '--KeyId', hsmKey]));
    expectError(await encrypt('both', Buffer.from('x')), 400, 'InvalidStateException');
    expectError(await call('keys/both/decrypt', decryptBody(e)), 400, 'InvalidStateException');
    expect((await call('keys/both/metadata', { requestMetadata: requestMetadata('DescribeKey') })).json.keyStatus).toBe('DISABLED');
    ok(k.kmsctl(['EnableKey', '--KeyId', hsmKey]));
    ok(k.kmsctl(['ScheduleKeyDeletion', '--KeyId', hsmKey, '--PendingWindowInDays', '7']));
    expectError(await encrypt('both', Buffer.from('x')), 400, 'InvalidStateException');
    ok(k.kmsctl(['CancelKeyDeletion', '--KeyId', hsmKey]));
    expect((await call('keys/both/decrypt', decryptBody(e))).json).toEqual({ plaintext: b64('state') });
  });

  it('an external CMK without material (PendingImport) is InvalidStateException', async () => {
    const ext = ok(k.kmsctl(['CreateKey', '--Origin', 'EXTERNAL', '--ProtectionLevel', 'HSM'])).KeyMetadata.KeyId;
    ok(k.kmsctl(['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', ext, '--ExternalKeyId', 'no-material', '--Operations', 'ENCRYPT,DECRYPT']));
    expectError(await encrypt('no-material', Buffer.from('x')), 400, 'InvalidStateException');
    expect((await call('keys/no-material/metadata', { requestMetadata: requestMetadata('DescribeKey') })).json.keyStatus).toBe('DISABLED');
    ok(k.kmsctl(['DeleteXksKey', '--UriPathPrefix', 'ks-one', '--ExternalKeyId', 'no-material']));
  });

  it('a ciphertext made before the CMK gets a new key version still decrypts; new ones use the new version', async () => {
    const before = (await encrypt('both', Buffer.from('v1'))).json;
    ok(k.kmsctl(['CreateKeyVersion', '--KeyId', hsmKey]));
    const after = (await encrypt('both', Buffer.from('v2'))).json;
    expect(after.ciphertextMetadata).not.toBe(before.ciphertextMetadata);
    expect((await call('keys/both/decrypt', decryptBody(before))).json).toEqual({ plaintext: b64('v1') });
    expect((await call('keys/both/decrypt', decryptBody(after))).json).toEqual({ plaintext: b64('v2') });
  });
});

describe('routes, methods and authentication', () => {
  const health = () => ({ requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: crypto.randomUUID() } });

  it('answers GET on each of the four URIs with 405', async () => {
    for (const op of ['health', 'keys/both/metadata', 'keys/both/encrypt', 'keys/both/decrypt']) {
      const r = await call(op, undefined, { method: 'GET' });
      expect(r.status, op).toBe(405);
      expect(r.headers.allow).toBe('POST');
    }
  });

  it('answers InvalidUriPathException for a wrong prefix, an unknown route, or another key store’s path', async () => {
    expectError(await call('health', health(), { uriPath: '/ks-one/invalid/kms/xks/v1' }), 404, 'InvalidUriPathException');
    expectError(await call('health', health(), { uriPath: '/kms/xks/v1' }), 404, 'InvalidUriPathException');
    expectError(await call('keys/both/sign', health()), 404, 'InvalidUriPathException');
    expectError(await call('keys/both/encrypt/extra', health()), 404, 'InvalidUriPathException');
    ok(k.kmsctl(['CreateXksKeyStore', '--UriPathPrefix', 'ks-two']));
    expectError(await call('health', health(), { uriPath: '/ks-two/kms/xks/v1' }), 404, 'InvalidUriPathException');
    ok(k.kmsctl(['DeleteXksKeyStore', '--UriPathPrefix', 'ks-two']));
  });

  it('answers AuthenticationFailedException (401) for an unknown access key, a wrong secret, another service, a stale date or no signature', async () => {
    const wrong = [
      { cred: { ...cred, AccessKeyId: `INVALID${cred.AccessKeyId}`.slice(0, 30) } },
      { cred: { ...cred, SecretAccessKey: `Invalid${cred.SecretAccessKey}` } },
      { service: 'kms' },
      { date: new Date(Date.now() - 6 * 60 * 1000) },
    ];
    for (const o of wrong) expectError(await call('health', health(), o), 401, 'AuthenticationFailedException');
    const unsigned = await rawRequest(k.httpPort, { path: `${UP}/health`, headers: { 'content-type': 'application/json' }, body: JSON.stringify(health()) });
    expectError(unsigned, 401, 'AuthenticationFailedException');
    // An access key of the AWS and Alibaba dialects is not an external key store credential.
    expectError(await call('health', health(), { cred: { AccessKeyId: k.devKey.AccessKeyId, SecretAccessKey: k.devKey.AccessKeySecret } }), 401, 'AuthenticationFailedException');
  });

  it('rotates credentials: two at once, a third refused, the deleted one refused, the new one working', async () => {
    const second = ok(k.kmsctl(['CreateXksCredential', '--UriPathPrefix', 'ks-one']));
    expect(second.AccessKeyId).not.toBe(cred.AccessKeyId);
    expect(second.UriPath).toBe(UP);
    expect((await call('health', health())).status).toBe(200);
    expect((await call('health', health(), { cred: second })).status).toBe(200);
    const third = k.kmsctl(['CreateXksCredential', '--UriPathPrefix', 'ks-one']);
    expect(third.code).toBe(1);
    expect(third.json.Code).toBe('Rejected.XksCredentialLimit');
    ok(k.kmsctl(['DeleteXksCredential', '--AccessKeyId', cred.AccessKeyId]));
    expectError(await call('health', health()), 401, 'AuthenticationFailedException');
    const e = await encrypt('both', Buffer.from('x')).catch(() => undefined);
    expect(e?.status).toBe(401);
    const old = cred;
    cred = second;
    expect((await call('health', health())).status).toBe(200);
    expect(ok(k.kmsctl(['ListXksKeyStores'])).KeyStores.find((s: any) => s.UriPathPrefix === 'ks-one').AccessKeyIds).toEqual([second.AccessKeyId]);
    expect(old.AccessKeyId).not.toBe(cred.AccessKeyId);
  });
});

describe('with an authorization policy, and once the token is gone', () => {
  let p: HttpKmsd;
  let policyDir: string;
  let pc: XksCredential;
  const pUp = '/pk/kms/xks/v1';
  const pcall = (op: string, body: unknown) => xksRequest(p.httpPort, { op, uriPath: pUp, body, cred: pc });

  beforeAll(async () => {
    policyDir = makeTempDir('kmsd-xks-policy-');
    const policyFile = path.join(policyDir, 'policy.json');
    // The key store's principal may use only the CMK it is granted by id (an XKS request names an
    // external key, never an alias, so alias grants cannot reach it); health needs a grant on "*".
    const policy = (keys: string[]) => ({
      version: 1,
      admins: ['anonymous'],
      grants: [
        { id: 'xks-health', principals: ['xks:pk'], actions: ['XksGetHealthStatus'], keys: ['*'] },
        ...(keys.length ? [{ id: 'xks-use', principals: ['xks:pk'], actions: ['XksEncrypt', 'XksDecrypt', 'XksGetKeyMetadata'], keys }] : []),
      ],
    });
    fs.writeFileSync(policyFile, JSON.stringify(policy([])));
    p = await startHttpKmsd({ args: ['--policy', policyFile] });
    const allowed = ok(p.kmsctl(['CreateKey', '--ProtectionLevel', 'HSM'])).KeyMetadata.KeyId;
    const denied = ok(p.kmsctl(['CreateKey', '--ProtectionLevel', 'HSM'])).KeyMetadata.KeyId;
    ok(p.kmsctl(['CreateAlias', '--AliasName', 'alias/xks-allowed', '--KeyId', allowed]));
    pc = ok(p.kmsctl(['CreateXksKeyStore', '--UriPathPrefix', 'pk']));
    ok(p.kmsctl(['CreateXksKey', '--UriPathPrefix', 'pk', '--KeyId', allowed, '--ExternalKeyId', 'allowed', '--Operations', 'ENCRYPT,DECRYPT']));
    ok(p.kmsctl(['CreateXksKey', '--UriPathPrefix', 'pk', '--KeyId', denied, '--ExternalKeyId', 'denied', '--Operations', 'ENCRYPT,DECRYPT']));
    // Grants on key ids need the ids: write them in and reload, as an operator would.
    fs.writeFileSync(policyFile, JSON.stringify(policy([allowed])));
    const before = p.logs().length;
    process.kill(p.pid, 'SIGHUP');
    for (let i = 0; i < 200 && !/authorization policy reloaded/.test(p.logs().slice(before)); i++) await new Promise((r) => setTimeout(r, 50));
    expect(p.logs().slice(before)).toMatch(/authorization policy reloaded/);
  });

  afterAll(async () => {
    await p?.stop();
    if (policyDir) fs.rmSync(policyDir, { recursive: true, force: true });
  });

  it('answers AccessDeniedException (403) for a CMK the key store principal has no grant on, and audits the denial', async () => {
    const body = () => ({ requestMetadata: requestMetadata('Encrypt'), plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' });
    expect((await pcall('keys/allowed/encrypt', body())).status).toBe(200);
    expectError(await pcall('keys/denied/encrypt', body()), 403, 'AccessDeniedException');
    expectError(await pcall('keys/denied/metadata', { requestMetadata: requestMetadata('DescribeKey') }), 403, 'AccessDeniedException');
    const events = ok(p.kmsctl(['ListAuditEvents', '--PageSize', '200', '--Action', 'XksEncrypt'])).Events as any[];
    const denial = events.find((e) => e.Outcome === 'Forbidden.NoPermission');
    expect(denial).toMatchObject({ Principal: 'xks:pk' });
    expect(JSON.parse(denial.Details)).toMatchObject({ AccessKeyId: pc.AccessKeyId });
  });

  it('answers GetHealthStatus UNAVAILABLE, not a hang or a crash, when the token is gone; key operations fail with an error', async () => {
    const health = () => pcall('health', { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: crypto.randomUUID() } });
    const before = await health();
    expect(before.json.ekmFleetDetails[0].healthStatus).toBe('ACTIVE');
    // The token's storage removed under the running daemon, as when a token is deleted or its HSM
    // partition is lost: SoftHSM then fails every operation on it.
    // Renamed away first, in one step: kmsd's background pool may be writing a wrapping key into
    // the directory at this moment, and a recursive remove racing that write fails with ENOTEMPTY.
    const tokens = path.join(p.dataDir, 'softhsm', 'tokens');
    const gone = `${tokens}.gone`;
    fs.renameSync(tokens, gone);
    fs.mkdirSync(tokens);
    fs.rmSync(gone, { recursive: true, force: true, maxRetries: 20, retryDelay: 50 });
    const after = await health();
    expect(after.status, after.body).toBe(200);
    expect(after.json.ekmFleetDetails).toEqual([{ id: before.json.ekmFleetDetails[0].id, model: before.json.ekmFleetDetails[0].model, healthStatus: 'UNAVAILABLE' }]);
    // The log line is written asynchronously; wait for it rather than for a time.
    for (let i = 0; i < 100 && !p.logs().includes('the token is UNAVAILABLE'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(p.logs()).toContain('the token is UNAVAILABLE');
    const e = await pcall('keys/allowed/encrypt', { requestMetadata: requestMetadata('Encrypt'), plaintext: b64('x'), encryptionAlgorithm: 'AES_GCM' });
    expect(e.status).toBeGreaterThanOrEqual(400);
    expect(Object.keys(XKS_STATUSES)).toContain(e.json.errorName);
    // Still serving.
    expect((await health()).status).toBe(200);
  });
});

describe('over the rate limit', () => {
  it('answers ThrottlingException (429)', async () => {
    // One request per second per principal, burst 1: twenty at once cannot all pass.
    const t = await startHttpKmsd({ env: { KMS_RATE_LIMIT: '1', KMS_RATE_BURST: '1' } });
    try {
      const c = ok(t.kmsctl(['CreateXksKeyStore', '--UriPathPrefix', 'tk']));
      const answers = await Promise.all(
        Array.from({ length: 20 }, () => xksRequest(t.httpPort, { op: 'health', uriPath: '/tk/kms/xks/v1', cred: c, body: { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: crypto.randomUUID() } } })),
      );
      const throttled = answers.filter((a) => a.status === 429);
      expect(throttled.length).toBeGreaterThan(0);
      for (const a of throttled) expectError(a, 429, 'ThrottlingException');
      expect(answers.every((a) => a.status === 200 || a.status === 429)).toBe(true);
    } finally {
      await t.stop();
    }
  });
});

describe('under a ceremony quorum', () => {
  it('CreateXksKey can be guarded: called directly it is Rejected.QuorumRequired, through an approved proposal it runs', async () => {
    const dir = makeTempDir('kmsd-xks-custodian-');
    try {
      const keys = custodianKeys(dir, ['alice']);
      ok(k.kmsctl(['InitCeremony', '--Custodians', `alice=${keys.alice.pub}`, '--Threshold', '1']));
      const c = client(k);
      const approveAndRun = async (action: string, parameters: Record<string, string>) => {
        const p = (await c.call('CreateProposal', { Action: action, Parameters: parameters })) as any;
        await c.call('ApproveProposal', { ProposalId: p.ProposalId, CustodianId: 'alice', Signature: opensslSign(keys.alice.pem, writeDoc(dir, `${p.ProposalId}.doc`, p.Document)) });
        return (await c.call('ExecuteProposal', { ProposalId: p.ProposalId })) as any;
      };
      const policy = { GuardedActions: ['ImportKeyMaterial', 'DeleteKeyMaterial', 'ScheduleKeyDeletion', 'DisableKey', 'CreateXksKey'], ProtectionLevels: ['HSM'], Keys: {} };
      await approveAndRun('SetQuorumPolicy', { Policy: JSON.stringify(policy) });
      const direct = k.kmsctl(['CreateXksKey', '--UriPathPrefix', 'ks-one', '--KeyId', hsmKey, '--ExternalKeyId', 'guarded', '--Operations', 'ENCRYPT,DECRYPT']);
      expect(direct.code).toBe(1);
      expect(direct.json.Code).toBe('Rejected.QuorumRequired');
      expectError(await encrypt('guarded', Buffer.from('x')), 404, 'KeyNotFoundException');
      const done = await approveAndRun('CreateXksKey', { KeyId: hsmKey, UriPathPrefix: 'ks-one', ExternalKeyId: 'guarded', Operations: 'ENCRYPT,DECRYPT' });
      expect(JSON.parse(done.Result)).toMatchObject({ ExternalKeyId: 'guarded', KeyId: hsmKey });
      expect((await encrypt('guarded', Buffer.from('x'))).status).toBe(200);
      c.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('over HTTPS with a client certificate', () => {
  it('serves the XKS API on the TLS listener; a client without a certificate is refused at the TLS layer', async () => {
    const pki = makePki(['admin', 'cks.kms.us-east-2.amazonaws.com']);
    const t = await startTlsKmsd(pki, { version: 1, admins: ['admin'], grants: [{ id: 'xks', principals: ['xks:tls'], actions: ['Xks*'], keys: ['*'] }] }, { KMS_HTTP_LISTEN: '127.0.0.1:0' });
    try {
      let m: RegExpExecArray | null = null;
      for (let i = 0; i < 100 && !(m = /http listening on 127\.0\.0\.1:(\d+)/.exec(t.k.logs())); i++) await new Promise((r) => setTimeout(r, 50));
      const port = Number(m?.[1]);
      const key = t.kmsctl('admin', ['CreateKey', '--ProtectionLevel', 'HSM']).json.KeyMetadata.KeyId;
      const c = t.kmsctl('admin', ['CreateXksKeyStore', '--UriPathPrefix', 'tls']).json as XksCredential;
      expect(t.kmsctl('admin', ['CreateXksKey', '--UriPathPrefix', 'tls', '--KeyId', key, '--ExternalKeyId', 'k', '--Operations', 'ENCRYPT,DECRYPT']).code).toBe(0);
      const tls = { caFile: pki.file('ca.crt'), certFile: pki.file('client-cks.kms.us-east-2.amazonaws.com.crt'), keyFile: pki.file('client-cks.kms.us-east-2.amazonaws.com.key') };
      const req = (op: string, body: unknown, o: { tls?: { caFile: string; certFile?: string; keyFile?: string } } = { tls }) => xksRequest(port, { op, uriPath: '/tls/kms/xks/v1', body, cred: c, tls: o.tls });
      const e = await req('keys/k/encrypt', { requestMetadata: requestMetadata('Encrypt'), plaintext: b64('over tls'), encryptionAlgorithm: 'AES_GCM', ciphertextDataIntegrityValueAlgorithm: 'SHA_256' });
      expect(e.status, e.body).toBe(200);
      expect((await req('keys/k/decrypt', decryptBody(e.json))).json).toEqual({ plaintext: b64('over tls') });
      await expect(req('health', { requestMetadata: { kmsOperation: 'KmsHealthCheck', kmsRequestId: 'x' } }, { tls: { caFile: pki.file('ca.crt') } })).rejects.toThrow();
    } finally {
      await t.stop();
    }
  });
});
