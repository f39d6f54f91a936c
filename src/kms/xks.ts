// kmsd as an AWS KMS external key store proxy (the XKS Proxy API v1): the key stores (one per URI
// path prefix), their SigV4 credentials, the external keys that expose HSM-level CMKs to AWS KMS,
// and the four operations on them. AWS KMS keeps no key material: every encrypt and decrypt of such
// a key is AES-256-GCM inside the token with the CMK's material, through the same keyring as
// kmsd's own Encrypt.
//
// Credential secrets are made in the token and stored only sealed under the root key, as access
// keys are (Keyring.newSealedSecret); each key store may have two at once, so AWS KMS can be moved
// from the old one to the new one without downtime (the spec's rotation procedure).
//
// The ciphertext metadata kmsd returns names the key version that encrypted (format byte 1, then
// the 16 bytes of the version id), so a ciphertext still decrypts after the CMK rotates. As the spec
// asks, the AAD given to the token is len16(aad) || aad || len8(metadata) || metadata, so neither
// can stand in for the other.

import crypto from 'node:crypto';
import { StoreConflictError } from '../store/api';
import type { CmkRow, KeyVersionRow, Store, StoreTx, XksCredentialRow, XksKeyRow } from '../store/api';
import type { CallContext } from './types';
import { DecryptFailedError } from '../hsm/errors';
import type { Keyring } from './keyring';
import type { KmsService } from './service';
import { iso } from './service';
import { KmsError, invalid, missing } from './errors';
import { IV_BYTES, bytesToUuid, freshIv, uuidToBytes } from './ciphertext';

/** The operations an external key allows, as CreateXksKey takes them, and what GetKeyMetadata reports. */
export const XKS_OPERATIONS = {
  'ENCRYPT,DECRYPT': { encrypt: true, decrypt: true, keyUsage: ['ENCRYPT', 'DECRYPT'] },
  ENCRYPT: { encrypt: true, decrypt: false, keyUsage: ['ENCRYPT'] },
  DECRYPT: { encrypt: false, decrypt: true, keyUsage: ['DECRYPT'] },
  NONE: { encrypt: false, decrypt: false, keyUsage: [] },
} as const satisfies Record<string, { encrypt: boolean; decrypt: boolean; keyUsage: readonly string[] }>;
export type XksOperations = keyof typeof XKS_OPERATIONS;

/** What a CMK's state looks like to AWS KMS (GetKeyMetadata's keyStatus). */
const KEY_STATUS: Record<string, 'ENABLED' | 'DISABLED'> = { Enabled: 'ENABLED', Disabled: 'DISABLED', PendingImport: 'DISABLED', PendingDeletion: 'DISABLED' };

/** `XksProxyUriPath` is at most 128 characters; this is the part before `/kms/xks/v1`. */
const URI_SUFFIX = '/kms/xks/v1';
const PREFIX_RE = /^[A-Za-z0-9_-]+(?:\/[A-Za-z0-9_-]+)*$/;
const PREFIX_MAX = 128 - 1 - URI_SUFFIX.length;
const EXTERNAL_KEY_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;
/** The spec's access key id: 20–30 of A–Z and 2–7. kmsd's are 27: a marker and 20 random characters. */
const ACCESS_KEY_ID_RE = /^[A-Z2-7]{20,30}$/;
const ACCESS_KEY_MARKER = 'KMSDXKS';
const B32 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
/** Credentials a key store may hold at once: the current one and its replacement. */
export const MAX_CREDENTIALS = 2;

/** Plaintext an XKS Encrypt takes (the spec's minimum is 4,300 bytes; AWS KMS sends at most 4 KiB). */
export const XKS_MAX_PLAINTEXT = 6144;
/** The AAD the spec requires a proxy to take (8,192 bytes); its length travels in two bytes. */
export const XKS_MAX_AAD = 8192;
export const XKS_TAG_BYTES = 16;
const METADATA_FORMAT = 1;
const METADATA_BYTES = 17;

