// Shared parts of the ceremony scripts (boulder's cmd/ceremony is the model): one declarative JSON
// config per ceremony, validated completely before anything is touched (no kmsd call, no token, no
// random bytes, no file written); outputs go into a new directory and are never overwritten; every
// step, public artifact (with its SHA-256) and check value goes into transcript.txt there and to
// stdout. Secrets (key material, shares in the clear) never go into the transcript.
//
// Usage of every script: node dist/scripts/ceremony/<name>.js CONFIG.json [--dry-run]
// --dry-run validates the config and prints the plan, then stops.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { KmsdClient } from '../../src/client/kmsd-client';
import { KmsClientError } from '../../src/client/client';
import { SHARE_FORMAT, ShareFile, encryptShare, keyCheckValue, splitMaterial } from '../../src/ceremony/shamir';

export class ConfigError extends Error {}

/** Strict reader of a config object: unknown members are errors, every value is typed. */
export class Cfg {
  private readonly seen = new Set<string>();
  constructor(
    private readonly o: Record<string, unknown>,
    readonly where: string,
    private readonly baseDir: string,
  ) {
    if (!o || typeof o !== 'object' || Array.isArray(o)) throw new ConfigError(`${where}: must be a JSON object`);
  }

  static load(file: string): Cfg {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read config ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    let o: unknown;
    try {
      o = JSON.parse(text);
    } catch (e) {
      throw new ConfigError(`config ${file} is not JSON: ${(e as Error).message}`);
    }
    return new Cfg(o as Record<string, unknown>, 'config', path.dirname(path.resolve(file)));
  }

  private get(name: string): unknown {
    this.seen.add(name);
    return this.o[name];
  }

  has(name: string): boolean {
    return this.o[name] !== undefined;
  }

  str(name: string, opts: { optional?: boolean; re?: RegExp; rule?: string; dflt?: string } = {}): string {
    const v = this.get(name);
    if (v === undefined) {
      if (opts.dflt !== undefined) return opts.dflt;
      if (opts.optional) return '';
      throw new ConfigError(`${this.where}.${name}: is required`);
    }
    if (typeof v !== 'string' || v === '') throw new ConfigError(`${this.where}.${name}: must be a non-empty string`);
    if (opts.re && !opts.re.test(v)) throw new ConfigError(`${this.where}.${name}: ${opts.rule ?? `must match ${opts.re}`} (got "${v}")`);
    return v;
  }

  oneOf<T extends string>(name: string, allowed: readonly T[], dflt?: T): T {
    const v = this.get(name);
    if (v === undefined && dflt !== undefined) return dflt;
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) throw new ConfigError(`${this.where}.${name}: must be one of ${allowed.join(', ')} (got ${JSON.stringify(v)})`);
    return v as T;
  }

  int(name: string, min: number, max: number, dflt?: number): number {
    const v = this.get(name);
    if (v === undefined && dflt !== undefined) return dflt;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new ConfigError(`${this.where}.${name}: must be an integer from ${min} to ${max} (got ${JSON.stringify(v)})`);
    return v;
  }

  /** A path (relative to the config file), which must exist and be readable. */
  inputFile(name: string, optional = false): string {
    const v = this.str(name, { optional });
    if (!v) return '';
    const p = path.resolve(this.baseDir, v);
    try {
      fs.accessSync(p, fs.constants.R_OK);
    } catch {
      throw new ConfigError(`${this.where}.${name}: ${p} does not exist or is not readable`);
    }
    return p;
  }

  /** The output directory: must not exist yet, or be empty (nothing is ever overwritten). */
  outputDir(name: string): string {
    const p = path.resolve(this.baseDir, this.str(name));
    if (fs.existsSync(p) && (!fs.statSync(p).isDirectory() || fs.readdirSync(p).length > 0)) {
      throw new ConfigError(`${this.where}.${name}: ${p} already exists and is not an empty directory; refusing to overwrite outputs`);
    }
    return p;
  }

  obj(name: string, optional = false): Cfg | null {
    const v = this.get(name);
    if (v === undefined && optional) return null;
    return new Cfg(v as Record<string, unknown>, `${this.where}.${name}`, this.baseDir);
  }

  list(name: string, min: number, max: number): Cfg[] {
    const v = this.get(name);
    if (!Array.isArray(v) || v.length < min || v.length > max) throw new ConfigError(`${this.where}.${name}: must be an array of ${min} to ${max} objects`);
    return v.map((x, i) => new Cfg(x as Record<string, unknown>, `${this.where}.${name}[${i}]`, this.baseDir));
  }

  /** Call after reading every member: anything left is a typo or a member this ceremony does not take. */
  done(): void {
    const extra = Object.keys(this.o).filter((k) => !this.seen.has(k));
    if (extra.length) throw new ConfigError(`${this.where}: unknown member${extra.length > 1 ? 's' : ''} ${extra.map((k) => JSON.stringify(k)).join(', ')}`);
  }
}

