// What the parts of the token (src/hsm/wrapping-keys.ts, root-key.ts, signing-key.ts) get from the
// context that owns the session (src/hsm/token.ts): the session runner, object lookup and the
// bookkeeping of what this process created. Only src/hsm sees it; the rest of kmsd sees HsmToken.

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import type { ObjectIndex, ObjectKind } from './objects';

export type Handle = Buffer;

/** Where an AES operation runs: `in-token` is the token's own mechanism; `composed` builds it in kmsd from CKM_AES_ECB blocks. */
export type MechanismPath = 'in-token' | 'composed';

/** Where a TransientKey keeps its object handle: a symbol only src/hsm holds. */
export const HANDLE: unique symbol = Symbol('pkcs11 object handle');

/**
 * A short-lived session object (ephemeral or not yet persisted key). Always pass it to
 * destroyTransient. Opaque outside src/hsm: the rest of kmsd passes it back, never sees a handle.
 */
export class TransientKey {
  readonly [HANDLE]: Handle;
  constructor(handle: Handle) {
    this[HANDLE] = handle;
  }
}

export interface TokenContext {
  readonly slot: Handle;
  readonly index: ObjectIndex;
  /** The token's mechanism list, less the ones the configuration disabled. */
  mechanisms(): number[];
  /** Runs fn with the login session, reopening it once if the token dropped it under us. */
  withSession<T>(fn: (p11: pkcs11js.PKCS11, s: Handle) => T, name: string): T;
  /** withSession for an operation on one token object, looked up again after a reopened session. */
  withObject<T>(kind: ObjectKind, id: string, fn: (p11: pkcs11js.PKCS11, s: Handle, h: Handle) => T, name: string): T;
  /** Runs an async pkcs11js call in a session opened for it and closed after (token objects outlive it). */
  inOwnSession<T>(fn: (p11: pkcs11js.PKCS11, s: Handle) => Promise<T>, name: string): Promise<T>;
  label(kind: ObjectKind, id: string): string;
  handleOf(kind: ObjectKind, id: string): Handle | null;
  requireHandle(kind: ObjectKind, id: string): Handle;
  /** Records an object this process just created, so the index stays true without a walk. */
  created(kind: ObjectKind, id: string, h: Handle): void;
  destroyTransient(key: TransientKey | null | undefined): void;
  /**
   * Runs an off-loop generation of the object (kind, id), known until it settles so close() can wait
   * for it, and made once more if the module's view of the token had gone bad (HsmToken.createOffLoop).
   */
  createOffLoop<T>(kind: ObjectKind, id: string, create: () => Promise<T>): Promise<T>;
}

export const RSA_KEY_PAIR_GEN: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_RSA_PKCS_KEY_PAIR_GEN, parameter: null as unknown as Buffer };

/** A counting semaphore: acquire() resolves to a release function, FIFO. */
export class Slots {
  private used = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(private readonly size: number) {}

  async acquire(): Promise<() => void> {
    if (this.used >= this.size) await new Promise<void>((resolve) => this.waiting.push(resolve));
    else this.used++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next(); // the slot passes straight on
      else this.used--;
    };
  }
}

/** An RSA public key object as DER SubjectPublicKeyInfo. */
export function rsaPublicKeyDer(ctx: TokenContext, pub: Handle): Buffer {
  return ctx.withSession((p11, s) => {
    const a = p11.C_GetAttributeValue(s, pub, [{ type: pkcs11js.CKA_MODULUS }, { type: pkcs11js.CKA_PUBLIC_EXPONENT }]);
    const key = crypto.createPublicKey({
      key: { kty: 'RSA', n: (a[0].value as Buffer).toString('base64url'), e: (a[1].value as Buffer).toString('base64url') },
      format: 'jwk',
    });
    return key.export({ type: 'spki', format: 'der' });
  }, 'C_GetAttributeValue');
}