export interface XksCredentialView {
  accessKeyId: string;
  uriPathPrefix: string;
  /** The principal the admission and the audit see for requests signed with this credential. */
  principal: string;
  status: 'Active';
  /** The secret as AWS KMS holds it (ASCII); the caller must not keep or log it. */
  secret(): Buffer;
}

/** One XKS request after the wire format: the key store and external key from the URI, bytes decoded. */
export interface XksKeyRequest {
  UriPathPrefix: string;
  ExternalKeyId: string;
}

export interface XksEncryptRequest extends XksKeyRequest {
  Plaintext: Buffer;
  Aad?: Buffer;
  /** 'SHA_256' when the caller asked for the Ciphertext Data Integrity Value. */
  CdivAlgorithm?: string;
}

export interface XksDecryptRequest extends XksKeyRequest {
  Ciphertext: Buffer;
  Iv: Buffer;
  Tag: Buffer;
  Aad?: Buffer;
  CiphertextMetadata?: Buffer;
}

export interface XksEncryptResult {
  ciphertext: Buffer;
  ciphertextMetadata: Buffer;
  initializationVector: Buffer;
  authenticationTag: Buffer;
  ciphertextDataIntegrityValue?: Buffer;
}

export interface XksHealth {
  healthy: boolean;
  tokenLabel: string;
  tokenModel: string;
  tokenManufacturer: string;
  /** Why the token is not usable, when it is not. */
  reason?: string;
}

/** The token as the health check sees it: a probe that returns or throws, never hangs. */
export interface XksTokenProbe {
  probe(): Promise<{ label: string; model: string; manufacturer: string }>;
}

function str(req: Record<string, unknown>, name: string): string {
  const v = req[name];
  if (v === undefined || v === null || v === '') throw missing(name);
  if (typeof v !== 'string') throw invalid(name, 'must be a string');
  return v;
}

function newAccessKeyId(): string {
  let s = ACCESS_KEY_MARKER;
  for (const b of crypto.randomBytes(20)) s += B32[b & 31];
  return s;
}

/** `keystore-1`, `/keystore-1/`, `/keystore-1/kms/xks/v1` → `keystore-1`. */
export function normalizePrefix(field: string, raw: string): string {
  let p = raw.trim();
  if (p.endsWith(URI_SUFFIX)) p = p.slice(0, -URI_SUFFIX.length);
  p = p.replace(/^\/+|\/+$/g, '');
  if (!p) throw invalid(field, `must name the path before ${URI_SUFFIX} (letters, digits, '-', '_', segments separated by '/')`);
  if (!PREFIX_RE.test(p)) throw invalid(field, `"${raw.slice(0, 64)}": only letters, digits, '-' and '_', in segments separated by '/'`);
  if (p.length > PREFIX_MAX) throw invalid(field, `at most ${PREFIX_MAX} characters (the whole XksProxyUriPath "/PREFIX${URI_SUFFIX}" is at most 128)`);
  return p;
}

export function uriPathOf(prefix: string): string {
  return `/${prefix}${URI_SUFFIX}`;
}

function parseOperations(raw: string): XksOperations {
  const parts = raw
    .split(',')
    .map((s) => s.trim().toUpperCase())
    .filter(Boolean);
  const set = new Set(parts);
  if (set.size === 1 && set.has('NONE')) return 'NONE';
  if (set.size === 0 || [...set].some((p) => p !== 'ENCRYPT' && p !== 'DECRYPT')) {
    throw invalid('Operations', `"${raw.slice(0, 64)}": one of ENCRYPT,DECRYPT or ENCRYPT or DECRYPT or NONE`);
  }
  return set.size === 2 ? 'ENCRYPT,DECRYPT' : (parts[0] as 'ENCRYPT' | 'DECRYPT');
}

/** The token's AAD for an XKS request: both lengths bound in, as the spec prescribes. */
function tokenAad(aad: Buffer | undefined, metadata: Buffer): Buffer {
  const a = aad ?? Buffer.alloc(0);
  const out = Buffer.alloc(2 + a.length + 1 + metadata.length);
  out.writeUInt16BE(a.length, 0);
  a.copy(out, 2);
  out.writeUInt8(metadata.length, 2 + a.length);
  metadata.copy(out, 3 + a.length);
  return out;
}

