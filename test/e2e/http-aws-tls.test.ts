// The AWS SDK over HTTPS: kmsd with the gRPC certificate on its HTTP listener and a client CA, the
// unmodified @aws-sdk/client-kms given the CA, a client certificate (through the SDK's own
// NodeHttpHandler and an https.Agent, as an application configures it) and an access key.

import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateKeyCommand, DecryptCommand, EncryptCommand, KMSClient, ListKeysCommand } from '@aws-sdk/client-kms';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { Kmsd, startKmsd } from '../helpers/daemon';
import { AccessKey, httpPortOf } from '../helpers/aws';
import { Pki, makePki } from './tls-fixture';
import { readDevKey } from '../helpers/http';

let pki: Pki;
let k: Kmsd;
let port: number;
let devKey: AccessKey;
const clients: KMSClient[] = [];

beforeAll(async () => {
  pki = makePki(['admin', 'app-1']);
  const policyFile = path.join(pki.dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify({ version: 1, admins: ['admin', 'local-admin'], grants: [{ principals: ['local-admin'], actions: ['Encrypt', 'Decrypt'], keys: ['*'] }] }));
  k = await startKmsd({ args: ['--tls-cert', pki.file('server.crt'), '--tls-key', pki.file('server.key'), '--tls-client-ca', pki.file('ca.crt'), '--policy', policyFile, '--http-listen', '127.0.0.1:0'] });
  port = await httpPortOf(k);
  devKey = await readDevKey(k);
});

afterAll(async () => {
  for (const c of clients) c.destroy();
  await k?.stop();
  if (pki) fs.rmSync(pki.dir, { recursive: true, force: true });
});

function client(o: { cert: boolean }): KMSClient {
  const httpsAgent = new https.Agent({
    ca: fs.readFileSync(pki.file('ca.crt')),
    // The server certificate names localhost; the listener is on 127.0.0.1.
    servername: 'localhost',
    ...(o.cert ? { cert: fs.readFileSync(pki.file('client-app-1.crt')), key: fs.readFileSync(pki.file('client-app-1.key')) } : {}),
  });
  const c = new KMSClient({
    endpoint: `https://127.0.0.1:${port}`,
    region: 'us-east-1',
    credentials: { accessKeyId: devKey.AccessKeyId, secretAccessKey: devKey.AccessKeySecret },
    requestHandler: new NodeHttpHandler({ httpsAgent }),
    maxAttempts: 1,
  });
  clients.push(c);
  return c;
}

describe('AWS SDK over HTTPS with a client certificate', () => {
  it('creates a CMK and round-trips a plaintext; the access key, not the certificate, is the principal', async () => {
    const kms = client({ cert: true });
    const id = (await kms.send(new CreateKeyCommand({ Description: 'over https' }))).KeyMetadata!.KeyId!;
    const blob = (await kms.send(new EncryptCommand({ KeyId: id, Plaintext: Buffer.from('tls') }))).CiphertextBlob;
    expect(Buffer.from((await kms.send(new DecryptCommand({ CiphertextBlob: blob }))).Plaintext!).toString()).toBe('tls');
    // app-1 (the certificate) has no role in the policy; local-admin (the access key) is an admin.
    expect((await kms.send(new ListKeysCommand({}))).Keys!.map((x) => x.KeyId)).toContain(id);
  });

  it('fails at the handshake without a client certificate', async () => {
    const e = await client({ cert: false })
      .send(new ListKeysCommand({}))
      .then(() => null, (err: Error & { $metadata?: { httpStatusCode?: number } }) => err);
    expect(e).not.toBeNull();
    // A TLS failure, not an HTTP answer: no request reached kmsd.
    expect(e!.$metadata?.httpStatusCode).toBeUndefined();
  });
});
