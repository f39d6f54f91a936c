// kmsd configuration: flags > environment > config file > defaults. Validated in one place so a
// bad setting is a one-line error at start-up, never a surprise later.

import os from 'node:os';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { DISABLEABLE_MECHANISMS, type DisableableMechanism, isDisableableMechanism } from './hsm/mechanisms';

export interface TlsConfig {
  certFile: string;
  keyFile: string;
  clientCaFile?: string;
}

export interface DaemonConfig {
  listen: string;
  dataDir: string;
  /** Set (all three) for an existing production token; unset for the development SoftHSM token. */
  pkcs11Module?: string;
  tokenLabel?: string;
  pinFile?: string;
  /** Accept a --pin-file that group or others may access (warned about); refused otherwise. */
  allowInsecurePinFile: boolean;
  tls?: TlsConfig;
  allowHostAssistedUnwrap?: boolean;
  importTokenTtlSeconds: number;
  wrappingKeyPoolSize: number;
  schedulerIntervalMs: number;
  /** How long a call made before the token is open waits for it before ServiceUnavailable (src/api/readiness.ts). */
  tokenOpenWaitMs: number;
  pendingWindowDaySeconds: number;
  minRotationIntervalSeconds: number;
  useNativeAddon: boolean;
  /** Worker threads (each with its own session) of the native addon; see DEFAULT_NATIVE_THREADS. */
  nativeThreads?: number;
  logLevel: string;
  /** Authorization and limits (defaults from securitySettings when absent). */
  security?: SecurityConfig;
  /** --adopt-token: bind a store without a binding (or older than the token) to the token as it is (src/kms/binding.ts). */
  adoptToken?: boolean;
  /** The HTTP listener of the Alibaba and AWS dialects (HOST:PORT); none when unset. */
  httpListen?: string;
  /** Region and account in ARNs (acs:kms:REGION:ACCOUNT:key/ID and the AWS form). */
  region: string;
  account: string;
  /** --aws-region: the only region a SigV4 credential scope may name (AWS and XKS dialects); any when unset. */
  awsRegion?: string;
  /** Audit checkpoints and data-plane records (docs/audit.md); module defaults where unset. */
  audit: { checkpointEveryRecords?: number; checkpointIntervalMs?: number; dataPlaneEvents: boolean };
  /** Default life of a ceremony proposal; the ceremony's default where unset. */
  proposalTtlSeconds?: number;
  /** KMSD_NATIVE_ADDON: the addon file to load instead of searching build/ (checked to exist). */
  nativeAddonPath?: string;
  /** KMS_DISABLE_MECHANISMS: mechanisms kmsd must not use even where the token has them (src/hsm/mechanisms.ts). */
  disabledMechanisms: DisableableMechanism[];
  /** --store: the shared PostgreSQL store of replicas; unset for SQLite in dataDir (one kmsd). */
  store?: PostgresStoreConfig;
}

/** Where a PostgreSQL store is and how to log in (--store, --store-password-file). */
export interface PostgresStoreConfig {
  backend: 'postgres';
  host: string;
  port: number;
  user: string;
  database: string;
  /** postgres://USER@HOST:PORT/DB, for messages: never holds a password. */
  url: string;
  /** Where the password came from: a file, PGPASSWORD, or none given (PostgreSQL's .pgpass, or no password). */
  passwordSource: 'file' | 'PGPASSWORD' | 'pgpass';
  /**
   * The password read at start-up; a function, so that logging or serializing the configuration
   * never shows it.
   */
  password: () => string | undefined;
}

/** Who may call (policy), how much (limits), and whether plaintext is served at all. */
export interface SecurityConfig {
  /** Authorization policy file (JSON), reloaded on SIGHUP. */
  policyFile?: string;
  /** Serve plaintext gRPC when no TLS is configured (loopback only). */
  plaintextLoopback: boolean;
  /** Requests per second per principal (0 = off) and the bucket size. */
  ratePerSecond: number;
  rateBurst: number;
  /** HSM bulkhead: actions in flight, actions queued, queue timeout. */
  maxInFlight: number;
  maxQueued: number;
  queueTimeoutMs: number;
  /** Largest gRPC message accepted or sent, bytes. */
  maxMessageBytes: number;
  /** TLS connections that have not completed the handshake: timeout, caps in all and per source address. */
  handshakeTimeoutMs: number;
  maxUnauthenticated: number;
  maxUnauthenticatedPerAddress: number;
  /** HTTP/2 streams open at once per connection, every call counted. */
  maxConcurrentStreams: number;
  /** EncryptStream/DecryptStream: open streams and the bytes they hold, per connection and per principal. */
  maxStreamsPerConnection: number;
  maxStreamsPerPrincipal: number;
  maxBufferedBytesPerConnection: number;
  maxBufferedBytesPerPrincipal: number;
}

export class ConfigError extends Error {}

/**
 * The native addon's worker threads by default: one per core, each with its own session.
 * (Until unary calls were started in turns, a second worker lowered unary throughput on SoftHSM,
 * whose token-object lookups serialize; A/B runs since show 2 workers on 2 cores no worse for unary
 * calls and ~1.7x for batches: bench/README.md.) An HSM with more crypto cores than the host may
 * want more (KMS_NATIVE_THREADS).
 */
export const DEFAULT_NATIVE_THREADS = Math.max(1, Math.min(256, os.availableParallelism()));