/** Appendix C: SHA-256 over aad || metadata || iv || ciphertext || tag, computed before the check decrypt. */
export function ciphertextDataIntegrityValue(aad: Buffer | undefined, r: Omit<XksEncryptResult, 'ciphertextDataIntegrityValue'>): Buffer {
  const h = crypto.createHash('sha256');
  if (aad) h.update(aad);
  return h.update(r.ciphertextMetadata).update(r.initializationVector).update(r.ciphertext).update(r.authenticationTag).digest();
}

export class XksService {
  /** Unsealed secrets by access key id (ASCII bytes of the secret string). */
  private readonly secrets = new Map<string, Buffer>();
  private lastSeen: { label: string; model: string; manufacturer: string } | undefined;

  /**
   * Credentials and external keys, in memory: every XKS request looks up both, synchronously,
   * before anything else of it is read. Loaded at start-up (load), again after every change this
   * process makes and whenever the store says rows may have changed behind its back (onRollback).
   */
  private credentials = new Map<string, XksCredentialRow>();
  private keys = new Map<string, XksKeyRow>();

  constructor(
    private readonly store: Store,
    private readonly kms: KmsService,
    private readonly keyring: Keyring,
    private readonly token: XksTokenProbe,
  ) {
    store.onRollback(() => {
      this.load().catch(() => undefined);
    });
  }

  /** Reads the credentials and external keys into memory. */
  async load(): Promise<void> {
    const credentials = new Map<string, XksCredentialRow>();
    const keys = new Map<string, XksKeyRow>();
    for (const ks of await this.store.xks.listKeyStores()) {
      for (const c of await this.store.xks.listCredentials(ks.uri_path_prefix)) credentials.set(c.access_key_id, c);
      for (const k of await this.store.xks.listKeys(ks.uri_path_prefix)) keys.set(keyOf(k.uri_path_prefix, k.external_key_id), k);
    }
    for (const id of this.credentials.keys()) if (!credentials.has(id)) this.forget(id);
    this.credentials = credentials;
    this.keys = keys;
  }

  /** `fn` in one transaction with the call's record; the tables in memory are read again after it, whatever its outcome. */
  private async change<T>(ctx: CallContext | undefined, fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    try {
      return await this.kms.change(ctx, fn);
    } finally {
      await this.load();
    }
  }

  // ================================================================ admin actions

  async CreateXksKeyStore(req: Record<string, unknown>, ctx?: CallContext): Promise<{ UriPath: string; UriPathPrefix: string; AccessKeyId: string; SecretAccessKey: string }> {
    const prefix = normalizePrefix('UriPathPrefix', str(req, 'UriPathPrefix'));
    const exists = () => new KmsError('EntityAlreadyExists.XksKeyStore', `UriPathPrefix: an external key store "${prefix}" already exists`);
    const { sealed, secret } = this.keyring.newSealedSecret();
    try {
      return await this.change(ctx, async (tx) => {
        if (await tx.xks.getKeyStore(prefix)) throw exists();
        await tx.xks.insertKeyStore({ uri_path_prefix: prefix, creation_date: Date.now() });
        const c = await this.newCredential(tx, prefix, sealed, secret);
        return { UriPath: uriPathOf(prefix), UriPathPrefix: prefix, ...c };
      });
    } catch (e) {
      if (e instanceof StoreConflictError) throw exists();
      throw e;
    } finally {
      secret.fill(0);
    }
  }

  async CreateXksCredential(req: Record<string, unknown>, ctx?: CallContext): Promise<{ UriPath: string; UriPathPrefix: string; AccessKeyId: string; SecretAccessKey: string }> {
    const prefix = normalizePrefix('UriPathPrefix', str(req, 'UriPathPrefix'));
    const { sealed, secret } = this.keyring.newSealedSecret();
    try {
      return await this.change(ctx, async (tx) => {
        await this.keyStore(tx, prefix);
        const existing = await tx.xks.listCredentials(prefix);
        if (existing.length >= MAX_CREDENTIALS) {
          throw new KmsError('Rejected.XksCredentialLimit', `UriPathPrefix: external key store "${prefix}" already has ${existing.length} credentials (${existing.map((c) => c.access_key_id).join(', ')}); delete the one AWS KMS no longer uses first`);
        }
        return { UriPath: uriPathOf(prefix), UriPathPrefix: prefix, ...(await this.newCredential(tx, prefix, sealed, secret)) };
      });
    } finally {
      secret.fill(0);
    }
  }

