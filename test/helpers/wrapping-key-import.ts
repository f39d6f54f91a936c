// Loads an existing RSA private key into a test token as wrapping key `id` (Wycheproof vectors), as
// GetParametersForImport's key pair would be: the same security attributes, so the unwrap code runs
// against a key like the ones it meets in production. Test-only: production never imports a private
// key, so this reaches into HsmToken's session instead of living in src/hsm.

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import type { HsmToken } from '../../src/hsm/token';

type Handle = Buffer;

interface TokenInternals {
  withSession<T>(fn: (p11: pkcs11js.PKCS11, s: Handle) => T, name: string): T;
  /** src/hsm/wrapping-keys.ts, where session-only pairs are registered. */
  wrapping: { transientPairs: Map<string, { publicKey: Handle; privateKey: Handle }> };
  created(kind: 'wrap', id: string, h: Handle): void;
}

/**
 * A token pair (`token` true) is indexed like a generated one and removed with
 * t.destroy('wrap', id); a session pair is registered like a probe's, and t.destroyTransientPair(id)
 * removes both halves. The key components are copied into Buffers that are zeroed before returning.
 */
export function importWrappingPrivateKey(t: HsmToken, id: string, key: crypto.KeyObject, allowDecrypt: boolean, token = false): void {
  const inner = t as unknown as TokenInternals;
  if (key.type !== 'private' || key.asymmetricKeyType !== 'rsa') {
    throw new Error('a wrapping key must be an RSA private key');
  }
  const label = `kmsd:wrap:${id}`;
  if (token ? t.has('wrap', id) : inner.wrapping.transientPairs.has(id)) {
    throw new Error(`wrapping key ${label} already exists`);
  }
  const idBytes = Buffer.from(id, 'utf8');
  const jwk = key.export({ format: 'jwk' });
  const parts: Buffer[] = [];
  const component = (name: 'n' | 'e' | 'd' | 'p' | 'q' | 'dp' | 'dq' | 'qi'): Buffer => {
    const value = jwk[name];
    if (typeof value !== 'string' || value.length === 0) throw new Error(`the RSA key has no ${name} component`);
    const b = Buffer.from(value, 'base64url'); // big-endian, unsigned, as PKCS#11 wants
    parts.push(b);
    return b;
  };
  try {
    const n = component('n');
    const e = component('e');
    const pair = inner.withSession((p11, s) => {
      const privateKey = p11.C_CreateObject(s, [
        { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PRIVATE_KEY },
        { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
        { type: pkcs11js.CKA_TOKEN, value: token }, // false: a session object for tests and one-off imports
        { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
        { type: pkcs11js.CKA_SENSITIVE, value: true }, // the private components can never be read back
        { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // nor wrapped out
        { type: pkcs11js.CKA_MODIFIABLE, value: false }, // attributes above cannot be relaxed later
        { type: pkcs11js.CKA_UNWRAP, value: true }, // its one job: unwrap key material into the token
        { type: pkcs11js.CKA_DECRYPT, value: allowDecrypt }, // raw RSA for host-assisted OAEP only
        { type: pkcs11js.CKA_SIGN, value: false }, // never a signing key
        { type: pkcs11js.CKA_SIGN_RECOVER, value: false },
        { type: pkcs11js.CKA_DERIVE, value: false },
        { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:wrap:<id>, what findOne and listIds match
        { type: pkcs11js.CKA_ID, value: idBytes },
        { type: pkcs11js.CKA_MODULUS, value: n }, // the key itself, from the JWK
        { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: e },
        { type: pkcs11js.CKA_PRIVATE_EXPONENT, value: component('d') },
        { type: pkcs11js.CKA_PRIME_1, value: component('p') },
        { type: pkcs11js.CKA_PRIME_2, value: component('q') },
        { type: pkcs11js.CKA_EXPONENT_1, value: component('dp') },
        { type: pkcs11js.CKA_EXPONENT_2, value: component('dq') },
        { type: pkcs11js.CKA_COEFFICIENT, value: component('qi') },
      ]);
      try {
        const publicKey = p11.C_CreateObject(s, [
          { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_PUBLIC_KEY },
          { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_RSA },
          { type: pkcs11js.CKA_TOKEN, value: token }, // lives exactly as long as its private half
          { type: pkcs11js.CKA_PRIVATE, value: false }, // the public key is public
          { type: pkcs11js.CKA_MODIFIABLE, value: false },
          { type: pkcs11js.CKA_ENCRYPT, value: true }, // clients encrypt outside; in-token use is for probes
          { type: pkcs11js.CKA_WRAP, value: true },
          { type: pkcs11js.CKA_VERIFY, value: false },
          { type: pkcs11js.CKA_VERIFY_RECOVER, value: false },
          { type: pkcs11js.CKA_DERIVE, value: false },
          { type: pkcs11js.CKA_LABEL, value: label },
          { type: pkcs11js.CKA_ID, value: idBytes },
          { type: pkcs11js.CKA_MODULUS, value: n },
          { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: e },
        ]);
        return { publicKey, privateKey };
      } catch (err) {
        // Never leave half a pair behind.
        try {
          p11.C_DestroyObject(s, privateKey);
        } catch {
          /* already failing; a session object dies with its session anyway */
        }
        throw err;
      }
    }, 'C_CreateObject');
    // A token pair goes into the token's object index as a generated one does (a walked token finds
    // objects there, not by a C_FindObjects).
    if (token) inner.created('wrap', id, pair.privateKey);
    else inner.wrapping.transientPairs.set(id, pair);
  } finally {
    for (const b of parts) b.fill(0);
  }
}
