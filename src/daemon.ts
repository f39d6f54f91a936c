// The composition root: config → token → store → domain → gRPC. Also owns the scheduler and the
// orderly shutdown (drain calls, stop the scheduler, zero cached material, close store and token).

import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { DaemonConfig, DEFAULT_NATIVE_THREADS, parseListen, securitySettings } from './config';
import { HsmToken } from './hsm/token';
import { ensureDevToken, octal, readPinFile } from './hsm/dev-token';
import { probeCapabilities, HsmCapabilities } from './hsm/unwrap';
import { loadNative, NativeHandle } from './hsm/native-loader';
import { Store } from './store/store';
import { DataDirLock, lockDataDir } from './store/data-dir-lock';
import { Keyring, ROOT_KEY_ID } from './kms/keyring';
import { KmsService, Logger, DEFAULT_KMS_CONFIG } from './kms/service';
import { ImportService, MAC_KEY_ID } from './kms/import';
import { createServer } from './api/grpc/server';
import { ceremonyExtension } from './api/grpc/ceremony';
import { startCeremonyAndAudit } from './ceremony/setup';
import { CallGuard, TlsListener, listenTls, storeDirectory } from './api/grpc/auth';

export interface RunningDaemon {
  address: string;
  port: number;
  kms: KmsService;
  imports: ImportService;
  capabilities: HsmCapabilities;
  /** Issue 6: identity, authorization and limits in front of every call. */
  security: CallGuard;
  /** Re-reads the policy file (SIGHUP); a bad file keeps the current policy. */
  reloadPolicy(): { ok: boolean; message: string };
  stop(graceMs?: number): Promise<void>;
}

export async function startDaemon(cfg: DaemonConfig, log: Logger): Promise<RunningDaemon> {
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  // Issue 6: the data directory is the daemon's alone, whoever created it (the umask is kmsd.ts's job).
  if ((fs.statSync(cfg.dataDir).mode & 0o077) !== 0) {
    fs.chmodSync(cfg.dataDir, 0o700);
    log.warn({ dataDir: cfg.dataDir }, 'data directory was accessible to others; now 0700');
  }
  const lock = lockDataDir(cfg.dataDir);
  try {
    return await startLocked(cfg, log, lock);
  } catch (e) {
    lock.release();
    throw e;
  }
}

function productionToken(cfg: DaemonConfig): { modulePath: string; tokenLabel: string; pin: string; pinFile: string; pinLooseMode: number | null } {
  const read = readPinFile(cfg.pinFile as string, cfg.allowInsecurePinFile);
  return { modulePath: cfg.pkcs11Module as string, tokenLabel: cfg.tokenLabel as string, pin: read.pin, pinFile: read.file, pinLooseMode: read.looseMode };
}