  async DeleteXksCredential(req: Record<string, unknown>, ctx?: CallContext): Promise<{ UriPathPrefix: string; AccessKeyId: string }> {
    const id = str(req, 'AccessKeyId');
    return this.change(ctx, async (tx) => {
      const row = ACCESS_KEY_ID_RE.test(id) ? await tx.xks.getCredential(id) : undefined;
      if (!row) throw new KmsError('Forbidden.XksCredentialNotFound', `AccessKeyId: no external key store credential "${id.slice(0, 64)}"`);
      await tx.xks.deleteCredential(id);
      return { UriPathPrefix: row.uri_path_prefix, AccessKeyId: id };
    });
  }

  async ListXksKeyStores(): Promise<{ KeyStores: { UriPathPrefix: string; UriPath: string; CreationDate: string; AccessKeyIds: string[]; KeyCount: number }[]; TotalCount: number }> {
    const rows = await this.store.xks.listKeyStores();
    const out = [];
    for (const r of rows) {
      out.push({
        UriPathPrefix: r.uri_path_prefix,
        UriPath: uriPathOf(r.uri_path_prefix),
        CreationDate: iso(r.creation_date),
        AccessKeyIds: (await this.store.xks.listCredentials(r.uri_path_prefix)).map((c) => c.access_key_id),
        KeyCount: await this.store.xks.countKeys(r.uri_path_prefix),
      });
    }
    return { KeyStores: out, TotalCount: rows.length };
  }

  async DeleteXksKeyStore(req: Record<string, unknown>, ctx?: CallContext): Promise<{ UriPathPrefix: string }> {
    const prefix = normalizePrefix('UriPathPrefix', str(req, 'UriPathPrefix'));
    return this.change(ctx, async (tx) => {
      await this.keyStore(tx, prefix);
      const n = await tx.xks.countKeys(prefix);
      if (n > 0) throw new KmsError('Rejected.XksKeyStoreNotEmpty', `UriPathPrefix: external key store "${prefix}" still exposes ${n} external key(s); DeleteXksKey them first`);
      await tx.xks.deleteKeyStore(prefix);
      return { UriPathPrefix: prefix };
    });
  }

  async CreateXksKey(req: Record<string, unknown>, ctx?: CallContext): Promise<{ UriPathPrefix: string; ExternalKeyId: string; KeyId: string; Operations: string }> {
    const prefix = normalizePrefix('UriPathPrefix', str(req, 'UriPathPrefix'));
    const exists = (externalKeyId: string) => new KmsError('EntityAlreadyExists.XksKey', `ExternalKeyId: "${externalKeyId}" already exists in external key store "${prefix}"`);
    const externalKeyId = str(req, 'ExternalKeyId');
    try {
      return await this.change(ctx, async (tx) => {
        await this.keyStore(tx, prefix);
        if (!EXTERNAL_KEY_ID_RE.test(externalKeyId)) throw invalid('ExternalKeyId', `"${externalKeyId.slice(0, 64)}": 1 to 128 letters, digits, '-', '.' or '_'`);
        const operations = parseOperations(str(req, 'Operations'));
        const row = await this.kms.resolve('KeyId', str(req, 'KeyId'), tx);
        if (row.protection_level !== 'HSM') {
          throw invalid('KeyId', `CMK ${row.key_id} has ProtectionLevel ${row.protection_level}; an external key store exposes only HSM CMKs (the material never leaves the token)`);
        }
        if (row.key_state === 'PendingDeletion') throw new KmsError('Rejected.PendingDeletion', `KeyId: CMK ${row.key_id} is PendingDeletion`);
        if (await tx.xks.getKey(prefix, externalKeyId)) throw exists(externalKeyId);
        await tx.xks.insertKey({ uri_path_prefix: prefix, external_key_id: externalKeyId, key_id: row.key_id, operations, creation_date: Date.now() });
        return { UriPathPrefix: prefix, ExternalKeyId: externalKeyId, KeyId: row.key_id, Operations: operations };
      });
    } catch (e) {
      if (e instanceof StoreConflictError) throw exists(externalKeyId);
      throw e;
    }
  }

