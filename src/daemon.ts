// The composition root: config → token → store → domain → gRPC. Also owns the scheduler and the
// orderly shutdown (drain calls, stop the scheduler, zero cached material, close store and token).

import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { DaemonConfig, parseListen } from './config';
import { HsmToken } from './hsm/token';
import { ensureDevToken, readPinFile } from './hsm/dev-token';
import { probeCapabilities, HsmCapabilities } from './hsm/unwrap';
import { loadNative, NativeHandle } from './hsm/native-loader';
import { Store } from './store/store';
import { Keyring, ROOT_KEY_ID } from './kms/keyring';
import { KmsService, Logger, DEFAULT_KMS_CONFIG } from './kms/service';
import { ImportService, MAC_KEY_ID } from './kms/import';
import { createServer } from './api/grpc/server';

export interface RunningDaemon {
  address: string;
  port: number;
  kms: KmsService;
  imports: ImportService;
  capabilities: HsmCapabilities;
  stop(graceMs?: number): Promise<void>;
}

export async function startDaemon(cfg: DaemonConfig, log: Logger): Promise<RunningDaemon> {
  fs.mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  const production = Boolean(cfg.pkcs11Module);
  const tokenOpts = production
    ? { modulePath: cfg.pkcs11Module as string, tokenLabel: cfg.tokenLabel as string, pin: readPinFile(cfg.pinFile as string) }
    : ensureDevToken(cfg.dataDir);
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
      native = loadNative(token);
      if (native.addon) keyring.attachNative(native.addon);
      log.info({ nativeAddon: Boolean(native.addon), reason: native.reason }, native.addon ? 'native AES-GCM addon loaded' : 'native addon unavailable; using pkcs11js for the HSM data path');
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

    const { server, health } = createServer({ kms, imports, log });
    const { host, port } = parseListen(cfg.listen);
    const creds = cfg.tls
      ? grpc.ServerCredentials.createSsl(
          cfg.tls.clientCaFile ? fs.readFileSync(cfg.tls.clientCaFile) : null,
          [{ cert_chain: fs.readFileSync(cfg.tls.certFile), private_key: fs.readFileSync(cfg.tls.keyFile) }],
          Boolean(cfg.tls.clientCaFile),
        )
      : grpc.ServerCredentials.createInsecure();
    const bindHost = host.includes(':') ? `[${host}]` : host;
    const boundPort = await new Promise<number>((resolve, reject) => server.bindAsync(`${bindHost}:${port}`, creds, (err, p) => (err ? reject(err) : resolve(p))));
    health.setStatus('', 'SERVING');
    health.setStatus('kms.v1.KeyManagementService', 'SERVING');
    const address = `${host.includes(':') ? `[${host}]` : host}:${boundPort}`;

    let ticking = false;
    const tick = () => {
      if (ticking) return;
      ticking = true;
      try {
        kms.runDueWork();
        imports.destroyExpiredWrappingKeys();
        imports.refillPoolOnce();
      } catch (e) {
        log.error({ err: (e as Error).message }, 'scheduler pass failed');
      } finally {
        ticking = false;
      }
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
      async stop(graceMs = 10_000) {
        if (stopped) return;
        stopped = true;
        clearInterval(timer);
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
        keyring.forgetAll();
        openNative?.addon?.close();
        openStore.close();
        token.close();
      },
    };
  } catch (e) {
    native?.addon?.close();
    store?.close();
    token.close();
    throw e;
  }
}
