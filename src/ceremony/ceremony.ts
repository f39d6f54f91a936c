// Key ceremonies: custodians, the quorum policy, proposals and approvals.
//
// A guarded action is never run on one operator's say-so. It is proposed (CreateProposal), which
// freezes its parameters into a document; M of the N current custodians sign that document offline
// with their Ed25519 keys (kmsctl SignProposal, or plain `openssl pkeyutl -sign -rawin`) and submit
// the signatures (ApproveProposal); then ExecuteProposal runs the action exactly once. Approvals
// count only while their custodian is still in the set with the same key, and only for the current
// revision of the document. Nothing here is guarded before InitCeremony: a daemon without
// custodians behaves as before.

import crypto from 'node:crypto';
import type { ProposalRow, ApprovalRow, CustodianRow, Store, StoreTx } from '../store/api';
import { KmsError, invalid, missing } from '../kms/errors';
import * as v from '../kms/validate';
import type { CallContext } from '../kms/types';
import { CustodianKey, custodianId, parseCustodianKey, parseCustodianList, publicKeyPem, validateSet } from './custodians';
import { DEFAULT_POLICY, QuorumPolicy, REVERSES, guardReason, isGuardable, parsePolicy } from './policy';
import { DOCUMENT_FORMAT, renderDocument, sha256Hex, verifyEd25519 } from './document';
import { ActionTargets, KEY_ACTIONS, isKeyAction, prepareKeyAction, runKeyAction, scrubbedParameters } from './actions';

export interface CeremonyConfig {
  /** Life of a proposal unless CreateProposal says otherwise (24 h). */
  defaultProposalTtlSeconds: number;
  maxProposalTtlSeconds: number;
}

export const DEFAULT_CEREMONY_CONFIG: CeremonyConfig = { defaultProposalTtlSeconds: 86400, maxProposalTtlSeconds: 7 * 86400 };

export interface InstanceInfo {
  instanceId: string;
  tokenLabel: string;
  tokenSerial: string;
}

/** Where proposal events and executed actions are recorded (the audit log), in the transaction of the change. */
export interface CeremonySink {
  record(ev: { requestId?: string; principal: string; action: string; keyId?: string; proposalId?: string; outcome: string; details?: Record<string, unknown> }, tx: StoreTx): Promise<void>;
  /** After a key action's change (directly or through a proposal), in its transaction: lets the audit note host-assisted unwraps. */
  keyActionDone?(action: string, keyId: string, ctx: CallContext, tx: StoreTx, proposalId?: string): Promise<void>;
}

/** Actions that change the ceremony itself: always guarded, only ever run through a proposal. */
const CEREMONY_ACTIONS = ['SetCustodians', 'SetQuorumPolicy'] as const;
type CeremonyAction = (typeof CEREMONY_ACTIONS)[number];

/**
 * Actions on the token as a whole: guarded once a ceremony is initialized (whatever the quorum
 * policy says), so that removing token objects the store cannot explain, which may be the only copy
 * of someone's key material, takes the quorum.
 */
export const TOKEN_ACTIONS = ['RemoveUnknownTokenObjects'] as const;

export const PROPOSABLE_ACTIONS = [...Object.keys(KEY_ACTIONS), ...CEREMONY_ACTIONS, ...TOKEN_ACTIONS];

// No "@": it separates the declared name from the caller in the requester identity.
const REQUESTER_RE = /^[A-Za-z0-9._-]{1,64}$/;
const SIGNATURE_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

type ViewState = 'Open' | 'Expired' | 'Cancelled' | 'Executed';

function iso(ms: number | null | undefined): string {
  return ms === null || ms === undefined ? '' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** The host part of a gRPC peer ("127.0.0.1:53312", "ipv6:[::1]:53312"), or the principal as is. */
export function peerHost(principal: string): string {
  const p = principal.replace(/^ipv[46]:/, '');
  const m = /^\[?([^\]]*?)\]?:\d+$/.exec(p);
  return m ? m[1] : p;
}

/**
 * The caller, for proposal ownership and usage counters: the exact principal of a client
 * certificate, or the host of the gRPC peer when there is none (plaintext on loopback).
 */
export function callerOf(ctx: CallContext): string {
  return ctx.authenticated ? ctx.principal : peerHost(ctx.principal);
}

/**
 * Who asked: `Requester@caller`, or the caller alone. One string per (Requester, caller) pair and
 * back: a Requester has no "@", so the first "@" ends it, and a caller with an "@" of its own is
 * written "@caller" when no Requester is given. Two principals never share an identity, whatever
 * names they choose.
 */