  async DeleteXksKey(req: Record<string, unknown>, ctx?: CallContext): Promise<{ UriPathPrefix: string; ExternalKeyId: string; KeyId: string }> {
    const prefix = normalizePrefix('UriPathPrefix', str(req, 'UriPathPrefix'));
    const externalKeyId = str(req, 'ExternalKeyId');
    return this.change(ctx, async (tx) => {
      await this.keyStore(tx, prefix);
      const row = await tx.xks.getKey(prefix, externalKeyId);
      if (!row) throw new KmsError('Forbidden.XksKeyNotFound', `ExternalKeyId: external key store "${prefix}" has no external key "${externalKeyId.slice(0, 128)}"`);
      await tx.xks.deleteKey(prefix, externalKeyId);
      return { UriPathPrefix: prefix, ExternalKeyId: externalKeyId, KeyId: row.key_id };
    });
  }

  async ListXksKeys(req: Record<string, unknown>): Promise<{ Keys: { ExternalKeyId: string; KeyId: string; Operations: string; KeyState: string; CreationDate: string }[]; TotalCount: number }> {
    const prefix = normalizePrefix('UriPathPrefix', str(req, 'UriPathPrefix'));
    await this.keyStore(this.store, prefix);
    const rows = await this.store.xks.listKeys(prefix);
    const keys = [];
    for (const r of rows) {
      keys.push({ ExternalKeyId: r.external_key_id, KeyId: r.key_id, Operations: r.operations, KeyState: (await this.store.getCmk(r.key_id))?.key_state ?? 'Deleted', CreationDate: iso(r.creation_date) });
    }
    return { Keys: keys, TotalCount: rows.length };
  }

  // ================================================================ credentials (the HTTP side)

  /** The credential a request names, or undefined (from memory); the secret is unsealed on first use. */
  lookupCredential(accessKeyId: string): XksCredentialView | undefined {
    if (!ACCESS_KEY_ID_RE.test(accessKeyId)) return undefined;
    const row = this.credentials.get(accessKeyId);
    if (!row) return undefined;
    return { accessKeyId: row.access_key_id, uriPathPrefix: row.uri_path_prefix, principal: xksPrincipal(row.uri_path_prefix), status: 'Active', secret: () => this.secretOf(row) };
  }

  /** The CMK id an external key exposes (for the admission's policy check), or undefined. */
  keyIdOf(prefix: string, externalKeyId: string): string | undefined {
    return this.keys.get(keyOf(prefix, externalKeyId))?.key_id;
  }

  /** Zeroes every cached secret (shutdown). */
  forgetAll(): void {
    for (const id of [...this.secrets.keys()]) this.forget(id);
  }

  // ================================================================ the four XKS operations

  async XksGetKeyMetadata(req: XksKeyRequest): Promise<{ keySpec: 'AES_256'; keyUsage: string[]; keyStatus: 'ENABLED' | 'DISABLED' }> {
    const { xk, row } = await this.externalKey(req);
    const ops = XKS_OPERATIONS[xk.operations as XksOperations];
    const present = row.key_state === 'Enabled' && (await this.primary(row))?.material_state === 'Present';
    return { keySpec: 'AES_256', keyUsage: [...ops.keyUsage], keyStatus: present ? 'ENABLED' : (KEY_STATUS[row.key_state] ?? 'DISABLED') };
  }

