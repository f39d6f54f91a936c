// The store/token binding, checked at every start before kmsd creates or destroys anything in the
// token. The store holds an instance id (settings, also the audit log's instance id) and the last
// token-object creation sequence it committed; the token holds the same id in its kmsd:instance
// data object and the highest sequence kmsd took before creating an object (src/hsm/token.ts).
// A store that is not the token's own (another data directory, a deleted or truncated kmsd.sqlite,
// a copy without its WAL, a backup older than the token) is refused with a message that names both
// and the ways forward; nothing is destroyed. --adopt-token binds a store that has no binding yet,
// or one older than the token, to the token as it is, destroying nothing.

import crypto from 'node:crypto';
import path from 'node:path';
import type { Store } from '../store/api';
import type { HsmToken, TokenInventory } from '../hsm/token';
import type { Logger } from './service';

export class TokenBindingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TokenBindingError';
  }
}

export type BindingOutcome = 'first-start' | 'matched' | 'bound-existing-deployment' | 'adopted';

export interface BindingResult {
  instanceId: string;
  outcome: BindingOutcome;
  /**
   * The token's kmsd objects, from one walk, when the check needed them; null when the store matched
   * the token (the common start), which needs only the kmsd:instance object: the walk then runs
   * after kmsd listens (src/daemon.ts).
   */
  inventory: TokenInventory | null;
}

function describeObjects(inv: TokenInventory): string {
  const parts: string[] = [];
  if (inv.cmk.size) parts.push(`${inv.cmk.size} CMK key version${inv.cmk.size === 1 ? '' : 's'}`);
  if (inv.wrap.size) parts.push(`${inv.wrap.size} wrapping key${inv.wrap.size === 1 ? '' : 's'}`);
  if (inv.root.size) parts.push('the root key');
  if (inv.mac.size) parts.push('the import-token MAC key');
  if (inv.sign.size) parts.push('the audit signing key');
  if (inv.instanceObjects) parts.push('the kmsd:instance object');
  return parts.length ? parts.join(', ') : 'no kmsd objects';
}

function kmsdObjectCount(inv: TokenInventory): number {
  return inv.cmk.size + inv.wrap.size + inv.root.size + inv.mac.size + inv.sign.size + inv.instanceObjects;
}

/**
 * Checks that this store belongs to this token, binding them on a first start (empty store, token
 * without kmsd objects) and on the first start of a deployment made before the binding existed
 * (when the store explains every CMK and wrapping-key object of the token). Throws
 * TokenBindingError otherwise.
 */
