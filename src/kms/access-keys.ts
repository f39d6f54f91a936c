// Access keys: the credentials of the HTTP dialects (Alibaba AccessKeyId/AccessKeySecret, AWS
// access key id/secret access key). Each names a principal, which the authorization policy treats
// exactly as a certificate principal. The secret is made in the token and stored only wrapped
// under the root key (Keyring.newSealedSecret); it is shown once, at creation, and unsealed into
// process memory on first use (cached until the key is changed or deleted, then zeroed).

import crypto from 'node:crypto';
import type { Store, StoreTx, AccessKeyRow } from '../store/api';
import type { CallContext } from './types';
import type { Keyring } from './keyring';
import { KmsError, invalid, missing } from './errors';
import { iso } from './service';

export type AccessKeyStatus = 'Active' | 'Inactive';

export interface AccessKeyView {
  accessKeyId: string;
  principal: string;
  status: AccessKeyStatus;
  /** The secret as the client holds it (ASCII), cached here: callers must not keep, change, zero or log it. */
  secret(): Buffer;
}

const PRINCIPAL_RE = /^[\x21-\x7e](?:[\x20-\x7e]{0,254}[\x21-\x7e])?$/;
const ID_RE = /^KMSD[A-Z2-7]{20}$/;
const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

function newAccessKeyId(): string {
  const r = crypto.randomBytes(20);
  let s = 'KMSD';
  for (const b of r) s += B32[b & 31];
  return s;
}

function str(req: Record<string, unknown>, name: string): string {
  const v = req[name];
  if (v === undefined || v === null || v === '') throw missing(name);
  if (typeof v !== 'string') throw invalid(name, 'must be a string');
  return v;
}

export class AccessKeyService {
  /** Unsealed secrets by access key id (ASCII bytes of the secret string). */
  private readonly secrets = new Map<string, Buffer>();
  /** Views of the keys by id, made on first use. */
  private readonly views = new Map<string, AccessKeyView>();
  /**
   * The whole table, in memory: every signed request looks its key up, synchronously, before
   * anything else of it is read. Loaded at start-up (load), again after every change this process
   * makes and whenever the store says rows may have changed behind its back (onRollback).
   */
  private rows = new Map<string, AccessKeyRow>();
  /** Called after a key changes (the HTTP side drops what it derived from it). */
  onChange: (accessKeyId: string) => void = () => undefined;

  constructor(
    private readonly store: Store,
    private readonly keyring: Keyring,
  ) {
    store.onRollback(() => {
      this.load().catch(() => undefined);
    });
  }

  /** Reads the table into memory (start-up, and after rows may have changed). */
  async load(): Promise<void> {
    const rows = await this.store.listAccessKeys();
    const next = new Map(rows.map((r) => [r.access_key_id, r]));
    for (const [id, old] of this.rows) {
      const now = next.get(id);
      if (!now || now.status !== old.status || now.update_date !== old.update_date) this.forget(id);
    }
    this.rows = next;
  }

  async CreateAccessKey(req: Record<string, unknown>, ctx?: CallContext): Promise<{ AccessKeyId: string; AccessKeySecret: string; Principal: string; Status: AccessKeyStatus }> {
    const principal = str(req, 'Principal');
    if (!PRINCIPAL_RE.test(principal)) throw invalid('Principal', 'printable ASCII without leading or trailing spaces, 1 to 256 characters');
    const { sealed, secret } = this.keyring.newSealedSecret();
    try {
      const id = newAccessKeyId();
      const now = Date.now();
      const row: AccessKeyRow = { access_key_id: id, principal, status: 'Active', sealed_secret: sealed, creation_date: now, update_date: now };
      await this.store.transaction(async (tx) => {
        await tx.insertAccessKey(row);
        if (ctx?.record) await ctx.record(tx, { AccessKeyId: id });
      });
      this.rows.set(id, row);
      return { AccessKeyId: id, AccessKeySecret: secret.toString('base64url'), Principal: principal, Status: 'Active' };
    } finally {
      secret.fill(0);
    }
  }

  async ListAccessKeys(): Promise<{ AccessKeys: { AccessKey: { AccessKeyId: string; Principal: string; Status: string; CreationDate: string; UpdateDate: string }[] }; TotalCount: number }> {
    const rows = await this.store.listAccessKeys();
    return { AccessKeys: { AccessKey: rows.map((r) => ({ AccessKeyId: r.access_key_id, Principal: r.principal, Status: r.status, CreationDate: iso(r.creation_date), UpdateDate: iso(r.update_date) })) }, TotalCount: rows.length };
  }

  async UpdateAccessKey(req: Record<string, unknown>, ctx?: CallContext): Promise<Record<string, never>> {
    const id = str(req, 'AccessKeyId');
    const status = str(req, 'Status');
    if (status !== 'Active' && status !== 'Inactive') throw invalid('Status', 'must be Active or Inactive');
    try {
      await this.store.transaction(async (tx) => {
        await this.row(id, tx);
        await tx.updateAccessKeyStatus(id, status, Date.now());
        if (ctx?.record) await ctx.record(tx);
      });
    } finally {
      await this.changed(id);
    }
    return {};
  }

  async DeleteAccessKey(req: Record<string, unknown>, ctx?: CallContext): Promise<Record<string, never>> {
    const id = str(req, 'AccessKeyId');
    try {
      await this.store.transaction(async (tx) => {
        await this.row(id, tx);
        await tx.deleteAccessKey(id);
        if (ctx?.record) await ctx.record(tx);
      });
    } finally {
      await this.changed(id);
    }
    return {};
  }

  /** The key a request names, or undefined (from memory; see rows); unseals the secret on first use. */
  lookup(id: string): AccessKeyView | undefined {
    const cached = this.views.get(id);
    if (cached) return cached;
    if (!ID_RE.test(id)) return undefined;
    const row = this.rows.get(id);
    if (!row) return undefined;
    const view: AccessKeyView = Object.freeze({
      accessKeyId: row.access_key_id,
      principal: row.principal,
      status: row.status === 'Active' ? 'Active' : 'Inactive',
      secret: () => this.secretOf(row),
    });
    if (this.views.size >= 10_000) this.views.clear();
    this.views.set(id, view);
    return view;
  }

  /** How many access keys exist (the development key is made only when there is none). */
  count(): Promise<number> {
    return this.store.countAccessKeys();
  }

  /** Zeroes every cached secret (shutdown). */
  forgetAll(): void {
    for (const id of [...this.secrets.keys()]) this.forget(id);
    this.views.clear();
  }

  private secretOf(row: AccessKeyRow): Buffer {
    let s = this.secrets.get(row.access_key_id);
    if (!s) {
      const raw = this.keyring.unsealSecret(row.sealed_secret);
      try {
        s = Buffer.from(raw.toString('base64url'), 'ascii');
      } finally {
        raw.fill(0);
      }
      this.secrets.set(row.access_key_id, s);
    }
    return s;
  }

  private async row(id: string, tx: StoreTx): Promise<AccessKeyRow> {
    const row = ID_RE.test(id) ? await tx.getAccessKey(id) : undefined;
    if (!row) throw new KmsError('Forbidden.AccessKeyNotFound', `AccessKeyId: no access key "${id}"`);
    return row;
  }

  private forget(id: string): void {
    this.views.delete(id);
    this.secrets.get(id)?.fill(0);
    this.secrets.delete(id);
  }

  private async changed(id: string): Promise<void> {
    this.forget(id);
    const row = await this.store.getAccessKey(id);
    if (row) this.rows.set(id, row);
    else this.rows.delete(id);
    this.onChange(id);
  }
}
