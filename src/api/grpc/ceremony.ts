// gRPC side of ceremonies and audit: the CeremonyService and AuditService handlers, and the two decorators put
// around every KeyManagementService action: the quorum guard (a guarded action called directly is
// refused with Rejected.QuorumRequired) and the audit recorder (control-plane calls become audit
// records; data-plane calls are counted per CMK, principal and action).

import { KmsError } from '../../kms/errors';
import type { CallContext } from '../../kms/types';
import type { CeremonyRuntime } from '../../ceremony/setup';
import { TOKEN_ACTIONS, callerOf } from '../../ceremony/ceremony';
import { isGuardable } from '../../ceremony/policy';
import { safeParams } from '../../audit/audit';

type Action = (req: never, ctx: CallContext) => unknown;
type Req = Record<string, unknown>;

export interface CeremonyExtension {
  /** Wraps the KeyManagementService actions with the guard and the audit recorder. */
  wrap(actions: Record<string, Action>): Record<string, Action>;
  /** The other services to register, each with one action per RPC. */
  services(): { name: 'CeremonyService' | 'AuditService'; actions: Record<string, Action> }[];
}

export const DATA_PLANE_ACTIONS = new Set(['Encrypt', 'Decrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'ReEncrypt']);

/**
 * Batches of data-plane items (and each message of their streams): counted item by item like the
 * unary calls they stand for, not recorded one message at a time. A record per message put an SQLite
 * commit with its fsync on the event loop for every 256 items, the largest piece of a stream's cost.
 */
export const BATCH_ACTIONS = new Set(['EncryptBatch', 'DecryptBatch', 'EncryptStream', 'DecryptStream']);

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}

export function ceremonyExtension(rt: CeremonyRuntime): CeremonyExtension {
  const { ceremony, audit } = rt;

  /**
   * Puts the call on the record: counted at once (undefined), or a promise that resolves once its
   * record is committed. Counted calls, the data plane, take no promise and no extra turn.
   */
  const record = (name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown): Promise<void> | undefined => {
    if (DATA_PLANE_ACTIONS.has(name)) {
      // Counted under the CMK the call used (its answer names it) or, for a refusal, the existing
      // CMK the request names; anything else under '' (see AuditLog.count).
      const ref = str(req.KeyId) || str(req.DestinationKeyId);
      const cmk = str(res?.KeyId) || (ref ? audit.resolveKeyId(ref) : undefined) || '';
      audit.count(cmk, callerOf(ctx), name, err === undefined);
      if (!audit.config.dataPlaneEvents) return;
    } else if (BATCH_ACTIONS.has(name)) {
      countBatch(name, req, ctx, res, err);
      if (!audit.config.dataPlaneEvents) return;
    }
    return append(name, req, ctx, res, err);
  };

  const append = async (name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown): Promise<void> => {
    const outcome = err === undefined ? 'ok' : err instanceof KmsError ? err.code : 'InternalFailure';
    const meta = (res?.KeyMetadata ?? {}) as Req;
    const proposalId = str(req.ProposalId) || str(res?.ProposalId);
    const keyId = str(req.KeyId) || str(meta.KeyId) || str(res?.KeyId) || (proposalId ? ceremony.keyIdOf(proposalId) : '');
    const details: Record<string, unknown> = safeParams(req);
    if (err instanceof KmsError) details.Error = err.message.length > 400 ? `${err.message.slice(0, 397)}...` : err.message;
    // HTTP calls name the access key they were signed with; CreateAccessKey names the key it made.
    const accessKeyId = ctx.accessKeyId ?? str(res?.AccessKeyId);
    if (accessKeyId) details.AccessKeyId = accessKeyId;
    // Committed with the records of the calls that finish alongside it; the answer waits for it.
    await audit.appendCommitted({ requestId: ctx.requestId, principal: ctx.principal, action: name, keyId, proposalId, outcome, details });
    if (err === undefined && name === 'ImportKeyMaterial' && keyId) rt.sink.keyActionDone?.(name, keyId, ctx);
  };

  /**
   * Each item under the CMK its result names or, for a refused item, the existing CMK its request
   * named (else ''), as a unary call of it would be; a batch refused as a whole is one error under ''.
   */
  const countBatch = (name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown): void => {
    const caller = callerOf(ctx);
    const results = res?.Results;
    if (err !== undefined || !Array.isArray(results)) {
      audit.count('', caller, name, false);
      return;
    }
    const items = Array.isArray(req.Items) ? (req.Items as Req[]) : [];
    // A batch names a few CMKs many times: one counter update per CMK and outcome.
    const tally = new Map<string, { ok: number; errors: number }>();
    for (let i = 0; i < results.length; i++) {
      const r = results[i] as Req;
      const ok = str(r?.Code) === '';
      let cmk = str(r?.KeyId);
      if (!cmk) {
        const ref = str(items[i]?.KeyId);
        cmk = (ref ? audit.resolveKeyId(ref) : undefined) ?? '';
      }
      let t = tally.get(cmk);
      if (!t) tally.set(cmk, (t = { ok: 0, errors: 0 }));
      if (ok) t.ok++;
      else t.errors++;
    }
    for (const [cmk, t] of tally) {
      if (t.ok) audit.count(cmk, caller, name, true, t.ok);
      if (t.errors) audit.count(cmk, caller, name, false, t.errors);
    }
  };

  const audited =
    (name: string, fn: (req: Req, ctx: CallContext) => unknown): Action =>
    async (req: never, ctx: CallContext) => {
      let res: unknown;
      try {
        res = await fn(req as Req, ctx);
      } catch (e) {
        const committed = record(name, (req ?? {}) as Req, ctx, undefined, e);
        if (committed) await committed;
        throw e;
      }
      const committed = record(name, (req ?? {}) as Req, ctx, res as Req, undefined);
      if (committed) await committed;
      return res;
    };

  return {
    wrap(actions) {
      const out: Record<string, Action> = {};
      for (const [name, fn] of Object.entries(actions)) {
        const inner = fn as (req: Req, ctx: CallContext) => unknown;
        const guarded = isGuardable(name) || (TOKEN_ACTIONS as readonly string[]).includes(name)
          ? (req: Req, ctx: CallContext) => {
              ceremony.checkDirect(name, req as { KeyId?: string });
              return inner(req, ctx);
            }
          : inner;
        out[name] = audited(name, guarded);
      }
      return out;
    },
    services() {
      const c = ceremony;
      const a = audit;
      const list: { name: 'CeremonyService' | 'AuditService'; actions: Record<string, Action> }[] = [
        {
          name: 'CeremonyService',
          actions: {
            InitCeremony: audited('InitCeremony', (r, ctx) => c.InitCeremony(r, ctx)),
            DescribeCeremony: audited('DescribeCeremony', () => c.DescribeCeremony()),
            CreateProposal: audited('CreateProposal', (r, ctx) => c.CreateProposal(r, ctx)),
            GetProposal: audited('GetProposal', (r) => c.GetProposal(r)),
            ListProposals: audited('ListProposals', (r) => c.ListProposals(r)),
            ApproveProposal: audited('ApproveProposal', (r, ctx) => c.ApproveProposal(r, ctx)),
            ExecuteProposal: audited('ExecuteProposal', (r, ctx) => c.ExecuteProposal(r, ctx)),
            CancelProposal: audited('CancelProposal', (r, ctx) => c.CancelProposal(r, ctx)),
            RenewProposal: audited('RenewProposal', (r, ctx) => c.RenewProposal(r, ctx)),
          },
        },
        {
          name: 'AuditService',
          actions: {
            ListAuditEvents: audited('ListAuditEvents', (r) => a.ListAuditEvents(r)),
            VerifyAudit: audited('VerifyAudit', () => a.VerifyAudit()),
            ExportAudit: audited('ExportAudit', (r) => a.ExportAudit(r)),
            GetUsageCounters: audited('GetUsageCounters', (r) => a.GetUsageCounters(r)),
          },
        },
      ];
      return list;
    },
  };
}