export async function bindStoreToToken(store: Store, token: HsmToken, o: { adopt: boolean; log: Logger; dataDir: string; storeName?: string }): Promise<BindingResult> {
  const storeId = await store.instanceId();
  // A store with a binding names a token that has its kmsd:instance object; on a shared token a
  // fresh process may not see it yet (every replica relabels it, see HsmToken.reload).
  const tokenInstance = storeId ? await token.readInstanceSettled() : token.readInstance();
  let walked: TokenInventory | null = null;
  const inventory = (): TokenInventory => (walked ??= token.inventory());
  const storeSeq = await store.tokenSequence();
  const empty = await store.isEmpty();
  const dataDir = o.dataDir;
  const storeFile = o.storeName ?? path.join(dataDir, 'kmsd.sqlite');

  const refuse = (why: string, adoptable: boolean): never => {
    const forward = adoptable
      ? 'or, if this store is to take the token over as it is, start kmsd once with --adopt-token: it binds the two, destroys nothing, and reports every token object the store does not explain as unknown (kept until kmsctl RemoveUnknownTokenObjects)'
      : '--adopt-token does not apply: the token belongs to another store, which must be found or restored';
    throw new TokenBindingError(
      `kmsd refuses to start: ${why} Data directory ${dataDir} (store ${storeFile}: instance ${storeId ?? 'none'}, ` +
        `last token sequence ${storeSeq}${empty ? ', no keys or records' : ''}); token "${token.tokenLabel}" (instance ` +
        `${tokenInstance?.instanceId ?? 'none'}${tokenInstance ? `, sequence ${tokenInstance.sequence}` : ''}; holds ${describeObjects(inventory())}). ` +
        `Nothing in the token was changed or destroyed. Ways forward: start kmsd with the data directory that belongs to this token (--data-dir); ` +
        `or restore that data directory from a backup (a copy of kmsd.sqlite taken while kmsd ran needs kmsd.sqlite-wal beside it); ${forward}.`,
    );
  };

  /** Binds: store first (its commit is what a crash must not lose), then the token's object. */
  const bind = async (id: string, outcome: BindingOutcome): Promise<BindingResult> => {
    await store.setInstanceId(id);
    if (!tokenInstance) token.createInstance(id, storeSeq);
    o.log.warn({ instanceId: id, token: token.tokenLabel, dataDir: dataDir, outcome }, 'metadata store and token bound');
    return { instanceId: id, outcome, inventory: inventory() };
  };

  /**
   * Adoption: the store takes the token as it is. Intents and pending destroys of a store that was
   * not the token's (or is older than it) may name objects that were finished since; they become
   * unknown objects instead of being destroyed.
   */
  const adopt = async (id: string): Promise<BindingResult> => {
    const intents = await store.allIntents();
    const destroys = await store.pendingDestroys();
    await store.transaction(async (tx) => {
      await tx.setInstanceId(id);
      if (tokenInstance) await tx.raiseTokenSequence(tokenInstance.sequence);
      for (const i of intents) await tx.clearIntent(i.seq);
      for (const d of destroys) await tx.deletePendingDestroy(d.kind, d.object_id);
    });
    if (!tokenInstance) token.createInstance(id, await store.tokenSequence());
    o.log.warn(
      { instanceId: id, token: token.tokenLabel, dataDir: dataDir, tokenObjects: describeObjects(inventory()), droppedIntents: intents.length, droppedDestroys: destroys.length },
      'token adopted by this metadata store (--adopt-token): nothing destroyed',
    );
    return { instanceId: id, outcome: 'adopted', inventory: inventory() };
  };

  if (tokenInstance) {
    if (storeId && storeId !== tokenInstance.instanceId) {
      refuse(`this metadata store (instance ${storeId}) is not the one token "${token.tokenLabel}" belongs to (instance ${tokenInstance.instanceId}).`, false);
    }
    if (storeId === tokenInstance.instanceId) {
      if (tokenInstance.sequence > storeSeq) {
        if (o.adopt) return adopt(storeId);
        refuse(
          `the metadata store is older than the token: kmsd created token objects up to sequence ${tokenInstance.sequence}, but the store's last committed creation is ${storeSeq} (a restored backup, or a copy of kmsd.sqlite without its WAL).`,
          true,
        );
      }
      return { instanceId: storeId, outcome: 'matched', inventory: walked };
    }
    // The store has no binding, the token has one.
    if (o.adopt) return adopt(tokenInstance.instanceId);
    refuse(
      empty
        ? `the metadata store is new or empty (a mistyped --data-dir, or a deleted or truncated kmsd.sqlite), but token "${token.tokenLabel}" belongs to instance ${tokenInstance.instanceId} and holds its objects.`
        : `this metadata store was never bound to a token, but token "${token.tokenLabel}" belongs to instance ${tokenInstance.instanceId}.`,
      true,
    );
  }

  // The token has no kmsd:instance object.
  const id = storeId ?? crypto.randomUUID();
  if (kmsdObjectCount(inventory()) === 0) {
    if (empty) return bind(id, 'first-start');
    if (o.adopt) return adopt(id);
    refuse(`the metadata store holds keys or records, but token "${token.tokenLabel}" holds no kmsd objects at all (a different or re-initialized token?).`, true);
  }
  if (empty) {
    if (o.adopt) return adopt(id);
    refuse(`the metadata store is new or empty (a mistyped --data-dir, or a deleted or truncated kmsd.sqlite), but token "${token.tokenLabel}" holds kmsd objects.`, true);
  }
  // A deployment from before the binding: bind when the store explains the token's objects.
  const versions = new Set((await store.allVersions()).map((v) => v.version_id));
  const wraps = new Set((await store.allWrappingKeys()).map((w) => w.wrap_id));
  const inv = inventory();
  const unexplained = [...[...inv.cmk].filter((x) => !versions.has(x)).map((x) => `kmsd:cmk:${x}`), ...[...inv.wrap].filter((x) => !wraps.has(x)).map((x) => `kmsd:wrap:${x}`)];
  if (unexplained.length === 0) return bind(id, 'bound-existing-deployment');
  if (o.adopt) return adopt(id);
  return refuse(
    `the token is not bound to a store yet and this metadata store does not explain ${unexplained.length} of its objects (${unexplained.slice(0, 5).join(', ')}${unexplained.length > 5 ? ', …' : ''}).`,
    true,
  );
}