const FLAGS: Record<string, keyof DaemonConfig | 'config' | 'tls-cert' | 'tls-key' | 'tls-client-ca' | 'policy' | 'plaintext-loopback' | 'allow-insecure-pin-file' | 'store-password-file'> = {
  '--listen': 'listen',
  '--data-dir': 'dataDir',
  '--pkcs11-module': 'pkcs11Module',
  '--token-label': 'tokenLabel',
  '--pin-file': 'pinFile',
  '--config': 'config',
  '--tls-cert': 'tls-cert',
  '--tls-key': 'tls-key',
  '--tls-client-ca': 'tls-client-ca',
  '--policy': 'policy',
  '--plaintext-loopback': 'plaintext-loopback',
  '--http-listen': 'httpListen',
  '--aws-region': 'awsRegion',
  '--allow-insecure-pin-file': 'allow-insecure-pin-file',
  '--store': 'store',
  '--store-password-file': 'store-password-file',
};

/** Config-file fields and the type each must have; any other field is refused by name. */
const FILE_FIELDS: Record<string, 'string' | 'number' | 'boolean'> = {
  listen: 'string', dataDir: 'string', pkcs11Module: 'string', tokenLabel: 'string', pinFile: 'string', allowInsecurePinFile: 'boolean',
  allowHostAssistedUnwrap: 'boolean', importTokenTtlSeconds: 'number', wrappingKeyPoolSize: 'number', schedulerIntervalMs: 'number', tokenOpenWaitMs: 'number',
  pendingWindowDaySeconds: 'number', minRotationIntervalSeconds: 'number', useNativeAddon: 'boolean', nativeThreads: 'number', logLevel: 'string',
  httpListen: 'string', region: 'string', account: 'string', awsRegion: 'string', tlsCert: 'string', tlsKey: 'string', tlsClientCa: 'string',
  policy: 'string', plaintextLoopback: 'boolean', rateLimit: 'number', rateBurst: 'number', hsmMaxInFlight: 'number', hsmMaxQueued: 'number',
  hsmQueueTimeoutMs: 'number', maxMessageBytes: 'number', tlsHandshakeTimeoutMs: 'number', tlsMaxUnauthenticated: 'number',
  tlsMaxUnauthenticatedPerAddress: 'number', maxConcurrentStreams: 'number', streamMaxPerConnection: 'number', streamMaxPerPrincipal: 'number',
  streamBufferBytesPerConnection: 'number', streamBufferBytesPerPrincipal: 'number', proposalTtlSeconds: 'number', auditCheckpointRecords: 'number',
  auditCheckpointSeconds: 'number', auditDataPlane: 'boolean', disableMechanisms: 'string', store: 'string', storePasswordFile: 'string',
};

function wrap(text: string, width: number): string {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  return [...lines, line].join('\n');
}