export function requesterIdentity(ctx: CallContext, declared: string | undefined): string {
  const caller = callerOf(ctx);
  if (!declared) return caller.includes('@') ? `@${caller}` : caller;
  if (!REQUESTER_RE.test(declared)) throw invalid('Requester', 'must be 1 to 64 of A-Z, a-z, 0-9, ".", "_", "-" ("@" is not allowed: it separates the requester from the caller)');
  return `${declared}@${caller}`;
}

export class Ceremony {
  private policyCache: QuorumPolicy | null = null;
  private initializedCache: boolean | null = null;

  constructor(
    private readonly store: Store,
    private readonly targets: ActionTargets,
    private readonly instance: InstanceInfo,
    readonly config: CeremonyConfig,
    private readonly sink: CeremonySink,
    private readonly now: () => number = Date.now,
  ) {
    // Read again when rows may have changed (a rollback, another replica's change).
    store.onRollback(() => {
      this.load().catch(() => undefined);
    });
  }

  private get cs() {
    return this.store.ceremony;
  }

  /**
   * Reads whether the ceremony is initialized and the quorum policy (start-up, and after a change):
   * the guard in front of every guardable call reads them from memory.
   */
  async load(): Promise<this> {
    this.initializedCache = (await this.cs.initializedAt()) !== null;
    const json = await this.cs.policyJson();
    this.policyCache = json ? parsePolicy('policy', json) : DEFAULT_POLICY;
    return this;
  }

  // ================================================================ state

  initialized(): boolean {
    return this.initializedCache === true;
  }

  policy(): QuorumPolicy {
    return this.policyCache ?? DEFAULT_POLICY;
  }

  private requireInitialized(): void {
    if (!this.initialized()) throw new KmsError('Rejected.CeremonyNotInitialized', 'no custodians are registered: run kmsctl InitCeremony --Custodians id=key.pub,... --Threshold M first');
  }

  /** Proposals a crash left half-run are closed, never re-run: exactly once means at most once. */
  async recoverInterrupted(): Promise<number> {
    const rows = await this.cs.interruptedProposals();
    for (const r of rows) {
      await this.store.transaction(async (tx) => {
        if (!(await tx.ceremony.transition(r.proposal_id, 'Executing', 'Executed', { closed_at: this.now(), outcome: 'Interrupted', result: '' }))) return;
        await this.sink.record({ principal: 'kmsd', action: 'ProposalInterrupted', keyId: r.key_id ?? '', proposalId: r.proposal_id, outcome: 'Interrupted', details: { Action: r.action } }, tx);
      });
    }
    return rows.length;
  }

  // ================================================================ the guard

  /**
   * Called before a KeyManagementService action runs directly. A guarded action answers
   * Rejected.QuorumRequired (FAILED_PRECONDITION) and names the proposal flow.
   */
  async checkDirect(action: string, req: { KeyId?: string }): Promise<void> {
    if (this.initialized() && (TOKEN_ACTIONS as readonly string[]).includes(action)) {
      const m = (await this.cs.threshold());
      const n = (await this.cs.activeCustodians()).length;
      throw new KmsError(
        'Rejected.QuorumRequired',
        `${action} needs the approval of ${m} of ${n} custodians once a ceremony is initialized: kmsctl CreateProposal --Action ${action} ` +
          `--Parameters '{"ObjectIds":"<id>,<id>"}' (or '{"All":"true"}'), then ${m} custodians sign the Document and call ApproveProposal, then kmsctl ExecuteProposal --ProposalId <id> (docs/ceremony.md)`,
      );
    }
    if (!this.initialized() || !isGuardable(action)) return;
    const row = await this.targets.kms.resolve('KeyId', req.KeyId);
    const why = guardReason(this.policy(), action, row);
    if (!why) return;
    const m = (await this.cs.threshold());
    const n = (await this.cs.activeCustodians()).length;
    throw new KmsError(
      'Rejected.QuorumRequired',
      `${action} on ${row.protection_level} CMK ${row.key_id} needs the approval of ${m} of ${n} custodians` +
        (why === 'reverse' ? ` (it undoes ${REVERSES[action as keyof typeof REVERSES]}, which is guarded)` : '') +
        ': ' +
        `kmsctl CreateProposal --Action ${action} --KeyId ${row.key_id} [its other parameters], then ${m} custodians sign the Document ` +
        `and call ApproveProposal, then kmsctl ExecuteProposal --ProposalId <id> (docs/ceremony.md)`,
    );
  }

