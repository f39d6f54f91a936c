// The composition root: config → token → store → domain → gRPC. Also owns the scheduler and the
// orderly shutdown (drain calls, stop the scheduler, zero cached material, close store and token).

import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { ConfigError, DaemonConfig, DEFAULT_NATIVE_THREADS, parseListen, securitySettings } from './config';
import { Policy } from './policy/policy';
import { HsmToken, LoadedModule, TokenInventory } from './hsm/token';
import { ensureDevToken, octal, readPinFile } from './hsm/dev-token';
import { probeCapabilities, HsmCapabilities } from './hsm/unwrap';
import { SqliteStore } from './store/sqlite';
import { PgStore } from './store/pg/pg-store';
import type { Store, StoreTx } from './store/api';
import { DataDirLock, lockDataDir } from './store/data-dir-lock';
import { Keyring, ROOT_KEY_ID } from './kms/keyring';
import { KmsService, Logger, DEFAULT_KMS_CONFIG } from './kms/service';
import { ImportService, MAC_KEY_ID } from './kms/import';
import { bindStoreToToken } from './kms/binding';
import { openServer } from './api/grpc/server';
import { Readiness } from './api/readiness';
import { KmsError } from './kms/errors';
import { ceremonyExtension } from './api/grpc/ceremony';
import { startCeremonyAndAudit } from './ceremony/setup';
import { CallGuard, TlsListener, listenTls, storeDirectory } from './api/grpc/auth';
import { AccessKeyService } from './kms/access-keys';
import { XksService } from './kms/xks';
import { admission } from './api/admission';
import { HttpListener, listenHttp } from './api/http/server';
import type { HttpContext } from './api/http/types';
import type { AdmissionCall } from './api/admission';

export interface RunningDaemon {
  address: string;
  port: number;
  /** HOST:PORT of the HTTP listener (Alibaba and AWS dialects), when --http-listen is given. */
  httpAddress?: string;
  kms: KmsService;
  imports: ImportService;
  capabilities: HsmCapabilities;
  /** Identity, authorization and limits in front of every call. */
  security: CallGuard;
  /** Re-reads the policy file (SIGHUP); a bad file keeps the current policy. */
  reloadPolicy(): { ok: boolean; message: string };
  stop(graceMs?: number): Promise<void>;
}

/** gRPC health service name that is SERVING once start-up reconciliation is done. */
export const RECONCILIATION_HEALTH_SERVICE = 'kmsd.Reconciliation';

/** Called once the listeners are bound, before the token is open (kmsd prints "listening on" then). */
export interface StartHooks {
  onListening?(where: { address: string; httpAddress?: string }): void;
}

/**
 * Starts kmsd: validates the configuration, opens the store and listens, then opens the token in
 * the background (the module's first use can take minutes on a full token) and checks that store
 * and token belong together. Until the token is ready, health says NOT_SERVING and calls wait
 * (src/api/readiness.ts). Resolves when kmsd is ready; rejects, with the listeners closed, when the
 * token cannot be opened or is refused.
 */
export async function startDaemon(cfg: DaemonConfig, log: Logger, hooks: StartHooks = {}): Promise<RunningDaemon> {
  const policy = preflight(cfg);
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  // The data directory is the daemon's alone, whoever created it (the umask is kmsd.ts's job).
  if ((fs.statSync(cfg.dataDir).mode & 0o077) !== 0) {
    fs.chmodSync(cfg.dataDir, 0o700);
    log.warn({ dataDir: cfg.dataDir }, 'data directory was accessible to others; now 0700');
  }
  const lock = lockDataDir(cfg.dataDir);
  try {
    return await startLocked(cfg, log, lock, hooks, policy);
  } catch (e) {
    lock.release();
    throw e;
  }
}

