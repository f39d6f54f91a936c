// The audit signing key (checkpoints): an ECDSA P-256 key pair whose private half never leaves the
// token. P-256 rather than Ed25519 because the HSMs we target (Luna, nShield, YubiHSM 2, CloudHSM,
// SoftHSM) sign with it. A token without CKM_EC_KEY_PAIR_GEN or CKM_ECDSA (opencryptoki's soft
// token) gets an RSA-3072 pair that signs RSASSA-PKCS1-v1_5 with SHA-256 instead; node:crypto
// verifies either from the SPKI alone. Labels are kmsd:sign:<id>; the pair shares the label, so
// lookups also match on the class. HsmToken exposes it as ensureSigningKeyPair / signCheckpoint.

import crypto from 'node:crypto';
import * as pkcs11js from 'pkcs11js';
import { HsmError } from './errors';
import { type Handle, RSA_KEY_PAIR_GEN, type TokenContext, rsaPublicKeyDer } from './context';
import { SIGN_LABEL_PREFIX, findObjects, indexKey } from './objects';
import { ecSigningTemplates, rsaSigningTemplates } from './templates';

/** DigestInfo prefix of SHA-256 (RFC 8017 9.2 note 1), for RSASSA-PKCS1-v1_5 with CKM_RSA_PKCS. */
const SHA256_DIGEST_INFO = Buffer.from('3031300d060960864801650304020105000420', 'hex');

export class SigningKey {
  private mechanismName: string | null = null;

  constructor(private readonly ctx: TokenContext) {}

  /** The mechanism the audit signing key signs with, once ensure() has run. */
  get mechanism(): string | null {
    return this.mechanismName;
  }