  // ================================================================ custodians

  async InitCeremony(req: { Custodians?: { CustodianId?: string; PublicKey?: string }[]; Threshold?: number }, ctx: CallContext) {
    if (this.initialized()) {
      throw new KmsError(
        'Rejected.QuorumRequired',
        'the ceremony is already initialized; changing custodians or the threshold is a guarded action: kmsctl CreateProposal --Action SetCustodians --Custodians id=key.pub,... --Threshold M, approved by the current custodians',
      );
    }
    const list = req.Custodians ?? [];
    const set: CustodianKey[] = list.map((c, i) => {
      const id = custodianId(`Custodians[${i}].CustodianId`, c.CustodianId);
      if (!c.PublicKey) throw missing(`Custodians[${i}].PublicKey`);
      return parseCustodianKey(`Custodians[${i}].PublicKey`, id, c.PublicKey);
    });
    const threshold = validateSet('Custodians', set, req.Threshold === 0 ? 0 : req.Threshold);
    await this.store.transaction(async (tx) => {
      // Checked again in the transaction: of two concurrent InitCeremony calls one initializes.
      if ((await tx.ceremony.initializedAt()) !== null) throw new KmsError('Rejected.QuorumRequired', 'the ceremony is already initialized');
      await tx.ceremony.replaceCustodianSet(
        set.map((c) => ({ custodian_id: c.custodianId, public_key: c.der, fingerprint: c.fingerprint })),
        threshold,
        this.now(),
        true,
      );
      if (!(await tx.ceremony.policyJson())) await tx.ceremony.setPolicyJson(JSON.stringify(DEFAULT_POLICY));
      if (ctx.record) await ctx.record(tx);
    });
    await this.load();
    return this.DescribeCeremony();
  }

  async DescribeCeremony() {
    const custodians = (await this.cs.activeCustodians());
    return {
      Initialized: this.initialized(),
      InstanceId: this.instance.instanceId,
      Threshold: this.initialized() ? (await this.cs.threshold()) : 0,
      Custodians: custodians.map((c) => ({ CustodianId: c.custodian_id, PublicKey: publicKeyPem(c.public_key), Fingerprint: c.fingerprint, AddedAt: iso(c.added_at) })),
      CustodianSetVersion: (await this.cs.custodianSetVersion()),
      Policy: this.initialized() ? JSON.stringify(this.policy()) : '',
      InitializedAt: iso((await this.cs.initializedAt())),
      DefaultProposalTtlSeconds: this.config.defaultProposalTtlSeconds,
      ProposableActions: PROPOSABLE_ACTIONS,
    };
  }

  // ================================================================ proposals

  private stateOf(row: ProposalRow): ViewState {
    if (row.state === 'Executed' || row.state === 'Executing') return 'Executed';
    if (row.state === 'Cancelled') return 'Cancelled';
    return row.expires_at <= this.now() ? 'Expired' : 'Open';
  }

  /** The proposal a request names; on a StoreTx, locked until the transaction ends (a row lock where the backend has them). */
  private async getRow(id: string | undefined, tx?: StoreTx): Promise<ProposalRow> {
    const s = v.requireString('ProposalId', id);
    if (!v.isUuid(s)) throw invalid('ProposalId', `"${s.slice(0, 80)}" is not a proposal id (a lowercase UUID)`);
    const row = tx ? await tx.getProposalForUpdate(s) : await this.cs.getProposal(s);
    if (!row) throw new KmsError('Forbidden.ProposalNotFound', `ProposalId: no proposal ${s}`);
    return row;
  }

  /** Approvals and whether each counts now: current revision, custodian still in the set, same key. */
  private async tally(row: ProposalRow, on: Store | StoreTx = this.store): Promise<{ counted: ApprovalRow[]; details: { CustodianId: string; ApprovedAt: string; Revision: number; Counts: boolean; Reason: string }[] }> {
    const active = new Map<string, CustodianRow>((await on.ceremony.activeCustodians()).map((c) => [c.custodian_id, c]));
    const counted: ApprovalRow[] = [];
    const details = (await on.ceremony.approvals(row.proposal_id)).map((a) => {
      let reason = '';
      const c = active.get(a.custodian_id);
      if (a.revision !== row.revision) reason = `approved revision ${a.revision}; the current document is revision ${row.revision}`;
      else if (!c) reason = 'the custodian is no longer in the custodian set';
      else if (c.fingerprint !== a.key_fingerprint) reason = "the custodian's key was replaced after this approval";
      if (!reason) counted.push(a);
      return { CustodianId: a.custodian_id, ApprovedAt: iso(a.approved_at), Revision: a.revision, Counts: !reason, Reason: reason };
    });
    return { counted, details };
  }

