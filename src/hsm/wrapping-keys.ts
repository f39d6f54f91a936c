// RSA wrapping key pairs (GetParametersForImport) and the unwraps done with them, or with the
// ephemeral AES key-encryption key of RSA_AES_KEY_WRAP, into transient AES keys. HsmToken exposes
// them as generateWrappingKeyPair(OffLoop) / rsaUnwrap / rsaRawDecrypt / aesKwpUnwrap / ...

import * as pkcs11js from 'pkcs11js';
import { HsmError, UnwrapFailedError, toHsmError } from './errors';
import { HANDLE, type Handle, RSA_KEY_PAIR_GEN, Slots, type TokenContext, TransientKey, rsaPublicKeyDer } from './context';
import { type KeyUsage, transientUnwrapTemplate, wrappingKeyPairTemplates } from './templates';

/** CKZ_DATA_SPECIFIED: the OAEP label source; pkcs11js does not export it. */
const CKZ_DATA_SPECIFIED = 1;

export type RsaPadding = 'PKCS1_V1_5' | 'OAEP_SHA_1' | 'OAEP_SHA_256';

/** RSA key pair generations run at once off the event loop; see WrappingKeys.generateOffLoop. */
export const MAX_KEY_PAIR_GENERATIONS = 2;

export class WrappingKeys {
  private readonly transientPairs = new Map<string, { publicKey: Handle; privateKey: Handle }>();
  private readonly keyPairSlots = new Slots(MAX_KEY_PAIR_GENERATIONS);
  private unwrapRefusesExtractable = false;

  constructor(private readonly ctx: TokenContext) {}

  /**
   * A fresh RSA key pair for GetParametersForImport. The private half is a token object that can
   * only unwrap (and, only when the host-assisted OAEP path is allowed, raw-decrypt). Runs on the
   * event loop: for session-only pairs (capability probes, tests); GetParametersForImport and the
   * pool use generateOffLoop.
   */
  generate(id: string, bits: number, allowDecrypt: boolean, token = true): Buffer {
    const { ctx } = this;
    const { publicTemplate, privateTemplate } = wrappingKeyPairTemplates(ctx.label('wrap', id), id, bits, allowDecrypt, token);
    const pair = ctx.withSession((p11, s) => p11.C_GenerateKeyPair(s, RSA_KEY_PAIR_GEN, publicTemplate, privateTemplate), 'C_GenerateKeyPair');
    if (token) ctx.created('wrap', id, pair.privateKey);
    else this.transientPairs.set(id, pair);
    return rsaPublicKeyDer(ctx, pair.publicKey);
  }

  /**
   * generate() for a token pair, off the event loop: an RSA_4096 generation takes seconds, and on
   * the event loop every other call waited for it. pkcs11js runs C_GenerateKeyPair on a libuv
   * thread, on a session of its own (a session is not for two threads at once; the new one shares
   * the login). At most MAX_KEY_PAIR_GENERATIONS run at once, so the libuv pool (4 threads, shared
   * with file and crypto work) and the cores keep room for everything else; the rest queue here.
   * close() waits for the ones running (see HsmToken.drain).
   */
  generateOffLoop(id: string, bits: number, allowDecrypt: boolean): Promise<Buffer> {
    return this.ctx.createOffLoop('wrap', id, () => this.generateOffLoopNow(id, bits, allowDecrypt));
  }

  private async generateOffLoopNow(id: string, bits: number, allowDecrypt: boolean): Promise<Buffer> {
    const { ctx } = this;
    const { publicTemplate, privateTemplate } = wrappingKeyPairTemplates(ctx.label('wrap', id), id, bits, allowDecrypt, true);
    const release = await this.keyPairSlots.acquire();
    try {
      // token objects outlive the session that made them
      const pair = await ctx.inOwnSession((p11, s) => p11.C_GenerateKeyPairAsync(s, RSA_KEY_PAIR_GEN, publicTemplate, privateTemplate), 'C_GenerateKeyPair');
      ctx.created('wrap', id, pair.privateKey);
      return rsaPublicKeyDer(ctx, pair.publicKey);
    } finally {
      release();
    }
  }

  /** Destroys a session-only key pair made with token=false (capability probes). */
  destroyTransientPair(id: string): void {
    const pair = this.transientPairs.get(id);
    if (!pair) return;
    this.transientPairs.delete(id);
    this.ctx.destroyTransient(new TransientKey(pair.privateKey));
    this.ctx.destroyTransient(new TransientKey(pair.publicKey));
  }

  private privateHandle(id: string): Handle {
    const t = this.transientPairs.get(id);
    if (t) return t.privateKey;
    return this.ctx.requireHandle('wrap', id);
  }

