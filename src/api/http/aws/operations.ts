// The AWS KMS operations kmsd serves, each as: read the AWS request members (types checked here,
// rules left to the domain), call the domain action through the admission (HttpContext.run, the
// same code path as gRPC), and answer with AWS's members. Blobs are base64 strings both ways (as
// in the domain), times are epoch seconds, key references are ids, alias names or ARNs.

import { KmsError, invalid, missing } from '../../../kms/errors';
import { parseBlob } from '../../../kms/ciphertext';
import * as v from '../../../kms/validate';
import type { KeyMetadata as DomainKeyMetadata } from '../../../kms/types';
import { HttpRefusalError } from '../error-table';
import type { HttpCall, HttpContext } from '../types';
import { AwsFault, unsupported } from './faults';

type Req = Record<string, unknown>;

/** What an operation needs besides its request: who called, where, and the way into the domain. */
export interface Exchange {
  ctx: HttpContext;
  call: HttpCall;
  who: { principal: string; accessKeyId: string };
  /** Region of the request's credential scope: the region of every ARN in the answer. */
  region: string;
}

/** Runs one domain action (Alibaba names in and out) for the caller. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
function act(x: Exchange, action: string, req: Req): Promise<any> {
  // Not async: the admission's promise as it is, without a wrapper promise per call.
  return x.ctx.run(action, req, x.who, x.call);
}

// ------------------------------------------------------------------ members

const has = (req: Req, field: string) => Object.prototype.hasOwnProperty.call(req, field) && req[field] !== null;

function wrongType(field: string, expected: string, value: unknown): HttpRefusalError {
  const got = Array.isArray(value) ? 'an array' : value === null ? 'null' : typeof value === 'object' ? 'an object' : `a ${typeof value}`;
  return new HttpRefusalError('MalformedRequest', `${field}: expected ${expected}, got ${got}`);
}

function str(req: Req, field: string, required: true): string;
function str(req: Req, field: string, required?: false): string | undefined;
function str(req: Req, field: string, required = false): string | undefined {
  if (!has(req, field)) {
    if (required) throw missing(field);
    return undefined;
  }
  const v = req[field];
  if (typeof v !== 'string') throw wrongType(field, 'a string', v);
  if (required && v === '') throw missing(field);
  return v;
}

function int(req: Req, field: string): number | undefined {
  if (!has(req, field)) return undefined;
  const v = req[field];
  if (typeof v !== 'number') throw wrongType(field, 'an integer', v);
  if (!Number.isSafeInteger(v)) throw invalid(field, `must be an integer (got ${v})`);
  return v;
}

function bool(req: Req, field: string): boolean | undefined {
  if (!has(req, field)) return undefined;
  const v = req[field];
  if (typeof v !== 'boolean') throw wrongType(field, 'true or false', v);
  return v;
}

/** A timestamp member: epoch seconds (AWS JSON 1.1), fractions allowed. */
function time(req: Req, field: string): number | undefined {
  if (!has(req, field)) return undefined;
  const v = req[field];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw wrongType(field, 'a timestamp in epoch seconds', v);
  return v;
}

function stringMap(req: Req, field: string): Record<string, string> | undefined {
  if (!has(req, field)) return undefined;
  const v = req[field];
  if (typeof v !== 'object' || Array.isArray(v) || v === null) throw wrongType(field, 'an object of strings', v);
  const entries = Object.entries(v);
  for (const [k, val] of entries) {
    if (typeof val !== 'string') throw wrongType(`${field}.${k.slice(0, 64)}`, 'a string', val);
  }
  // Own properties for every member: assigning out["__proto__"] = "x" on a plain object would drop
  // that member silently, and the ciphertext would be bound to a context without it.
  return Object.fromEntries(entries) as Record<string, string>;
}

function list(req: Req, field: string): unknown[] | undefined {
  if (!has(req, field)) return undefined;
  const v = req[field];
  if (!Array.isArray(v)) throw wrongType(field, 'an array', v);
  return v;
}

function enumOf<T extends string>(req: Req, field: string, allowed: readonly T[], required = false): T | undefined {
  const v = str(req, field, required as false);
  if (v === undefined) return undefined;
  if (!(allowed as readonly string[]).includes(v)) throw invalid(field, `must be one of ${allowed.join(', ')} (got ${JSON.stringify(v.slice(0, 64))})`);
  return v as T;
}

