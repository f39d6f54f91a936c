// The AWS KMS dialect end to end: the unmodified @aws-sdk/client-kms against a real kmsd (SoftHSM
// token, SQLite, its HTTP listener) with an access key made by the real kmsctl, under an
// authorization policy. examples/aws-sdk-import.ts (AWS's import flow) runs as a user would run it;
// key references, paging, lifecycle and errors as AWS answers them; ciphertexts cross between AWS,
// gRPC and the Alibaba dialect; and every refusal answers with AWS's __type and status and leaves
// kmsd as it was.

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Kms, * as $Kms from '@alicloud/kms20160120';
import {
  CancelKeyDeletionCommand,
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DeleteImportedKeyMaterialCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  DisableKeyRotationCommand,
  EnableKeyCommand,
  EnableKeyRotationCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GenerateDataKeyWithoutPlaintextCommand,
  GetKeyRotationStatusCommand,
  GetParametersForImportCommand,
  ImportKeyMaterialCommand,
  KMSClient,
  ListAliasesCommand,
  ListKeysCommand,
  ReEncryptCommand,
  ScheduleKeyDeletionCommand,
} from '@aws-sdk/client-kms';
import { Kmsd, ROOT, makeTempDir, startKmsd } from '../helpers/daemon';
import { AccessKey, awsClient, awsError, awsRaw, createAccessKey, httpPortOf } from '../helpers/aws';

let k: Kmsd;
let port: number;
let dir: string;
let admin: AccessKey;
let app: AccessKey;
let kms: KMSClient;

const policy = {
  version: 1,
  // gRPC callers on plaintext loopback are "anonymous": kmsctl makes the access keys.
  admins: ['anonymous', 'aws-admin'],
  grants: [
    { id: 'aws-admin-crypto', principals: ['aws-admin'], actions: ['Encrypt', 'Decrypt', 'GenerateDataKey*', 'ReEncrypt'], keys: ['*'] },
    { id: 'anonymous-crypto', principals: ['anonymous'], actions: ['Encrypt', 'Decrypt', 'GenerateDataKey*'], keys: ['*'] },
    { id: 'aws-app', principals: ['aws-app'], actions: ['Encrypt', 'Decrypt'], keys: ['alias/aws-app-*'] },
  ],
};

beforeAll(async () => {
  dir = makeTempDir('kmsd-aws-');
  fs.writeFileSync(path.join(dir, 'policy.json'), JSON.stringify(policy));
  k = await startKmsd({ args: ['--http-listen', '127.0.0.1:0', '--policy', path.join(dir, 'policy.json')] });
  port = await httpPortOf(k);
  admin = createAccessKey(k, 'aws-admin');
  app = createAccessKey(k, 'aws-app');
  kms = awsClient(port, admin);
});