export const USAGE = `usage: kmsd [--listen HOST:PORT] [--data-dir DIR] [--pkcs11-module PATH] [--token-label LABEL]
            [--pin-file FILE] [--config FILE] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
            [--policy FILE] [--plaintext-loopback 0|1] [--adopt-token] [--allow-insecure-pin-file 0|1]
            [--http-listen HOST:PORT] [--aws-region REGION]
            [--store postgres://USER@HOST:PORT/DB [--store-password-file FILE]]
       kmsd migrate --from-data-dir DIR --store postgres://USER@HOST:PORT/DB (see kmsd migrate --help)

Environment: KMS_LISTEN, KMS_DATA_DIR, KMS_PKCS11_MODULE, KMS_TOKEN_LABEL, KMS_PIN_FILE, KMS_TLS_CERT,
KMS_TLS_KEY, KMS_TLS_CLIENT_CA, KMS_ALLOW_HOST_ASSISTED_UNWRAP (0|1), KMS_IMPORT_TOKEN_TTL_SECONDS,
KMS_WRAPPING_KEY_POOL_SIZE, KMS_SCHEDULER_INTERVAL_MS, KMS_NATIVE (0 disables the addon), KMS_NATIVE_THREADS
(the addon's worker threads, default: the number of cores), KMS_TOKEN_OPEN_WAIT_MS (how long a call made while
the token is still opening waits for it, default 30000), KMS_LOG_LEVEL, KMS_DISABLE_MECHANISMS (comma-separated
mechanisms kmsd must not use: ${DISABLEABLE_MECHANISMS.join(', ')}).
Security (docs/security.md): KMS_POLICY, KMS_PLAINTEXT_LOOPBACK (0|1, default 1 without TLS), KMS_RATE_LIMIT
(requests/s per principal, 0 = off; default 1000 with TLS, 0 without), KMS_RATE_BURST, KMS_HSM_MAX_IN_FLIGHT,
KMS_HSM_MAX_QUEUED, KMS_HSM_QUEUE_TIMEOUT_MS, KMS_MAX_MESSAGE_BYTES, KMS_TLS_HANDSHAKE_TIMEOUT_MS (default 10000),
KMS_TLS_MAX_UNAUTHENTICATED (default 1024), KMS_TLS_MAX_UNAUTHENTICATED_PER_ADDRESS (default 64),
KMS_MAX_CONCURRENT_STREAMS (per connection, default 256), KMS_STREAM_MAX_PER_CONNECTION (default 16),
KMS_STREAM_MAX_PER_PRINCIPAL (default 32), KMS_STREAM_BUFFER_BYTES_PER_CONNECTION (default 8 MiB),
KMS_STREAM_BUFFER_BYTES_PER_PRINCIPAL (default 32 MiB). SIGHUP reloads the policy file.
Ceremonies and audit (docs/ceremony.md, docs/audit.md): KMS_PROPOSAL_TTL_SECONDS (default 86400),
KMS_AUDIT_DATA_PLANE (1 logs every Encrypt/Decrypt; default: counted only), KMS_AUDIT_CHECKPOINT_RECORDS,
KMS_AUDIT_CHECKPOINT_SECONDS. HTTP (Alibaba and AWS SDKs, README): KMS_HTTP_LISTEN (HOST:PORT, same TLS and
loopback rule as gRPC), KMS_REGION and KMS_ACCOUNT (in ARNs; default local and kmsd), KMS_AWS_REGION (the only region an AWS
SigV4 credential scope may name; default: any). Store: KMS_STORE, KMS_STORE_PASSWORD_FILE, PGPASSWORD. Tests only: KMS_PENDING_WINDOW_DAY_SECONDS (seconds per deletion-window day),
KMS_MIN_ROTATION_INTERVAL_SECONDS.

The config file (--config or KMS_CONFIG) is a JSON object of the settings above by their camelCase
names; a field kmsd does not know, or of the wrong type, is refused. Every setting, and the TLS and
policy files, is checked before kmsd opens the token or creates anything. Config-file fields:
${wrap(Object.keys(FILE_FIELDS).join(', '), 100)}.

With --pkcs11-module, --token-label and --pin-file kmsd uses that existing token and never initializes
one. A PIN file that group or others may access is refused unless --allow-insecure-pin-file 1
(KMS_ALLOW_INSECURE_PIN_FILE=1), and then warned about. With none of them it creates (once) a development SoftHSM token under DATA_DIR/softhsm.
Listening on a non-loopback address requires TLS.
One kmsd per data directory: DATA_DIR/kmsd.lock holds its pid; a lock whose process is gone is
taken over.
The store (DATA_DIR/kmsd.sqlite) and the token are bound to each other: kmsd refuses to start with a
store that is not the token's own (another data directory, a deleted or truncated kmsd.sqlite, a
backup older than the token) and says why. --adopt-token binds a store without a binding (or older
than the token) to the token as it is, destroying nothing.

The metadata store: without --store, SQLite in DATA_DIR/kmsd.sqlite: one kmsd on one machine (the
default, and what npm start uses). With --store postgres://USER@HOST:PORT/DB (KMS_STORE), PostgreSQL:
for several kmsd replicas sharing one database and one token, each with its own --data-dir for local
files. The password comes from --store-password-file FILE (KMS_STORE_PASSWORD_FILE; mode 0600),
else PGPASSWORD, else PostgreSQL's .pgpass; never from the URL, which kmsd refuses if it holds one.
Replicas share the token too (--pkcs11-module, --token-label, --pin-file): the development token
lives in one data directory and is not shared. kmsd migrate copies a single-node store into
PostgreSQL. The README's "Running several replicas" says what holds across replicas.`;

function optionalInt(name: string, raw: unknown, min: number, max: number): number | undefined {
  return raw === undefined || raw === '' ? undefined : intSetting(name, raw, min, max);
}

function mul(n: number | undefined, by: number): number | undefined {
  return n === undefined ? undefined : n * by;
}