  private async view(row: ProposalRow, withDocument = true) {
    const t = await this.tally(row);
    let params = '';
    try {
      params = JSON.stringify((JSON.parse(row.document.toString('utf8')) as { Parameters?: unknown }).Parameters ?? {});
    } catch {
      params = '';
    }
    return {
      ProposalId: row.proposal_id,
      Revision: row.revision,
      Action: row.action,
      KeyId: row.key_id ?? '',
      State: this.stateOf(row),
      Requester: row.requester,
      CreatedAt: iso(row.created_at),
      ExpiresAt: iso(row.expires_at),
      Approvals: t.counted.length,
      Required: (await this.cs.threshold()),
      Approvers: t.details,
      Document: withDocument ? row.document.toString('base64') : '',
      DocumentSha256: sha256Hex(row.document),
      Outcome: row.outcome ?? '',
      Result: row.result ?? '',
      ClosedAt: iso(row.closed_at),
      Parameters: params,
    };
  }

  private ttl(field: string, value: number | undefined): number {
    if (value === undefined || value === null || value === 0) return this.config.defaultProposalTtlSeconds;
    if (!Number.isInteger(value) || value < 1 || value > this.config.maxProposalTtlSeconds) {
      throw invalid(field, `must be from 1 to ${this.config.maxProposalTtlSeconds} seconds (0 for the default ${this.config.defaultProposalTtlSeconds})`);
    }
    return value;
  }

  private async document(row: { proposal_id: string; revision: number; action: string; requester: string; created_at: number; expires_at: number }, view: Record<string, unknown>, key: Record<string, unknown> | undefined): Promise<Buffer> {
    return renderDocument({
      Format: DOCUMENT_FORMAT,
      Instance: { InstanceId: this.instance.instanceId, TokenLabel: this.instance.tokenLabel, TokenSerial: this.instance.tokenSerial },
      ProposalId: row.proposal_id,
      Revision: row.revision,
      Action: row.action,
      Key: key,
      Parameters: view,
      Requester: row.requester,
      CreatedAt: iso(row.created_at),
      ExpiresAt: iso(row.expires_at),
      Nonce: crypto.randomBytes(16).toString('hex'),
      Quorum: { Threshold: (await this.cs.threshold()), Custodians: (await this.cs.activeCustodians()).map((c) => c.custodian_id), CustodianSetVersion: (await this.cs.custodianSetVersion()) },
    });
  }

  /** Types and checks the parameters of any proposable action; returns what to store and show. */
  private async prepare(action: string, params: Record<string, string>): Promise<{ keyId: string | null; request: Record<string, unknown>; view: Record<string, unknown>; key?: Record<string, unknown> }> {
    if (isKeyAction(action)) {
      const p = await prepareKeyAction(this.targets, action, params);
      return { keyId: p.keyId, request: p.request, view: p.view, key: p.key };
    }
    if (action === 'SetCustodians') {
      for (const k of Object.keys(params)) if (k !== 'Custodians' && k !== 'Threshold') throw invalid(`Parameters.${k}`, 'SetCustodians takes Custodians and Threshold');
      const set = parseCustodianList('Parameters.Custodians', params.Custodians);
      if (params.Threshold === undefined || !/^\d{1,3}$/.test(params.Threshold)) throw invalid('Parameters.Threshold', 'must be an integer M with 1 <= M <= N');
      const threshold = validateSet('Parameters.Custodians', set, Number(params.Threshold), 'Parameters.Threshold');
      const current = new Map((await this.cs.activeCustodians()).map((c) => [c.custodian_id, c]));
      const next = new Map(set.map((c) => [c.custodianId, c]));
      return {
        keyId: null,
        request: { Custodians: set.map((c) => ({ CustodianId: c.custodianId, PublicKey: c.der.toString('base64') })), Threshold: threshold },
        view: {
          Custodians: set.map((c) => ({ CustodianId: c.custodianId, PublicKeySha256: c.fingerprint })),
          Threshold: threshold,
          Changes: {
            Added: [...next.keys()].filter((id) => !current.has(id)),
            Removed: [...current.keys()].filter((id) => !next.has(id)),
            KeyReplaced: [...next.values()].filter((c) => current.has(c.custodianId) && current.get(c.custodianId)!.fingerprint !== c.fingerprint).map((c) => c.custodianId),
            ThresholdBefore: (await this.cs.threshold()),
          },
        },
      };
    }
    if (action === 'SetQuorumPolicy') {
      for (const k of Object.keys(params)) if (k !== 'Policy') throw invalid(`Parameters.${k}`, 'SetQuorumPolicy takes Policy');
      const policy = parsePolicy('Parameters.Policy', params.Policy);
      return { keyId: null, request: { Policy: policy }, view: { Policy: policy, PolicyBefore: this.policy() } };
    }
    if (action === 'RemoveUnknownTokenObjects') {
      for (const k of Object.keys(params)) if (k !== 'ObjectIds' && k !== 'All') throw invalid(`Parameters.${k}`, 'RemoveUnknownTokenObjects takes ObjectIds or All');
      if (params.All !== undefined && params.All !== 'true') throw invalid('Parameters.All', 'must be "true" when given');
      const request = { ObjectIds: params.ObjectIds ?? '', All: params.All === 'true' };
      // What the custodians see is what kmsd knows now; execution checks each id again.
      const unknown = this.targets.kms.unknownObjects;
      return { keyId: null, request, view: { ...request, UnknownTokenObjectsNow: unknown.slice(0, 200), UnknownCountNow: unknown.length } };
    }
    throw invalid('Action', `must be one of ${PROPOSABLE_ACTIONS.join(', ')} (got "${String(action).slice(0, 60)}")`);
  }