/** Members of AWS features kmsd does not have: absent or empty, else a clear refusal. */
function refuseFeatures(req: Req): void {
  const grants = list(req, 'GrantTokens');
  if (grants && grants.length) throw unsupported('GrantTokens', 'kmsd has no grants; authorization is its --policy file');
  if (bool(req, 'DryRun')) throw unsupported('DryRun', 'kmsd does not dry-run operations');
}

/** Symmetric AES-256-GCM is the only algorithm of kmsd's CMKs. */
function symmetricOnly(req: Req, field: string): void {
  enumOf(req, field, ['SYMMETRIC_DEFAULT'] as const);
}

// ------------------------------------------------------------------ key references and ARNs

const ARN_RE = /^arn:aws[a-z-]*:kms:([^:]*):([^:]*):(key|alias)\/(.+)$/;

/**
 * An AWS key reference as the domain's KeyId: a key id or alias name unchanged, a key ARN as its id,
 * an alias ARN as its alias name. Where AWS takes only a key id or key ARN (`alias: false`), so does
 * this dialect.
 */
function keyRef(x: Exchange, req: Req, field: string, o: { alias: boolean; required?: boolean } = { alias: true }): string | undefined {
  const v = str(req, field, (o.required ?? true) as false);
  if (v === undefined) return undefined;
  let ref = v;
  if (v.startsWith('arn:')) {
    const m = ARN_RE.exec(v);
    if (!m) throw invalid(field, `"${v.slice(0, 128)}" is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID) or alias ARN (arn:aws:kms:REGION:ACCOUNT:alias/NAME)`);
    if (m[2] !== x.ctx.account) throw invalid(field, `the ARN names account ${JSON.stringify(m[2].slice(0, 64))}; this kmsd is account ${x.ctx.account}`);
    ref = m[3] === 'key' ? m[4] : `alias/${m[4]}`;
  }
  if (!o.alias && ref.startsWith('alias/')) throw invalid(field, 'takes a key id or key ARN, not an alias (as in AWS KMS)');
  return ref;
}

const keyArn = (x: Exchange, id: string) => `arn:aws:kms:${x.region}:${x.ctx.account}:key/${id}`;
const aliasArn = (x: Exchange, name: string) => `arn:aws:kms:${x.region}:${x.ctx.account}:${name}`;

/** ISO 8601 from the domain (empty when unset) as epoch seconds, or undefined. */
function epoch(iso: string | undefined): number | undefined {
  if (!iso) return undefined;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? undefined : ms / 1000;
}

function keyMetadata(x: Exchange, m: DomainKeyMetadata) {
  const external = m.Origin === 'EXTERNAL';
  const hasMaterial = external && m.MaterialImportPath !== '';
  return {
    AWSAccountId: x.ctx.account,
    KeyId: m.KeyId,
    Arn: keyArn(x, m.KeyId),
    CreationDate: epoch(m.CreationDate),
    Enabled: m.KeyState === 'Enabled',
    Description: m.Description,
    KeyUsage: 'ENCRYPT_DECRYPT',
    KeyState: m.KeyState,
    DeletionDate: epoch(m.DeleteDate),
    ValidTo: epoch(m.MaterialExpireTime),
    Origin: external ? 'EXTERNAL' : 'AWS_KMS',
    ExpirationModel: hasMaterial ? (m.MaterialExpireTime ? 'KEY_MATERIAL_EXPIRES' : 'KEY_MATERIAL_DOES_NOT_EXPIRE') : undefined,
    KeyManager: 'CUSTOMER',
    CustomerMasterKeySpec: 'SYMMETRIC_DEFAULT',
    KeySpec: 'SYMMETRIC_DEFAULT',
    EncryptionAlgorithms: ['SYMMETRIC_DEFAULT'],
    MultiRegion: false,
  };
}

// ------------------------------------------------------------------ paging