  async XksEncrypt(req: XksEncryptRequest): Promise<XksEncryptResult> {
    const { xk, row } = await this.externalKey(req);
    this.allow(xk, 'encrypt');
    // A CDIV tells AWS KMS that a decrypt with this key will succeed (Appendix C); a key that may
    // not decrypt cannot say so.
    if (req.CdivAlgorithm !== undefined) this.allow(xk, 'decrypt', ' (a ciphertextDataIntegrityValue promises that the ciphertext decrypts with this key)');
    const ver = await this.usable(row);
    const iv = Buffer.from(freshIv());
    const metadata = Buffer.concat([Buffer.of(METADATA_FORMAT), uuidToBytes(ver.version_id)]);
    const sealed = await this.keyring.encrypt('HSM', ver, iv, tokenAad(req.Aad, metadata), req.Plaintext);
    const out: XksEncryptResult = {
      ciphertext: sealed.subarray(0, sealed.length - XKS_TAG_BYTES),
      ciphertextMetadata: metadata,
      initializationVector: iv,
      authenticationTag: sealed.subarray(sealed.length - XKS_TAG_BYTES),
    };
    if (req.CdivAlgorithm !== undefined) {
      // Appendix C: the value first, then a decrypt of exactly what goes back; a corruption between
      // the two is caught by the decrypt, one before the value cannot be hidden by it.
      out.ciphertextDataIntegrityValue = ciphertextDataIntegrityValue(req.Aad, out);
      let check: Buffer;
      try {
        check = await this.keyring.decrypt('HSM', ver, out.initializationVector, tokenAad(req.Aad, out.ciphertextMetadata), Buffer.concat([out.ciphertext, out.authenticationTag]));
      } catch (e) {
        throw new KmsError('InternalFailure', `XKS Encrypt: the ciphertext did not decrypt in the integrity check (${(e as Error).name})`);
      }
      try {
        if (!crypto.timingSafeEqual(check, req.Plaintext)) throw new KmsError('InternalFailure', 'XKS Encrypt: the ciphertext decrypted to other bytes in the integrity check');
      } finally {
        check.fill(0);
      }
    }
    return out;
  }

  async XksDecrypt(req: XksDecryptRequest): Promise<{ plaintext: Buffer }> {
    const { xk, row } = await this.externalKey(req);
    this.allow(xk, 'decrypt');
    this.kms.requireState(row, ['Enabled']);
    // kmsd's ciphertexts always carry a 12-byte IV and kmsd's metadata; anything else is not one of them.
    const meta = req.CiphertextMetadata;
    if (!meta || meta.length !== METADATA_BYTES || meta[0] !== METADATA_FORMAT) {
      throw new KmsError('InvalidCiphertext', 'ciphertextMetadata: is not one kmsd returned from Encrypt (it names the key version)');
    }
    if (req.Iv.length !== IV_BYTES) throw new KmsError('InvalidCiphertext', `initializationVector: kmsd's ciphertexts have a ${IV_BYTES}-byte IV (got ${req.Iv.length})`);
    const versionId = bytesToUuid(meta.subarray(1));
    const ver = this.store.cachedVersion(versionId) ?? (await this.store.getVersion(versionId));
    if (!ver || ver.key_id !== row.key_id) throw new KmsError('InvalidCiphertext', `ciphertextMetadata: names no key version of the CMK behind external key "${req.ExternalKeyId}"`);
    if (ver.material_state !== 'Present') throw new KmsError('Rejected.KeyMaterialMissing', `the material of key version ${ver.version_id} of CMK ${row.key_id} is not available`);
    try {
      return { plaintext: await this.keyring.decrypt('HSM', ver, req.Iv, tokenAad(req.Aad, meta), Buffer.concat([req.Ciphertext, req.Tag])) };
    } catch (e) {
      if (e instanceof DecryptFailedError) {
        throw new KmsError('InvalidCiphertext', 'authentication failed: the ciphertext, IV, tag, ciphertext metadata or additional authenticated data is not what Encrypt returned or was given');
      }
      throw e;
    }
  }