  async CreateProposal(req: { Action?: string; Parameters?: Record<string, string>; Requester?: string; ExpiresInSeconds?: number }, ctx: CallContext) {
    this.requireInitialized();
    const action = v.requireString('Action', req.Action);
    const requester = requesterIdentity(ctx, req.Requester || undefined);
    const ttl = this.ttl('ExpiresInSeconds', req.ExpiresInSeconds);
    const prepared = await this.prepare(action, req.Parameters ?? {});
    const now = this.now();
    const base = { proposal_id: crypto.randomUUID(), revision: 1, action, requester, created_at: now, expires_at: now + ttl * 1000 };
    const row: ProposalRow = {
      ...base,
      key_id: prepared.keyId,
      parameters: JSON.stringify(prepared.request),
      document: await this.document(base, prepared.view, prepared.key),
      state: 'Open',
      closed_at: null,
      outcome: null,
      result: null,
    };
    await this.store.transaction(async (tx) => {
      await tx.ceremony.insertProposal(row);
      if (ctx.record) await ctx.record(tx, { ProposalId: row.proposal_id });
    });
    return this.view(row);
  }

  /** The CMK a proposal acts on ('' for ceremony actions or an unknown id), for audit records. */
  async keyIdOf(proposalId: string, on: Store | StoreTx = this.store): Promise<string> {
    return v.isUuid(proposalId) ? ((await on.ceremony.getProposal(proposalId))?.key_id ?? '') : '';
  }

  async GetProposal(req: { ProposalId?: string }) {
    return this.view(await this.getRow(req.ProposalId));
  }

  async ListProposals(req: { State?: string; PageNumber?: number; PageSize?: number }) {
    const state: ViewState | undefined = req.State ? v.oneOf('State', req.State, ['Open', 'Expired', 'Cancelled', 'Executed'] as const) : undefined;
    const page = v.intInRange('PageNumber', req.PageNumber, 1, 1_000_000, 1);
    const size = v.intInRange('PageSize', req.PageSize, 1, 100, 20);
    let rows: ProposalRow[];
    let total: number;
    if (state === 'Open' || state === 'Expired') {
      const all = (await this.cs.listProposals(0, 1_000_000, 'Open')).filter((r) => this.stateOf(r) === state);
      total = all.length;
      rows = all.slice((page - 1) * size, page * size);
    } else if (state === 'Executed') {
      const all = [...(await this.cs.listProposals(0, 1_000_000, 'Executed')), ...(await this.cs.listProposals(0, 1_000_000, 'Executing'))];
      total = all.length;
      rows = all.slice((page - 1) * size, page * size);
    } else {
      total = (await this.cs.countProposals(state));
      rows = (await this.cs.listProposals((page - 1) * size, size, state));
    }
    const views = [];
    for (const r of rows) views.push(await this.view(r, false));
    return { Proposals: views, TotalCount: total, PageNumber: page, PageSize: size };
  }