  private handle(id: string, cls: number): Handle | null {
    const { ctx } = this;
    const label = `${SIGN_LABEL_PREFIX}${id}`;
    const key = indexKey(label, cls);
    const known = ctx.index.get(key);
    if (known) return known;
    if (ctx.index.complete) return null;
    // Both halves in one pass (each pass reads every object on some modules); more than one object
    // of a class under the label is ambiguous, as for any lookup.
    const found = ctx.withSession((p11, s) => {
      const handles = findObjects(
        p11,
        s,
        [
          { type: pkcs11js.CKA_TOKEN, value: true },
          { type: pkcs11js.CKA_LABEL, value: label },
        ],
        8,
      );
      const byClass = new Map<number, Handle[]>();
      for (const h of handles) {
        const v = p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_CLASS }])[0].value as Buffer;
        const c = Number(v.length >= 8 ? v.readBigUInt64LE(0) : v.readUInt32LE(0));
        byClass.set(c, [...(byClass.get(c) ?? []), h]);
      }
      return byClass;
    }, 'C_FindObjects');
    for (const c of [pkcs11js.CKO_PUBLIC_KEY, pkcs11js.CKO_PRIVATE_KEY]) {
      const hs = found.get(c) ?? [];
      if (hs.length > 1) throw new HsmError(`more than one token object is labelled ${label}`, 'AMBIGUOUS');
      if (hs[0]) ctx.index.set(indexKey(label, c), hs[0]);
    }
    return ctx.index.get(key) ?? null;
  }

  /** Creates the signing key pair once; returns the public key as DER SubjectPublicKeyInfo. */
  ensure(id: string): Buffer {
    const { ctx } = this;
    let pub = this.handle(id, pkcs11js.CKO_PUBLIC_KEY);
    const priv = this.handle(id, pkcs11js.CKO_PRIVATE_KEY);
    if (!pub || !priv) {
      if (pub || priv) throw new HsmError(`signing key kmsd:sign:${id} is half there (public ${Boolean(pub)}, private ${Boolean(priv)})`, 'AMBIGUOUS');
      const mechanisms = ctx.mechanisms();
      const ec = mechanisms.includes(pkcs11js.CKM_EC_KEY_PAIR_GEN) && mechanisms.includes(pkcs11js.CKM_ECDSA);
      if (!ec && !mechanisms.includes(pkcs11js.CKM_RSA_PKCS)) {
        throw new HsmError('the token can make no audit signing key: it has neither CKM_EC_KEY_PAIR_GEN with CKM_ECDSA nor CKM_RSA_PKCS', 'UNSUPPORTED');
      }
      const label = `kmsd:sign:${id}`;
      const idBytes = Buffer.from(id, 'utf8');
      const pair = ec ? this.generateEcPair(label, idBytes) : this.generateRsaPair(label, idBytes);
      ctx.index.set(indexKey(label, pkcs11js.CKO_PUBLIC_KEY), pair.publicKey);
      ctx.index.set(indexKey(label, pkcs11js.CKO_PRIVATE_KEY), pair.privateKey);
      ctx.index.created('sign', id);
      pub = pair.publicKey;
    }
    const h = pub;
    const rsa = this.keyType(h) === pkcs11js.CKK_RSA;
    this.mechanismName = rsa ? 'CKM_RSA_PKCS' : 'CKM_ECDSA';
    if (rsa) return rsaPublicKeyDer(ctx, h);
    return ctx.withSession((p11, s) => {
      // CKA_EC_POINT is the DER OCTET STRING around the uncompressed point 04 || X || Y.
      const der = p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_EC_POINT }])[0].value as Buffer;
      const point = der.length === 67 && der[0] === 0x04 && der[1] === 0x41 ? der.subarray(2) : der;
      if (point.length !== 65 || point[0] !== 0x04) throw new HsmError(`unexpected CKA_EC_POINT of ${der.length} bytes`, 'UNSUPPORTED');
      const key = crypto.createPublicKey({
        key: { kty: 'EC', crv: 'P-256', x: point.subarray(1, 33).toString('base64url'), y: point.subarray(33).toString('base64url') },
        format: 'jwk',
      });
      return key.export({ type: 'spki', format: 'der' });
    }, 'C_GetAttributeValue');
  }

  private keyType(h: Handle): number {
    return this.ctx.withSession((p11, s) => {
      const v = p11.C_GetAttributeValue(s, h, [{ type: pkcs11js.CKA_KEY_TYPE }])[0].value as Buffer;
      return Number(v.length >= 8 ? v.readBigUInt64LE(0) : v.readUInt32LE(0));
    }, 'C_GetAttributeValue');
  }

  private generateEcPair(label: string, idBytes: Buffer): pkcs11js.KeyPair {
    const { publicTemplate, privateTemplate } = ecSigningTemplates(label, idBytes);
    return this.ctx.withSession((p11, s) => p11.C_GenerateKeyPair(s, { mechanism: pkcs11js.CKM_EC_KEY_PAIR_GEN, parameter: null as unknown as Buffer }, publicTemplate, privateTemplate), 'C_GenerateKeyPair');
  }

  private generateRsaPair(label: string, idBytes: Buffer): pkcs11js.KeyPair {
    const { publicTemplate, privateTemplate } = rsaSigningTemplates(label, idBytes);
    return this.ctx.withSession((p11, s) => p11.C_GenerateKeyPair(s, RSA_KEY_PAIR_GEN, publicTemplate, privateTemplate), 'C_GenerateKeyPair');
  }

  /**
   * Signs an audit checkpoint inside the token: ECDSA P-256 over SHA-256(data) as r || s (IEEE P1363),
   * or, with the RSA fallback key, RSASSA-PKCS1-v1_5 with SHA-256.
   */
  sign(id: string, data: Buffer): Buffer {
    const priv = this.handle(id, pkcs11js.CKO_PRIVATE_KEY);
    if (!priv) throw new HsmError(`token object kmsd:sign:${id} not found`, 'NOT_FOUND');
    const digest = crypto.createHash('sha256').update(data).digest();
    if (this.keyType(priv) === pkcs11js.CKK_RSA) {
      return this.ctx.withSession((p11, s) => {
        p11.C_SignInit(s, { mechanism: pkcs11js.CKM_RSA_PKCS, parameter: null as unknown as Buffer }, priv);
        return p11.C_Sign(s, Buffer.concat([SHA256_DIGEST_INFO, digest]), Buffer.alloc(1024));
      }, 'C_Sign');
    }
    return this.ctx.withSession((p11, s) => {
      p11.C_SignInit(s, { mechanism: pkcs11js.CKM_ECDSA, parameter: null as unknown as Buffer }, priv);
      return p11.C_Sign(s, digest, Buffer.alloc(64));
    }, 'C_Sign');
  }
}
