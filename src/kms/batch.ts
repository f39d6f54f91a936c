// EncryptBatch / DecryptBatch (and their streams, which run one batch per message) for
// high-volume callers. Each item goes through the same lookups and state checks as a unary
// Encrypt/Decrypt (KmsService.resolve, requireUsable, locate) and yields the same blob or the same
// error code and message; one bad item never fails the batch. The AES-GCM work of a whole batch is
// one Keyring call, so HSM items reach the native addon as one encryptBatch/decryptBatch.
//
// Only the batch as a whole can be refused (InvalidParameter): no items, more than MAX_BATCH_ITEMS,
// or a BatchId that is not at most 128 printable ASCII characters. The synchronous checks run in
// slices, one per event-loop turn (src/turns.ts), so large batches arriving together cannot stall the
// daemon; results are the same as if the items had been checked one after another.

import { DecryptFailedError } from '../hsm/errors';
import { Turns } from '../turns';
import { aadFor, buildHeader, freshIv, parseBlob, validateContext } from './ciphertext';
import { KmsError, hsmUnavailable, invalid, storeUnavailable } from './errors';
import type { GcmItem } from './keyring';
import type { CmkRow, KeyVersionRow } from '../store/api';
import { KmsService, MAX_PLAINTEXT_BYTES } from './service';
import type { CallContext, Context } from './types';
import * as v from './validate';

/** Items per batch message (EncryptBatch, DecryptBatch and each message of their streams). */
export const MAX_BATCH_ITEMS = 256;

export interface EncryptItem {
  KeyId?: string;
  Plaintext?: string;
  EncryptionContext?: Context;
}

export interface DecryptItem {
  CiphertextBlob?: string;
  EncryptionContext?: Context;
  KeyId?: string;
}

/** A per-item outcome: the unary response's fields, or Code and Message of its error. */
export interface EncryptResult {
  KeyId: string;
  KeyVersionId: string;
  CiphertextBlob: string;
  Code: string;
  Message: string;
}

export interface DecryptResult {
  KeyId: string;
  KeyVersionId: string;
  Plaintext: string;
  Code: string;
  Message: string;
}

export interface BatchResponse<R> {
  Results: R[];
  BatchId: string;
  SuccessCount: number;
  ErrorCount: number;
}

const EMPTY = { KeyId: '', KeyVersionId: '', Code: '', Message: '' };

/** Items checked per event-loop turn (src/turns.ts). */
const CHUNK = 64;

/**
 * Memoized lookups for one chunk (its items see one state of each CMK): a batch usually names a
 * few CMKs many times. Errors are memoized too and thrown again as is. The rows come from the
 * store's cache, so a chunk makes no store read for a CMK the data path has seen.
 */
class Lookups {
  private readonly cmks = new Map<string, { row: CmkRow } | { error: unknown }>();
  private readonly usable = new Map<string, { ver: KeyVersionRow } | { error: unknown }>();
  private readonly located = new Map<string, { row: CmkRow; ver: KeyVersionRow } | { error: unknown }>();
  constructor(private readonly kms: KmsService) {}

  async resolve(keyId: string | undefined): Promise<CmkRow> {
    const k = String(keyId ?? '');
    let r = this.cmks.get(k);
    if (!r) {
      try {
        r = { row: await this.kms.resolve('KeyId', keyId) };
      } catch (error) {
        r = { error };
      }
      this.cmks.set(k, r);
    }
    if ('error' in r) throw r.error;
    return r.row;
  }

  /** KmsService.locate, memoized by the CMK and version a blob names (its parse is per blob). */
  async locate(blobB64: string | undefined): ReturnType<KmsService['locate']> {
    const parsed = parseBlob(v.base64('CiphertextBlob', blobB64, { maxBytes: 64 * 1024 }));
    const k = `${parsed.keyId}/${parsed.keyVersionId}`;
    let r = this.located.get(k);
    if (!r) {
      try {
        const l = await this.kms.locate(blobB64);
        r = { row: l.row, ver: l.ver };
      } catch (error) {
        r = { error };
      }
      this.located.set(k, r);
    }
    if ('error' in r) throw r.error;
    return { row: r.row, ver: r.ver, parsed };
  }

  async requireUsable(row: CmkRow): Promise<KeyVersionRow> {
    let r = this.usable.get(row.key_id);
    if (!r) {
      try {
        r = { ver: await this.kms.requireUsable(row) };
      } catch (error) {
        r = { error };
      }
      this.usable.set(row.key_id, r);
    }
    if ('error' in r) throw r.error;
    return r.ver;
  }
}

export class BatchService {
  // One chunk per turn, first come first served: many batches often arrive in one socket read, and
  // their checks must not all run in that one turn.
  private readonly turns = new Turns(0);

  constructor(private readonly kms: KmsService) {}

  /** Calls check(item, index, lookups) for every item, a chunk per turn; a throw is that item's failure. */
  private async checkAll<T>(items: T[], check: (item: T, index: number, lookups: Lookups) => Promise<void>, fail: (e: unknown, index: number) => void): Promise<void> {
    for (let start = 0; start < items.length; start += CHUNK) {
      await this.turns.call(async () => {
        const lookups = new Lookups(this.kms);
        for (let i = start; i < Math.min(items.length, start + CHUNK); i++) {
          try {
            await check(items[i], i, lookups);
          } catch (e) {
            fail(e, i);
          }
        }
      });
    }
  }