  private requireOpen(row: ProposalRow, doing: string): void {
    const state = this.stateOf(row);
    if (state === 'Executed') throw new KmsError('Rejected.ProposalExecuted', `ProposalId: proposal ${row.proposal_id} was already executed at ${iso(row.closed_at)} (outcome ${row.outcome ?? 'pending'}); a proposal runs exactly once, so it cannot be ${doing}`);
    if (state === 'Cancelled') throw new KmsError('Rejected.ProposalCancelled', `ProposalId: proposal ${row.proposal_id} was cancelled at ${iso(row.closed_at)} by its requester; it cannot be ${doing}`);
    if (state === 'Expired') throw new KmsError('Rejected.ProposalExpired', `ProposalId: proposal ${row.proposal_id} expired at ${iso(row.expires_at)}; it cannot be ${doing} (RenewProposal, or create a new one)`);
  }

  async ApproveProposal(req: { ProposalId?: string; CustodianId?: string; Signature?: string }, ctx: CallContext) {
    await this.store.transaction((tx) => this.approveIn(tx, req, ctx));
    return this.view(await this.getRow(req.ProposalId));
  }

  // In one transaction, the proposal locked: the approval counts against the revision it was made
  // on, and two approvals of one custodian (on any replicas) count once.
  private async approveIn(tx: StoreTx, req: { ProposalId?: string; CustodianId?: string; Signature?: string }, ctx: CallContext): Promise<void> {
    const row = await this.getRow(req.ProposalId, tx);
    this.requireOpen(row, 'approved');
    const id = custodianId('CustodianId', req.CustodianId);
    const custodian = await tx.ceremony.getCustodian(id);
    if (!custodian || custodian.removed_at !== null) {
      throw new KmsError(
        'Forbidden.CustodianNotFound',
        custodian ? `CustodianId: ${id} was removed from the custodian set at ${iso(custodian.removed_at)}; only current custodians can approve` : `CustodianId: ${id} is not a custodian of this kmsd`,
      );
    }
    const sigText = v.requireString('Signature', req.Signature);
    if (!SIGNATURE_RE.test(sigText)) throw invalid('Signature', 'must be standard base64 of the 64-byte Ed25519 signature');
    const signature = Buffer.from(sigText, 'base64');
    if ((await tx.ceremony.approvals(row.proposal_id, row.revision)).some((a) => a.custodian_id === id && a.key_fingerprint === custodian.fingerprint)) {
      throw new KmsError('Rejected.AlreadyApproved', `CustodianId: ${id} has already approved revision ${row.revision} of proposal ${row.proposal_id}; each custodian counts once`);
    }
    const key = crypto.createPublicKey({ key: custodian.public_key, format: 'der', type: 'spki' });
    if (!verifyEd25519(key, row.document, signature)) throw await this.explainBadSignature(tx, row, custodian, key, signature);
    await tx.ceremony.insertApproval({ proposal_id: row.proposal_id, revision: row.revision, custodian_id: id, key_fingerprint: custodian.fingerprint, signature, approved_at: this.now() });
    if (ctx.record) await ctx.record(tx);
  }

  /** A clear refusal: which document the signature is over, or whose key made it, where we can tell. */
  private async explainBadSignature(tx: StoreTx, row: ProposalRow, custodian: CustodianRow, key: crypto.KeyObject, signature: Buffer): Promise<KmsError> {
    const id = custodian.custodian_id;
    for (const old of await tx.ceremony.olderRevisions(row.proposal_id, row.revision)) {
      if (verifyEd25519(key, old.document, signature)) {
        return new KmsError('Rejected.StaleProposalRevision', `Signature: ${id} signed revision ${old.revision} of proposal ${row.proposal_id}; the current document is revision ${row.revision}: sign the current Document`);
      }
    }
    for (const other of await tx.ceremony.recentOpenDocuments(row.proposal_id, 200)) {
      if (verifyEd25519(key, other.document, signature)) {
        return new KmsError('Rejected.SignatureInvalid', `Signature: ${id} signed proposal ${other.proposal_id}, not ${row.proposal_id}`);
      }
    }
    for (const c of await tx.ceremony.activeCustodians()) {
      if (c.custodian_id === id) continue;
      if (verifyEd25519(crypto.createPublicKey({ key: c.public_key, format: 'der', type: 'spki' }), row.document, signature)) {
        return new KmsError('Rejected.SignatureInvalid', `Signature: made with the key of custodian ${c.custodian_id}, not ${id}`);
      }
    }
    return new KmsError(
      'Rejected.SignatureInvalid',
      `Signature: not a valid Ed25519 signature by ${id}'s key (SHA-256 ${custodian.fingerprint.slice(0, 16)}...) over revision ${row.revision} of proposal ${row.proposal_id} (document SHA-256 ${sha256Hex(row.document)})`,
    );
  }