export const CUSTODIAN_ID_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const ENDPOINT_RE = /^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$/;

export function readPublicKey(file: string, where: string, type: 'ed25519' | 'rsa'): crypto.KeyObject {
  let k: crypto.KeyObject;
  try {
    k = crypto.createPublicKey(fs.readFileSync(file));
  } catch {
    throw new ConfigError(`${where}: ${file} is not a PEM public key`);
  }
  if (k.asymmetricKeyType !== type) throw new ConfigError(`${where}: ${file} must be an ${type === 'rsa' ? 'RSA' : 'Ed25519'} public key (got ${k.asymmetricKeyType})`);
  return k;
}

export function readPrivateKey(file: string, where: string, type: 'rsa'): crypto.KeyObject {
  let k: crypto.KeyObject;
  try {
    k = crypto.createPrivateKey(fs.readFileSync(file));
  } catch {
    throw new ConfigError(`${where}: ${file} is not a PEM private key`);
  }
  if (k.asymmetricKeyType !== type) throw new ConfigError(`${where}: ${file} must be an RSA private key (got ${k.asymmetricKeyType})`);
  return k;
}

export interface Connection {
  endpoint: string;
  caFile?: string;
  certFile?: string;
  keyFile?: string;
}

/** Endpoint (HOST:PORT) and optional Tls {Ca, Cert, Key} members of a config. */
export function readConnection(c: Cfg): Connection {
  const endpoint = c.str('Endpoint', { re: ENDPOINT_RE, rule: 'must be HOST:PORT' });
  const tls = c.obj('Tls', true);
  if (!tls) return { endpoint };
  const conn = { endpoint, caFile: tls.inputFile('Ca'), certFile: tls.inputFile('Cert', true) || undefined, keyFile: tls.inputFile('Key', true) || undefined };
  tls.done();
  return conn;
}

export function sha256(b: Buffer | string): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** The transcript: every step, artifact and check value, timestamped, to stdout and OutputDir/transcript.txt. */
export class Transcript {
  private readonly file: string;
  constructor(
    readonly dir: string,
    readonly ceremony: string,
  ) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = path.join(dir, 'transcript.txt');
    fs.writeFileSync(this.file, '', { flag: 'wx', mode: 0o644 });
    this.line(`ceremony ${ceremony} started by ${process.env.USER ?? 'unknown'} on ${os.hostname()}`);
  }

  line(text: string): void {
    const l = `${new Date().toISOString()}  ${text}`;
    fs.appendFileSync(this.file, l + '\n');
    process.stdout.write(l + '\n');
  }

  step(text: string): void {
    this.line(`STEP     ${text}`);
  }

  value(name: string, v: string | number): void {
    this.line(`VALUE    ${name} = ${v}`);
  }

  /** Writes a new file (never overwriting) and records its SHA-256. */
  artifact(name: string, data: Buffer | string, mode = 0o644): string {
    const p = path.join(this.dir, name);
    fs.writeFileSync(p, data, { flag: 'wx', mode });
    this.line(`ARTIFACT ${p} sha256=${sha256(typeof data === 'string' ? Buffer.from(data) : data)}`);
    return p;
  }

  done(next: string[]): void {
    this.line(`ceremony ${this.ceremony} finished`);
    for (const n of next) this.line(`NEXT     ${n}`);
  }
}

