// Persistence of the key ceremony: custodians, proposals and their revisions, approvals,
// and the ceremony settings (threshold, quorum policy, custodian set version). SQL lives here, as
// everywhere, in src/store; the rules live in src/ceremony.

import type { SqliteDb } from './store';
import type { ApprovalRow, CeremonyOps, CustodianRow, ProposalRow, ProposalState } from './api';
import type { Sync } from './sync';

export type { CustodianRow, ProposalState, ProposalRow, ApprovalRow } from './api';

const SETTING = {
  threshold: 'ceremony.threshold',
  policy: 'ceremony.policy',
  initializedAt: 'ceremony.initialized_at',
  setVersion: 'ceremony.custodian_set_version',
  instanceId: 'instance.id',
} as const;

/** The SQLite ceremony tables' synchronous core (reached through SqliteStore). */
export class SqliteCeremony implements Sync<CeremonyOps> {
  constructor(readonly store: SqliteDb) {}

  private get db() {
    return this.store.db;
  }

  tx<T>(fn: () => T): T {
    return this.store.tx(fn);
  }

  // ------------------------------------------------------------------ settings

  instanceId(make: () => string): string {
    let id = this.store.getSetting(SETTING.instanceId);
    if (!id) {
      id = make();
      this.store.setSetting(SETTING.instanceId, id);
    }
    return id;
  }

  initializedAt(): number | null {
    const v = this.store.getSetting(SETTING.initializedAt);
    return v ? Number(v) : null;
  }

  threshold(): number {
    return Number(this.store.getSetting(SETTING.threshold) ?? '0');
  }

  custodianSetVersion(): number {
    return Number(this.store.getSetting(SETTING.setVersion) ?? '0');
  }

  policyJson(): string | undefined {
    return this.store.getSetting(SETTING.policy);
  }

  setPolicyJson(json: string): void {
    this.store.setSetting(SETTING.policy, json);
  }

  /** Replaces the active custodian set and threshold in one transaction (InitCeremony, SetCustodians). */
  replaceCustodianSet(custodians: { custodian_id: string; public_key: Buffer; fingerprint: string }[], threshold: number, now: number, init: boolean): void {
    this.tx(() => {
      const current = new Map(this.activeCustodians().map((c) => [c.custodian_id, c]));
      const next = new Set(custodians.map((c) => c.custodian_id));
      for (const c of current.values()) {
        if (!next.has(c.custodian_id)) this.db.prepare('UPDATE ceremony_custodians SET removed_at = ? WHERE custodian_id = ?').run(now, c.custodian_id);
      }
      for (const c of custodians) {
        const cur = current.get(c.custodian_id);
        if (cur && cur.fingerprint === c.fingerprint) continue;
        this.db
          .prepare(
            `INSERT INTO ceremony_custodians (custodian_id, public_key, fingerprint, added_at, removed_at) VALUES (?, ?, ?, ?, NULL)
             ON CONFLICT(custodian_id) DO UPDATE SET public_key = excluded.public_key, fingerprint = excluded.fingerprint, added_at = excluded.added_at, removed_at = NULL`,
          )
          .run(c.custodian_id, c.public_key, c.fingerprint, now);
      }
      this.store.setSetting(SETTING.threshold, String(threshold));
      this.store.setSetting(SETTING.setVersion, String(this.custodianSetVersion() + 1));
      if (init) this.store.setSetting(SETTING.initializedAt, String(now));
    });
  }

  activeCustodians(): CustodianRow[] {
    return this.db.prepare('SELECT * FROM ceremony_custodians WHERE removed_at IS NULL ORDER BY custodian_id').all() as CustodianRow[];
  }

  getCustodian(id: string): CustodianRow | undefined {
    return this.db.prepare('SELECT * FROM ceremony_custodians WHERE custodian_id = ?').get(id) as CustodianRow | undefined;
  }

  // ------------------------------------------------------------------ proposals

  insertProposal(row: ProposalRow): void {
    this.tx(() => {
      this.db
        .prepare(
          `INSERT INTO ceremony_proposals (proposal_id, revision, action, key_id, parameters, document, requester, created_at, expires_at, state, closed_at, outcome, result)
           VALUES (@proposal_id, @revision, @action, @key_id, @parameters, @document, @requester, @created_at, @expires_at, @state, @closed_at, @outcome, @result)`,
        )
        .run(row);
      this.db.prepare('INSERT INTO ceremony_proposal_revisions (proposal_id, revision, document) VALUES (?, ?, ?)').run(row.proposal_id, row.revision, row.document);
    });
  }