/** Markers are "PAGE.SIZE" of the domain's paging: opaque to clients, checked when they come back. */
function page(req: Req, max = 100): { PageNumber: number; PageSize: number } {
  const limit = int(req, 'Limit');
  if (limit !== undefined && (limit < 1 || limit > 1000)) throw invalid('Limit', `must be from 1 to 1000 (got ${limit})`);
  const marker = str(req, 'Marker');
  if (marker !== undefined) {
    const m = /^([1-9]\d{0,6})\.([1-9]\d{0,2})$/.exec(marker);
    if (!m || Number(m[2]) > max) throw new AwsFault('InvalidMarkerException', 'Marker: not a marker this kmsd handed out (use NextMarker of the previous answer)');
    return { PageNumber: Number(m[1]), PageSize: Number(m[2]) };
  }
  return { PageNumber: 1, PageSize: Math.min(limit ?? max, max) };
}

function more(p: { PageNumber: number; PageSize: number; TotalCount: number }): { Truncated: boolean; NextMarker?: string } {
  const truncated = p.PageNumber * p.PageSize < p.TotalCount;
  return truncated ? { Truncated: true, NextMarker: `${p.PageNumber + 1}.${p.PageSize}` } : { Truncated: false };
}

// ------------------------------------------------------------------ the operations

/** The tag that picks a new CMK's protection level (kmsd stores no other tags). */
export const PROTECTION_LEVEL_TAG = 'kmsd:ProtectionLevel';

function protectionLevel(req: Req): string | undefined {
  const tags = list(req, 'Tags');
  if (!tags) return undefined;
  let level: string | undefined;
  for (const [i, t] of tags.entries()) {
    if (typeof t !== 'object' || t === null || Array.isArray(t)) throw wrongType(`Tags[${i}]`, 'an object with TagKey and TagValue', t);
    const key = str(t as Req, 'TagKey', true);
    const value = str(t as Req, 'TagValue', true);
    if (key !== PROTECTION_LEVEL_TAG) throw new AwsFault('TagException', `Tags[${i}]: kmsd stores no tags; the only tag it reads is ${PROTECTION_LEVEL_TAG} (HSM or SOFTWARE)`);
    if (level !== undefined) throw new AwsFault('TagException', `Tags[${i}]: ${PROTECTION_LEVEL_TAG} is given twice`);
    if (value !== 'HSM' && value !== 'SOFTWARE') throw new AwsFault('TagException', `Tags[${i}]: ${PROTECTION_LEVEL_TAG} must be HSM or SOFTWARE (got ${JSON.stringify(value.slice(0, 64))})`);
    level = value;
  }
  return level;
}

function dataKeySize(req: Req): { KeySpec?: string; NumberOfBytes?: number } {
  const spec = enumOf(req, 'KeySpec', ['AES_256', 'AES_128'] as const);
  const n = int(req, 'NumberOfBytes');
  if (spec !== undefined && n !== undefined) throw invalid('KeySpec', 'give KeySpec or NumberOfBytes, not both');
  if (spec === undefined && n === undefined) throw missing('KeySpec or NumberOfBytes');
  return spec !== undefined ? { KeySpec: spec } : { NumberOfBytes: n };
}

/** A blob member that carries text (kmsd's import token is ASCII; AWS sends it as a blob). */
function textBlob(req: Req, field: string): string {
  const b64 = str(req, field, true);
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(b64)) throw invalid(field, 'must be standard base64');
  return Buffer.from(b64, 'base64').toString('latin1');
}

const MAX_VALID_TO = 253402300799; // 9999-12-31T23:59:59Z, the domain's bound

/** AliasName of CreateAlias/UpdateAlias: the domain's rules, and AWS's reserved prefix. */
function aliasName(req: Req): string {
  const name = str(req, 'AliasName', true);
  if (name.startsWith('alias/aws/')) throw invalid('AliasName', 'must not begin with "alias/aws/" (reserved for AWS managed keys, as in AWS KMS)');
  return name;
}

type Operation = (req: Req, x: Exchange) => Promise<unknown>;