/** 32 random bytes from `openssl rand` or from a PKCS#11 token's RNG (C_GenerateRandom). */
export async function randomMaterial(source: { kind: 'openssl' } | { kind: 'pkcs11'; module: string; tokenLabel: string; pinFile: string }): Promise<Buffer> {
  if (source.kind === 'openssl') {
    const r = spawnSync('openssl', ['rand', '32'], { maxBuffer: 1024 });
    if (r.status !== 0 || !r.stdout || r.stdout.length !== 32) throw new Error(`openssl rand 32 failed: ${r.stderr?.toString().trim() || `status ${r.status}`}`);
    return r.stdout;
  }
  // Loaded only when used, so the openssl path needs no PKCS#11 module.
  const { HsmToken } = await import('../../src/hsm/token');
  const { readPinFile } = await import('../../src/hsm/dev-token');
  const token = HsmToken.open({ modulePath: source.module, tokenLabel: source.tokenLabel, pin: readPinFile(source.pinFile, true).pin });
  try {
    return token.random(32);
  } finally {
    token.close();
  }
}

export function readRandomSource(c: Cfg): Parameters<typeof randomMaterial>[0] {
  const kind = c.oneOf('RandomSource', ['openssl', 'pkcs11'] as const, 'openssl');
  if (kind === 'openssl') return { kind };
  const p = c.obj('Pkcs11');
  if (!p) throw new ConfigError(`${c.where}.Pkcs11: is required with RandomSource pkcs11`);
  const src = { kind, module: p.inputFile('Module'), tokenLabel: p.str('TokenLabel'), pinFile: p.inputFile('PinFile') };
  p.done();
  return src;
}

export type WrappingAlgorithm = 'RSAES_OAEP_SHA_256' | 'RSAES_OAEP_SHA_1' | 'RSAES_PKCS1_V1_5';
export const WRAPPING_ALGORITHMS: readonly WrappingAlgorithm[] = ['RSAES_OAEP_SHA_256', 'RSAES_OAEP_SHA_1', 'RSAES_PKCS1_V1_5'];

/** Encrypts key material with the import public key (DER SubjectPublicKeyInfo from GetParametersForImport). */
export function wrapMaterial(material: Buffer, publicKeyDer: Buffer, alg: WrappingAlgorithm): Buffer {
  const key = crypto.createPublicKey({ key: publicKeyDer, format: 'der', type: 'spki' });
  if (alg === 'RSAES_PKCS1_V1_5') return crypto.publicEncrypt({ key, padding: crypto.constants.RSA_PKCS1_PADDING }, material);
  return crypto.publicEncrypt({ key, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: alg === 'RSAES_OAEP_SHA_256' ? 'sha256' : 'sha1' }, material);
}

export function connect(c: Connection): KmsdClient {
  return new KmsdClient({ endpoint: c.endpoint, caFile: c.caFile, certFile: c.certFile, keyFile: c.keyFile });
}

/** Runs a ceremony's main; config errors exit 2, anything else 1, success 0. */
export function main(name: string, fn: (configFile: string, dryRun: boolean) => Promise<void>): void {
  const args = process.argv.slice(2);
  const dryRun = args.includes('--dry-run');
  const files = args.filter((a) => a !== '--dry-run');
  if (files.length !== 1 || files[0].startsWith('--')) {
    process.stderr.write(`usage: node dist/scripts/ceremony/${name}.js CONFIG.json [--dry-run]\n`);
    process.exit(2);
  }
  fn(files[0], dryRun).then(
    () => process.exit(0),
    (e) => {
      if (e instanceof ConfigError) {
        process.stderr.write(`${name}: invalid config: ${e.message}\n`);
        process.exit(2);
      }
      const msg = e instanceof KmsClientError ? `kmsd refused: ${e.code}: ${e.message}` : (e as Error).message;
      process.stderr.write(`${name}: ${msg}\n`);
      process.exit(1);
    },
  );
}