afterAll(async () => {
  kms?.destroy();
  await k?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function newKey(description = 'aws test'): Promise<string> {
  return (await kms.send(new CreateKeyCommand({ Description: description }))).KeyMetadata!.KeyId!;
}

const arn = (id: string, region = 'us-east-1') => `arn:aws:kms:${region}:kmsd:key/${id}`;

describe('examples/aws-sdk-import.ts (AWS import flow with the AWS SDK)', () => {
  it('imports with RSA_AES_KEY_WRAP_SHA_256 and RSA_4096, lets ValidTo pass, re-imports, and uses the CMK by alias and ARN', async () => {
    const keyFile = path.join(dir, 'admin-key.json');
    fs.writeFileSync(keyFile, JSON.stringify(admin), { mode: 0o600 });
    const r = spawnSync(process.execPath, [path.join(ROOT, 'dist', 'examples', 'aws-sdk-import.js'), '--endpoint', `http://127.0.0.1:${port}`, '--access-key-file', keyFile, '--protection-level', 'HSM', '--valid-for', '3'], {
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    const out = JSON.parse(lines[lines.length - 1]);
    expect(out).toMatchObject({
      KeyArn: arn(out.KeyId),
      ImportedState: 'Enabled',
      ImportedExpirationModel: 'KEY_MATERIAL_EXPIRES',
      ExpiredEncryptError: 'KMSInvalidStateException',
      ExpiredState: 'PendingImport',
      ReimportedState: 'Enabled',
      ReimportedExpirationModel: 'KEY_MATERIAL_DOES_NOT_EXPIRE',
      AliasTarget: out.KeyId,
      DataKeyMatches: true,
      ReEncryptSourceKeyId: arn(out.KeyId),
      ReEncryptKeyId: arn(out.SecondKeyId),
      ReEncryptMatches: true,
      AliasMovedTo: out.SecondKeyId,
    });
    expect(out.AliasArn).toMatch(/^arn:aws:kms:us-east-1:kmsd:alias\/aws-sdk-import-[0-9a-f]{8}$/);
    // The same CMK over gRPC: an EXTERNAL HSM key whose material came in through an import.
    const m = (await k.client.call('DescribeKey', { KeyId: out.KeyId })).KeyMetadata;
    expect(m).toMatchObject({ Origin: 'EXTERNAL', ProtectionLevel: 'HSM', KeyState: 'Enabled', MaterialExpireTime: '' });
    expect(m.MaterialImportPath).not.toBe('');
  });
});

describe('key references, metadata and paging', () => {
  it('finds a CMK by key id, key ARN, alias name and alias ARN, with AWS KeyMetadata', async () => {
    const id = await newKey('refs');
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/aws-refs', TargetKeyId: arn(id) }));
    for (const ref of [id, arn(id), 'alias/aws-refs', 'arn:aws:kms:us-east-1:kmsd:alias/aws-refs']) {
      const m = (await kms.send(new DescribeKeyCommand({ KeyId: ref }))).KeyMetadata!;
      expect(m.KeyId, ref).toBe(id);
    }
    const m = (await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!;
    expect(m).toMatchObject({
      AWSAccountId: 'kmsd',
      Arn: arn(id),
      Enabled: true,
      Description: 'refs',
      KeyUsage: 'ENCRYPT_DECRYPT',
      KeyState: 'Enabled',
      Origin: 'AWS_KMS',
      KeyManager: 'CUSTOMER',
      KeySpec: 'SYMMETRIC_DEFAULT',
      EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'],
      MultiRegion: false,
    });
    expect(m.CreationDate).toBeInstanceOf(Date);
    expect(Math.abs(m.CreationDate!.getTime() - Date.now())).toBeLessThan(3600_000);
    // ARNs answer in the region the client signs for.
    const eu = awsClient(port, admin, 'eu-west-1');
    expect((await eu.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!.Arn).toBe(arn(id, 'eu-west-1'));
    eu.destroy();
    const aliases = (await kms.send(new ListAliasesCommand({ KeyId: id }))).Aliases!;
    expect(aliases).toEqual([{ AliasName: 'alias/aws-refs', AliasArn: 'arn:aws:kms:us-east-1:kmsd:alias/aws-refs', TargetKeyId: id }]);
  });

  it('refuses references AWS refuses: another account, a malformed ARN, an alias where only keys go, an unknown key', async () => {
    const id = await newKey();
    const other = await awsError(kms.send(new DescribeKeyCommand({ KeyId: `arn:aws:kms:us-east-1:123456789012:key/${id}` })));
    expect(other).toMatchObject({ name: 'ValidationException', status: 400 });
    expect(other.message).toContain('account "123456789012"');
    expect((await awsError(kms.send(new DescribeKeyCommand({ KeyId: 'arn:aws:kms:nope' })))).name).toBe('ValidationException');
    const alias = await awsError(kms.send(new DisableKeyCommand({ KeyId: 'alias/aws-refs' })));
    expect(alias.name).toBe('ValidationException');
    expect(alias.message).toContain('KeyId: takes a key id or key ARN, not an alias');
    const reserved = await awsError(kms.send(new CreateAliasCommand({ AliasName: 'alias/aws/s3', TargetKeyId: id })));
    expect(reserved.name).toBe('ValidationException');
    expect(reserved.message).toContain('AliasName: must not begin with "alias/aws/"');
    const missing = await awsError(kms.send(new DescribeKeyCommand({ KeyId: '00000000-0000-4000-8000-000000000000' })));
    expect(missing).toMatchObject({ name: 'NotFoundException', status: 400 });
    expect(missing.requestId).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('pages ListKeys with Limit and NextMarker over every CMK, and refuses a marker it did not hand out', async () => {
    for (let i = 0; i < 3; i++) await newKey('page');
    const total = (await k.client.call('ListKeys', { PageSize: 1 })).TotalCount as number;
    const seen: string[] = [];
    let marker: string | undefined;
    for (;;) {
      const r = await kms.send(new ListKeysCommand({ Limit: 2, Marker: marker }));
      for (const key of r.Keys!) {
        expect(key.KeyArn).toBe(arn(key.KeyId!));
        seen.push(key.KeyId!);
      }
      if (!r.Truncated) break;
      marker = r.NextMarker;
    }
    expect(seen.length).toBe(total);
    expect(new Set(seen).size).toBe(total);
    expect((await awsError(kms.send(new ListKeysCommand({ Marker: 'not-a-marker' })))).name).toBe('InvalidMarkerException');
    expect((await awsError(kms.send(new ListKeysCommand({ Limit: 0 })))).name).toBe('ValidationException');
  });
});

describe('lifecycle and cryptography as AWS answers them', () => {
  it('disables, enables, schedules and cancels deletion, with DisabledException and KMSInvalidStateException between', async () => {
    const id = await newKey('lifecycle');
    const pt = Buffer.from('lifecycle');
    const disabled = await kms.send(new DisableKeyCommand({ KeyId: id }));
    expect((await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata).toMatchObject({ KeyState: 'Disabled', Enabled: false });
    // The audit record: the access key's principal, the access key id, and the request id the SDK saw.
    const listed = k.kmsctl(['ListAuditEvents', '--KeyId', id, '--Action', 'DisableKey']);
    expect(listed.code, listed.stderr).toBe(0);
    const events = listed.json.Events;
    expect(events).toHaveLength(1);
    expect(events[0]).toMatchObject({ Principal: 'aws-admin', Outcome: 'ok', RequestId: disabled.$metadata.requestId });
    expect(JSON.parse(events[0].Details).AccessKeyId).toBe(admin.AccessKeyId);
    expect(await awsError(kms.send(new EncryptCommand({ KeyId: id, Plaintext: pt })))).toMatchObject({ name: 'DisabledException', status: 400 });
    await kms.send(new EnableKeyCommand({ KeyId: arn(id) }));
    await kms.send(new EncryptCommand({ KeyId: id, Plaintext: pt }));
    const scheduled = await kms.send(new ScheduleKeyDeletionCommand({ KeyId: id, PendingWindowInDays: 7 }));
    expect(scheduled).toMatchObject({ KeyId: arn(id), KeyState: 'PendingDeletion', PendingWindowInDays: 7 });
    expect(scheduled.DeletionDate!.getTime()).toBeGreaterThan(Date.now() + 6 * 86400_000);
    expect((await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!.DeletionDate).toEqual(scheduled.DeletionDate);
    expect((await awsError(kms.send(new EncryptCommand({ KeyId: id, Plaintext: pt })))).name).toBe('KMSInvalidStateException');
    expect((await kms.send(new CancelKeyDeletionCommand({ KeyId: id }))).KeyId).toBe(arn(id));
    expect((await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!.KeyState).toBe('Enabled');
    expect((await awsError(kms.send(new ScheduleKeyDeletionCommand({ KeyId: id, PendingWindowInDays: 31 })))).name).toBe('ValidationException');
  });

  it('answers the data-key, rotation and import operations with AWS members, and refuses what kmsd does not have', async () => {
    const id = await newKey('data keys');
    const ctx = { tenant: 'acme' };
    const d128 = await kms.send(new GenerateDataKeyCommand({ KeyId: id, KeySpec: 'AES_128', EncryptionContext: ctx }));
    expect(d128.Plaintext!.length).toBe(16);
    const d7 = await kms.send(new GenerateDataKeyCommand({ KeyId: id, NumberOfBytes: 7 }));
    expect(d7.Plaintext!.length).toBe(7);
    const noPt = await kms.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: id, KeySpec: 'AES_256', EncryptionContext: ctx }));
    expect((noPt as { Plaintext?: unknown }).Plaintext).toBeUndefined();
    expect(Buffer.from((await kms.send(new DecryptCommand({ CiphertextBlob: noPt.CiphertextBlob, EncryptionContext: ctx }))).Plaintext!).length).toBe(32);
    expect((await awsError(kms.send(new DecryptCommand({ CiphertextBlob: noPt.CiphertextBlob, EncryptionContext: { tenant: 'other' } })))).name).toBe('InvalidCiphertextException');
    expect((await awsError(kms.send(new GenerateDataKeyCommand({ KeyId: id })))).message).toContain('KeySpec or NumberOfBytes');
    const other = await newKey();
    const wrongKey = await awsError(kms.send(new DecryptCommand({ CiphertextBlob: noPt.CiphertextBlob, EncryptionContext: ctx, KeyId: other })));
    expect(wrongKey.name).toBe('IncorrectKeyException');
    const wrongSource = await awsError(kms.send(new ReEncryptCommand({ CiphertextBlob: noPt.CiphertextBlob, SourceEncryptionContext: ctx, SourceKeyId: other, DestinationKeyId: other })));
    expect(wrongSource.name).toBe('IncorrectKeyException');
    expect(await kms.send(new GetKeyRotationStatusCommand({ KeyId: id }))).toMatchObject({ KeyRotationEnabled: false, KeyId: arn(id) });
    await kms.send(new EnableKeyRotationCommand({ KeyId: id, RotationPeriodInDays: 180 }));
    expect(await kms.send(new GetKeyRotationStatusCommand({ KeyId: id }))).toMatchObject({ KeyRotationEnabled: true, RotationPeriodInDays: 180 });
    await kms.send(new DisableKeyRotationCommand({ KeyId: id }));
    expect(await kms.send(new GetKeyRotationStatusCommand({ KeyId: id }))).toMatchObject({ KeyRotationEnabled: false });
    expect((await awsError(kms.send(new GetParametersForImportCommand({ KeyId: id, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' })))).name).toBe('UnsupportedOperationException');
    expect((await awsError(kms.send(new DeleteImportedKeyMaterialCommand({ KeyId: id })))).name).toBe('UnsupportedOperationException');
    expect((await awsError(kms.send(new CreateKeyCommand({ Tags: [{ TagKey: 'team', TagValue: 'x' }] })))).name).toBe('TagException');
    expect((await awsError(kms.send(new EncryptCommand({ KeyId: id, Plaintext: Buffer.from('x'), GrantTokens: ['g'] })))).name).toBe('UnsupportedOperationException');
  });

  it('binds an EncryptionContext member named "__proto__" like any other', async () => {
    const id = await newKey('proto context');
    const enc = await awsRaw(port, { key: admin, target: 'TrentService.Encrypt', body: `{"KeyId":"${id}","Plaintext":"cHJvdG8=","EncryptionContext":{"__proto__":"x","a":"b"}}` });
    expect(enc.status, enc.text).toBe(200);
    const blob = enc.json.CiphertextBlob as string;
    const without = await awsRaw(port, { key: admin, target: 'TrentService.Decrypt', body: JSON.stringify({ CiphertextBlob: blob, EncryptionContext: { a: 'b' } }) });
    expect([without.status, without.json.__type]).toEqual([400, 'InvalidCiphertextException']);
    const withIt = await awsRaw(port, { key: admin, target: 'TrentService.Decrypt', body: `{"CiphertextBlob":"${blob}","EncryptionContext":{"a":"b","__proto__":"x"}}` });
    expect(withIt.status, withIt.text).toBe(200);
    expect(withIt.json.Plaintext).toBe('cHJvdG8=');
  });

  it('creates an HSM CMK when the kmsd:ProtectionLevel tag says so, and a SOFTWARE one by default', async () => {
    const hsm = (await kms.send(new CreateKeyCommand({ Tags: [{ TagKey: 'kmsd:ProtectionLevel', TagValue: 'HSM' }] }))).KeyMetadata!.KeyId!;
    const soft = await newKey();
    expect((await k.client.call('DescribeKey', { KeyId: hsm })).KeyMetadata.ProtectionLevel).toBe('HSM');
    expect((await k.client.call('DescribeKey', { KeyId: soft })).KeyMetadata.ProtectionLevel).toBe('SOFTWARE');
  });
});

describe('import with every wrapping algorithm, and its refusals', () => {
  /** The wrapping each WrappingAlgorithm means, done with node:crypto as a client would. */
  function wrap(alg: string, spkiDer: Uint8Array, material: Buffer): Buffer {
    const pub = crypto.createPublicKey({ key: Buffer.from(spkiDer), format: 'der', type: 'spki' });
    const oaep = (hash: string, data: Buffer) => crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: hash }, data);
    if (alg === 'RSAES_PKCS1_V1_5') return crypto.publicEncrypt({ key: pub, padding: crypto.constants.RSA_PKCS1_PADDING }, material);
    if (alg === 'RSAES_OAEP_SHA_1') return oaep('sha1', material);
    if (alg === 'RSAES_OAEP_SHA_256') return oaep('sha256', material);
    const aes = crypto.randomBytes(32);
    const kw = crypto.createCipheriv('id-aes256-wrap-pad', aes, Buffer.from('A65959A6', 'hex'));
    return Buffer.concat([oaep(alg.endsWith('SHA_1') ? 'sha1' : 'sha256', aes), kw.update(material), kw.final()]);
  }

  it('imports with each of the five wrapping algorithms and encrypts with the result', async () => {
    const material = crypto.randomBytes(32);
    for (const alg of ['RSAES_PKCS1_V1_5', 'RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'RSA_AES_KEY_WRAP_SHA_1', 'RSA_AES_KEY_WRAP_SHA_256'] as const) {
      const id = (await kms.send(new CreateKeyCommand({ Origin: 'EXTERNAL' }))).KeyMetadata!.KeyId!;
      const p = await kms.send(new GetParametersForImportCommand({ KeyId: arn(id), WrappingAlgorithm: alg, WrappingKeySpec: 'RSA_2048' }));
      expect(p.KeyId).toBe(arn(id));
      expect(crypto.createPublicKey({ key: Buffer.from(p.PublicKey!), format: 'der', type: 'spki' }).asymmetricKeyDetails?.modulusLength).toBe(2048);
      expect(Math.abs(p.ParametersValidTo!.getTime() - Date.now() - 86400_000)).toBeLessThan(3600_000);
      expect((await kms.send(new ImportKeyMaterialCommand({ KeyId: id, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrap(alg, p.PublicKey!, material), ExpirationModel: 'KEY_MATERIAL_DOES_NOT_EXPIRE' }))).KeyId).toBe(arn(id));
      const m = (await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!;
      expect(m, alg).toMatchObject({ KeyState: 'Enabled', Origin: 'EXTERNAL', ExpirationModel: 'KEY_MATERIAL_DOES_NOT_EXPIRE' });
      expect(m.ValidTo).toBeUndefined();
      const blob = (await kms.send(new EncryptCommand({ KeyId: id, Plaintext: Buffer.from(alg) }))).CiphertextBlob;
      expect(Buffer.from((await kms.send(new DecryptCommand({ CiphertextBlob: blob }))).Plaintext!).toString()).toBe(alg);
    }
  });

  it("answers AWS's import errors: undecryptable material, other material, a forged token, a bad ValidTo, and DeleteImportedKeyMaterial", async () => {
    const id = (await kms.send(new CreateKeyCommand({ Origin: 'EXTERNAL' }))).KeyMetadata!.KeyId!;
    const p = await kms.send(new GetParametersForImportCommand({ KeyId: id, WrappingAlgorithm: 'RSAES_OAEP_SHA_256', WrappingKeySpec: 'RSA_2048' }));
    const material = crypto.randomBytes(32);
    const imp = (o: Partial<{ EncryptedKeyMaterial: Uint8Array; ImportToken: Uint8Array; ValidTo: Date; ExpirationModel: 'KEY_MATERIAL_EXPIRES' | 'KEY_MATERIAL_DOES_NOT_EXPIRE' }>) =>
      kms.send(new ImportKeyMaterialCommand({ KeyId: id, ImportToken: p.ImportToken, EncryptedKeyMaterial: wrap('RSAES_OAEP_SHA_256', p.PublicKey!, material), ...o }));
    expect((await awsError(imp({ EncryptedKeyMaterial: crypto.randomBytes(256) }))).name).toBe('InvalidCiphertextException');
    const forged = Buffer.from(p.ImportToken!);
    forged[forged.length - 2] ^= 1;
    expect((await awsError(imp({ ImportToken: forged }))).name).toBe('InvalidImportTokenException');
    expect((await awsError(imp({ ExpirationModel: 'KEY_MATERIAL_EXPIRES' }))).message).toContain('ValidTo: is required');
    expect((await awsError(imp({ ValidTo: new Date(Date.now() - 60_000) }))).message).toContain('ValidTo: must be in the future');
    expect((await awsError(imp({ ValidTo: new Date(Date.now() + 60_000), ExpirationModel: 'KEY_MATERIAL_DOES_NOT_EXPIRE' }))).name).toBe('ValidationException');
    expect((await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!.KeyState).toBe('PendingImport');
    await imp({ ValidTo: new Date(Date.now() + 86400_000) });
    const m = (await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata!;
    expect(m).toMatchObject({ KeyState: 'Enabled', ExpirationModel: 'KEY_MATERIAL_EXPIRES' });
    expect(Math.abs(m.ValidTo!.getTime() - Date.now() - 86400_000)).toBeLessThan(3600_000);
    const other = wrap('RSAES_OAEP_SHA_256', p.PublicKey!, crypto.randomBytes(32));
    expect((await awsError(imp({ EncryptedKeyMaterial: other }))).name).toBe('IncorrectKeyMaterialException');
    expect((await kms.send(new DeleteImportedKeyMaterialCommand({ KeyId: id }))).KeyId).toBe(arn(id));
    expect((await kms.send(new DescribeKeyCommand({ KeyId: id }))).KeyMetadata).toMatchObject({ KeyState: 'PendingImport', Enabled: false });
  });
});

describe('one ciphertext, three ways in', () => {
  it('decrypts over gRPC and the Alibaba dialect what AWS encrypted, and over AWS what they encrypted', async () => {
    const id = (await kms.send(new CreateKeyCommand({ Tags: [{ TagKey: 'kmsd:ProtectionLevel', TagValue: 'HSM' }] }))).KeyMetadata!.KeyId!;
    const ctx = { purpose: 'cross-transport' };
    const pt = Buffer.from('made over one transport, opened over another');
    const ali = new Kms({ accessKeyId: admin.AccessKeyId, accessKeySecret: admin.AccessKeySecret, endpoint: `127.0.0.1:${port}`, protocol: 'http', regionId: 'local' } as never);

    const viaAws = (await kms.send(new EncryptCommand({ KeyId: id, Plaintext: pt, EncryptionContext: ctx }))).CiphertextBlob!;
    const blob = Buffer.from(viaAws).toString('base64');
    expect(Buffer.from((await k.client.call('Decrypt', { CiphertextBlob: blob, EncryptionContext: ctx })).Plaintext, 'base64')).toEqual(pt);
    expect(Buffer.from((await ali.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: blob, encryptionContext: ctx }))).plaintext, 'base64')).toEqual(pt);

    const viaGrpc = (await k.client.call('Encrypt', { KeyId: id, Plaintext: pt.toString('base64'), EncryptionContext: ctx })).CiphertextBlob as string;
    const viaAli = (await ali.encrypt(new $Kms.EncryptRequest({ keyId: id, plaintext: pt.toString('base64'), encryptionContext: ctx }))).ciphertextBlob;
    for (const b of [viaGrpc, viaAli]) {
      const r = await kms.send(new DecryptCommand({ CiphertextBlob: Buffer.from(b, 'base64'), EncryptionContext: ctx }));
      expect(Buffer.from(r.Plaintext!)).toEqual(pt);
      expect(r.KeyId).toBe(arn(id));
    }
  });
});

describe('refusals: AWS __type and status, and nothing changed', () => {
  let target: string;
  let keysBefore: number;

  beforeAll(async () => {
    target = await newKey('refusal target');
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/aws-app-data', TargetKeyId: target }));
    keysBefore = (await k.client.call('ListKeys', {})).TotalCount;
  });

  async function unchanged() {
    expect((await k.client.call('DescribeKey', { KeyId: target })).KeyMetadata.KeyState).toBe('Enabled');
    expect((await k.client.call('ListKeys', {})).TotalCount).toBe(keysBefore);
  }

  const disable = () => JSON.stringify({ KeyId: target });

  const wrongSecret = () => ({ ...admin, AccessKeySecret: `${admin.AccessKeySecret}x` });
  it.each([
    ['unknown access key', () => ({ key: { AccessKeyId: 'KMSDNOSUCHACCESSKEY0', AccessKeySecret: 'x' } }), 'UnrecognizedClientException'],
    ['wrong secret', () => ({ key: wrongSecret() }), 'InvalidSignatureException'],
    ['stale X-Amz-Date', () => ({ key: admin, signingDate: new Date(Date.now() - 20 * 60_000) }), 'InvalidSignatureException'],
    ['X-Amz-Date in the future', () => ({ key: admin, signingDate: new Date(Date.now() + 20 * 60_000) }), 'InvalidSignatureException'],
    ['no signature', () => ({ unsigned: true }), 'MissingAuthenticationTokenException'],
    ['credential for another service', () => ({ key: admin, service: 'sts' }), 'InvalidSignatureException'],
  ] as const)('%s', async (_name, opts, type) => {
    for (const [t, body] of [
      ['TrentService.DisableKey', disable()],
      ['TrentService.CreateKey', '{}'],
    ]) {
      const r = await awsRaw(port, { target: t, body, ...opts() });
      expect(r.status, r.text).toBe(400);
      expect(r.json.__type).toBe(type);
      expect(typeof r.json.message).toBe('string');
      expect(r.headers['x-amzn-requestid']).toMatch(/^[0-9a-f-]{36}$/);
    }
    await unchanged();
  });

  it('an Inactive access key, and the same key again once Active', async () => {
    const key = createAccessKey(k, 'aws-admin');
    expect(k.kmsctl(['UpdateAccessKey', '--AccessKeyId', key.AccessKeyId, '--Status', 'Inactive']).code).toBe(0);
    const r = await awsRaw(port, { target: 'TrentService.DisableKey', body: disable(), key });
    expect([r.status, r.json.__type]).toEqual([400, 'UnrecognizedClientException']);
    await unchanged();
    expect(k.kmsctl(['UpdateAccessKey', '--AccessKeyId', key.AccessKeyId, '--Status', 'Active']).code).toBe(0);
    const ok = await awsRaw(port, { target: 'TrentService.DescribeKey', body: disable(), key });
    expect(ok.status, ok.text).toBe(200);
  });

  it('a body or target changed after signing', async () => {
    const other = await newKey('other');
    keysBefore++;
    const body = await awsRaw(port, { target: 'TrentService.DescribeKey', body: JSON.stringify({ KeyId: other }), key: admin, after: (req) => void (req.body = Buffer.from(disable())) });
    expect([body.status, body.json.__type]).toEqual([400, 'InvalidSignatureException']);
    const target2 = await awsRaw(port, { target: 'TrentService.DescribeKey', body: disable(), key: admin, after: (req) => void (req.headers['x-amz-target'] = 'TrentService.DisableKey') });
    expect([target2.status, target2.json.__type]).toEqual([400, 'InvalidSignatureException']);
    await unchanged();
  });

  it('a policy denial (AccessDeniedException) naming the principal, for an action and for a key outside the grant', async () => {
    const appKms = awsClient(port, app);
    try {
      const pt = Buffer.from('granted');
      const blob = (await appKms.send(new EncryptCommand({ KeyId: 'alias/aws-app-data', Plaintext: pt }))).CiphertextBlob;
      // An alias grant covers Decrypt when the caller names the alias (docs/security.md).
      expect(Buffer.from((await appKms.send(new DecryptCommand({ CiphertextBlob: blob, KeyId: 'alias/aws-app-data' }))).Plaintext!)).toEqual(pt);
      const action = await awsError(appKms.send(new DisableKeyCommand({ KeyId: target })));
      expect(action).toMatchObject({ name: 'AccessDeniedException', status: 400 });
      expect(action.message).toContain('principal "aws-app" may not call DisableKey');
      // A CMK the grant does not name (the target is granted through its alias/aws-app-* alias).
      const outside = await newKey('outside the grant');
      keysBefore++;
      const key = await awsError(appKms.send(new EncryptCommand({ KeyId: outside, Plaintext: pt })));
      expect(key.name).toBe('AccessDeniedException');
      expect((await awsError(appKms.send(new CreateKeyCommand({}))))).toMatchObject({ name: 'AccessDeniedException' });
    } finally {
      appKms.destroy();
    }
    await unchanged();
  });

  it('an unknown target, a missing parameter, malformed JSON, a wrong media type and a 2 MiB body', async () => {
    const cases: [string, Parameters<typeof awsRaw>[1], number, string, RegExp][] = [
      ['unknown target', { target: 'TrentService.CreateGrant', body: disable() }, 400, 'UnknownOperationException', /TrentService\.CreateGrant/],
      ['other service', { target: 'DynamoDB_20120810.ListTables', body: '{}' }, 400, 'UnknownOperationException', /DynamoDB/],
      ['missing parameter', { target: 'TrentService.DisableKey', body: '{}' }, 400, 'ValidationException', /KeyId: is required/],
      ['wrong member type', { target: 'TrentService.DisableKey', body: '{"KeyId":5}' }, 400, 'SerializationException', /KeyId: expected a string/],
      ['malformed JSON', { target: 'TrentService.DisableKey', body: '{"KeyId":' }, 400, 'SerializationException', /request body/],
      ['duplicate member', { target: 'TrentService.DisableKey', body: `{"KeyId":"${target}","KeyId":"x"}` }, 400, 'SerializationException', /appears twice/],
      ['media type', { target: 'TrentService.DisableKey', body: disable(), headers: { 'content-type': 'application/json' } }, 415, 'SerializationException', /Content-Type/],
    ];
    for (const [name, o, status, type, message] of cases) {
      const r = await awsRaw(port, { key: admin, ...o });
      expect([r.status, r.json?.__type], `${name}: ${r.text}`).toEqual([status, type]);
      expect(r.json.message, name).toMatch(message);
    }
    const big = await awsRaw(port, { key: admin, target: 'TrentService.CreateKey', body: Buffer.alloc(2 * 1024 * 1024, 0x20) });
    expect(big.status).toBe(413);
    await unchanged();
  });
});
