// GenerateRandom, changing a CMK's automatic rotation after creation, a pinned AWS region, and
// refusals made before the body is read, each through the real clients: @aws-sdk/client-kms, the
// Alibaba SDK, gRPC and kmsctl, against a real kmsd (SoftHSM token, SQLite, HTTP listener) under an
// authorization policy.

import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import Kms, * as $Kms from '@alicloud/kms20160120';
import { CreateKeyCommand, DisableKeyRotationCommand, EnableKeyRotationCommand, GenerateRandomCommand, GetKeyRotationStatusCommand, KMSClient, ListKeysCommand } from '@aws-sdk/client-kms';
import { makeTempDir } from '../helpers/daemon';
import { HttpKmsd, rawRequest, startHttpKmsd } from '../helpers/http';
import { AccessKey, awsClient, awsError, awsRaw, createAccessKey } from '../helpers/aws';
import { clientErrorOf } from '../helpers/errors';

let k: HttpKmsd;
let dir: string;
let admin: AccessKey;
let app: AccessKey;
let kms: KMSClient;

const policy = {
  version: 1,
  admins: ['anonymous', 'local-admin', 'aws-admin'],
  grants: [
    // Random bytes name no CMK: the grant says keys ["*"].
    { id: 'random', principals: ['aws-admin', 'anonymous'], actions: ['GenerateRandom'], keys: ['*'] },
  ],
};

beforeAll(async () => {
  dir = makeTempDir('kmsd-random-rotation-');
  fs.writeFileSync(path.join(dir, 'policy.json'), JSON.stringify(policy));
  k = await startHttpKmsd({ args: ['--policy', path.join(dir, 'policy.json'), '--aws-region', 'us-east-1'] });
  admin = createAccessKey(k, 'aws-admin');
  app = createAccessKey(k, 'aws-app');
  kms = awsClient(k.httpPort, admin);
});