  /** Never hangs on a gone token: the probe answers or throws, and a throw is an UNAVAILABLE answer. */
  async XksGetHealthStatus(): Promise<XksHealth> {
    try {
      const t = await this.token.probe();
      this.lastSeen = { label: t.label, model: t.model, manufacturer: t.manufacturer };
      return { healthy: true, tokenLabel: t.label, tokenModel: t.model, tokenManufacturer: t.manufacturer };
    } catch (e) {
      // The token as last seen names what is UNAVAILABLE.
      const t = this.lastSeen;
      return { healthy: false, tokenLabel: t?.label ?? '', tokenModel: t?.model ?? '', tokenManufacturer: t?.manufacturer ?? '', reason: (e as Error).message.slice(0, 200) };
    }
  }

  // ================================================================ internals

  /** A new credential's row, in the caller's transaction; the caller made `secret` and zeroes it. */
  private async newCredential(tx: StoreTx, prefix: string, sealed: Buffer, secret: Buffer): Promise<{ AccessKeyId: string; SecretAccessKey: string }> {
    const id = newAccessKeyId();
    await tx.xks.insertCredential({ access_key_id: id, uri_path_prefix: prefix, sealed_secret: sealed, creation_date: Date.now() });
    // 32 random bytes in standard Base64: 44 characters of the spec's alphabet (A–Z a–z 0–9 + / =).
    return { AccessKeyId: id, SecretAccessKey: secret.toString('base64') };
  }

  private async keyStore(on: Store | StoreTx, prefix: string) {
    const row = await on.xks.getKeyStore(prefix);
    if (!row) throw new KmsError('Forbidden.XksKeyStoreNotFound', `UriPathPrefix: no external key store "${prefix}"`);
    return row;
  }

  private async externalKey(req: XksKeyRequest): Promise<{ xk: XksKeyRow; row: CmkRow }> {
    const xk = this.keys.get(keyOf(req.UriPathPrefix, req.ExternalKeyId));
    if (!xk) throw new KmsError('Forbidden.XksKeyNotFound', `external key store "${req.UriPathPrefix}" has no external key "${req.ExternalKeyId}"`);
    const cmk = this.store.cachedCmk(xk.key_id) ?? (await this.store.getCmk(xk.key_id));
    if (!cmk) throw new KmsError('Forbidden.XksKeyNotFound', `external key "${req.ExternalKeyId}" exposed CMK ${xk.key_id}, which was deleted`);
    return { xk, row: await this.kms.expireIfDue(cmk) };
  }

  private allow(xk: XksKeyRow, op: 'encrypt' | 'decrypt', why = ''): void {
    const ops = XKS_OPERATIONS[xk.operations as XksOperations];
    if (!ops?.[op]) {
      throw new KmsError('Rejected.XksKeyUsage', `external key "${xk.external_key_id}" allows ${xk.operations}, not ${op.toUpperCase()}${why} (kmsctl CreateXksKey --Operations)`);
    }
  }

  private async primary(row: CmkRow): Promise<KeyVersionRow | undefined> {
    const id = row.primary_key_version;
    return id ? (this.store.cachedVersion(id) ?? (await this.store.getVersion(id))) : undefined;
  }

  private async usable(row: CmkRow): Promise<KeyVersionRow> {
    const ver = await this.kms.requireUsable(row);
    if (ver.material_state !== 'Present') throw new KmsError('Rejected.KeyMaterialMissing', `the material of key version ${ver.version_id} of CMK ${row.key_id} is not available`);
    return ver;
  }

  private secretOf(row: XksCredentialRow): Buffer {
    let s = this.secrets.get(row.access_key_id);
    if (!s) {
      const raw = this.keyring.unsealSecret(row.sealed_secret);
      try {
        s = Buffer.from(raw.toString('base64'), 'ascii');
      } finally {
        raw.fill(0);
      }
      this.secrets.set(row.access_key_id, s);
    }
    // A copy: the verifier zeroes what it is given once it has derived its signing key.
    return Buffer.from(s);
  }

  private forget(id: string): void {
    this.secrets.get(id)?.fill(0);
    this.secrets.delete(id);
  }
}

function keyOf(prefix: string, externalKeyId: string): string {
  return `${prefix}\n${externalKeyId}`;
}

/** The principal of a key store's requests: what the --policy file grants and the audit records name. */
export function xksPrincipal(prefix: string): string {
  return `xks:${prefix}`;
}