export const OPERATIONS: Record<string, Operation> = {
  async CreateKey(req, x) {
    const origin = enumOf(req, 'Origin', ['AWS_KMS', 'EXTERNAL', 'AWS_CLOUDHSM', 'EXTERNAL_KEY_STORE'] as const) ?? 'AWS_KMS';
    if (origin === 'AWS_CLOUDHSM' || origin === 'EXTERNAL_KEY_STORE') throw unsupported('Origin', `kmsd has no custom key stores (${origin}); use AWS_KMS or EXTERNAL`);
    for (const f of ['KeySpec', 'CustomerMasterKeySpec']) enumOf(req, f, ['SYMMETRIC_DEFAULT'] as const);
    enumOf(req, 'KeyUsage', ['ENCRYPT_DECRYPT'] as const);
    if (str(req, 'Policy') !== undefined) throw unsupported('Policy', 'kmsd has no key policies; authorization is its --policy file');
    if (bool(req, 'MultiRegion')) throw unsupported('MultiRegion', 'kmsd has no multi-Region keys');
    for (const f of ['CustomKeyStoreId', 'XksKeyId']) if (str(req, f) !== undefined) throw unsupported(f, 'kmsd has no custom key stores');
    bool(req, 'BypassPolicyLockoutSafetyCheck');
    const level = protectionLevel(req);
    const r = await act(x, 'CreateKey', {
      Origin: origin === 'EXTERNAL' ? 'EXTERNAL' : 'Aliyun_KMS',
      Description: str(req, 'Description'),
      ...(level ? { ProtectionLevel: level } : {}),
    });
    return { KeyMetadata: keyMetadata(x, r.KeyMetadata) };
  },

  async DescribeKey(req, x) {
    refuseFeatures(req);
    const r = await act(x, 'DescribeKey', { KeyId: keyRef(x, req, 'KeyId') });
    return { KeyMetadata: keyMetadata(x, r.KeyMetadata) };
  },

  async ListKeys(req, x) {
    const p = page(req);
    const r = await act(x, 'ListKeys', p);
    return { Keys: r.Keys.map((k: { KeyId: string }) => ({ KeyId: k.KeyId, KeyArn: keyArn(x, k.KeyId) })), ...more(r) };
  },

  async EnableKey(req, x) {
    await act(x, 'EnableKey', { KeyId: keyRef(x, req, 'KeyId', { alias: false }) });
    return {};
  },

  async DisableKey(req, x) {
    await act(x, 'DisableKey', { KeyId: keyRef(x, req, 'KeyId', { alias: false }) });
    return {};
  },

  async ScheduleKeyDeletion(req, x) {
    const days = int(req, 'PendingWindowInDays') ?? 30;
    if (days < 7 || days > 30) throw invalid('PendingWindowInDays', `must be from 7 to 30 (got ${days})`);
    const r = await act(x, 'ScheduleKeyDeletion', { KeyId: keyRef(x, req, 'KeyId', { alias: false }), PendingWindowInDays: days });
    return { KeyId: keyArn(x, r.KeyId), DeletionDate: epoch(r.DeleteDate), KeyState: 'PendingDeletion', PendingWindowInDays: days };
  },

  async CancelKeyDeletion(req, x) {
    const id = keyRef(x, req, 'KeyId', { alias: false }) as string;
    await act(x, 'CancelKeyDeletion', { KeyId: id });
    return { KeyId: keyArn(x, id) };
  },

  async CreateAlias(req, x) {
    await act(x, 'CreateAlias', { AliasName: aliasName(req), KeyId: keyRef(x, req, 'TargetKeyId', { alias: false }) });
    return {};
  },

  async UpdateAlias(req, x) {
    await act(x, 'UpdateAlias', { AliasName: aliasName(req), KeyId: keyRef(x, req, 'TargetKeyId', { alias: false }) });
    return {};
  },

  async DeleteAlias(req, x) {
    await act(x, 'DeleteAlias', { AliasName: str(req, 'AliasName', true) });
    return {};
  },

  async ListAliases(req, x) {
    const keyId = keyRef(x, req, 'KeyId', { alias: false, required: false });
    const p = page(req);
    const r = keyId ? await act(x, 'ListAliasesByKeyId', { KeyId: keyId, ...p }) : await act(x, 'ListAliases', p);
    return {
      Aliases: r.Aliases.map((a: { AliasName: string; KeyId: string }) => ({ AliasName: a.AliasName, AliasArn: aliasArn(x, a.AliasName), TargetKeyId: a.KeyId })),
      ...more(r),
    };
  },

  async Encrypt(req, x) {
    refuseFeatures(req);
    symmetricOnly(req, 'EncryptionAlgorithm');
    const r = await act(x, 'Encrypt', { KeyId: keyRef(x, req, 'KeyId'), Plaintext: str(req, 'Plaintext', true), EncryptionContext: stringMap(req, 'EncryptionContext') });
    return { CiphertextBlob: r.CiphertextBlob, KeyId: keyArn(x, r.KeyId), EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
  },

  async Decrypt(req, x) {
    refuseFeatures(req);
    symmetricOnly(req, 'EncryptionAlgorithm');
    if (has(req, 'Recipient')) throw unsupported('Recipient', 'kmsd has no Nitro Enclaves attestation');
    const r = await act(x, 'Decrypt', { CiphertextBlob: str(req, 'CiphertextBlob', true), EncryptionContext: stringMap(req, 'EncryptionContext'), KeyId: keyRef(x, req, 'KeyId', { alias: true, required: false }) });
    return { KeyId: keyArn(x, r.KeyId), Plaintext: r.Plaintext, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
  },

  async ReEncrypt(req, x) {
    refuseFeatures(req);
    symmetricOnly(req, 'SourceEncryptionAlgorithm');
    symmetricOnly(req, 'DestinationEncryptionAlgorithm');
    const blob = str(req, 'CiphertextBlob', true);
    const source = keyRef(x, req, 'SourceKeyId', { alias: true, required: false });
    if (source !== undefined) {
      // The domain's ReEncrypt has no SourceKeyId; the check is AWS's, made before anything runs.
      const sourceId = source.startsWith('alias/') ? ((await act(x, 'DescribeKey', { KeyId: source })).KeyMetadata as DomainKeyMetadata).KeyId : source;
      const madeBy = parseBlob(v.base64('CiphertextBlob', blob, { maxBytes: 64 * 1024 })).keyId;
      if (madeBy !== sourceId) throw new KmsError('IncorrectKeyId', `SourceKeyId: the ciphertext was made by CMK ${madeBy}, not ${sourceId}`);
    }
    const r = await act(x, 'ReEncrypt', {
      CiphertextBlob: blob,
      SourceEncryptionContext: stringMap(req, 'SourceEncryptionContext'),
      DestinationKeyId: keyRef(x, req, 'DestinationKeyId'),
      DestinationEncryptionContext: stringMap(req, 'DestinationEncryptionContext'),
    });
    return { CiphertextBlob: r.CiphertextBlob, SourceKeyId: keyArn(x, r.SourceKeyId), KeyId: keyArn(x, r.KeyId), SourceEncryptionAlgorithm: 'SYMMETRIC_DEFAULT', DestinationEncryptionAlgorithm: 'SYMMETRIC_DEFAULT' };
  },

  async GenerateDataKey(req, x) {
    refuseFeatures(req);
    if (has(req, 'Recipient')) throw unsupported('Recipient', 'kmsd has no Nitro Enclaves attestation');
    const r = await act(x, 'GenerateDataKey', { KeyId: keyRef(x, req, 'KeyId'), ...dataKeySize(req), EncryptionContext: stringMap(req, 'EncryptionContext') });
    return { CiphertextBlob: r.CiphertextBlob, Plaintext: r.Plaintext, KeyId: keyArn(x, r.KeyId) };
  },

  async GenerateDataKeyWithoutPlaintext(req, x) {
    refuseFeatures(req);
    const r = await act(x, 'GenerateDataKeyWithoutPlaintext', { KeyId: keyRef(x, req, 'KeyId'), ...dataKeySize(req), EncryptionContext: stringMap(req, 'EncryptionContext') });
    return { CiphertextBlob: r.CiphertextBlob, KeyId: keyArn(x, r.KeyId) };
  },

  async GenerateRandom(req, x) {
    if (str(req, 'CustomKeyStoreId') !== undefined) throw unsupported('CustomKeyStoreId', 'kmsd has no custom key stores');
    if (has(req, 'Recipient')) throw unsupported('Recipient', 'kmsd has no Nitro Enclaves attestation');
    const n = int(req, 'NumberOfBytes');
    if (n === undefined) throw missing('NumberOfBytes');
    const r = await act(x, 'GenerateRandom', { NumberOfBytes: n });
    return { Plaintext: r.Plaintext };
  },

  async GetParametersForImport(req, x) {
    const keyId = keyRef(x, req, 'KeyId', { alias: false });
    const r = await act(x, 'GetParametersForImport', {
      KeyId: keyId,
      WrappingAlgorithm: str(req, 'WrappingAlgorithm', true),
      WrappingKeySpec: str(req, 'WrappingKeySpec', true),
    });
    return { KeyId: keyArn(x, r.KeyId), ImportToken: Buffer.from(r.ImportToken, 'latin1').toString('base64'), PublicKey: r.PublicKey, ParametersValidTo: epoch(r.TokenExpireTime) };
  },

  async ImportKeyMaterial(req, x) {
    const keyId = keyRef(x, req, 'KeyId', { alias: false }) as string;
    for (const f of ['KeyMaterialId', 'KeyMaterialDescription']) if (str(req, f) !== undefined) throw unsupported(f, 'a kmsd CMK holds one key material for life; it has no key material ids or descriptions');
    enumOf(req, 'ImportType', ['NEW_KEY_MATERIAL', 'EXISTING_KEY_MATERIAL'] as const);
    const validTo = time(req, 'ValidTo');
    const model = enumOf(req, 'ExpirationModel', ['KEY_MATERIAL_EXPIRES', 'KEY_MATERIAL_DOES_NOT_EXPIRE'] as const) ?? (validTo !== undefined ? 'KEY_MATERIAL_EXPIRES' : 'KEY_MATERIAL_DOES_NOT_EXPIRE');
    let expireUnix = 0;
    if (model === 'KEY_MATERIAL_EXPIRES') {
      if (validTo === undefined) throw missing('ValidTo');
      // Whole seconds, never later than asked: key material must not outlive its ValidTo.
      expireUnix = Math.floor(validTo);
      if (expireUnix * 1000 <= Date.now()) throw invalid('ValidTo', `must be in the future (got ${new Date(validTo * 1000).toISOString()})`);
      if (expireUnix > MAX_VALID_TO) throw invalid('ValidTo', 'must be at most 9999-12-31T23:59:59Z');
    } else if (validTo !== undefined) {
      throw invalid('ValidTo', 'must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE');
    }
    await act(x, 'ImportKeyMaterial', {
      KeyId: keyId,
      ImportToken: textBlob(req, 'ImportToken'),
      EncryptedKeyMaterial: str(req, 'EncryptedKeyMaterial', true),
      KeyMaterialExpireUnix: expireUnix,
    });
    return { KeyId: keyArn(x, keyId) };
  },

  async DeleteImportedKeyMaterial(req, x) {
    const keyId = keyRef(x, req, 'KeyId', { alias: false }) as string;
    if (str(req, 'KeyMaterialId') !== undefined) throw unsupported('KeyMaterialId', 'a kmsd CMK holds one key material for life; it has no key material ids');
    await act(x, 'DeleteKeyMaterial', { KeyId: keyId });
    return { KeyId: keyArn(x, keyId) };
  },

  async GetKeyRotationStatus(req, x) {
    const r = await act(x, 'DescribeKey', { KeyId: keyRef(x, req, 'KeyId', { alias: false }) });
    const m = r.KeyMetadata as DomainKeyMetadata;
    const enabled = m.AutomaticRotation === 'Enabled';
    const seconds = /^(\d+)s$/.exec(m.RotationInterval)?.[1];
    return {
      KeyId: keyArn(x, m.KeyId),
      KeyRotationEnabled: enabled,
      ...(enabled && seconds ? { RotationPeriodInDays: Math.round(Number(seconds) / 86400) } : {}),
      ...(enabled ? { NextRotationDate: epoch(m.NextRotationDate) } : {}),
    };
  },

  async EnableKeyRotation(req, x) {
    const keyId = keyRef(x, req, 'KeyId', { alias: false });
    // AWS's bounds first, then the domain's interval rules (kmsd rotates at most every 730 days).
    const days = int(req, 'RotationPeriodInDays') ?? 365;
    if (days < 90 || days > 2560) throw invalid('RotationPeriodInDays', `must be from 90 to 2560 (got ${days})`);
    await act(x, 'UpdateRotationPolicy', { KeyId: keyId, EnableAutomaticRotation: true, RotationInterval: `${days}d` });
    return {};
  },

  async DisableKeyRotation(req, x) {
    await act(x, 'UpdateRotationPolicy', { KeyId: keyRef(x, req, 'KeyId', { alias: false }), EnableAutomaticRotation: false });
    return {};
  },
};
