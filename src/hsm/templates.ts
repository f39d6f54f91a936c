// Every template kmsd hands the token, in one place. Every security attribute is stated: a token that
// defaults differently must not weaken a key. test/integration/token-templates.test.ts reads each
// kind of object back from the token and compares every attribute.

import * as pkcs11js from 'pkcs11js';

export type KeyUsage = 'data' | 'unwrap';

/**
 * Template for an AES-256 CMK version held by the token. Every security attribute is explicit:
 * a token that defaults differently must not weaken a key.
 */
export function cmkKeyTemplate(label: string, id: string, token: boolean): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }, // symmetric CMK material
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES }, // AES-256-GCM is the only CMK algorithm
    { type: pkcs11js.CKA_TOKEN, value: token }, // survives restarts (false only for probes and tests)
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
    { type: pkcs11js.CKA_SENSITIVE, value: true }, // CKA_VALUE can never be read
    { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // cannot be wrapped out either
    { type: pkcs11js.CKA_MODIFIABLE, value: false }, // attributes above cannot be relaxed later
    { type: pkcs11js.CKA_ENCRYPT, value: true }, // AES-GCM encrypt of data and data keys
    { type: pkcs11js.CKA_DECRYPT, value: true }, // and their decrypt: the CMK's two jobs
    { type: pkcs11js.CKA_WRAP, value: false }, // a CMK is never a key-encryption key for other token keys
    { type: pkcs11js.CKA_UNWRAP, value: false }, // nor unwraps material into the token
    { type: pkcs11js.CKA_SIGN, value: false }, // no MACs: GenerateMac is not a CMK usage here
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false }, // no key derived from it could inherit its protection
    { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:cmk:<version id>, what lookups match
    { type: pkcs11js.CKA_ID, value: Buffer.from(id, 'utf8') }, // key version id, as DESIGN §2 says
  ];
}

/** Generic secret for HMAC-SHA256 (import-token authentication); sign and verify only. */
export function macKeyTemplate(label: string, id: string): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_GENERIC_SECRET }, // what CKM_SHA256_HMAC takes
    { type: pkcs11js.CKA_TOKEN, value: true }, // import tokens issued before a restart must still verify
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
    { type: pkcs11js.CKA_SENSITIVE, value: true }, // the MAC key is what makes an import token unforgeable
    { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // nor wrapped out
    { type: pkcs11js.CKA_MODIFIABLE, value: false }, // attributes above cannot be relaxed later
    { type: pkcs11js.CKA_SIGN, value: true }, // HMAC of an import token when it is issued
    { type: pkcs11js.CKA_VERIFY, value: true }, // and when it comes back
    { type: pkcs11js.CKA_ENCRYPT, value: false }, // nothing else
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 }, // 256 bits, the HMAC-SHA256 block-size-safe length
    { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:mac:<id>
    { type: pkcs11js.CKA_ID, value: Buffer.from(id, 'utf8') }, // the same id, as on every kmsd key
  ];
}

/** The kmsd:instance data object: which store the token belongs to, and the creation sequence in its label. */
export function instanceTemplate(application: string, instanceId: string, label: string): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_DATA },
    { type: pkcs11js.CKA_TOKEN, value: true }, // the binding outlives every process
    { type: pkcs11js.CKA_PRIVATE, value: true }, // only a logged-in user sees which store owns the token
    { type: pkcs11js.CKA_MODIFIABLE, value: true }, // the label carries the creation sequence
    { type: pkcs11js.CKA_APPLICATION, value: application }, // what readInstance finds it by
    { type: pkcs11js.CKA_VALUE, value: Buffer.from(instanceId, 'utf8') }, // the instance id; read-only once created
    { type: pkcs11js.CKA_LABEL, value: label },
  ];
}

