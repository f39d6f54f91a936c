// Shared by the mTLS and policy tests: a development PKI made by scripts/dev-ca.sh (the trusted CA
// and a second, untrusted one), kmsd started with --tls-cert/--tls-key/--tls-client-ca/--policy,
// and clients that present a given principal's certificate.

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { KmsClient, KmsClientError } from '../../src/client/client';
import { serviceConstructor } from '../../src/api/proto';
import { KMSCTL, Kmsd, ROOT, makeTempDir, startKmsd } from '../helpers/daemon';

export interface Pki {
  dir: string;
  /** Files of the trusted CA's output directory. */
  file(name: string): string;
  /** The other CA's directory (its certificates must be refused). */
  other(name: string): string;
}

export function makePki(principals: string[]): Pki {
  const dir = makeTempDir('kmsd-pki-');
  const run = (out: string, names: string[]) => {
    const r = spawnSync('bash', [path.join(ROOT, 'scripts', 'dev-ca.sh'), '-o', out, ...names], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`dev-ca.sh failed: ${r.stderr}`);
  };
  run(path.join(dir, 'ca'), principals);
  run(path.join(dir, 'other'), ['admin', 'app-1']);
  return { dir, file: (n) => path.join(dir, 'ca', n), other: (n) => path.join(dir, 'other', n) };
}

/**
 * A client certificate from the trusted CA with any subject and extensions, made with plain openssl
 * (dev-ca.sh accepts only well-formed principals): what an attacker who can get a certificate
 * issued would present. Written as client-NAME.crt/.key, so client(NAME) presents it.
 */
export function issueClientCert(pki: Pki, name: string, subject: string, extensions = 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth'): void {
  const key = pki.file(`client-${name}.key`);
  const csr = pki.file(`client-${name}.csr`);
  const ext = pki.file(`client-${name}.ext`);
  const openssl = (args: string[]) => {
    const r = spawnSync('openssl', args, { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args[0]} failed: ${r.stderr}`);
  };
  openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key]);
  openssl(['req', '-new', '-key', key, '-subj', subject, '-out', csr]);
  fs.writeFileSync(ext, `${extensions}\n`);
  openssl(['x509', '-req', '-in', csr, '-CA', pki.file('ca.crt'), '-CAkey', pki.file('ca.key'), '-CAcreateserial', '-sha256', '-days', '2', '-extfile', ext, '-out', pki.file(`client-${name}.crt`)]);
  fs.rmSync(csr);
  fs.rmSync(ext);
}

export interface TlsKmsd {
  k: Kmsd;
  pki: Pki;
  policyFile: string;
  /** host:port with a DNS name (the server certificate has DNS:localhost) so Node sends SNI without a warning. */
  endpoint: string;
  client(principal: string, o?: { otherCa?: boolean; noCert?: boolean }): KmsClient;
  /** A raw stub of another service (AuditService, CeremonyService) for a principal. */
  call(service: 'AuditService' | 'CeremonyService', principal: string, method: string, req?: object): Promise<any>;
  kmsctl(principal: string, args: string[]): { code: number; json: any; stderr: string; stdout: string };
  writePolicy(doc: object): void;
  /** SIGHUP, then wait for the daemon to log the reload (or its failure). */
  reload(): Promise<string>;
  stop(): Promise<void>;
}

const clients: { close(): void }[] = [];

export async function startTlsKmsd(pki: Pki, policy: object, env: Record<string, string> = {}): Promise<TlsKmsd> {
  const policyFile = path.join(pki.dir, `policy-${Date.now()}-${Math.random().toString(36).slice(2)}.json`);
  fs.writeFileSync(policyFile, JSON.stringify(policy, null, 2));
  const k = await startKmsd({
    args: ['--tls-cert', pki.file('server.crt'), '--tls-key', pki.file('server.key'), '--tls-client-ca', pki.file('ca.crt'), '--policy', policyFile],
    env,
  });
  const endpoint = `localhost:${k.port}`;
  const certArgs = (principal: string, otherCa = false) => {
    const f = otherCa ? pki.other : pki.file;
    return { caFile: pki.file('ca.crt'), certFile: f(`client-${principal}.crt`), keyFile: f(`client-${principal}.key`) };
  };
  const self: TlsKmsd = {
    k,
    pki,
    policyFile,
    endpoint,
    client(principal, o = {}) {
      const files = o.noCert ? { caFile: pki.file('ca.crt') } : certArgs(principal, o.otherCa);
      const c = new KmsClient({ endpoint, ...files, deadlineMs: 10_000 });
      clients.push(c);
      return c;
    },
    call(service, principal, method, req = {}) {
      const Ctor = serviceConstructor(service);
      const f = certArgs(principal);
      const stub = new Ctor(endpoint, grpc.credentials.createSsl(fs.readFileSync(f.caFile), fs.readFileSync(f.keyFile), fs.readFileSync(f.certFile))) as grpc.Client & Record<string, any>;
      return new Promise((resolve, reject) => {
        stub[method](req, new grpc.Metadata(), { deadline: Date.now() + 10_000 }, (err: grpc.ServiceError | null, res: any) => {
          stub.close();
          if (!err) return resolve(res);
          reject(new KmsClientError(err.metadata?.get('kms-error-code')?.[0]?.toString() ?? grpc.status[err.code], err.details, err.code));
        });
      });
    },
    kmsctl(principal, args) {
      const f = certArgs(principal);
      const r = spawnSync(process.execPath, [KMSCTL, '--endpoint', endpoint, '--ca', f.caFile, '--cert', f.certFile, '--key', f.keyFile, ...args], { encoding: 'utf8', timeout: 30_000 });
      let json: any;
      try {
        json = JSON.parse(r.status === 0 ? r.stdout : r.stderr.trim().split('\n').pop() ?? '');
      } catch {
        json = undefined;
      }
      return { code: r.status ?? -1, json, stderr: r.stderr, stdout: r.stdout };
    },
    writePolicy(doc) {
      fs.writeFileSync(policyFile, JSON.stringify(doc, null, 2));
    },
    async reload() {
      const before = k.logs().length;
      process.kill(k.pid, 'SIGHUP');
      for (let i = 0; i < 100; i++) {
        const tail = k.logs().slice(before);
        const m = /"msg":"(authorization policy reloaded|policy reload failed[^"]*)"/.exec(tail);
        if (m) return m[1];
        await new Promise((r) => setTimeout(r, 50));
      }
      throw new Error('kmsd did not log a policy reload after SIGHUP');
    },
    async stop() {
      for (const c of clients.splice(0)) c.close();
      await k.stop();
      fs.rmSync(pki.dir, { recursive: true, force: true });
    },
  };
  return self;
}

/** Runs a call that must fail; returns the client error. */
export async function refused(p: Promise<unknown>): Promise<KmsClientError> {
  try {
    await p;
  } catch (e) {
    return e as KmsClientError;
  }
  throw new Error('expected the call to fail');
}