  private rsaMechanism(padding: RsaPadding): pkcs11js.Mechanism {
    switch (padding) {
      case 'PKCS1_V1_5':
        return { mechanism: pkcs11js.CKM_RSA_PKCS, parameter: null as unknown as Buffer };
      case 'OAEP_SHA_1':
        return {
          mechanism: pkcs11js.CKM_RSA_PKCS_OAEP,
          parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: pkcs11js.CKM_SHA_1, mgf: pkcs11js.CKG_MGF1_SHA1, source: CKZ_DATA_SPECIFIED } as pkcs11js.RsaOAEP,
        };
      case 'OAEP_SHA_256':
        return {
          mechanism: pkcs11js.CKM_RSA_PKCS_OAEP,
          parameter: { type: pkcs11js.CK_PARAMS_RSA_OAEP, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, source: CKZ_DATA_SPECIFIED } as pkcs11js.RsaOAEP,
        };
    }
  }

  /**
   * C_UnwrapKey with the wrapping private key, into a transient AES key. Every failure of the
   * padding or of the token's checks is the same UnwrapFailedError.
   */
  rsaUnwrap(wrapId: string, padding: RsaPadding, wrapped: Buffer, usage: KeyUsage, measurable: boolean): TransientKey {
    const priv = this.privateHandle(wrapId);
    // RFC 8017: a ciphertext of another length than the modulus is refused before the token sees it,
    // so that the token's length errors below can only be about the unwrapped key.
    if (wrapped.length !== this.modulusBytes(wrapId)) throw new UnwrapFailedError();
    try {
      const h = this.ctx.withSession((p11, s) => this.unwrapWithTemplate(p11, s, this.rsaMechanism(padding), priv, wrapped, usage, measurable), 'C_UnwrapKey');
      return new TransientKey(h);
    } catch (e) {
      // opencryptoki checks the AES key length in C_UnwrapKey (16, 24 or 32 bytes).
      if (toHsmError(e, 'C_UnwrapKey').code === 'CKR_WRAPPED_KEY_LEN_RANGE') throw new HsmError('the unwrapped key is not a valid AES key length', 'UNWRAPPED_KEY_LENGTH', 'C_UnwrapKey');
      throw this.unwrapFailure(e);
    }
  }

  /**
   * C_UnwrapKey into a transient. opencryptoki 3.8 refuses CKA_EXTRACTABLE=true in the template
   * (CKR_ATTRIBUTE_READ_ONLY) although its unwrapped keys are extractable by default: learned once,
   * then left out. persistTransient makes the kept copy non-extractable and sensitive either way.
   */
  private unwrapWithTemplate(p11: pkcs11js.PKCS11, s: Handle, mech: pkcs11js.Mechanism, kek: Handle, wrapped: Buffer, usage: KeyUsage, measurable: boolean): Handle {
    const template = transientUnwrapTemplate(usage, measurable);
    const without = () => template.filter((a) => a.type !== pkcs11js.CKA_EXTRACTABLE);
    if (measurable && this.unwrapRefusesExtractable) return p11.C_UnwrapKey(s, mech, kek, wrapped, without());
    try {
      return p11.C_UnwrapKey(s, mech, kek, wrapped, template);
    } catch (e) {
      if (!measurable || toHsmError(e, 'C_UnwrapKey').code !== 'CKR_ATTRIBUTE_READ_ONLY') throw e;
      this.unwrapRefusesExtractable = true;
      return p11.C_UnwrapKey(s, mech, kek, wrapped, without());
    }
  }

  /** Raw RSA (CKM_RSA_X_509) inside the token, for host-assisted OAEP decoding. The caller zeroes the result. */
  rsaRawDecrypt(wrapId: string, data: Buffer, modulusBytes: number): Buffer {
    const priv = this.privateHandle(wrapId);
    try {
      return this.ctx.withSession((p11, s) => {
        p11.C_DecryptInit(s, { mechanism: pkcs11js.CKM_RSA_X_509, parameter: null as unknown as Buffer }, priv);
        const out = p11.C_Decrypt(s, data, Buffer.alloc(modulusBytes));
        if (out.length === modulusBytes) return out;
        // Some modules strip leading zero bytes of the raw result; restore the k-byte EM.
        const em = Buffer.alloc(modulusBytes);
        out.copy(em, modulusBytes - out.length);
        out.fill(0);
        return em;
      }, 'C_Decrypt');
    } catch (e) {
      throw this.unwrapFailure(e);
    }
  }

  /** One AES-ECB block decryption with a transient key (composed RFC 5649 unwrap of imports). The caller zeroes the result. */
  aesBlockDecrypt(key: TransientKey, block: Buffer): Buffer {
    try {
      return this.ctx.withSession((p11, s) => {
        p11.C_DecryptInit(s, { mechanism: pkcs11js.CKM_AES_ECB, parameter: null as unknown as Buffer }, key[HANDLE]);
        return p11.C_Decrypt(s, block, Buffer.alloc(16));
      }, 'C_Decrypt');
    } catch (e) {
      throw this.unwrapFailure(e);
    }
  }

  /** RFC 5649 unwrap (CKM_AES_KEY_WRAP_PAD) with a transient key-encryption key. */
  aesKwpUnwrap(kek: TransientKey, wrapped: Buffer, usage: KeyUsage, measurable: boolean): TransientKey {
    try {
      const h = this.ctx.withSession(
        (p11, s) => this.unwrapWithTemplate(p11, s, { mechanism: pkcs11js.CKM_AES_KEY_WRAP_PAD, parameter: null as unknown as Buffer }, kek[HANDLE], wrapped, usage, measurable),
        'C_UnwrapKey',
      );
      return new TransientKey(h);
    } catch (e) {
      throw this.unwrapFailure(e);
    }
  }

  private unwrapFailure(e: unknown): HsmError {
    const err = toHsmError(e, 'C_UnwrapKey');
    // Errors about the state of the token itself stay visible; anything about the input is one error.
    if (['CLOSED', 'NOT_FOUND', 'CKR_DEVICE_ERROR', 'CKR_DEVICE_MEMORY', 'CKR_HOST_MEMORY', 'CKR_MECHANISM_INVALID', 'CKR_KEY_FUNCTION_NOT_PERMITTED'].includes(err.code)) {
      return err;
    }
    return new UnwrapFailedError();
  }

  /** Attribute CKA_MODULUS length of a wrapping key, in bytes. */
  modulusBytes(wrapId: string): number {
    const priv = this.privateHandle(wrapId);
    return this.ctx.withSession((p11, s) => (p11.C_GetAttributeValue(s, priv, [{ type: pkcs11js.CKA_MODULUS }])[0].value as Buffer).length, 'C_GetAttributeValue');
  }
}