function isFile(p: string): boolean {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function isDirectory(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function intSetting(name: string, raw: unknown, min: number, max: number): number {
  const n = typeof raw === 'number' ? raw : Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new ConfigError(`${name} must be an integer from ${min} to ${max} (got ${String(raw)})`);
  return n;
}

/** An environment variable set to "" counts as unset, as it does for the string settings. */
function envValue(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const v = env[name];
  return v === '' ? undefined : v;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

function boolSetting(name: string, raw: unknown): boolean | undefined {
  if (raw === undefined || raw === '') return undefined;
  if (raw === true || raw === '1' || raw === 'true') return true;
  if (raw === false || raw === '0' || raw === 'false') return false;
  throw new ConfigError(`${name} must be 0 or 1 (got ${String(raw)})`);
}

export function parseListen(listen: string, flag = '--listen'): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[^:\s]+):(\d{1,5})$/.exec(listen);
  if (!m) throw new ConfigError(`${flag} must be HOST:PORT (got "${listen}")`);
  const port = Number(m[2]);
  if (port > 65535) throw new ConfigError(`${flag} port must be 0..65535 (got ${port})`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (net.isIPv4(host)) return host.startsWith('127.');
  if (net.isIPv6(host)) return host === '::1';
  return false;
}


function readConfigFile(configPath: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(fs.readFileSync(configPath, 'utf8'));
  } catch (e) {
    throw new ConfigError(`cannot read config file ${configPath}: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ConfigError(`config file ${configPath} must hold a JSON object`);
  const file = parsed as Record<string, unknown>;
  for (const [key, value] of Object.entries(file)) {
    const type = FILE_FIELDS[key];
    if (!type) throw new ConfigError(`config file ${configPath}: unknown field "${key.slice(0, 64)}"`);
    // Numbers and booleans may also be written as strings, as the environment gives them.
    if (typeof value !== type && !(typeof value === 'string' && type !== 'string')) throw new ConfigError(`config file ${configPath}: ${key} must be a ${type} (got ${JSON.stringify(value)?.slice(0, 64)})`);
  }
  return file;
}

/** `kmsd migrate`'s configuration from its flags and the process environment. */
export function loadMigrateDaemonConfig(argv: string[]): MigrateConfig {
  return loadMigrateConfig(argv, process.env);
}

/** The kmsd process's own configuration: its flags and its environment. */
export function loadDaemonConfig(argv: string[]): DaemonConfig {
  return loadConfig(argv, process.env);
}

/** KMSD_NATIVE_ADDON, for the addon loader, which runs before the configuration is read (core dumps off first). */
export function nativeAddonOverride(): string | undefined {
  return envValue(process.env, 'KMSD_NATIVE_ADDON');
}

/**
 * Points SoftHSM at a configuration file (the development token's): SoftHSM reads SOFTHSM2_CONF at
 * C_Initialize, and softhsm2-util inherits it.
 */
export function useSoftHsmConf(conf: string): void {
  process.env.SOFTHSM2_CONF = conf;
}

/**
 * The client side's settings (kmsctl and the client library): endpoint and TLS files. KMS_ENDPOINT
 * may list several endpoints, comma-separated; src/client/endpoints.ts parses it, naming the variable.
 */
export function clientEnvironment(): { endpoint?: string; caFile?: string; certFile?: string; keyFile?: string } {
  return { endpoint: envValue(process.env, 'KMS_ENDPOINT'), caFile: envValue(process.env, 'KMS_CA'), certFile: envValue(process.env, 'KMS_CERT'), keyFile: envValue(process.env, 'KMS_KEY') };
}

/** KMS_DISABLE_MECHANISMS / disableMechanisms: comma-separated names, each one kmsd can do without. */
function mechanismList(value: string | undefined): DisableableMechanism[] {
  if (value === undefined || value.trim() === '') return [];
  const out: DisableableMechanism[] = [];
  for (const raw of value.split(',')) {
    const name = raw.trim();
    if (!isDisableableMechanism(name)) {
      throw new ConfigError(`disableMechanisms (KMS_DISABLE_MECHANISMS): "${name.slice(0, 64)}" is not a mechanism kmsd can be told not to use; those are ${DISABLEABLE_MECHANISMS.join(', ')}`);
    }
    if (!out.includes(name)) out.push(name);
  }
  return out;
}

export function loadConfig(argv: string[], env: NodeJS.ProcessEnv): DaemonConfig {
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--adopt-token') {
      flags.adoptToken = '1';
      continue;
    }
    const [name, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    const key = FLAGS[name];
    if (!key) throw new ConfigError(`unknown argument "${a}"`);
    const value = inline ?? argv[++i];
    if (value === undefined || value === '') throw new ConfigError(`${name} needs a value`);
    flags[key] = value;
  }
  const configPath = flags.config ?? envValue(env, 'KMS_CONFIG');
  const file: Record<string, unknown> = configPath ? readConfigFile(configPath) : {};
  const pick = (flag: string, envName: string, fileKey: string): string | undefined => {
    const v = flags[flag] ?? envValue(env, envName) ?? (file[fileKey] as string | undefined);
    return v === '' ? undefined : v;
  };
  const cfg: DaemonConfig = {
    listen: pick('listen', 'KMS_LISTEN', 'listen') ?? '127.0.0.1:50051',
    dataDir: path.resolve(pick('dataDir', 'KMS_DATA_DIR', 'dataDir') ?? './var'),
    pkcs11Module: pick('pkcs11Module', 'KMS_PKCS11_MODULE', 'pkcs11Module'),
    tokenLabel: pick('tokenLabel', 'KMS_TOKEN_LABEL', 'tokenLabel'),
    pinFile: pick('pinFile', 'KMS_PIN_FILE', 'pinFile'),
    allowInsecurePinFile: boolSetting('allowInsecurePinFile', pick('allow-insecure-pin-file', 'KMS_ALLOW_INSECURE_PIN_FILE', 'allowInsecurePinFile') ?? file.allowInsecurePinFile) ?? false,
    allowHostAssistedUnwrap: boolSetting('allowHostAssistedUnwrap', envValue(env, 'KMS_ALLOW_HOST_ASSISTED_UNWRAP') ?? file.allowHostAssistedUnwrap),
    importTokenTtlSeconds: intSetting('importTokenTtlSeconds', envValue(env, 'KMS_IMPORT_TOKEN_TTL_SECONDS') ?? file.importTokenTtlSeconds ?? 86400, 1, 30 * 86400),
    wrappingKeyPoolSize: intSetting('wrappingKeyPoolSize', envValue(env, 'KMS_WRAPPING_KEY_POOL_SIZE') ?? file.wrappingKeyPoolSize ?? 2, 0, 64),
    schedulerIntervalMs: intSetting('schedulerIntervalMs', envValue(env, 'KMS_SCHEDULER_INTERVAL_MS') ?? file.schedulerIntervalMs ?? 1000, 50, 3_600_000),
    tokenOpenWaitMs: intSetting('tokenOpenWaitMs (KMS_TOKEN_OPEN_WAIT_MS)', envValue(env, 'KMS_TOKEN_OPEN_WAIT_MS') ?? file.tokenOpenWaitMs ?? 30_000, 0, 600_000),
    pendingWindowDaySeconds: intSetting('pendingWindowDaySeconds', envValue(env, 'KMS_PENDING_WINDOW_DAY_SECONDS') ?? file.pendingWindowDaySeconds ?? 86400, 1, 86400),
    minRotationIntervalSeconds: intSetting('minRotationIntervalSeconds', envValue(env, 'KMS_MIN_ROTATION_INTERVAL_SECONDS') ?? file.minRotationIntervalSeconds ?? 7 * 86400, 1, 7 * 86400),
    useNativeAddon: boolSetting('KMS_NATIVE', envValue(env, 'KMS_NATIVE') ?? file.useNativeAddon) ?? true,
    nativeThreads: intSetting('nativeThreads', envValue(env, 'KMS_NATIVE_THREADS') ?? file.nativeThreads ?? DEFAULT_NATIVE_THREADS, 1, 256),
    adoptToken: flags.adoptToken === '1',
    logLevel: (envValue(env, 'KMS_LOG_LEVEL') ?? (file.logLevel as string | undefined) ?? 'info').toString(),
    httpListen: pick('httpListen', 'KMS_HTTP_LISTEN', 'httpListen'),
    region: envValue(env, 'KMS_REGION') ?? (file.region as string | undefined) ?? 'local',
    account: envValue(env, 'KMS_ACCOUNT') ?? (file.account as string | undefined) ?? 'kmsd',
    awsRegion: pick('awsRegion', 'KMS_AWS_REGION', 'awsRegion'),
    audit: {
      checkpointEveryRecords: optionalInt('auditCheckpointRecords (KMS_AUDIT_CHECKPOINT_RECORDS)', envValue(env, 'KMS_AUDIT_CHECKPOINT_RECORDS') ?? file.auditCheckpointRecords, 1, 1_000_000),
      checkpointIntervalMs: mul(optionalInt('auditCheckpointSeconds (KMS_AUDIT_CHECKPOINT_SECONDS)', envValue(env, 'KMS_AUDIT_CHECKPOINT_SECONDS') ?? file.auditCheckpointSeconds, 1, 86400), 1000),
      dataPlaneEvents: boolSetting('auditDataPlane (KMS_AUDIT_DATA_PLANE)', envValue(env, 'KMS_AUDIT_DATA_PLANE') ?? file.auditDataPlane) ?? false,
    },
    proposalTtlSeconds: optionalInt('proposalTtlSeconds (KMS_PROPOSAL_TTL_SECONDS)', envValue(env, 'KMS_PROPOSAL_TTL_SECONDS') ?? file.proposalTtlSeconds, 1, 7 * 86400),
    nativeAddonPath: envValue(env, 'KMSD_NATIVE_ADDON'),
    disabledMechanisms: mechanismList(envValue(env, 'KMS_DISABLE_MECHANISMS') ?? (file.disableMechanisms as string | undefined)),
  };
  const storeUrl = pick('store', 'KMS_STORE', 'store');
  const storePasswordFile = pick('store-password-file', 'KMS_STORE_PASSWORD_FILE', 'storePasswordFile');
  if (storeUrl !== undefined) cfg.store = postgresStore(storeUrl, storePasswordFile, envValue(env, 'PGPASSWORD'));
  else if (storePasswordFile !== undefined) throw new ConfigError('--store-password-file is for a PostgreSQL store: give --store postgres://USER@HOST:PORT/DB as well');
  if (cfg.nativeAddonPath !== undefined && !isFile(cfg.nativeAddonPath)) throw new ConfigError(`KMSD_NATIVE_ADDON ${cfg.nativeAddonPath} is not a file`);
  if (fs.existsSync(cfg.dataDir) && !fs.statSync(cfg.dataDir).isDirectory()) throw new ConfigError(`--data-dir ${cfg.dataDir} is not a directory`);
  for (const [name, value] of [['region', cfg.region], ['account', cfg.account], ...(cfg.awsRegion !== undefined ? [['awsRegion', cfg.awsRegion] as const] : [])] as const) {
    if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(value)) throw new ConfigError(`${name} must be lower-case letters, digits and '-', at most 63 (got "${value}")`);
  }
  // pino throws on an unknown level; say so here, as every other bad setting is said.
  if (!LOG_LEVELS.includes(cfg.logLevel)) throw new ConfigError(`logLevel must be one of ${LOG_LEVELS.join(', ')} (got ${cfg.logLevel})`);
  const cert = pick('tls-cert', 'KMS_TLS_CERT', 'tlsCert');
  const key = pick('tls-key', 'KMS_TLS_KEY', 'tlsKey');
  const ca = pick('tls-client-ca', 'KMS_TLS_CLIENT_CA', 'tlsClientCa');
  if (cert || key || ca) {
    if (!cert || !key) throw new ConfigError('TLS needs both --tls-cert and --tls-key');
    cfg.tls = { certFile: cert, keyFile: key, clientCaFile: ca };
  }
  const production = [cfg.pkcs11Module, cfg.tokenLabel, cfg.pinFile];
  if (production.some(Boolean) && !production.every(Boolean)) {
    throw new ConfigError('an existing token needs all of --pkcs11-module, --token-label and --pin-file (or none of them for the development token)');
  }
  if (cfg.pkcs11Module !== undefined && !isFile(cfg.pkcs11Module)) throw new ConfigError(`--pkcs11-module: cannot load PKCS#11 module ${cfg.pkcs11Module}: no such file`);
  // CK_TOKEN_INFO.label is 32 bytes, blank-padded: a longer label can never match.
  if (cfg.tokenLabel !== undefined && Buffer.byteLength(cfg.tokenLabel, 'utf8') > 32) throw new ConfigError(`--token-label must be at most 32 bytes (got ${Buffer.byteLength(cfg.tokenLabel, 'utf8')})`);
  const { host } = parseListen(cfg.listen);
  if (!isLoopback(host) && !cfg.tls) {
    throw new ConfigError(`refusing to listen on non-loopback address ${cfg.listen} without TLS (give --tls-cert and --tls-key)`);
  }
  if (cfg.httpListen) {
    const http = parseListen(cfg.httpListen, '--http-listen');
    if (!isLoopback(http.host) && !cfg.tls) {
      throw new ConfigError(`refusing to serve HTTP on non-loopback address ${cfg.httpListen} without TLS (give --tls-cert and --tls-key)`);
    }
  }
  cfg.security = securitySettings(flags, env, file, Boolean(cfg.tls));
  return cfg;
}

// ---- the PostgreSQL store

/**
 * Parses --store and reads the password (file, else PGPASSWORD), refusing what would go wrong later:
 * a password in the URL (it would sit in the process list and shell history), a URL that is not
 * postgres://USER@HOST[:PORT]/DB, an unreadable, empty or group/other-accessible password file.
 */
export function postgresStore(raw: string, passwordFile: string | undefined, pgPassword: string | undefined): PostgresStoreConfig {
  const shape = 'must be postgres://USER@HOST:PORT/DB';
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw new ConfigError(`--store ${shape} (got a string that is not a URL)`);
  }
  if (u.protocol !== 'postgres:' && u.protocol !== 'postgresql:') throw new ConfigError(`--store ${shape} (got scheme "${u.protocol.replace(/:$/, '').slice(0, 32)}")`);
  if (u.password !== '') {
    // The message names the rule, never the password.
    throw new ConfigError('--store must not hold a password (it would be visible in the process list): give it in --store-password-file FILE, PGPASSWORD or .pgpass, and the URL as postgres://USER@HOST:PORT/DB');
  }
  const decode = (v: string, what: string) => {
    try {
      return decodeURIComponent(v);
    } catch {
      throw new ConfigError(`--store: the ${what} is not valid percent-encoding`);
    }
  };
  const user = decode(u.username, 'user name');
  if (!user) throw new ConfigError(`--store ${shape}: the user is missing`);
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (!host) throw new ConfigError(`--store ${shape}: the host is missing`);
  const port = u.port === '' ? 5432 : Number(u.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new ConfigError(`--store: the port must be 1..65535 (got ${u.port})`);
  const database = decode(u.pathname.replace(/^\//, ''), 'database name');
  if (!database || database.includes('/')) throw new ConfigError(`--store ${shape}: the database name is missing`);
  if (u.search !== '' || u.hash !== '') throw new ConfigError(`--store ${shape}: options after "?" or "#" are not accepted`);
  let password: string | undefined;
  let passwordSource: PostgresStoreConfig['passwordSource'] = 'pgpass';
  if (passwordFile !== undefined) {
    let mode: number;
    let fd: number | undefined;
    try {
      fd = fs.openSync(passwordFile, 'r');
      const st = fs.fstatSync(fd);
      if (!st.isFile()) throw new ConfigError(`--store-password-file ${passwordFile} is not a file`);
      mode = st.mode & 0o777;
      password = fs.readFileSync(fd, 'utf8').replace(/\r?\n$/, '');
    } catch (e) {
      if (e instanceof ConfigError) throw e;
      throw new ConfigError(`--store-password-file ${passwordFile}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
    if (!password) throw new ConfigError(`--store-password-file ${passwordFile} is empty`);
    if ((mode & 0o077) !== 0) throw new ConfigError(`--store-password-file ${passwordFile} is accessible to group or others (mode 0${mode.toString(8)}): run chmod 600 ${passwordFile}`);
    passwordSource = 'file';
  } else if (pgPassword !== undefined) {
    password = pgPassword;
    passwordSource = 'PGPASSWORD';
  }
  const shownHost = host.includes(':') ? `[${host}]` : host;
  const url = `postgres://${encodeURIComponent(user)}@${shownHost}:${port}/${encodeURIComponent(database)}`;
  return { backend: 'postgres', host, port, user, database, url, passwordSource, password: () => password };
}

// ---- kmsd migrate

export interface MigrateConfig {
  /** The single-node data directory whose kmsd.sqlite is copied. */
  fromDataDir: string;
  store: PostgresStoreConfig;
}

export const MIGRATE_USAGE = `usage: kmsd migrate --from-data-dir DIR --store postgres://USER@HOST:PORT/DB [--store-password-file FILE]

Copies a single-node deployment's metadata store (DIR/kmsd.sqlite: every CMK, key version, alias,
import token, ceremony, access key, XKS key store and the audit chain) into an empty PostgreSQL
database, in one transaction, and checks that every table holds the same number of rows and that the
audit chain is record for record the source's and still links and hashes. Refuses a database that
holds anything. Stop the kmsd that uses DIR first (its lock is taken). The token is not touched: the
replicas that start on --store with the same token find the store bound to it. The password comes
from --store-password-file (KMS_STORE_PASSWORD_FILE), PGPASSWORD or .pgpass, never the URL.
Prints a JSON report. Exit 0: copied; 1: refused or failed (nothing written); 2: usage error.`;

/** Parses and checks `kmsd migrate`'s flags (argv after "migrate") before anything is opened. */
export function loadMigrateConfig(argv: string[], env: NodeJS.ProcessEnv): MigrateConfig {
  const known = new Set(['--from-data-dir', '--store', '--store-password-file']);
  const flags: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const [name, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    if (!known.has(name)) throw new ConfigError(`unknown argument "${a.slice(0, 64)}"`);
    const value = inline ?? argv[++i];
    if (value === undefined || value === '' || (inline === undefined && value.startsWith('--'))) throw new ConfigError(`${name} needs a value`);
    if (name in flags) throw new ConfigError(`${name} is given twice`);
    flags[name] = value;
  }
  const dir = flags['--from-data-dir'];
  if (!dir) throw new ConfigError('--from-data-dir is required: the data directory of the single-node kmsd to copy');
  const fromDataDir = path.resolve(dir);
  if (!isFile(path.join(fromDataDir, 'kmsd.sqlite'))) throw new ConfigError(`--from-data-dir ${fromDataDir} holds no kmsd.sqlite: not a kmsd data directory`);
  const url = flags['--store'] ?? envValue(env, 'KMS_STORE');
  if (!url) throw new ConfigError('--store postgres://USER@HOST:PORT/DB is required: the empty database to copy into');
  return { fromDataDir, store: postgresStore(url, flags['--store-password-file'] ?? envValue(env, 'KMS_STORE_PASSWORD_FILE'), envValue(env, 'PGPASSWORD')) };
}

// ---- authorization, limits, plaintext switch

export function securitySettings(flags: Record<string, string>, env: NodeJS.ProcessEnv, file: Record<string, unknown>, tls: boolean): SecurityConfig {
  const val = (flag: string | null, envName: string, fileKey: string): unknown => (flag && flags[flag]) ?? envValue(env, envName) ?? file[fileKey];
  const policyFile = val('policy', 'KMS_POLICY', 'policy') as string | undefined;
  const plaintextLoopback = boolSetting('plaintextLoopback', val('plaintext-loopback', 'KMS_PLAINTEXT_LOOPBACK', 'plaintextLoopback')) ?? true;
  if (!tls && !plaintextLoopback) {
    throw new ConfigError('plaintext is switched off (KMS_PLAINTEXT_LOOPBACK=0) and no TLS is configured: give --tls-cert and --tls-key (and --tls-client-ca)');
  }
  const rate = intSetting('rateLimit', val(null, 'KMS_RATE_LIMIT', 'rateLimit') ?? (tls ? 1000 : 0), 0, 1_000_000);
  return {
    policyFile: policyFile ? path.resolve(policyFile) : undefined,
    plaintextLoopback,
    ratePerSecond: rate,
    rateBurst: intSetting('rateBurst', val(null, 'KMS_RATE_BURST', 'rateBurst') ?? rate * 2, 0, 10_000_000),
    maxInFlight: intSetting('hsmMaxInFlight', val(null, 'KMS_HSM_MAX_IN_FLIGHT', 'hsmMaxInFlight') ?? 64, 1, 65_536),
    maxQueued: intSetting('hsmMaxQueued', val(null, 'KMS_HSM_MAX_QUEUED', 'hsmMaxQueued') ?? 1024, 0, 1_000_000),
    queueTimeoutMs: intSetting('hsmQueueTimeoutMs', val(null, 'KMS_HSM_QUEUE_TIMEOUT_MS', 'hsmQueueTimeoutMs') ?? 5000, 1, 600_000),
    maxMessageBytes: intSetting('maxMessageBytes', val(null, 'KMS_MAX_MESSAGE_BYTES', 'maxMessageBytes') ?? 4 * 1024 * 1024, 1024, 64 * 1024 * 1024),
    handshakeTimeoutMs: intSetting('tlsHandshakeTimeoutMs', val(null, 'KMS_TLS_HANDSHAKE_TIMEOUT_MS', 'tlsHandshakeTimeoutMs') ?? 10_000, 100, 120_000),
    // At most 3072 of the listener's 4096 connections (MAX_TLS_CONNECTIONS) may be unauthenticated:
    // the rest is kept for clients that completed the handshake.
    maxUnauthenticated: intSetting('tlsMaxUnauthenticated', val(null, 'KMS_TLS_MAX_UNAUTHENTICATED', 'tlsMaxUnauthenticated') ?? 1024, 1, 3072),
    maxUnauthenticatedPerAddress: intSetting('tlsMaxUnauthenticatedPerAddress', val(null, 'KMS_TLS_MAX_UNAUTHENTICATED_PER_ADDRESS', 'tlsMaxUnauthenticatedPerAddress') ?? 64, 1, 3072),
    maxConcurrentStreams: intSetting('maxConcurrentStreams', val(null, 'KMS_MAX_CONCURRENT_STREAMS', 'maxConcurrentStreams') ?? 256, 1, 65_536),
    maxStreamsPerConnection: intSetting('streamMaxPerConnection', val(null, 'KMS_STREAM_MAX_PER_CONNECTION', 'streamMaxPerConnection') ?? 16, 1, 65_536),
    maxStreamsPerPrincipal: intSetting('streamMaxPerPrincipal', val(null, 'KMS_STREAM_MAX_PER_PRINCIPAL', 'streamMaxPerPrincipal') ?? 32, 1, 1_000_000),
    maxBufferedBytesPerConnection: intSetting('streamBufferBytesPerConnection', val(null, 'KMS_STREAM_BUFFER_BYTES_PER_CONNECTION', 'streamBufferBytesPerConnection') ?? 8 * 1024 * 1024, 64 * 1024, 4 * 1024 * 1024 * 1024),
    maxBufferedBytesPerPrincipal: intSetting('streamBufferBytesPerPrincipal', val(null, 'KMS_STREAM_BUFFER_BYTES_PER_PRINCIPAL', 'streamBufferBytesPerPrincipal') ?? 32 * 1024 * 1024, 64 * 1024, 16 * 1024 * 1024 * 1024),
  };
}

// ---- the token auditor (npm run audit-token)

export interface AuditConfig {
  /** The token, as kmsd is given it; all three unset for the development token under dataDir. */
  pkcs11Module?: string;
  tokenLabel?: string;
  pinFile?: string;
  allowInsecurePinFile: boolean;
  dataDir: string;
  /** --store: the PostgreSQL store kmsd runs on; unset for SQLite in dataDir. */
  store?: PostgresStoreConfig;
  /** Objects whose label is not kmsd:... are reported as findings unless the token is knowingly shared. */
  allowForeignObjects: boolean;
}

export const AUDIT_USAGE = `usage: npm run audit-token -- --data-dir DIR [--pkcs11-module PATH --token-label LABEL --pin-file FILE]
            [--store postgres://USER@HOST:PORT/DB [--store-password-file FILE]]
            [--allow-insecure-pin-file 0|1] [--allow-foreign-objects]

Lists every object of kmsd's token through graphene-pk11 (not kmsd's own token code), checks each
key's attributes against its role, and cross-checks the token against the metadata store: DIR's
kmsd.sqlite, or with --store the PostgreSQL store kmsd runs on (password from --store-password-file,
else PGPASSWORD or .pgpass, as kmsd's), read only (READ ONLY transactions, no schema migration).
Without --pkcs11-module, --token-label and --pin-file it audits the development token under DIR/softhsm.
Prints a JSON report. Exit 0: clean; 1: findings; 2: usage error; 3: the token or store could not be read.`;

const AUDIT_FLAGS = new Set(['--pkcs11-module', '--token-label', '--pin-file', '--data-dir', '--store', '--store-password-file', '--allow-insecure-pin-file']);

/** Parses and checks the auditor's flags before it opens the token or the store. */
export function loadAuditConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): AuditConfig {
  const flags: Record<string, string> = {};
  let allowForeignObjects = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--allow-foreign-objects') {
      allowForeignObjects = true;
      continue;
    }
    const [name, inline] = a.includes('=') ? [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)] : [a, undefined];
    if (!AUDIT_FLAGS.has(name)) throw new ConfigError(`unknown argument "${a}"`);
    const value = inline ?? argv[++i];
    if (value === undefined || value === '' || (inline === undefined && value.startsWith('--'))) throw new ConfigError(`${name} needs a value`);
    if (name in flags) throw new ConfigError(`${name} is given twice`);
    flags[name] = value;
  }
  const dataDir = flags['--data-dir'];
  if (!dataDir) throw new ConfigError('--data-dir is required: the data directory of the kmsd whose token is audited');
  const resolved = path.resolve(dataDir);
  let store: PostgresStoreConfig | undefined;
  if (flags['--store'] !== undefined) {
    store = postgresStore(flags['--store'], flags['--store-password-file'], envValue(env, 'PGPASSWORD'));
    // kmsd on PostgreSQL still has its data directory (its lock, the development token), and no kmsd.sqlite in it.
    if (!isDirectory(resolved)) throw new ConfigError(`--data-dir ${resolved} is not a directory`);
  } else {
    if (flags['--store-password-file'] !== undefined) throw new ConfigError('--store-password-file is for a PostgreSQL store: give --store postgres://USER@HOST:PORT/DB as well');
    if (!fs.existsSync(path.join(resolved, 'kmsd.sqlite'))) throw new ConfigError(`--data-dir ${resolved} holds no kmsd.sqlite: not a kmsd data directory (give --store if kmsd runs on PostgreSQL)`);
  }
  const production = [flags['--pkcs11-module'], flags['--token-label'], flags['--pin-file']];
  if (production.some(Boolean) && !production.every(Boolean)) {
    throw new ConfigError('an existing token needs all of --pkcs11-module, --token-label and --pin-file (or none of them for the development token under --data-dir)');
  }
  const modulePath = flags['--pkcs11-module'];
  if (modulePath !== undefined && !isFile(modulePath)) throw new ConfigError(`--pkcs11-module ${modulePath} is not a file`);
  const label = flags['--token-label'];
  // CK_TOKEN_INFO.label is 32 bytes, blank-padded: a longer label can never match.
  if (label !== undefined && Buffer.byteLength(label, 'utf8') > 32) throw new ConfigError(`--token-label must be at most 32 bytes (got ${Buffer.byteLength(label, 'utf8')})`);
  const pinFile = flags['--pin-file'];
  if (pinFile !== undefined && !isFile(pinFile)) throw new ConfigError(`--pin-file ${pinFile} is not a file`);
  return {
    pkcs11Module: modulePath,
    tokenLabel: label,
    pinFile,
    allowInsecurePinFile: boolSetting('--allow-insecure-pin-file', flags['--allow-insecure-pin-file']) ?? false,
    dataDir: resolved,
    store,
    allowForeignObjects,
  };
}