async function startLocked(cfg: DaemonConfig, log: Logger, lock: DataDirLock): Promise<RunningDaemon> {
  const production = Boolean(cfg.pkcs11Module);
  const tokenOpts = production ? productionToken(cfg) : ensureDevToken(cfg.dataDir);
  if (tokenOpts.pinLooseMode !== null) {
    log.warn({ pinFile: tokenOpts.pinFile, mode: octal(tokenOpts.pinLooseMode) }, 'PIN file is accessible to group or others: anyone who can read it can log in to the token (chmod 600 it)');
  }
  const token = HsmToken.open(tokenOpts);
  let store: Store | null = null;
  let native: NativeHandle | null = null;
  try {
    token.ensureRootKey(ROOT_KEY_ID);
    token.generateMacKey(MAC_KEY_ID);
    const info = token.tokenInfo();
    const capabilities = probeCapabilities(token, info.mechanisms);
    log.info({ token: info.label, manufacturer: info.manufacturer, model: info.model, capabilities }, 'token capabilities probed');
    if (!capabilities.aesGcm) throw new Error('the token does not support CKM_AES_GCM, which every CMK operation needs');

    store = new Store(cfg.dataDir);
    const keyring = new Keyring(token, store);
    if (cfg.useNativeAddon) {
      native = loadNative(token, cfg.nativeThreads ?? DEFAULT_NATIVE_THREADS);
      if (native.addon) keyring.attachNative(native.addon);
      log.info({ nativeAddon: Boolean(native.addon), threads: native.addon?.stats().threads, reason: native.reason }, native.addon ? 'native AES-GCM addon loaded' : 'native addon unavailable; using pkcs11js for the HSM data path');
    } else {
      log.info({ nativeAddon: false }, 'native addon disabled by configuration (KMS_NATIVE=0)');
    }
    const kms = new KmsService(
      store,
      keyring,
      { ...DEFAULT_KMS_CONFIG, pendingWindowDaySeconds: cfg.pendingWindowDaySeconds, minRotationIntervalSeconds: cfg.minRotationIntervalSeconds },
      log,
    );
    const imports = new ImportService(kms, capabilities, {
      importTokenTtlSeconds: cfg.importTokenTtlSeconds,
      // On by default only for the development token (DESIGN: host-assisted unwrap is opt-in in production).
      allowHostAssistedUnwrap: cfg.allowHostAssistedUnwrap ?? !production,
      wrappingKeyPoolSize: cfg.wrappingKeyPoolSize,
    });
    const reconciled = kms.reconcile();
    const wrapReconciled = imports.reconcileWrappingKeys();
    log.info({ ...reconciled, wrappingKeys: wrapReconciled }, 'start-up reconciliation done');

    // Issue 5: custodians, proposals and the audit trail (guards nothing until InitCeremony).
    const sec = cfg.security ?? securitySettings({}, {}, {}, Boolean(cfg.tls));
    const quorum = startCeremonyAndAudit({ store, token, kms, imports, log, maxMessageBytes: sec.maxMessageBytes });
    // What kmsd does to keys on its own (deletion windows ending, material expiring, automatic
    // rotation) is audited like the calls, under kmsd's own name.
    kms.onKeyEvent = (ev) => quorum.audit.append({ principal: 'kmsd', action: ev.action, keyId: ev.keyId, outcome: 'ok', details: ev.details });
    // Issue 6: principals, policy, rate limits and the HSM bulkhead; denials go to the audit log.
    const security = new CallGuard({ tls: Boolean(cfg.tls), policyFile: sec.policyFile, limits: sec, directory: storeDirectory(kms), log, audit: quorum.audit });
    const { server, health } = createServer({ kms, imports, log, ceremony: ceremonyExtension(quorum), security }, { maxMessageBytes: sec.maxMessageBytes });
    const { host, port } = parseListen(cfg.listen);
    // TLS: our own TLS 1.3 listener (client certificates checked and refusals audited) feeding the
    // gRPC server; plaintext only on loopback (config.ts refuses anything else).
    let tlsListener: TlsListener | null = null;
    let boundPort: number;
    if (cfg.tls) {
      tlsListener = await listenTls(server, { host, port, certFile: cfg.tls.certFile, keyFile: cfg.tls.keyFile, clientCaFile: cfg.tls.clientCaFile, log, audit: () => quorum.audit });
      boundPort = tlsListener.port;
    } else {
      const bindHost = host.includes(':') ? `[${host}]` : host;
      boundPort = await new Promise<number>((resolve, reject) => server.bindAsync(`${bindHost}:${port}`, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    }
    health.setStatus('', 'SERVING');
    health.setStatus('kms.v1.KeyManagementService', 'SERVING');
    const address = `${host.includes(':') ? `[${host}]` : host}:${boundPort}`;

    let ticking: Promise<void> | null = null;
    const pass = async () => {
      try {
        kms.runDueWork();
        imports.destroyExpiredWrappingKeys();
        await imports.refillPoolOnce(); // the RSA generation runs off the event loop
        quorum.tick();
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
    const openNative = native;
    return {
      address,
      port: boundPort,
      kms,
      imports,
      capabilities,
      security,
      reloadPolicy: () => security.reload(),
      async stop(graceMs = 10_000) {
        if (stopped) return;
        stopped = true;
        clearInterval(timer);
        await ticking;
        await tlsListener?.close();
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
          quorum.close(); // counters to disk and a final signed checkpoint
        } catch (e) {
          log.error({ err: (e as Error).message }, 'closing the audit log failed');
        }
        keyring.forgetAll();
        await token.drain(); // key pair generations of calls cut off by the grace period
        openNative?.addon?.close();
        openStore.close();
        token.close();
        lock.release();
      },
    };
  } catch (e) {
    native?.addon?.close();
    store?.close();
    token.close();
    throw e;
  }
}
