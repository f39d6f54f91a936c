// gRPC side of ceremonies and audit: the CeremonyService and AuditService handlers, and the two decorators put
// around every KeyManagementService action: the quorum guard (a guarded action called directly is
// refused with Rejected.QuorumRequired) and the audit recorder (control-plane calls become audit
// records; data-plane calls are counted per CMK, principal and action).

import { KmsError } from '../../kms/errors';
import type { CallContext } from '../../kms/types';
import type { CeremonyRuntime } from '../../ceremony/setup';
import { TOKEN_ACTIONS, callerOf } from '../../ceremony/ceremony';
import { isGuardable } from '../../ceremony/policy';
import { safeParams, type AuditEventInput } from '../../audit/audit';
import type { RecordNames } from '../../kms/types';
import type { StoreTx } from '../../store/api';

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

  /** The record of a call: what it asked, what it answered (or its error), and what its change names. */
  // `tx`: the transaction the record goes into, when there is one (every read goes through it).
  const eventOf = async (name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown, names: RecordNames = {}, tx?: StoreTx): Promise<AuditEventInput> => {
    const outcome = err === undefined ? 'ok' : err instanceof KmsError ? err.code : 'InternalFailure';
    const meta = (res?.KeyMetadata ?? {}) as Req;
    const proposalId = str(req.ProposalId) || str(res?.ProposalId) || str(names.ProposalId);
    const keyId = str(req.KeyId) || str(meta.KeyId) || str(res?.KeyId) || str(names.KeyId) || (proposalId ? await ceremony.keyIdOf(proposalId, tx) : '');
    const details: Record<string, unknown> = safeParams(req);
    if (err instanceof KmsError) details.Error = err.message.length > 400 ? `${err.message.slice(0, 397)}...` : err.message;
    // HTTP calls name the access key they were signed with; CreateAccessKey names the key it made.
    const accessKeyId = ctx.accessKeyId ?? (str(res?.AccessKeyId) || str(names.AccessKeyId));
    if (accessKeyId) details.AccessKeyId = accessKeyId;
    return { requestId: ctx.requestId, principal: ctx.principal, action: name, keyId, proposalId, outcome, details };
  };

  /**
   * Puts the call on the record: counted at once (undefined), or a promise that resolves once it is
   * counted or its record committed. A data-plane call whose answer names its CMK, the common case,
   * takes no promise and no extra turn; a refusal has to look the CMK up first.
   */
  const record = (name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown): Promise<void> | undefined => {
    const dataPlane = DATA_PLANE_ACTIONS.has(name);
    if (!dataPlane && !BATCH_ACTIONS.has(name)) return append(name, req, ctx, res, err);
    const answered = str(res?.KeyId);
    if (dataPlane && answered !== '' && !audit.config.dataPlaneEvents) {
      audit.count(answered, callerOf(ctx), name, err === undefined);
      return undefined;
    }
    return countThenAppend(dataPlane, name, req, ctx, res, err);
  };

  const countThenAppend = async (dataPlane: boolean, name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown): Promise<void> => {
    if (dataPlane) {
      // Counted under the CMK the call used (its answer names it) or, for a refusal, the existing
      // CMK the request names; anything else under '' (see AuditLog.count).
      const ref = str(req.KeyId) || str(req.DestinationKeyId);
      const cmk = str(res?.KeyId) || (ref ? await audit.resolveKeyId(ref) : undefined) || '';
      audit.count(cmk, callerOf(ctx), name, err === undefined);
    } else {
      await countBatch(name, req, ctx, res, err);
    }
    if (audit.config.dataPlaneEvents) await append(name, req, ctx, res, err);
  };

  const append = async (name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown): Promise<void> => {
    // Committed with the records of the calls that finish alongside it; the answer waits for it.
    await audit.appendCommitted(await eventOf(name, req, ctx, res, err));
  };

  /**
   * Each item under the CMK its result names or, for a refused item, the existing CMK its request
   * named (else ''), as a unary call of it would be; a batch refused as a whole is one error under ''.
   */
  const countBatch = async (name: string, req: Req, ctx: CallContext, res: Req | undefined, err: unknown): Promise<void> => {
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
        cmk = (ref ? await audit.resolveKeyId(ref) : undefined) ?? '';
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

  // A call that changes state has its record appended by the domain, through ctx.record, in the
  // transaction that makes the change: a crash keeps both or neither. A call whose change was
  // recorded that way gets no second record for its success; a refusal (nothing changed) and a
  // read are recorded here after the call, as a record of their own.
  const audited =
    (name: string, fn: (req: Req, ctx: CallContext) => unknown): Action =>
    async (req: never, ctx: CallContext) => {
      const request = (req ?? {}) as Req;
      let inChange = false;
      const callCtx: CallContext = DATA_PLANE_ACTIONS.has(name)
        ? ctx
        : {
            ...ctx,
            record: async (tx, names) => {
              if (inChange) return;
              const ev = await eventOf(name, request, ctx, undefined, undefined, names, tx);
              await audit.appendIn(tx, ev);
              // Host-assisted unwrap had the material in kmsd's memory for a moment: always on the record.
              if (name === 'ImportKeyMaterial' && ev.keyId) await rt.sink.keyActionDone?.(name, ev.keyId, ctx, tx);
              inChange = true;
            },
          };
      let res: unknown;
      try {
        res = await fn(request, callCtx);
      } catch (e) {
        const committed = record(name, request, ctx, undefined, e);
        if (committed) await committed;
        throw e;
      }
      if (!inChange) {
        const committed = record(name, request, ctx, res as Req, undefined);
        if (committed) await committed;
      }
      return res;
    };

  return {
    wrap(actions) {
      const out: Record<string, Action> = {};
      for (const [name, fn] of Object.entries(actions)) {
        const inner = fn as (req: Req, ctx: CallContext) => unknown;
        const guarded = isGuardable(name) || (TOKEN_ACTIONS as readonly string[]).includes(name)
          ? async (req: Req, ctx: CallContext) => {
              await ceremony.checkDirect(name, req as { KeyId?: string });
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
