// Object lookup for src/hsm/token.ts: the one C_FindObjects loop, and the index of kmsd's token
// objects that one walk of the token fills.
//
// Why an index: a module without its own index (SoftHSM) answers every C_FindObjectsInit by reading
// every object of the token, whatever the template asks for, so one lookup costs as much as a walk.
// With one lookup per key creation and per first use, cost grew with the square of the key count.
// The walk reads every token object once (handle, class and label in one C_GetAttributeValue each);
// after it, presence is a Map lookup and a handle is in memory for every key.

import * as pkcs11js from 'pkcs11js';
import { HsmError } from './errors';

type Handle = Buffer;

/**
 * Every handle C_FindObjects returns for the template, or at most `max`. C_FindObjectsFinal runs
 * whatever happens, so a failed call never leaves a find operation open on the session.
 */
export function findObjects(p11: pkcs11js.PKCS11, s: Handle, template: pkcs11js.Template, max = Number.POSITIVE_INFINITY): Handle[] {
  p11.C_FindObjectsInit(s, template);
  const found: Handle[] = [];
  try {
    while (found.length < max) {
      const batch = p11.C_FindObjects(s, Math.min(1024, max - found.length));
      if (batch.length === 0) break;
      for (const h of batch) found.push(h);
    }
  } finally {
    p11.C_FindObjectsFinal(s);
  }
  return found;
}

/**
 * One object by template, or null. Asks for two handles so that an ambiguous match is an error
 * rather than whichever object the module lists first.
 */
export function findOne(p11: pkcs11js.PKCS11, s: Handle, template: pkcs11js.Template, what: string): Handle | null {
  const found = findObjects(p11, s, template, 2);
  if (found.length > 1) throw new HsmError(`more than one token object is labelled ${what}`, 'AMBIGUOUS');
  return found[0] ?? null;
}

/** Object kinds kmsd keeps in the token, told apart by label prefix so reconciliation can list them. */
export type ObjectKind = 'cmk' | 'wrap' | 'root' | 'mac';
export const LABEL_PREFIX: Record<ObjectKind, string> = {
  cmk: 'kmsd:cmk:',
  wrap: 'kmsd:wrap:',
  root: 'kmsd:root:',
  mac: 'kmsd:mac:',
};
export const OBJECT_KINDS = Object.keys(LABEL_PREFIX) as ObjectKind[];
export const SIGN_LABEL_PREFIX = 'kmsd:sign:';
export const INSTANCE_LABEL_PREFIX = 'kmsd:instance:';

/** The kmsd objects of a token by kind (ids), as a walk finds them. */
export type TokenInventory = Record<ObjectKind | 'sign', Set<string>> & { instanceObjects: number };

export function emptyInventory(): TokenInventory {
  return { cmk: new Set(), wrap: new Set(), root: new Set(), mac: new Set(), sign: new Set(), instanceObjects: 0 };
}

/** The class whose handle a kind's operations use: a wrapping key pair shares its label, the private half works. */
export function usedClass(kind: ObjectKind): number {
  return kind === 'wrap' ? pkcs11js.CKO_PRIVATE_KEY : pkcs11js.CKO_SECRET_KEY;
}

/** Index key of an object: its label, and the class where a label names a pair (signing key). */
export function indexKey(label: string, cls?: number): string {
  return cls === undefined ? label : `${label}#${cls}`;
}

/** One token object as the walk read it. */
export interface WalkedObject {
  handle: Handle;
  cls: number;
  label: string;
}

/**
 * Handles of kmsd's token objects by index key, kept true by every creation and destroy of this
 * process, and filled for everything else by one walk. `complete` once the walk has gone over the
 * whole token: from then on, a key the index does not hold is not in the token (as far as this
 * process created and destroyed objects), and nothing needs a C_FindObjects to say so.
 */
export class ObjectIndex {
  private readonly handles = new Map<string, Handle>();
  /** Keys two objects share: their lookups fail as AMBIGUOUS, as a find asking for two would. */
  private readonly ambiguous = new Set<string>();
  /** What the walk found, plus what was created since and less what was destroyed. */
  inventory: TokenInventory = emptyInventory();
  complete = false;

  get(key: string): Handle | undefined {
    if (this.ambiguous.has(key)) throw new HsmError(`more than one token object is labelled ${key.replace(/#\d+$/, '')}`, 'AMBIGUOUS');
    return this.handles.get(key);
  }

  /** An object this process created or looked up on its own. */
  set(key: string, h: Handle): void {
    this.handles.set(key, h);
  }

  /** Records a kmsd object in the inventory (creation by this process). */
  created(kind: ObjectKind | 'sign', id: string): void {
    this.inventory[kind].add(id);
  }

  /** Forgets every object under a label (destroyed by this process), in every class. */
  destroyed(kind: ObjectKind, id: string, label: string): void {
    for (const key of [label, ...[pkcs11js.CKO_PUBLIC_KEY, pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_SECRET_KEY].map((c) => indexKey(label, c))]) {
      this.handles.delete(key);
      this.ambiguous.delete(key);
    }
    this.inventory[kind].delete(id);
  }

  /** Forgets the handles under a label (they may be stale), keeping the inventory. */
  forget(label: string): void {
    for (const key of [label, ...[pkcs11js.CKO_PUBLIC_KEY, pkcs11js.CKO_PRIVATE_KEY, pkcs11js.CKO_SECRET_KEY].map((c) => indexKey(label, c))]) this.handles.delete(key);
  }

  /** Forgets every handle (the session they belonged to is gone); the inventory stays true. */
  clearHandles(): void {
    this.handles.clear();
    this.ambiguous.clear();
    this.complete = false;
  }

  clear(): void {
    this.clearHandles();
    this.inventory = emptyInventory();
  }

  /** A walk starts: the inventory is rebuilt from what it finds (and what this process creates meanwhile). */
  beginWalk(): void {
    this.inventory = emptyInventory();
    this.complete = false;
  }

  /**
   * Takes one walked object in. Objects of other applications sharing the token are not kmsd's and
   * are left out.
   */
  add(o: WalkedObject): void {
    const inv = this.inventory;
    const { label, cls, handle } = o;
    if (!label.startsWith('kmsd:')) return;
    if (label.startsWith(INSTANCE_LABEL_PREFIX)) {
      if (cls === pkcs11js.CKO_DATA) inv.instanceObjects++;
      return;
    }
    if (label.startsWith(SIGN_LABEL_PREFIX)) {
      inv.sign.add(label.slice(SIGN_LABEL_PREFIX.length));
      this.put(indexKey(label, cls), handle);
      return;
    }
    for (const kind of OBJECT_KINDS) {
      if (!label.startsWith(LABEL_PREFIX[kind])) continue;
      inv[kind].add(label.slice(LABEL_PREFIX[kind].length));
      if (cls === usedClass(kind)) this.put(label, handle);
      return;
    }
  }

  private put(key: string, h: Handle): void {
    const known = this.handles.get(key);
    if (known && !known.equals(h)) this.ambiguous.add(key);
    else this.handles.set(key, h);
  }
}