  async EncryptBatch(req: { Items?: EncryptItem[]; BatchId?: string }, ctx?: CallContext): Promise<BatchResponse<EncryptResult>> {
    const items = checkItems(req.Items);
    const batchId = batchIdOf(req.BatchId);
    const results: EncryptResult[] = new Array(items.length);
    // Lookups and checks, item by item, in the order Encrypt makes them.
    const work: { index: number; keyId: string; versionId: string; header: Buffer; item: GcmItem }[] = [];
    await this.checkAll(
      items,
      async (it, i, lookups) => {
        const row = await lookups.resolve(it.KeyId);
        const pt = v.base64('Plaintext', it.Plaintext, { maxBytes: MAX_PLAINTEXT_BYTES, allowEmpty: false });
        let ctxMap: ReturnType<typeof context>;
        let ver: KeyVersionRow;
        try {
          ctxMap = context('EncryptionContext', it.EncryptionContext);
          ver = await lookups.requireUsable(row);
        } catch (e) {
          pt.fill(0); // refused item: its plaintext goes no further
          throw e;
        }
        const iv = freshIv();
        const header = buildHeader(row.key_id, ver.version_id, iv);
        work.push({ index: i, keyId: row.key_id, versionId: ver.version_id, header, item: { level: row.protection_level, v: ver, iv, aad: aadFor(header, ctxMap), data: pt } });
      },
      (e, i) => (results[i] = { ...EMPTY, CiphertextBlob: '', ...this.failure(e, ctx, i) }),
    );
    let sealed: Array<Buffer | Error>;
    try {
      sealed = await this.kms.keyring.encryptMany(work.map((w) => w.item));
    } finally {
      for (const w of work) w.item.data.fill(0); // the plaintexts
    }
    work.forEach((w, j) => {
      const r = sealed[j];
      results[w.index] =
        r instanceof Error
          ? { ...EMPTY, CiphertextBlob: '', ...this.failure(r, ctx, w.index) }
          : { KeyId: w.keyId, KeyVersionId: w.versionId, CiphertextBlob: Buffer.concat([w.header, r]).toString('base64'), Code: '', Message: '' };
    });
    return summary(results, batchId);
  }

  async DecryptBatch(req: { Items?: DecryptItem[]; BatchId?: string }, ctx?: CallContext): Promise<BatchResponse<DecryptResult>> {
    const items = checkItems(req.Items);
    const batchId = batchIdOf(req.BatchId);
    const results: DecryptResult[] = new Array(items.length);
    const work: { index: number; keyId: string; versionId: string; item: GcmItem }[] = [];
    await this.checkAll(
      items,
      async (it, i, lookups) => {
        // Decrypt's order: context, the optional KeyId, then the blob.
        const ctxMap = context('EncryptionContext', it.EncryptionContext);
        const expected = it.KeyId ? await lookups.resolve(it.KeyId) : undefined;
        const { row, ver, parsed } = await lookups.locate(it.CiphertextBlob);
        if (expected && parsed.keyId !== expected.key_id) {
          throw new KmsError('IncorrectKeyId', `KeyId: the ciphertext was made by CMK ${parsed.keyId}, not ${expected.key_id}`);
        }
        work.push({ index: i, keyId: row.key_id, versionId: ver.version_id, item: { level: row.protection_level, v: ver, iv: parsed.iv, aad: aadFor(parsed.header, ctxMap), data: parsed.sealed } });
      },
      (e, i) => (results[i] = { ...EMPTY, Plaintext: '', ...this.failure(e, ctx, i) }),
    );
    const opened = await this.kms.keyring.decryptMany(work.map((w) => w.item));
    work.forEach((w, j) => {
      const r = opened[j];
      if (r instanceof Error) {
        results[w.index] = { ...EMPTY, Plaintext: '', ...this.failure(r, ctx, w.index) };
        return;
      }
      try {
        results[w.index] = { KeyId: w.keyId, KeyVersionId: w.versionId, Plaintext: r.toString('base64'), Code: '', Message: '' };
      } finally {
        r.fill(0);
      }
    });
    return summary(results, batchId);
  }

  /** The Code and Message a unary call would have answered with; internal errors are logged, not returned. */
  private failure(e: unknown, ctx: CallContext | undefined, index: number): { Code: string; Message: string } {
    if (e instanceof KmsError) return { Code: e.code, Message: e.message };
    if (e instanceof DecryptFailedError) {
      return { Code: 'InvalidCiphertext', Message: 'CiphertextBlob: authentication failed (the blob was altered, or the EncryptionContext differs from the one used to encrypt)' };
    }
    const down = hsmUnavailable(e) ?? storeUnavailable(e);
    if (down) return { Code: down.code, Message: down.message };
    const requestId = ctx?.requestId ?? '';
    this.kms.log.error({ requestId, item: index, err: e instanceof Error ? { name: e.name, message: e.message } : String(e) }, 'internal error in a batch item');
    return { Code: 'InternalFailure', Message: `internal error (request id ${requestId}, item ${index})` };
  }
}

function checkItems<T>(items: T[] | undefined): T[] {
  if (!Array.isArray(items) || items.length === 0) throw invalid('Items', `needs 1 to ${MAX_BATCH_ITEMS} items`);
  if (items.length > MAX_BATCH_ITEMS) throw invalid('Items', `at most ${MAX_BATCH_ITEMS} items per batch (got ${items.length}); split it`);
  return items;
}

function batchIdOf(id: string | undefined): string {
  const s = id ?? '';
  if (s.length > 128 || !/^[\x20-\x7e]*$/.test(s)) throw invalid('BatchId', 'at most 128 printable ASCII characters');
  return s;
}

function context(field: string, ctx: Context | undefined): Context | undefined {
  validateContext(field, ctx);
  return ctx && Object.keys(ctx).length > 0 ? ctx : undefined;
}

function summary<R extends { Code: string }>(results: R[], batchId: string): BatchResponse<R> {
  const errors = results.filter((r) => r.Code !== '').length;
  return { Results: results, BatchId: batchId, SuccessCount: results.length - errors, ErrorCount: errors };
}