/** Known AES material as a transient key (host-assisted unwrap, the ephemeral KEK of composed KWP). */
export function transientAesTemplate(value: Buffer, usage: KeyUsage, extractable: boolean): pkcs11js.Template {
  return [
    // CKA_MODIFIABLE is left to the module: a session object dies with its session, and the
    // copy that persists (persistTransient) is made non-modifiable.
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false }, // session object until persisted
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login, even for its short life
    { type: pkcs11js.CKA_SENSITIVE, value: true }, // the value came from the host once; it is never read back
    { type: pkcs11js.CKA_EXTRACTABLE, value: extractable }, // true only to be wrapped under the root key (SOFTWARE level)
    { type: pkcs11js.CKA_ENCRYPT, value: usage === 'data' }, // CMK material: encrypt and decrypt
    { type: pkcs11js.CKA_DECRYPT, value: usage === 'data' },
    { type: pkcs11js.CKA_UNWRAP, value: usage === 'unwrap' }, // an ephemeral KEK: unwrap only
    { type: pkcs11js.CKA_WRAP, value: false }, // neither kind wraps anything out
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_VALUE, value }, // the material; the caller zeroes its buffer
  ];
}

/** Template for an AES key unwrapped as a session object, before its length is checked. */
export function transientUnwrapTemplate(usage: KeyUsage, measurable: boolean): pkcs11js.Template {
  return [
    // CKA_MODIFIABLE is left to the module, as for createTransientAesKey: the persisted copy sets it.
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false }, // nothing persists until every check has passed
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
    { type: pkcs11js.CKA_SENSITIVE, value: true }, // CKA_VALUE is never readable, even now
    // Extractable only where the token does not report CKA_VALUE_LEN: then the length is measured
    // by wrapping under a throwaway token key (the result is discarded) and the copy that persists
    // is made non-extractable.
    { type: pkcs11js.CKA_EXTRACTABLE, value: measurable },
    { type: pkcs11js.CKA_ENCRYPT, value: usage === 'data' }, // CMK material: encrypt and decrypt
    { type: pkcs11js.CKA_DECRYPT, value: usage === 'data' },
    { type: pkcs11js.CKA_UNWRAP, value: usage === 'unwrap' }, // the ephemeral KEK of RSA_AES_KEY_WRAP: unwrap only
    { type: pkcs11js.CKA_WRAP, value: false }, // neither wraps anything out
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
  ];
}

/** The throwaway session key that measures an unwrapped key's length by wrapping it (keyLength). */
export function measuringKekTemplate(): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_TOKEN, value: false }, // destroyed right after the one wrap
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 },
    { type: pkcs11js.CKA_WRAP, value: true }, // its one job: wrap the key being measured
    { type: pkcs11js.CKA_UNWRAP, value: false }, // so the discarded wrap can never be brought back in
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_DECRYPT, value: false }, // nor decrypted to read the measured key
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_SENSITIVE, value: true }, // nobody reads it
    { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // nor wraps it out
  ];
}

/** The root key: an AES-256 key-encryption key that never leaves the token (see root-key.ts). */
export function rootKeyTemplate(label: string, id: string, composed: boolean): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES }, // RFC 5649 key wrap
    { type: pkcs11js.CKA_TOKEN, value: true }, // every SOFTWARE wrap in the store needs it after a restart
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
    { type: pkcs11js.CKA_SENSITIVE, value: true }, // losing the root key would expose every SOFTWARE key
    { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // nor wrapped out
    { type: pkcs11js.CKA_MODIFIABLE, value: false }, // attributes above cannot be relaxed later
    // Its only jobs: wrap and unwrap SOFTWARE material, with CKM_AES_KEY_WRAP_PAD where the
    // token has it. Otherwise RFC 5649 is composed here from CKM_AES_ECB blocks, which needs
    // encrypt and decrypt; where wrap and unwrap exist, a plain decrypt would bypass the
    // key-wrap integrity check, so it is off.
    { type: pkcs11js.CKA_WRAP, value: !composed },
    { type: pkcs11js.CKA_UNWRAP, value: !composed },
    { type: pkcs11js.CKA_ENCRYPT, value: composed },
    { type: pkcs11js.CKA_DECRYPT, value: composed },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 }, // AES-256
    { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:root:<id>
    { type: pkcs11js.CKA_ID, value: Buffer.from(id, 'utf8') }, // the same id, as on every kmsd key
  ];
}

