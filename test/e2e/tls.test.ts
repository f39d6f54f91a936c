// Mutual TLS end to end (issue 6, item 1 and the first acceptance line): kmsd with --tls-cert,
// --tls-key, --tls-client-ca and --policy serves TLS 1.3 only; a client without a certificate, with
// one from another CA, or speaking plaintext is refused at connect time, logged and audited; a valid
// certificate names the principal (subject CN, or a URI SAN); kmsctl and the client take --ca/--cert/--key.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient } from '../../src/client/client';
import { KMSD, makeTempDir } from '../helpers/daemon';
import { TlsKmsd, makePki, refused, startTlsKmsd } from './tls-fixture';

let t: TlsKmsd;

beforeAll(async () => {
  const pki = makePki(['admin', 'app-1', 'nogrant', 'uri:spiffe://kmsd.test/svc/reader']);
  t = await startTlsKmsd(pki, {
    version: 1,
    admins: ['admin'],
    grants: [
      { id: 'app-1-use', principals: ['app-1'], actions: ['Encrypt', 'Decrypt', 'GenerateDataKey'], keys: ['alias/app-1-*'] },
      { id: 'readers', principals: ['spiffe://kmsd.test/svc/*'], actions: ['DescribeKey', 'ListKeys'], keys: ['*'] },
    ],
  });
});

afterAll(async () => {
  await t?.stop();
});

function handshake(opts: tls.ConnectionOptions): Promise<{ protocol: string | null; alpn: string | false | null; closedByServer: boolean; error?: string }> {
  return new Promise((resolve) => {
    const s = tls.connect({ host: '127.0.0.1', port: t.k.port, servername: 'localhost', ca: fs.readFileSync(t.pki.file('ca.crt')), ALPNProtocols: ['h2'], ...opts });
    let protocol: string | null = null;
    let alpn: string | false | null = false;
    s.on('secureConnect', () => {
      protocol = s.getProtocol();
      alpn = s.alpnProtocol;
    });
    s.on('error', (e) => resolve({ protocol, alpn, closedByServer: true, error: (e as NodeJS.ErrnoException).code ?? e.message }));
    s.on('close', () => resolve({ protocol, alpn, closedByServer: true }));
    // A healthy connection stays open: the server waits for the HTTP/2 preface.
    setTimeout(() => {
      resolve({ protocol, alpn, closedByServer: false });
      s.destroy();
    }, 600);
  });
}

describe('the TLS listener', () => {
  it('negotiates TLS 1.3 with ALPN h2 for a client certificate from the configured CA', async () => {
    const r = await handshake({ cert: fs.readFileSync(t.pki.file('client-admin.crt')), key: fs.readFileSync(t.pki.file('client-admin.key')) });
    expect(r).toMatchObject({ protocol: 'TLSv1.3', alpn: 'h2', closedByServer: false });
  });

  it('refuses TLS 1.2', async () => {
    const r = await handshake({ maxVersion: 'TLSv1.2', cert: fs.readFileSync(t.pki.file('client-admin.crt')), key: fs.readFileSync(t.pki.file('client-admin.key')) });
    expect(r.protocol).toBeNull();
    expect(r.error).toMatch(/PROTOCOL_VERSION|VERSION/);
  });

  it('closes a connection without a client certificate right after the handshake', async () => {
    const r = await handshake({});
    expect(r.closedByServer).toBe(true);
  });

  it('closes a connection whose certificate comes from another CA', async () => {
    const r = await handshake({ cert: fs.readFileSync(t.pki.other('client-admin.crt')), key: fs.readFileSync(t.pki.other('client-admin.key')) });
    expect(r.closedByServer).toBe(true);
  });
});