// ---------------------------------------------------------------- Shamir shares (split and import ceremonies)

export interface SplitPlan {
  label: string;
  threshold: number;
  custodians: { id: string; encryptTo?: crypto.KeyObject; encryptToFile?: string }[];
}

/** Label, Threshold (2 <= M <= N) and Custodians [{CustodianId, EncryptionPublicKey?}] of a split. */
export function readSplitPlan(c: Cfg): SplitPlan {
  const label = c.str('Label', { re: /^[\x20-\x7e]{1,200}$/, rule: 'must be 1 to 200 printable ASCII characters' });
  const list = c.list('Custodians', 2, 255);
  const threshold = c.int('Threshold', 2, list.length);
  const ids = new Set<string>();
  const custodians = list.map((x) => {
    const id = x.str('CustodianId', { re: CUSTODIAN_ID_RE, rule: 'must be a custodian id (a-z, 0-9, ., _, -)' });
    if (ids.has(id)) throw new ConfigError(`${x.where}.CustodianId: ${id} is listed twice`);
    ids.add(id);
    const file = x.inputFile('EncryptionPublicKey', true);
    x.done();
    return { id, encryptToFile: file || undefined, encryptTo: file ? readPublicKey(file, `${x.where}.EncryptionPublicKey`, 'rsa') : undefined };
  });
  return { label, threshold, custodians };
}

/** Splits the material and writes share-<id>.json per custodian (mode 0600); zeroes the shares. */
export async function writeShares(t: Transcript, material: Buffer, plan: SplitPlan): Promise<{ setId: string; kcv: string }> {
  const kcv = keyCheckValue(material);
  t.step(`split into ${plan.custodians.length} shares, any ${plan.threshold} of which restore the material (shamir-secret-sharing)`);
  const shares = await splitMaterial(material, plan.custodians.length, plan.threshold);
  try {
    const setId = crypto.randomUUID();
    t.value('SetId', setId);
    const createdAt = new Date().toISOString();
    plan.custodians.forEach((cust, i) => {
      const f: ShareFile = {
        Format: SHARE_FORMAT,
        SetId: setId,
        Label: plan.label,
        CustodianId: cust.id,
        ShareIndex: i + 1,
        Threshold: plan.threshold,
        Shares: plan.custodians.length,
        KeyCheckValue: kcv,
        CreatedAt: createdAt,
      };
      if (cust.encryptTo) {
        f.EncryptedShare = encryptShare(shares[i], cust.encryptTo).toString('base64');
        f.Encryption = 'RSAES_OAEP_SHA_256';
        f.EncryptionKeySha256 = sha256(cust.encryptTo.export({ type: 'spki', format: 'der' }));
      } else {
        f.Share = shares[i].toString('base64');
      }
      t.artifact(`share-${cust.id}.json`, JSON.stringify(f, null, 2) + '\n', 0o600);
      t.line(`         share ${i + 1} for ${cust.id}: ${cust.encryptTo ? `encrypted to ${cust.encryptToFile} (RSA-OAEP-SHA-256)` : 'NOT encrypted: hand it over on removable media and delete this copy'}`);
    });
    return { setId, kcv };
  } finally {
    for (const s of shares) s.fill(0);
  }
}

export interface CreatedProposal {
  ProposalId: string;
  Document: string;
  DocumentSha256: string;
  Required: number;
  ExpiresAt: string;
}

/** CreateProposal, then the proposal's id, digest, expiry and document go into the transcript. */
export async function createProposal(
  client: KmsdClient,
  t: Transcript,
  request: { Action: string; Parameters: Record<string, string>; Requester: string; ExpiresInSeconds: number },
): Promise<CreatedProposal> {
  const prop = (await client.call('CreateProposal', request)) as CreatedProposal;
  t.value('ProposalId', prop.ProposalId);
  t.value('ProposalDocumentSha256', prop.DocumentSha256);
  t.value('ProposalExpiresAt', prop.ExpiresAt);
  t.artifact(`proposal-${prop.ProposalId}.json`, Buffer.from(prop.Document, 'base64'));
  return prop;
}