  /** SQLite serializes whole transactions: the plain read is the locked one. */
  getProposalForUpdate(id: string): ProposalRow | undefined {
    return this.getProposal(id);
  }

  getProposal(id: string): ProposalRow | undefined {
    return this.db.prepare('SELECT * FROM ceremony_proposals WHERE proposal_id = ?').get(id) as ProposalRow | undefined;
  }

  countProposals(state?: ProposalState): number {
    const row = state
      ? this.db.prepare('SELECT COUNT(*) AS n FROM ceremony_proposals WHERE state = ?').get(state)
      : this.db.prepare('SELECT COUNT(*) AS n FROM ceremony_proposals').get();
    return (row as { n: number }).n;
  }

  listProposals(offset: number, limit: number, state?: ProposalState): ProposalRow[] {
    return state
      ? (this.db.prepare('SELECT * FROM ceremony_proposals WHERE state = ? ORDER BY created_at DESC, proposal_id LIMIT ? OFFSET ?').all(state, limit, offset) as ProposalRow[])
      : (this.db.prepare('SELECT * FROM ceremony_proposals ORDER BY created_at DESC, proposal_id LIMIT ? OFFSET ?').all(limit, offset) as ProposalRow[]);
  }

  /** Open proposals other than one (to tell a custodian which proposal they actually signed). */
  recentOpenDocuments(exceptId: string, limit: number): { proposal_id: string; revision: number; document: Buffer }[] {
    return this.db
      .prepare("SELECT proposal_id, revision, document FROM ceremony_proposals WHERE state = 'Open' AND proposal_id <> ? ORDER BY created_at DESC LIMIT ?")
      .all(exceptId, limit) as { proposal_id: string; revision: number; document: Buffer }[];
  }

  olderRevisions(id: string, currentRevision: number): { revision: number; document: Buffer }[] {
    return this.db
      .prepare('SELECT revision, document FROM ceremony_proposal_revisions WHERE proposal_id = ? AND revision < ? ORDER BY revision DESC')
      .all(id, currentRevision) as { revision: number; document: Buffer }[];
  }

  /** A new revision of an open proposal: new document and expiry; earlier approvals stay on their revision. */
  reviseProposal(id: string, revision: number, document: Buffer, expiresAt: number): void {
    this.tx(() => {
      this.db.prepare('UPDATE ceremony_proposals SET revision = ?, document = ?, expires_at = ? WHERE proposal_id = ?').run(revision, document, expiresAt, id);
      this.db.prepare('INSERT INTO ceremony_proposal_revisions (proposal_id, revision, document) VALUES (?, ?, ?)').run(id, revision, document);
    });
  }

  /** Compare-and-set of the state: true only for the one caller that moved it from `from`. */
  transition(id: string, from: ProposalState, to: ProposalState, fields: { closed_at?: number | null; outcome?: string | null; result?: string | null; parameters?: string } = {}): boolean {
    const sets = ['state = @to', ...Object.keys(fields).map((k) => `${k} = @${k}`)].join(', ');
    const r = this.db.prepare(`UPDATE ceremony_proposals SET ${sets} WHERE proposal_id = @id AND state = @from`).run({ ...fields, to, id, from });
    return r.changes === 1;
  }

  /** Proposals left Executing by a crash: they are never run again. */
  interruptedProposals(): ProposalRow[] {
    return this.db.prepare("SELECT * FROM ceremony_proposals WHERE state = 'Executing'").all() as ProposalRow[];
  }

  // ------------------------------------------------------------------ approvals

  /** Records an approval; one made earlier with a key the custodian no longer has is replaced. */
  insertApproval(row: ApprovalRow): void {
    this.db
      .prepare(
        `INSERT INTO ceremony_approvals (proposal_id, revision, custodian_id, key_fingerprint, signature, approved_at) VALUES (@proposal_id, @revision, @custodian_id, @key_fingerprint, @signature, @approved_at)
         ON CONFLICT(proposal_id, revision, custodian_id) DO UPDATE SET key_fingerprint = excluded.key_fingerprint, signature = excluded.signature, approved_at = excluded.approved_at`,
      )
      .run(row);
  }

  approvals(id: string, revision?: number): ApprovalRow[] {
    return revision === undefined
      ? (this.db.prepare('SELECT * FROM ceremony_approvals WHERE proposal_id = ? ORDER BY approved_at, custodian_id').all(id) as ApprovalRow[])
      : (this.db.prepare('SELECT * FROM ceremony_approvals WHERE proposal_id = ? AND revision = ? ORDER BY approved_at, custodian_id').all(id, revision) as ApprovalRow[]);
  }
}