afterAll(async () => {
  kms?.destroy();
  await k?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

function alibaba(): Kms {
  return new Kms({ accessKeyId: k.devKey.AccessKeyId, accessKeySecret: k.devKey.AccessKeySecret, endpoint: k.httpEndpoint, protocol: 'http', regionId: 'local' } as never);
}

async function rotation(keyId: string) {
  const m = (await k.client.call('DescribeKey', { KeyId: keyId })).KeyMetadata;
  return { AutomaticRotation: m.AutomaticRotation, RotationInterval: m.RotationInterval, NextRotationDate: m.NextRotationDate };
}

describe('GenerateRandom', () => {
  it('answers NumberOfBytes random bytes through the AWS SDK, gRPC and kmsctl', async () => {
    const a = await kms.send(new GenerateRandomCommand({ NumberOfBytes: 32 }));
    expect(Buffer.from(a.Plaintext!).length).toBe(32);
    const b = await kms.send(new GenerateRandomCommand({ NumberOfBytes: 32 }));
    expect(Buffer.from(b.Plaintext!).equals(Buffer.from(a.Plaintext!))).toBe(false);
    expect(Buffer.from((await kms.send(new GenerateRandomCommand({ NumberOfBytes: 1024 }))).Plaintext!).length).toBe(1024);
    const g = await k.client.call('GenerateRandom', { NumberOfBytes: 1 });
    expect(Buffer.from(g.Plaintext, 'base64').length).toBe(1);
    const c = k.kmsctl(['GenerateRandom', '--NumberOfBytes', '16']);
    expect(c.code, c.stderr).toBe(0);
    expect(Buffer.from(c.json.Plaintext, 'base64').length).toBe(16);
  });

  it('refuses NumberOfBytes outside 1..1024 (or missing) by name, in each transport', async () => {
    for (const n of [0, 1025, -1]) {
      const e = await awsError(kms.send(new GenerateRandomCommand({ NumberOfBytes: n })));
      expect([e.name, e.status], String(n)).toEqual(['ValidationException', 400]);
      expect(e.message).toContain(`NumberOfBytes: must be an integer from 1 to 1024 (got ${n})`);
    }
    const missing = await awsError(kms.send(new GenerateRandomCommand({})));
    expect([missing.name, missing.message]).toEqual(['ValidationException', 'NumberOfBytes: is required']);
    for (const n of [0, 1025]) {
      const e = await clientErrorOf(k.client.call('GenerateRandom', { NumberOfBytes: n }));
      expect(e.code).toBe('InvalidParameter');
      expect(e.message).toContain('NumberOfBytes');
    }
    const c = k.kmsctl(['GenerateRandom', '--NumberOfBytes', '5000']);
    expect(c.code).not.toBe(0);
    expect(c.stderr).toContain('NumberOfBytes');
  });

  it('takes a grant: a principal without one is denied', async () => {
    const appKms = awsClient(k.httpPort, app);
    try {
      expect((await awsError(appKms.send(new GenerateRandomCommand({ NumberOfBytes: 8 })))).name).toBe('AccessDeniedException');
    } finally {
      appKms.destroy();
    }
  });
});

describe('changing automatic rotation after creation', () => {
  it('EnableKeyRotation / DisableKeyRotation with the AWS SDK, seen by GetKeyRotationStatus and gRPC', async () => {
    const id = (await kms.send(new CreateKeyCommand({ Description: 'rotation' }))).KeyMetadata!.KeyId!;
    expect(await kms.send(new GetKeyRotationStatusCommand({ KeyId: id }))).toMatchObject({ KeyRotationEnabled: false });
    await kms.send(new EnableKeyRotationCommand({ KeyId: id }));
    let s = await kms.send(new GetKeyRotationStatusCommand({ KeyId: id }));
    expect(s).toMatchObject({ KeyRotationEnabled: true, RotationPeriodInDays: 365 });
    expect(s.NextRotationDate!.getTime()).toBeGreaterThan(Date.now() + 364 * 86400_000);
    await kms.send(new EnableKeyRotationCommand({ KeyId: id, RotationPeriodInDays: 90 }));
    s = await kms.send(new GetKeyRotationStatusCommand({ KeyId: id }));
    expect(s).toMatchObject({ KeyRotationEnabled: true, RotationPeriodInDays: 90 });
    expect(await rotation(id)).toMatchObject({ AutomaticRotation: 'Enabled', RotationInterval: `${90 * 86400}s` });
    await kms.send(new DisableKeyRotationCommand({ KeyId: id }));
    expect(await kms.send(new GetKeyRotationStatusCommand({ KeyId: id }))).toMatchObject({ KeyRotationEnabled: false });
    expect(await rotation(id)).toEqual({ AutomaticRotation: 'Disabled', RotationInterval: '', NextRotationDate: '' });
  });

  it('refuses periods outside AWS bounds and the domain interval rules, and EXTERNAL CMKs, changing nothing', async () => {
    const id = (await kms.send(new CreateKeyCommand({}))).KeyMetadata!.KeyId!;
    await kms.send(new EnableKeyRotationCommand({ KeyId: id, RotationPeriodInDays: 100 }));
    const before = await rotation(id);
    for (const days of [89, 2561]) {
      const e = await awsError(kms.send(new EnableKeyRotationCommand({ KeyId: id, RotationPeriodInDays: days })));
      expect([e.name, e.message]).toEqual(['ValidationException', `RotationPeriodInDays: must be from 90 to 2560 (got ${days})`]);
    }
    // Inside AWS's bounds, past kmsd's longest interval (730 days): the domain's rule, by name.
    const long = await awsError(kms.send(new EnableKeyRotationCommand({ KeyId: id, RotationPeriodInDays: 1000 })));
    expect(long.name).toBe('ValidationException');
    expect(long.message).toContain('RotationInterval: must be from');
    expect(await rotation(id)).toEqual(before);
    const ext = (await kms.send(new CreateKeyCommand({ Origin: 'EXTERNAL' }))).KeyMetadata!.KeyId!;
    const e = await awsError(kms.send(new EnableKeyRotationCommand({ KeyId: ext })));
    expect(e.name).toBe('UnsupportedOperationException');
    expect(e.message).toContain('Origin EXTERNAL');
    expect((await rotation(ext)).AutomaticRotation).toBe('Disabled');
    const g = await clientErrorOf(k.client.call('UpdateRotationPolicy', { KeyId: ext, EnableAutomaticRotation: true, RotationInterval: '30d' }));
    expect(g.code).toBe('Rejected.ExternalKey');
  });

  it('UpdateRotationPolicy with the Alibaba SDK, gRPC and kmsctl', async () => {
    const id = (await k.client.call('CreateKey', {})).KeyMetadata.KeyId as string;
    await alibaba().updateRotationPolicy(new $Kms.UpdateRotationPolicyRequest({ keyId: id, enableAutomaticRotation: true, rotationInterval: '30d' }));
    expect(await rotation(id)).toMatchObject({ AutomaticRotation: 'Enabled', RotationInterval: `${30 * 86400}s` });
    const bad = await alibaba()
      .updateRotationPolicy(new $Kms.UpdateRotationPolicyRequest({ keyId: id, enableAutomaticRotation: true, rotationInterval: '1d' }))
      .then(
        () => null,
        (err: { code?: string; message?: string }) => err,
      );
    // The SDK names an error by the Code kmsd answered, with "Error" appended.
    expect(bad?.code).toBe('InvalidParameterError');
    expect(bad?.message).toContain('RotationInterval');
    expect((await rotation(id)).RotationInterval).toBe(`${30 * 86400}s`);
    await k.client.call('UpdateRotationPolicy', { KeyId: id, EnableAutomaticRotation: false });
    expect((await rotation(id)).AutomaticRotation).toBe('Disabled');
    const c = k.kmsctl(['UpdateRotationPolicy', '--KeyId', id, '--EnableAutomaticRotation', 'true', '--RotationInterval', '60d']);
    expect(c.code, c.stderr).toBe(0);
    expect(await rotation(id)).toMatchObject({ AutomaticRotation: 'Enabled', RotationInterval: `${60 * 86400}s` });
  });
});

describe('--aws-region', () => {
  it('refuses a request signed for another region with InvalidSignatureException', async () => {
    const other = awsClient(k.httpPort, admin, 'eu-west-1');
    try {
      const e = await awsError(other.send(new ListKeysCommand({})));
      expect([e.name, e.status]).toEqual(['InvalidSignatureException', 400]);
      expect(e.message).toContain('us-east-1');
    } finally {
      other.destroy();
    }
    expect((await kms.send(new ListKeysCommand({}))).Keys).toBeDefined();
  });
});

describe('a 2 MiB body is refused in the shape of the dialect it was for', () => {
  const big = Buffer.alloc(2 * 1024 * 1024, 0x20);

  it('AWS: {"__type","message"} with x-amzn-RequestId', async () => {
    const r = await awsRaw(k.httpPort, { key: admin, target: 'TrentService.ListKeys', body: big });
    expect([r.status, r.json?.__type], r.text).toEqual([413, 'ValidationException']);
    expect(r.json.message).toContain('larger than 1048576 bytes');
    expect(r.headers['x-amzn-requestid']).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('Alibaba: {"Code","Message","RequestId","HostId"}', async () => {
    const r = await rawRequest(k.httpPort, { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: big });
    expect([r.status, r.json?.Code], r.body).toEqual([413, 'RequestEntityTooLarge']);
    expect(r.json).toHaveProperty('RequestId');
  });

  it('XKS: {"errorName","errorMessage"} as the XKS Proxy API spec shapes errors', async () => {
    const r = await rawRequest(k.httpPort, { path: '/example/kms/xks/v1/health', headers: { 'content-type': 'application/json' }, body: big });
    expect([r.status, r.json?.errorName], r.body).toEqual([400, 'ValidationException']);
    expect(r.json.errorMessage).toContain('larger than 1048576 bytes');
    expect(Object.keys(r.json).sort()).toEqual(['errorMessage', 'errorName']);
  });

  it('oversized headers of an AWS request: the 431 is AWS-shaped too (from what Node kept of them)', async () => {
    const head = `POST / HTTP/1.1\r\nHost: 127.0.0.1:${k.httpPort}\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Type: application/x-amz-json-1.1\r\nX-Pad: ${'a'.repeat(20_000)}\r\nContent-Length: 2\r\n\r\n{}`;
    const text = await new Promise<string>((resolve, reject) => {
      const s = net.connect(k.httpPort, '127.0.0.1');
      const chunks: Buffer[] = [];
      s.on('data', (c) => chunks.push(c));
      s.on('error', reject);
      s.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
      s.end(head);
    });
    expect(text).toMatch(/^HTTP\/1\.1 431 /);
    const body = JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4));
    expect(body).toMatchObject({ __type: 'ValidationException' });
    expect(body.message).toContain('request line and headers');
  });
});