/** The session key whose value kmsd chose, that wraps an extractable transient out with CKM_AES_ECB (composed root wrap). */
export function extractKekTemplate(kekValue: Buffer): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false }, // lives for this one call
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_WRAP, value: true }, // its one job
    { type: pkcs11js.CKA_ENCRYPT, value: false },
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_VALUE, value: kekValue },
  ];
}

/** Fresh AES-256 material generated by the token as an extractable session key, to be wrapped under the root key. */
export function extractableAesTemplate(): pkcs11js.Template {
  return [
    // CKA_MODIFIABLE is left to the module: the key lives only until it is wrapped.
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false }, // destroyed once wrapped
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
    { type: pkcs11js.CKA_SENSITIVE, value: true }, // leaves the token only wrapped under the root key
    { type: pkcs11js.CKA_EXTRACTABLE, value: true }, // only so it can be wrapped under the root key
    { type: pkcs11js.CKA_ENCRYPT, value: true }, // the material fingerprint is an in-token encryption
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_WRAP, value: false }, // it is material, never a key-encryption key
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_VALUE_LEN, value: 32 }, // AES-256
  ];
}

/** SOFTWARE material unwrapped from under the root key, only to have its value read and the object destroyed. */
export function softwareMaterialUnwrapTemplate(): pkcs11js.Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: false }, // destroyed right after its value is read
    { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login for that moment
    { type: pkcs11js.CKA_SENSITIVE, value: false }, // SOFTWARE level: the daemon uses the bytes itself
    { type: pkcs11js.CKA_EXTRACTABLE, value: true }, // as its value is read, wrapping it changes nothing
    { type: pkcs11js.CKA_ENCRYPT, value: false }, // only read, never used in the token
    { type: pkcs11js.CKA_DECRYPT, value: false },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
  ];
}

export interface KeyPairTemplates {
  publicTemplate: pkcs11js.Template;
  privateTemplate: pkcs11js.Template;
}

/** An RSA wrapping key pair of GetParametersForImport (see wrapping-keys.ts). */
export function wrappingKeyPairTemplates(label: string, id: string, bits: number, allowDecrypt: boolean, token: boolean): KeyPairTemplates {
  const idBytes = Buffer.from(id, 'utf8');
  return {
    publicTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: token }, // lives exactly as long as its private half
      { type: pkcs11js.CKA_PRIVATE, value: false }, // the public key is public
      { type: pkcs11js.CKA_MODIFIABLE, value: false }, // its usages cannot be widened later
      { type: pkcs11js.CKA_MODULUS_BITS, value: bits },
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) }, // F4, what every client library expects
      { type: pkcs11js.CKA_ENCRYPT, value: true }, // clients encrypt outside; in-token use is for probes
      { type: pkcs11js.CKA_WRAP, value: true }, // the same, for probes that wrap in the token
      { type: pkcs11js.CKA_VERIFY, value: false }, // never a signature key
      { type: pkcs11js.CKA_VERIFY_RECOVER, value: false }, // SoftHSM defaults this to true
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:wrap:<id>, shared with the private half
      { type: pkcs11js.CKA_ID, value: idBytes },
    ],
    privateTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: token }, // survives restarts for the 24 h life of the import token
      { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
      { type: pkcs11js.CKA_SENSITIVE, value: true }, // the private key never leaves the token
      { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // nor wrapped out
      { type: pkcs11js.CKA_MODIFIABLE, value: false }, // attributes above cannot be relaxed later
      { type: pkcs11js.CKA_UNWRAP, value: true }, // its one job: unwrap key material into the token
      { type: pkcs11js.CKA_DECRYPT, value: allowDecrypt }, // raw RSA for host-assisted OAEP only
      { type: pkcs11js.CKA_SIGN, value: false }, // never a signing key
      { type: pkcs11js.CKA_SIGN_RECOVER, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:wrap:<id>; lookups add CKA_CLASS to pick this half
      { type: pkcs11js.CKA_ID, value: idBytes }, // the wrap id, also in the import token
    ],
  };
}