describe('gRPC over mutual TLS', () => {
  let keyId = '';

  it('serves a principal with a grant: admin creates a CMK and an alias', async () => {
    const admin = t.client('admin');
    keyId = (await admin.createKey({ Description: 'tls test' })).KeyMetadata.KeyId;
    await admin.call('CreateAlias', { AliasName: 'alias/app-1-main', KeyId: keyId });
    const d = await admin.describeKey('alias/app-1-main');
    expect(d.KeyMetadata.KeyId).toBe(keyId);
  });

  it('takes the principal from the subject CN: app-1 uses its key through its alias grant', async () => {
    const app = t.client('app-1');
    const e = await app.encrypt('alias/app-1-main', Buffer.from('tls secret'));
    const d = await app.decrypt(e.CiphertextBlob, undefined, 'alias/app-1-main');
    expect(d.Plaintext.toString()).toBe('tls secret');
  });

  it('takes the principal from a URI SAN', async () => {
    const reader = t.client('reader');
    expect((await reader.describeKey(keyId)).KeyMetadata.KeyId).toBe(keyId);
    const err = await refused(reader.encrypt(keyId, Buffer.from('x')));
    expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.message).toContain('principal "spiffe://kmsd.test/svc/reader" may not call Encrypt');
  });

  it('refuses a valid certificate without a grant with PERMISSION_DENIED naming principal and action', async () => {
    const err = await refused(t.client('nogrant').call('ListKeys', {}));
    expect(err.code).toBe('Forbidden.NoPermission');
    expect(err.grpcCode).toBe(grpc.status.PERMISSION_DENIED);
    expect(err.message).toBe('principal "nogrant" may not call ListKeys');
  });

  it('refuses a client without a certificate, from another CA, or in plaintext (UNAVAILABLE: no connection)', async () => {
    for (const c of [t.client('admin', { noCert: true }), t.client('admin', { otherCa: true }), new KmsClient({ endpoint: t.endpoint, deadlineMs: 5000 })]) {
      const err = await refused(c.call('ListKeys', {}));
      expect(err.grpcCode).toBe(grpc.status.UNAVAILABLE);
      c.close();
    }
  });

  it('logs every refused connection and denial with its reason', () => {
    const logs = t.k.logs();
    expect(logs).toMatch(/"reason":"no client certificate","msg":"TLS connection refused"/);
    expect(logs).toMatch(/"subject":"admin","reason":"client certificate not issued by the configured CA \([A-Z_]+\)","msg":"TLS connection refused"/);
    expect(logs).toMatch(/"principal":"nogrant".*"action":"ListKeys".*"msg":"permission denied"/);
  });

  it('audits refused connections and denials, and the audit chain verifies', async () => {
    const refusedEvents = await t.call('AuditService', 'admin', 'ListAuditEvents', { Action: 'ConnectionRefused', PageSize: 100 });
    const reasons = refusedEvents.Events.map((e: any) => JSON.parse(e.Details).Reason);
    expect(reasons).toContain('no client certificate');
    expect(reasons.some((r: string) => r.startsWith('client certificate not issued by the configured CA'))).toBe(true);
    const denied = await t.call('AuditService', 'admin', 'ListAuditEvents', { Action: 'ListKeys', PageSize: 100 });
    expect(denied.Events.some((e: any) => e.Principal === 'nogrant' && e.Outcome === 'Forbidden.NoPermission')).toBe(true);
    const encryptDenied = await t.call('AuditService', 'admin', 'ListAuditEvents', { Action: 'Encrypt', PageSize: 100 });
    expect(encryptDenied.Events.some((e: any) => e.Principal === 'spiffe://kmsd.test/svc/reader' && e.Outcome === 'Forbidden.NoPermission' && e.KeyId === keyId)).toBe(true);
    const v = await t.call('AuditService', 'admin', 'VerifyAudit', {});
    expect(v.Valid).toBe(true);
  });

  it('kmsctl takes --ca --cert --key and prints {Code, Message} for a denial', () => {
    const ok = t.kmsctl('admin', ['DescribeKey', '--KeyId', keyId]);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.json.KeyMetadata.KeyId).toBe(keyId);
    const no = t.kmsctl('nogrant', ['DescribeKey', '--KeyId', keyId]);
    expect(no.code).toBe(1);
    expect(no.json).toMatchObject({ Code: 'Forbidden.NoPermission' });
    expect(no.json.Message).toContain(`principal "nogrant" may not call DescribeKey on key ${keyId}`);
  });

  it('the client and kmsctl read KMS_CA, KMS_CERT and KMS_KEY', () => {
    const env = { ...process.env, KMS_ENDPOINT: t.endpoint, KMS_CA: t.pki.file('ca.crt'), KMS_CERT: t.pki.file('client-admin.crt'), KMS_KEY: t.pki.file('client-admin.key') };
    const r = spawnSync(process.execPath, [require('node:path').join(__dirname, '..', '..', 'bin', 'kmsctl.js'), 'ListKeys'], { encoding: 'utf8', env });
    expect(r.status, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout).TotalCount).toBeGreaterThanOrEqual(1);
  });
});

describe('start-up checks', () => {
  const run = (args: string[], env: Record<string, string> = {}) => {
    const dir = makeTempDir();
    try {
      return spawnSync(process.execPath, [KMSD, '--data-dir', dir, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30_000 });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };

  it('refuses a non-loopback address without TLS, and plaintext when switched off', () => {
    const a = run(['--listen', '0.0.0.0:0']);
    expect(a.status).toBe(2);
    expect(a.stderr).toMatch(/refusing to listen on non-loopback address 0\.0\.0\.0:0 without TLS/);
    const b = run(['--listen', '127.0.0.1:0', '--plaintext-loopback', '0']);
    expect(b.status).toBe(2);
    expect(b.stderr).toMatch(/plaintext is switched off/);
  });

  it('refuses to start with an invalid policy, naming every problem', () => {
    const bad = `${t.pki.dir}/bad-policy.json`;
    fs.writeFileSync(bad, JSON.stringify({ version: 2, grants: [{ principals: [], actions: ['Encrypyt', 'ListKeys'], keys: ['alias/x'], extra: 1 }] }));
    const r = run(['--listen', '127.0.0.1:0', '--policy', bad]);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('invalid policy');
    expect(r.stderr).toContain('version: must be 1');
    expect(r.stderr).toContain('grants[0].extra: unknown field');
    expect(r.stderr).toContain('grants[0].principals: must be a non-empty array');
    expect(r.stderr).toContain('grants[0].actions[0]: unknown action "Encrypyt"');
    expect(r.stderr).toContain('grants[0].keys: ListKeys is not about particular keys');
  });
});