  async ExecuteProposal(req: { ProposalId?: string }, ctx: CallContext) {
    // Open to Executing in one transaction with the proposal locked: of two ExecuteProposal calls
    // (on any replicas) exactly one runs the action.
    const { row, approvers } = await this.store.transaction(async (tx) => {
      const row = await this.getRow(req.ProposalId, tx);
      this.requireOpen(row, 'executed again');
      const required = await tx.ceremony.threshold();
      const t = await this.tally(row, tx);
      // A threshold below 1 is never "met": it would let anything through.
      if (required < 1 || t.counted.length < required) {
        const notCounting = t.details.filter((d) => !d.Counts).map((d) => `${d.CustodianId}: ${d.Reason}`);
        throw new KmsError(
          'Rejected.QuorumNotMet',
          `ProposalId: ${t.counted.length} of ${required} required custodian approvals for proposal ${row.proposal_id}` + (notCounting.length ? ` (not counting: ${notCounting.join('; ')})` : ''),
        );
      }
      if (!(await tx.ceremony.transition(row.proposal_id, 'Open', 'Executing'))) {
        throw new KmsError('Rejected.ProposalExecuted', `ProposalId: proposal ${row.proposal_id} is being or has been executed; a proposal runs exactly once`);
      }
      return { row, approvers: t.counted.map((a) => a.custodian_id) };
    });
    const request = JSON.parse(row.parameters) as Record<string, unknown>;
    const actor = `proposal:${row.proposal_id}`;
    const actorCtx: CallContext = { requestId: ctx.requestId, principal: actor };
    const scrubbed = JSON.stringify(scrubbedParameters(row.action, request));
    // The proposal closes, and the execution is recorded, in the transaction of the action's own
    // change (when it has one), so a crash keeps all three or none.
    let closed = false;
    const close = async (tx: StoreTx, outcome: string, result: string, code: string): Promise<void> => {
      if (!(await tx.ceremony.transition(row.proposal_id, 'Executing', 'Executed', { closed_at: this.now(), outcome, result, parameters: scrubbed }))) return;
      await this.sink.record({ requestId: ctx.requestId, principal: actor, action: row.action, keyId: row.key_id ?? '', proposalId: row.proposal_id, outcome: code, details: { Approvers: approvers, Requester: row.requester } }, tx);
      closed = true;
    };
    actorCtx.record = async (tx) => {
      await close(tx, 'Succeeded', '{}', 'ok');
      if (row.key_id) await this.sink.keyActionDone?.(row.action, row.key_id, actorCtx, tx, row.proposal_id);
    };
    let result: unknown;
    try {
      result = await this.run(row.action as string, request, actorCtx);
    } catch (e) {
      const code = e instanceof KmsError ? e.code : 'InternalFailure';
      // Unless the action's own transaction closed it (its change committed, and failed after).
      await this.store.transaction((tx) => close(tx, `Failed: ${code}`, '', code));
      throw e;
    }
    const resultJson = JSON.stringify(result ?? {});
    if (closed) {
      // Closed in the action's transaction before its result was known: the result follows.
      await this.cs.transition(row.proposal_id, 'Executed', 'Executed', { result: resultJson });
    } else {
      await this.store.transaction((tx) => close(tx, 'Succeeded', resultJson, 'ok'));
    }
    return { ProposalId: row.proposal_id, Action: row.action, KeyId: row.key_id ?? '', State: 'Executed', Outcome: 'Succeeded', Result: resultJson };
  }

  private async run(action: string, request: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    if (isKeyAction(action)) return runKeyAction(this.targets, action, request, ctx);
    if ((CEREMONY_ACTIONS as readonly string[]).includes(action)) return this.runCeremonyAction(action as CeremonyAction, request, ctx);
    if (action === 'RemoveUnknownTokenObjects') return this.targets.kms.RemoveUnknownTokenObjects(request as { ObjectIds?: string; All?: boolean });
    throw new KmsError('InternalFailure', `proposal action ${action} has no executor`);
  }