/**
 * The files the daemon reads later (TLS material when it listens, the policy), read and parsed
 * now: a mistyped path must stop kmsd before it creates or changes anything, in the data
 * directory or in the token. The policy read here is the one enforced: reading the file again once
 * the token is open would enforce whatever the file holds by then (or fail on a file removed after
 * kmsd started), not what was checked.
 */
function preflight(cfg: DaemonConfig): Policy | undefined {
  const read = (flag: string, file: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (e) {
      throw new ConfigError(`${flag} ${file}: cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  };
  const parse = (flag: string, file: string, fn: (b: Buffer) => unknown): void => {
    const b = read(flag, file);
    try {
      fn(b);
    } catch (e) {
      throw new ConfigError(`${flag} ${file}: ${(e as Error).message.split('\n')[0]}`);
    } finally {
      b.fill(0); // the TLS key, among others
    }
  };
  if (cfg.tls) {
    parse('--tls-cert', cfg.tls.certFile, (b) => new crypto.X509Certificate(b));
    parse('--tls-key', cfg.tls.keyFile, (b) => crypto.createPrivateKey(b));
    if (cfg.tls.clientCaFile) parse('--tls-client-ca', cfg.tls.clientCaFile, (b) => new crypto.X509Certificate(b));
  }
  const policyFile = cfg.security?.policyFile;
  if (!policyFile) return undefined;
  try {
    return Policy.load(policyFile);
  } catch (e) {
    throw new ConfigError(`--policy: ${(e as Error).message}`);
  }
}

function productionToken(cfg: DaemonConfig): { modulePath: string; tokenLabel: string; pin: string; pinFile: string; pinLooseMode: number | null } {
  const read = readPinFile(cfg.pinFile as string, cfg.allowInsecurePinFile);
  return { modulePath: cfg.pkcs11Module as string, tokenLabel: cfg.tokenLabel as string, pin: read.pin, pinFile: read.file, pinLooseMode: read.looseMode };
}

async function startLocked(cfg: DaemonConfig, log: Logger, lock: DataDirLock, hooks: StartHooks, policy: Policy | undefined): Promise<RunningDaemon> {
  const production = Boolean(cfg.pkcs11Module);
  const tokenOpts = production ? productionToken(cfg) : ensureDevToken(cfg.dataDir);
  if (tokenOpts.pinLooseMode !== null) {
    log.warn({ pinFile: tokenOpts.pinFile, mode: octal(tokenOpts.pinLooseMode) }, 'PIN file is accessible to group or others: anyone who can read it can log in to the token (chmod 600 it)');
  }
  // Loading the module is quick, and a wrong path is a configuration error: it stops kmsd before it
  // listens. Its C_Initialize (where SoftHSM reads every object of the token) waits until after.
  const loaded = HsmToken.loadModule(tokenOpts.modulePath);
  const sec = cfg.security ?? securitySettings({}, {}, {}, Boolean(cfg.tls));
  const startedAt = Date.now();
  // The store before listening too: its migrations run here, and a store this build cannot read
  // stops kmsd before it listens. Nothing in it is trusted for the token until the binding check.
  const store = await openStore(cfg);
  try {
    return await listenThenOpen(cfg, log, lock, hooks, { tokenOpts, loaded, sec, policy, startedAt, store, production });
  } catch (e) {
    await store.close();
    throw e;
  }
}

/**
 * SQLite in the data directory (one kmsd), or the PostgreSQL store replicas share. A store that
 * cannot be reached at start stops kmsd with a message naming it (a supervisor restarts it); once
 * running, a lost store makes calls fail as retryable and health NOT_SERVING until it is back.
 */
async function openStore(cfg: DaemonConfig): Promise<Store> {
  if (!cfg.store) return new SqliteStore(cfg.dataDir);
  const c = cfg.store;
  try {
    return await PgStore.open({ host: c.host, port: c.port, user: c.user, database: c.database, password: c.password(), applicationName: 'kmsd' });
  } catch (e) {
    throw new ConfigError(`--store ${c.url}: cannot open the PostgreSQL store: ${(e as Error).message}`);
  }
}

async function listenThenOpen(
  cfg: DaemonConfig,
  log: Logger,
  lock: DataDirLock,
  hooks: StartHooks,
  o: { tokenOpts: ReturnType<typeof productionToken>; loaded: LoadedModule; sec: ReturnType<typeof securitySettings>; policy: Policy | undefined; startedAt: number; store: Store; production: boolean },
): Promise<RunningDaemon> {
  const { tokenOpts, loaded, sec, policy, startedAt, store, production } = o;

  // Listen first. Every call waits in the front until the token is open and the binding check has
  // passed; health says NOT_SERVING until then, and DescribeHsm that the token is still opening.
  const readiness = new Readiness(cfg.tokenOpenWaitMs);
  const front = openServer({
    maxMessageBytes: sec.maxMessageBytes,
    maxConcurrentStreams: sec.maxConcurrentStreams,
    streamLimits: sec,
    log,
    services: ['KeyManagementService', 'CeremonyService', 'AuditService'],
    readiness,
    describeOpening: () => ({ TokenState: readiness.tokenState, ReconciliationRunning: true }),
  });
  const { server, health, streams } = front;
  let quorum: Awaited<ReturnType<typeof startCeremonyAndAudit>> | null = null;
  const { host, port } = parseListen(cfg.listen);
  // TLS: our own TLS 1.3 listener (client certificates checked and refusals audited) feeding the
  // gRPC server; plaintext only on loopback (config.ts refuses anything else).
  let tlsListener: TlsListener | null = null;
  let boundPort: number;
  if (cfg.tls) {
    tlsListener = await listenTls(server, { host, port, certFile: cfg.tls.certFile, keyFile: cfg.tls.keyFile, clientCaFile: cfg.tls.clientCaFile, log, audit: () => quorum?.audit, limits: sec });
    boundPort = tlsListener.port;
  } else {
    const bindHost = host.includes(':') ? `[${host}]` : host;
    boundPort = await new Promise<number>((resolve, reject) => server.bindAsync(`${bindHost}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
  }
  const address = `${host.includes(':') ? `[${host}]` : host}:${boundPort}`;

  // The HTTP dialects run the same decorated actions through the same admission as gRPC, once the
  // token is ready (until then the listener answers as the gRPC front does).
  let httpListener: HttpListener | null = null;
  let httpAddress: string | undefined;
  let httpCtx: HttpContext | null = null;
  if (cfg.httpListen) {
    const h = parseListen(cfg.httpListen, '--http-listen');
    try {
      httpListener = await listenHttp({
        host: h.host,
        port: h.port,
        tls: cfg.tls,
        log,
        ready: () => (readiness.ready ? undefined : readiness.wait()),
        // Read only after ready() has resolved, when the token and the domain are there.
        ctx: new Proxy({} as HttpContext, { get: (_t, k) => (httpCtx as unknown as Record<string | symbol, unknown>)[k] }),
      });
    } catch (e) {
      server.forceShutdown();
      await tlsListener?.close();
      throw e;
    }
    httpAddress = `${h.host.includes(':') ? `[${h.host}]` : h.host}:${httpListener.port}`;
  }
  hooks.onListening?.({ address, httpAddress });

  let opened: HsmToken | null = null;
  try {
    // On a shared store, other replicas change the token's objects too.
    const token = await HsmToken.openOffLoop({ ...tokenOpts, disabledMechanisms: cfg.disabledMechanisms, shared: Boolean(cfg.store) }, loaded);
    opened = token;
    log.info({ token: token.tokenLabel, millis: Date.now() - startedAt }, 'token open');
    // The binding check comes before kmsd creates or destroys anything in the token: a store that is
    // not the token's own is refused, never reconciled (src/kms/binding.ts).
    // One replica at a time: two first starts on a new store and token must not bind twice, nor
    // create the objects that exist once per token twice.
    const binding = await store.exclusiveStart(async () => {
      const b = await bindStoreToToken(store, token, { adopt: Boolean(cfg.adoptToken), log, dataDir: cfg.dataDir, storeName: cfg.store?.url });
      // Objects that exist once per token: created on the first start, never destroyed or reported.
      // With a walked token this costs no lookup; otherwise it waits for the walk (reconcileAtStart).
      if (token.walked) {
        token.ensureRootKey(ROOT_KEY_ID);
        token.generateMacKey(MAC_KEY_ID);
      }
      return b;
    });
    log.info({ instanceId: binding.instanceId, outcome: binding.outcome, token: token.tokenLabel }, 'metadata store and token belong together');
    // Intents open now are what a crash left; later ones belong to calls that reconciliation, when it
    // runs in the background, must leave alone.
    const startupIntentSeq = (await store.allIntents()).reduce((m, i) => Math.max(m, i.seq), 0);
    const info = await token.tokenInfoSettled();
    const capabilities = probeCapabilities(token, info.mechanisms);
    log.info({ token: info.label, manufacturer: info.manufacturer, model: info.model, capabilities }, 'token capabilities probed');
    // SOFTWARE-level keys run AES-GCM here and need the token only for their root-key wraps, so
    // kmsd serves them; CreateKey (HSM) and GetParametersForImport are refused, naming the mechanisms.
    if (!capabilities.aesGcm) log.warn({ refused: token.cannot('HSM_GENERATED') }, 'the token can do AES-256-GCM neither with CKM_AES_GCM nor composed from CKM_AES_ECB: HSM-level keys and imports are refused');

    const keyring = new Keyring(token, store);
    if (capabilities.gcmPath === 'composed') {
      // The addon's workers run CKM_AES_GCM; on this token every caller (unary, batch, stream, XKS)
      // goes through HsmToken, which composes GCM from CKM_AES_ECB.
      log.info({ nativeAddon: false, gcmPath: capabilities.gcmPath }, 'the token has no CKM_AES_GCM: AES-GCM is composed from CKM_AES_ECB, without the native addon');
    } else if (cfg.useNativeAddon) {
      const w = token.startWorkers(cfg.nativeThreads ?? DEFAULT_NATIVE_THREADS);
      log.info({ nativeAddon: w.started, threads: w.started ? w.threads : undefined, reason: w.reason }, w.started ? 'native AES-GCM addon loaded' : 'native addon unavailable; using pkcs11js for the HSM data path');
    } else {
      log.info({ nativeAddon: false }, 'native addon disabled by configuration (KMS_NATIVE=0)');
    }
    const kms = new KmsService(
      store,
      keyring,
      { ...DEFAULT_KMS_CONFIG, arnPrefix: `acs:kms:${cfg.region}:${cfg.account}`, pendingWindowDaySeconds: cfg.pendingWindowDaySeconds, minRotationIntervalSeconds: cfg.minRotationIntervalSeconds },
      log,
    );
    const imports = new ImportService(kms, capabilities, {
      importTokenTtlSeconds: cfg.importTokenTtlSeconds,
      // On by default only for the development token (DESIGN: host-assisted unwrap is opt-in in production).
      allowHostAssistedUnwrap: cfg.allowHostAssistedUnwrap ?? !production,
      wrappingKeyPoolSize: cfg.wrappingKeyPoolSize,
    });

    // Custodians, proposals and the audit trail (guards nothing until InitCeremony).
    // The external key store's health check is deep: token info and a wrap under the root key,
    // which throws (never blocks) once the token is gone.
    const xks = new XksService(store, kms, keyring, {
      probe: async () => {
        const info = token.tokenInfo();
        keyring.newSealedSecret().secret.fill(0);
        return info;
      },
    });
    await xks.load();
    const ceremonyAndAudit = await startCeremonyAndAudit({ store, token, kms, imports, xks, log, maxMessageBytes: sec.maxMessageBytes, auditSettings: cfg.audit, proposalTtlSeconds: cfg.proposalTtlSeconds });
    // What kmsd does to keys on its own (deletion windows ending, material expiring, automatic
    // rotation) is audited like the calls, under kmsd's own name.
    quorum = ceremonyAndAudit;
    // In the transaction of the change the event records, when it has one.
    kms.onKeyEvent = async (ev, tx) => {
      const rec = { principal: 'kmsd', action: ev.action, keyId: ev.keyId, outcome: 'ok', details: ev.details };
      if (tx) await ceremonyAndAudit.audit.appendIn(tx, rec);
      else await ceremonyAndAudit.audit.append(rec);
    };
    // After the audit log is up, so the outcome of every retried destroy is on the record.
    // Destroys the token refused before (or a crash interrupted) first, then the open intents; what
    // the store does not explain after that is reported and kept. Needs the token walked once: when
    // the binding check did not walk it (a store that matched its token), the walk and this run
    // after kmsd listens, so start-up does not grow with the key count.
    //
    // Every destroy of start-up happens before kmsd listens, so no call can race it (a re-import
    // under a version id a pending destroy names): pending destroys, then the objects of open
    // intents, each looked up on its own (a walk is not needed for the few an interrupted run leaves).
    let stopping = false;
    const retried = await kms.retryPendingDestroys('start-up');
    const named: TokenInventory = token.walked ? token.knownInventory() : { cmk: new Set(), wrap: new Set(), root: new Set(), mac: new Set(), sign: new Set(), instanceObjects: 0 };
    if (!token.walked) {
      for (const i of await store.allIntents()) if ((i.kind === 'cmk' || i.kind === 'wrap') && token.holdsLabel(i.kind, i.object_id)) named[i.kind].add(i.object_id);
    }
    const early = await kms.reconcile(named, startupIntentSeq, true);
    const wrapEarly = await imports.reconcileWrappingKeys(named, startupIntentSeq, true);
    const reconcileAtStart = async () => {
      token.ensureRootKey(ROOT_KEY_ID);
      token.generateMacKey(MAC_KEY_ID);
      // Each takes the token's inventory after its store reads: calls may create objects meanwhile.
      const reconciled = await kms.reconcile(() => token.knownInventory(), startupIntentSeq);
      const wrapReconciled = await imports.reconcileWrappingKeys(() => token.knownInventory(), startupIntentSeq);
      const unknown = await kms.reportUnknown(() => token.knownInventory());
      kms.reconciliation = { running: false, millis: Date.now() - startedAt };
      log.info(
        {
          destroyedOrphans: [...early.destroyedOrphans, ...reconciled.destroyedOrphans],
          missing: reconciled.missing,
          wrappingKeys: { destroyed: wrapEarly.destroyed + wrapReconciled.destroyed, dropped: wrapReconciled.dropped },
          pendingDestroys: retried,
          unknown: unknown.length,
          millis: kms.reconciliation.millis,
        },
        'start-up reconciliation done',
      );
    };
    kms.reconciliation = { running: true, millis: 0 };
    if (token.walked) await reconcileAtStart();
    // Principals, policy, rate limits and the HSM bulkhead; denials go to the audit log.
    const security = new CallGuard({ tls: Boolean(cfg.tls), policyFile: sec.policyFile, policy, limits: sec, directory: storeDirectory(kms), log, audit: ceremonyAndAudit.audit });
    const accessKeys = new AccessKeyService(store, keyring);
    await accessKeys.load();
    const ceremony = ceremonyExtension(ceremonyAndAudit);
    const actions = front.install({ kms, imports, log, ceremony, security, accessKeys, xks });
    if (cfg.httpListen) {
      // The ceremony and audit actions too, decorated as gRPC serves them (the console proposes,
      // approves and verifies through the Alibaba dialect).
      const all = Object.assign({}, ...ceremony.services().map((sv) => sv.actions), actions) as typeof actions;
      const adm = admission(all, security, log);
      httpCtx = {
        lookupAccessKey: (id) => accessKeys.lookup(id),
        // Not async: the admission's promise is handed back as it is (an async wrapper costs every call
        // a promise and microtask turns more).
        run: (action, req, who, call) => {
          if (!adm.has(action)) return Promise.reject(new KmsError('InternalFailure', `no action ${action} behind the HTTP listener`));
          const unit: AdmissionCall = { request: req, cancelled: false, on: () => unit, getPeer: () => call.peer, authenticated: { principal: who.principal } };
          return adm.run(action, req, unit, { requestId: call.requestId, principal: who.principal, accessKeyId: who.accessKeyId });
        },
        region: cfg.region,
        account: cfg.account,
        awsRegion: cfg.awsRegion,
        log,
        xks: { lookupCredential: (id) => xks.lookupCredential(id), keyIdOf: (prefix, externalKeyId) => xks.keyIdOf(prefix, externalKeyId) },
      };
      if (!production) await ensureDevAccessKey(cfg.dataDir, accessKeys, log, (tx, ev) => ceremonyAndAudit.audit.appendIn(tx, ev).then(() => undefined));
    }
    readiness.markReady();
    log.info({ millis: Date.now() - startedAt }, 'token ready: serving calls');
    health.setStatus('', 'SERVING');
    health.setStatus('kms.v1.KeyManagementService', 'SERVING');
    // Its own health service name, so a deployment can wait for reconciliation (and UnknownTokenObjects).
    health.setStatus(RECONCILIATION_HEALTH_SERVICE, kms.reconciliation.running ? 'NOT_SERVING' : 'SERVING');
    const reconciling: Promise<void> = kms.reconciliation.running
      ? token.walkInBackground().then(
          async () => {
            if (stopping) return;
            await reconcileAtStart();
            health.setStatus(RECONCILIATION_HEALTH_SERVICE, 'SERVING');
          },
          (e: unknown) => {
            if (stopping) return;
            // Keys are still looked up one by one; the open intents wait for the next start.
            kms.reconciliation = { running: false, millis: Date.now() - startedAt };
            log.error({ err: (e as Error).message }, 'start-up token walk failed; reconciliation waits for the next start');
          },
        )
      : Promise.resolve();
    reconciling.catch((e: unknown) => log.error({ err: (e as Error).message }, 'start-up reconciliation failed'));

    // Health follows the store and the token: a replica that cannot reach either says NOT_SERVING
    // (load balancers and clients go elsewhere) and SERVING again once both are back, without a restart.
    let serving = true;
    const checkHealth = () => {
      let tokenOk = true;
      try {
        token.tokenInfo();
      } catch {
        tokenOk = false;
      }
      const ok = store.reachable && tokenOk;
      if (ok === serving || stopping) return;
      serving = ok;
      const status = ok ? 'SERVING' : 'NOT_SERVING';
      health.setStatus('', status);
      health.setStatus('kms.v1.KeyManagementService', status);
      if (ok) log.info({}, 'store and token reachable again: serving');
      else log.error({ store: store.reachable, token: tokenOk }, 'the metadata store or the token cannot be reached: health NOT_SERVING until it is back');
    };
    // Apart from the scheduler, whose pass may wait on a store that is down.
    const healthTimer = setInterval(checkHealth, 500);
    healthTimer.unref();
    let ticking: Promise<void> | null = null;
    const pass = async () => {
      // The scheduler's destroy retries and deletions wait until start-up reconciliation has run.
      if (kms.reconciliation.running || !store.reachable) return;
      try {
        // Deletions, expiries, rotation and the wrapping-key pool run on one replica at a time.
        if (await store.lead()) {
          await kms.runDueWork();
          await imports.destroyExpiredWrappingKeys();
          await imports.refillPoolOnce(); // the RSA generation runs off the event loop
        }
        // Every replica's own counters and refusals, and checkpoints of the shared chain.
        await ceremonyAndAudit.tick();
      } catch (e) {
        log.error({ err: (e as Error).message }, 'scheduler pass failed');
      }
    };
    const tick = () => {
      if (ticking) return;
      ticking = pass().finally(() => {
        ticking = null;
      });
    };
    const timer = setInterval(tick, cfg.schedulerIntervalMs);
    timer.unref();

    let stopped = false;
    const openStore = store;
    return {
      address,
      port: boundPort,
      httpAddress,
      kms,
      imports,
      capabilities,
      security,
      reloadPolicy: () => security.reload(),
      async stop(graceMs = 10_000) {
        if (stopped) return;
        stopped = true;
        stopping = true;
        clearInterval(timer);
        clearInterval(healthTimer);
        await ticking;
        await tlsListener?.close();
        await httpListener?.close(graceMs);
        health.setStatus('', 'NOT_SERVING');
        health.setStatus('kms.v1.KeyManagementService', 'NOT_SERVING');
        await new Promise<void>((resolve) => {
          const force = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, graceMs);
          server.tryShutdown(() => {
            clearTimeout(force);
            resolve();
          });
        });
        try {
          await ceremonyAndAudit.close(); // counters to disk and a final signed checkpoint
        } catch (e) {
          log.error({ err: (e as Error).message }, 'closing the audit log failed');
        }
        keyring.forgetAll();
        accessKeys.forgetAll();
        xks.forgetAll();
        // Waits for key pair generations of calls cut off by the grace period (their calls still
        // commit to the store), then closes the worker sessions, the login session and the module.
        await token.shutdown();
        await openStore.close();
        lock.release();
      },
    };
  } catch (e) {
    // The token could not be opened or was refused: callers waiting in the front are answered,
    // the listeners close, and the error goes up (kmsd prints it and exits as before it listened).
    readiness.markFailed();
    server.forceShutdown();
    await tlsListener?.close();
    await httpListener?.close(0);
    opened?.close();
    throw e;
  }
}

/** The development token's first HTTP start: one access key for the local admin, in DATA_DIR/dev-access-key.json (0600). */
export const DEV_ACCESS_KEY_FILE = 'dev-access-key.json';
export const DEV_ACCESS_KEY_PRINCIPAL = 'local-admin';

async function ensureDevAccessKey(dataDir: string, accessKeys: AccessKeyService, log: Logger, audit: (tx: StoreTx, ev: { principal: string; action: string; outcome: string; details: Record<string, unknown> }) => Promise<void>): Promise<void> {
  if ((await accessKeys.count()) > 0) return;
  const file = path.join(dataDir, DEV_ACCESS_KEY_FILE);
  if (fs.existsSync(file)) {
    log.warn({ file }, 'no access key exists but the development access key file does; not overwriting it (delete it to get a new key)');
    return;
  }
  // The key and its record commit together.
  const key = await accessKeys.CreateAccessKey(
    { Principal: DEV_ACCESS_KEY_PRINCIPAL },
    { requestId: '', principal: 'kmsd', record: (tx, names) => audit(tx, { principal: 'kmsd', action: 'CreateAccessKey', outcome: 'ok', details: { AccessKeyId: names?.AccessKeyId, Principal: DEV_ACCESS_KEY_PRINCIPAL } }) },
  );
  // Written with O_EXCL: a file someone else left there is not overwritten (nor trusted).
  fs.writeFileSync(file, JSON.stringify({ AccessKeyId: key.AccessKeyId, AccessKeySecret: key.AccessKeySecret, Principal: key.Principal }, null, 2) + '\n', { mode: 0o600, flag: 'wx' });
  log.info({ accessKeyId: key.AccessKeyId, principal: key.Principal, file }, 'development access key created (the secret is only in that file)');
}