/** The audit signing key pair, ECDSA P-256 (see signing-key.ts). */
export function ecSigningTemplates(label: string, idBytes: Buffer): KeyPairTemplates {
  return {
    publicTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: true }, // the verifying key survives restarts
      { type: pkcs11js.CKA_PRIVATE, value: false }, // the public key is public
      { type: pkcs11js.CKA_MODIFIABLE, value: false }, // its usages cannot be widened later
      { type: pkcs11js.CKA_EC_PARAMS, value: Buffer.from('06082a8648ce3d030107', 'hex') }, // OID prime256v1 (P-256)
      { type: pkcs11js.CKA_VERIFY, value: true }, // its one job: verify audit checkpoints
      { type: pkcs11js.CKA_VERIFY_RECOVER, value: false }, // not a usage of ECDSA; stated so no token defaults it on
      { type: pkcs11js.CKA_ENCRYPT, value: false }, // verify only
      { type: pkcs11js.CKA_WRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:sign:<id>, shared by both halves
      { type: pkcs11js.CKA_ID, value: idBytes },
    ],
    privateTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: true }, // survives restarts: checkpoints stay verifiable
      { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
      { type: pkcs11js.CKA_SENSITIVE, value: true }, // the private value can never be read
      { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // nor wrapped out: nobody can sign outside the token
      { type: pkcs11js.CKA_MODIFIABLE, value: false }, // attributes above cannot be relaxed later
      { type: pkcs11js.CKA_SIGN, value: true }, // its one job: sign audit checkpoints
      { type: pkcs11js.CKA_SIGN_RECOVER, value: false }, // sign only
      { type: pkcs11js.CKA_DECRYPT, value: false },
      { type: pkcs11js.CKA_UNWRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false }, // no ECDH with it either
      { type: pkcs11js.CKA_LABEL, value: label }, // kmsd:sign:<id>, shared by both halves
      { type: pkcs11js.CKA_ID, value: idBytes },
    ],
  };
}

/** The audit signing key pair on a token without ECDSA: RSA-3072, RSASSA-PKCS1-v1_5 (see signing-key.ts). */
export function rsaSigningTemplates(label: string, idBytes: Buffer): KeyPairTemplates {
  return {
    publicTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: true }, // the verifying key survives restarts
      { type: pkcs11js.CKA_PRIVATE, value: false }, // the public key is public
      { type: pkcs11js.CKA_MODIFIABLE, value: false },
      { type: pkcs11js.CKA_MODULUS_BITS, value: 3072 }, // about P-256's strength
      { type: pkcs11js.CKA_PUBLIC_EXPONENT, value: Buffer.from([1, 0, 1]) }, // F4
      { type: pkcs11js.CKA_VERIFY, value: true }, // its one job: verify audit checkpoints
      { type: pkcs11js.CKA_VERIFY_RECOVER, value: false }, // stated so no token defaults it on
      { type: pkcs11js.CKA_ENCRYPT, value: false }, // verify only
      { type: pkcs11js.CKA_WRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_ID, value: idBytes },
    ],
    privateTemplate: [
      { type: pkcs11js.CKA_TOKEN, value: true }, // survives restarts: checkpoints stay verifiable
      { type: pkcs11js.CKA_PRIVATE, value: true }, // invisible without login
      { type: pkcs11js.CKA_SENSITIVE, value: true }, // the private value can never be read
      { type: pkcs11js.CKA_EXTRACTABLE, value: false }, // nor wrapped out: nobody can sign outside the token
      { type: pkcs11js.CKA_MODIFIABLE, value: false }, // attributes above cannot be relaxed later
      { type: pkcs11js.CKA_SIGN, value: true }, // its one job: sign audit checkpoints
      { type: pkcs11js.CKA_SIGN_RECOVER, value: false },
      { type: pkcs11js.CKA_DECRYPT, value: false }, // never a decryption oracle for raw RSA
      { type: pkcs11js.CKA_UNWRAP, value: false },
      { type: pkcs11js.CKA_DERIVE, value: false },
      { type: pkcs11js.CKA_LABEL, value: label },
      { type: pkcs11js.CKA_ID, value: idBytes },
    ],
  };
}
