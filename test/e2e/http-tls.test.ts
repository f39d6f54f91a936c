// The HTTP listener under TLS: HTTPS with the gRPC server certificate, a client certificate required
// when --tls-client-ca is given (then the access key still names the principal), and plain HTTP
// refused on anything but loopback.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KMSD, Kmsd, makeTempDir, startKmsd } from '../helpers/daemon';
import { toQuery, v2Params } from '../helpers/alibaba-signers';
import { Pki, makePki } from './tls-fixture';
import { readDevKey } from '../helpers/http';

let pki: Pki;
let k: Kmsd;
let port = 0;
let devKey: { AccessKeyId: string; AccessKeySecret: string };

beforeAll(async () => {
  pki = makePki(['admin', 'app-1']);
  const policyFile = path.join(pki.dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify({ version: 1, admins: ['admin', 'local-admin'], grants: [] }));
  k = await startKmsd({
    args: ['--tls-cert', pki.file('server.crt'), '--tls-key', pki.file('server.key'), '--tls-client-ca', pki.file('ca.crt'), '--policy', policyFile, '--http-listen', '127.0.0.1:0'],
  });
  for (let i = 0; i < 100 && !port; i++) {
    const m = /http listening on 127\.0\.0\.1:(\d+)/.exec(k.logs());
    if (m) port = Number(m[1]);
    else await new Promise((r) => setTimeout(r, 50));
  }
  devKey = await readDevKey(k);
});

afterAll(async () => {
  await k?.stop();
  if (pki) fs.rmSync(pki.dir, { recursive: true, force: true });
});

function call(o: { cert?: boolean; otherCa?: boolean }): Promise<{ status: number; json: any }> {
  const f = o.otherCa ? pki.other : pki.file;
  return new Promise((resolve, reject) => {
    const req = https.request(
      {
        host: '127.0.0.1',
        servername: 'localhost',
        port,
        method: 'POST',
        path: '/',
        ca: fs.readFileSync(pki.file('ca.crt')),
        ...(o.cert === false ? {} : { cert: fs.readFileSync(f('client-admin.crt')), key: fs.readFileSync(f('client-admin.key')) }),
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        agent: false,
      },
      (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, json: JSON.parse(body) }));
      },
    );
    req.on('error', reject);
    req.end(toQuery(v2Params(devKey, 'ListKeys', {})));
  });
}

describe('HTTPS', () => {
  it('serves the Alibaba dialect over TLS with a client certificate from the CA', async () => {
    expect(port).toBeGreaterThan(0);
    const r = await call({});
    expect(r.status).toBe(200);
    expect(r.json.Keys).toEqual({ Key: expect.any(Array) });
  });

  it('refuses a client without a certificate, or with one from another CA, at the handshake', async () => {
    await expect(call({ cert: false })).rejects.toThrow();
    await expect(call({ otherCa: true })).rejects.toThrow();
    expect((await call({})).status).toBe(200);
  });

  it('refuses plain HTTP on a non-loopback address without TLS', () => {
    const dir = makeTempDir('kmsd-http-plain-');
    try {
      const r = spawnSync(process.execPath, [KMSD, '--data-dir', dir, '--listen', '127.0.0.1:0', '--http-listen', '0.0.0.0:0'], { encoding: 'utf8', timeout: 30_000 });
      expect(r.status).toBe(2);
      expect(r.stderr).toContain('refusing to serve HTTP on non-loopback address 0.0.0.0:0 without TLS');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