  private async runCeremonyAction(action: CeremonyAction, request: Record<string, unknown>, ctx: CallContext): Promise<unknown> {
    if (action === 'SetCustodians') {
      const list = request.Custodians as { CustodianId: string; PublicKey: string }[];
      const set = list.map((c) => parseCustodianKey('Custodians', c.CustodianId, c.PublicKey));
      const threshold = validateSet('Custodians', set, request.Threshold as number);
      return this.store.transaction(async (tx) => {
        await tx.ceremony.replaceCustodianSet(
          set.map((c) => ({ custodian_id: c.custodianId, public_key: c.der, fingerprint: c.fingerprint })),
          threshold,
          this.now(),
          false,
        );
        if (ctx.record) await ctx.record(tx);
        return { Threshold: threshold, Custodians: set.map((c) => c.custodianId), CustodianSetVersion: await tx.ceremony.custodianSetVersion() };
      });
    }
    const policy = parsePolicy('Policy', JSON.stringify(request.Policy));
    await this.store.transaction(async (tx) => {
      await tx.ceremony.setPolicyJson(JSON.stringify(policy));
      if (ctx.record) await ctx.record(tx);
    });
    await this.load();
    return { Policy: JSON.stringify(policy) };
  }

  private requireRequester(row: ProposalRow, ctx: CallContext, declared: string | undefined, doing: string): void {
    const who = requesterIdentity(ctx, declared || undefined);
    if (who !== row.requester) {
      throw new KmsError('Rejected.NotRequester', `ProposalId: only the requester (${row.requester}) may ${doing} proposal ${row.proposal_id}; you are ${who} (pass the same --Requester as at CreateProposal)`);
    }
  }

  async CancelProposal(req: { ProposalId?: string; Requester?: string }, ctx: CallContext) {
    const id = await this.store.transaction(async (tx) => {
      const row = await this.getRow(req.ProposalId, tx);
      const state = this.stateOf(row);
      if (state === 'Executed' || state === 'Cancelled') this.requireOpen(row, 'cancelled');
      this.requireRequester(row, ctx, req.Requester, 'cancel');
      if (!(await tx.ceremony.transition(row.proposal_id, 'Open', 'Cancelled', { closed_at: this.now(), outcome: 'Cancelled', parameters: JSON.stringify(scrubbedParameters(row.action, JSON.parse(row.parameters))) }))) {
        this.requireOpen(await this.getRow(row.proposal_id, tx), 'cancelled');
      }
      if (ctx.record) await ctx.record(tx);
      return row.proposal_id;
    });
    return this.view(await this.getRow(id));
  }

  /**
   * A new revision of an open (or expired) proposal: same action and parameters, a fresh nonce and
   * expiry. Approvals of earlier revisions no longer count, and signatures over them are refused.
   */
  async RenewProposal(req: { ProposalId?: string; Requester?: string; ExpiresInSeconds?: number }, ctx: CallContext) {
    const row = await this.getRow(req.ProposalId);
    const state = this.stateOf(row);
    if (state === 'Executed' || state === 'Cancelled') this.requireOpen(row, 'renewed');
    this.requireRequester(row, ctx, req.Requester, 'renew');
    const ttl = this.ttl('ExpiresInSeconds', req.ExpiresInSeconds);
    const old = JSON.parse(row.document.toString('utf8')) as { Parameters: Record<string, unknown>; Key?: Record<string, unknown> };
    const now = this.now();
    const next = { ...row, revision: row.revision + 1, expires_at: now + ttl * 1000 };
    const key = row.key_id ? await prepareKeyActionKeyView(this.targets, row.key_id) : undefined;
    const doc = await this.document(next, old.Parameters, key ?? old.Key);
    await this.store.transaction(async (tx) => {
      // The revision read above must still be the current one (another renewal may have won).
      const current = await this.getRow(row.proposal_id, tx);
      if (current.revision !== row.revision) throw new KmsError('Rejected.StaleProposalRevision', `ProposalId: proposal ${row.proposal_id} was renewed meanwhile (now revision ${current.revision}); renew it again`);
      this.requireRequester(current, ctx, req.Requester, 'renew');
      await tx.ceremony.reviseProposal(row.proposal_id, next.revision, doc, next.expires_at);
      if (ctx.record) await ctx.record(tx);
    });
    return this.view(await this.getRow(row.proposal_id));
  }
}

async function prepareKeyActionKeyView(t: ActionTargets, keyId: string): Promise<Record<string, unknown> | undefined> {
  const row = await t.kms.store.getCmk(keyId);
  if (!row) return undefined;
  return { KeyId: row.key_id, KeyState: row.key_state, Origin: row.origin, ProtectionLevel: row.protection_level, Description: row.description };
}
