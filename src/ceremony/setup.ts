// Builds the ceremony and audit parts for the composition root (src/daemon.ts): their stores, the
// token's audit signing key, the audit log, and the ceremony with the audit log as its sink.

import crypto from 'node:crypto';
import type { Store } from '../store/api';
import type { HsmToken } from '../hsm/token';
import type { KmsService, Logger } from '../kms/service';
import type { ImportService } from '../kms/import';
import type { XksService } from '../kms/xks';
import type { CallContext } from '../kms/types';
import { AuditConfig, AuditLog, DEFAULT_AUDIT_CONFIG } from '../audit/audit';
import { MAX_IDENTIFIER_CHARS, isUuid } from '../kms/validate';
import { Ceremony, CeremonySink, DEFAULT_CEREMONY_CONFIG } from './ceremony';

export const AUDIT_SIGNING_KEY_ID = 'audit-v1';

export interface CeremonyRuntime {
  ceremony: Ceremony;
  audit: AuditLog;
  sink: CeremonySink;
  kms: KmsService;
  /** Scheduler tick: counters to disk, periodic checkpoint. */
  tick(): Promise<void>;
  /** Shutdown: counters, a last record and a final checkpoint. */
  close(): Promise<void>;
}

export async function startCeremonyAndAudit(o: {
  store: Store;
  token: HsmToken;
  kms: KmsService;
  imports: ImportService;
  /** The external key store proxy (CreateXksKey can be guarded). */
  xks?: XksService;
  log: Logger;
  /** Checkpoints and data-plane records (validated in src/config.ts); the defaults where unset. */
  auditSettings?: { checkpointEveryRecords?: number; checkpointIntervalMs?: number; dataPlaneEvents?: boolean };
  /** Default proposal life in seconds (validated in src/config.ts); the ceremony's default where unset. */
  proposalTtlSeconds?: number;
  /** The gRPC message limit, which an ExportAudit page must stay under. */
  maxMessageBytes?: number;
}): Promise<CeremonyRuntime> {
  const instanceId = await o.store.ceremony.instanceId(() => crypto.randomUUID());
  const publicKey = o.token.ensureSigningKeyPair(AUDIT_SIGNING_KEY_ID);
  const audit = new AuditLog(
    o.store,
    { publicKeyDer: () => publicKey, sign: (data) => o.token.signCheckpoint(AUDIT_SIGNING_KEY_ID, data) },
    instanceId,
    { ...auditSettings(o.auditSettings), ...(o.maxMessageBytes ? { exportPageBytes: Math.floor(o.maxMessageBytes / 2) } : {}) },
  );
  // Records and counters name the CMK a caller meant, whatever form the KeyId was typed in.
  // Inside a transaction, through it (the store itself waits for that transaction to end).
  audit.resolveKeyId = async (ref, tx) => {
    if (ref.length > MAX_IDENTIFIER_CHARS) return undefined;
    const on = tx ?? o.store;
    if (ref.startsWith('alias/')) return (await on.getAlias(ref))?.key_id;
    const id = ref.toLowerCase();
    return isUuid(id) && (o.store.cachedCmk(id) ?? (await on.getCmk(id))) ? id : undefined;
  };
  await audit.init();
  const sink: CeremonySink = {
    record: async (ev, tx) => {
      await audit.appendIn(tx, ev);
    },
    keyActionDone: async (action: string, keyId: string, ctx: CallContext, tx, proposalId?: string) => {
      if (action !== 'ImportKeyMaterial') return;
      const row = await tx.getCmk(keyId);
      // Host-assisted unwrap had the material in kmsd's memory for a moment: always on the record.
      if (row?.import_path?.includes('host-assisted')) {
        await audit.appendIn(tx, { requestId: ctx.requestId, principal: ctx.principal, action: 'HostAssistedUnwrap', keyId, proposalId, outcome: 'ok', details: { MaterialImportPath: row.import_path } });
      }
    },
  };
  const ttl = o.proposalTtlSeconds ?? DEFAULT_CEREMONY_CONFIG.defaultProposalTtlSeconds;
  const info = await o.token.tokenInfoSettled();
  const ceremony = new Ceremony(
    o.store,
    { kms: o.kms, imports: o.imports, xks: o.xks },
    { instanceId, tokenLabel: info.label, tokenSerial: info.serialNumber },
    { ...DEFAULT_CEREMONY_CONFIG, defaultProposalTtlSeconds: ttl },
    sink,
  );
  await ceremony.load();
  const interrupted = await ceremony.recoverInterrupted();
  await audit.append({ principal: 'kmsd', action: 'DaemonStarted', outcome: 'ok', details: { InstanceId: instanceId, TokenLabel: info.label, AuditKeySha256: audit.publicKeyFingerprint, InterruptedProposals: interrupted } });
  o.log.info({ instanceId, auditKeySha256: audit.publicKeyFingerprint, ceremonyInitialized: ceremony.initialized() }, 'audit log and ceremony ready');
  return {
    ceremony,
    audit,
    sink,
    kms: o.kms,
    tick: () => audit.tick(),
    close: async () => {
      await audit.append({ principal: 'kmsd', action: 'DaemonStopped', outcome: 'ok' });
      await audit.close();
    },
  };
}

function auditSettings(s: { checkpointEveryRecords?: number; checkpointIntervalMs?: number; dataPlaneEvents?: boolean } = {}): AuditConfig {
  return {
    ...DEFAULT_AUDIT_CONFIG,
    checkpointEveryRecords: s.checkpointEveryRecords ?? DEFAULT_AUDIT_CONFIG.checkpointEveryRecords,
    checkpointIntervalMs: s.checkpointIntervalMs ?? DEFAULT_AUDIT_CONFIG.checkpointIntervalMs,
    dataPlaneEvents: s.dataPlaneEvents ?? DEFAULT_AUDIT_CONFIG.dataPlaneEvents,
  };
}
