// The one table of domain errors. Each code says what a caller did wrong (or what state forbids the
// action) and carries the gRPC status it maps to. Codes are append-only: scripts match on them.
// Where Alibaba Cloud KMS has a name for the error we use it; the rest are ours. docs/errors.md
// mirrors this table (a unit test keeps them in step).

import { HsmError, type HsmErrorKind } from '../hsm/errors';
import { StoreUnavailableError } from '../store/api';

export type Status =
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'PERMISSION_DENIED'
  | 'UNAUTHENTICATED'
  | 'RESOURCE_EXHAUSTED'
  | 'UNAVAILABLE'
  | 'INTERNAL';

export const ERROR_TABLE = {
  InvalidParameter: { status: 'INVALID_ARGUMENT', meaning: 'A parameter breaks its rule; the message names the parameter and the rule.' },
  MissingParameter: { status: 'INVALID_ARGUMENT', meaning: 'A required parameter is absent.' },
  'Forbidden.KeyNotFound': { status: 'NOT_FOUND', meaning: 'No CMK has this KeyId (or the alias points nowhere).' },
  'Forbidden.AliasNotFound': { status: 'NOT_FOUND', meaning: 'No alias has this name.' },
  'Forbidden.KeyVersionNotFound': { status: 'NOT_FOUND', meaning: 'The CMK has no key version with this id.' },
  'EntityAlreadyExists.Alias': { status: 'ALREADY_EXISTS', meaning: 'The alias name is taken.' },
  'Rejected.Disabled': { status: 'FAILED_PRECONDITION', meaning: 'The CMK is Disabled.' },
  'Rejected.PendingImport': { status: 'FAILED_PRECONDITION', meaning: 'The CMK is an external CMK without key material (never imported, deleted or expired).' },
  'Rejected.PendingDeletion': { status: 'FAILED_PRECONDITION', meaning: 'The CMK is scheduled for deletion.' },
  'Rejected.NotPendingDeletion': { status: 'FAILED_PRECONDITION', meaning: 'CancelKeyDeletion on a CMK that is not PendingDeletion.' },
  'Rejected.ExternalKey': { status: 'FAILED_PRECONDITION', meaning: 'External CMKs cannot rotate or get new versions: import into a new CMK instead.' },
  'Rejected.NotExternalKey': { status: 'FAILED_PRECONDITION', meaning: 'Import actions apply only to CMKs with Origin EXTERNAL.' },
  'Rejected.KeyMaterialMismatch': { status: 'FAILED_PRECONDITION', meaning: 'A CMK holds one piece of key material for life; this is a different one.' },
  'Rejected.KeyMaterialMissing': { status: 'FAILED_PRECONDITION', meaning: 'The token does not hold this key version: reported missing at start-up reconciliation, or destroyed while the request was in flight.' },
  'Rejected.UnsupportedWrappingAlgorithm': { status: 'FAILED_PRECONDITION', meaning: 'The token cannot unwrap with this algorithm and no allowed fallback exists; the message says why.' },
  'Rejected.ImportTokenInvalid': { status: 'INVALID_ARGUMENT', meaning: 'The import token is malformed, forged or altered.' },
  'Rejected.ImportTokenExpired': { status: 'FAILED_PRECONDITION', meaning: 'The import token (and its wrapping key) expired, or its wrapping key was destroyed after repeated failed imports: get new parameters.' },
  'Rejected.ImportTokenKeyMismatch': { status: 'INVALID_ARGUMENT', meaning: 'The import token was issued for another CMK.' },
  'InvalidParameter.EncryptedKeyMaterial': { status: 'INVALID_ARGUMENT', meaning: 'The encrypted key material cannot be unwrapped with the wrapping key and algorithm of the import token.' },
  'InvalidParameter.KeyMaterialLength': { status: 'INVALID_ARGUMENT', meaning: 'The key material is not a 256-bit AES key.' },
  InvalidCiphertext: { status: 'INVALID_ARGUMENT', meaning: 'The CiphertextBlob is malformed, altered, or the EncryptionContext differs.' },
  'IncorrectKeyId': { status: 'INVALID_ARGUMENT', meaning: 'Decrypt was given a KeyId that is not the CMK of the ciphertext.' },
  Throttling: { status: 'RESOURCE_EXHAUSTED', meaning: 'Too many requests; retry with backoff.' },
  'ServiceUnavailable.Hsm': { status: 'UNAVAILABLE', meaning: 'The token is not usable right now.' },
  'ServiceUnavailable.Store': { status: 'UNAVAILABLE', meaning: 'The metadata store (PostgreSQL) cannot be reached, or a row stayed locked too long; the call changed nothing and can be retried, on this replica or another.' },
  InternalFailure: { status: 'INTERNAL', meaning: 'An internal error; details are in the daemon log under the request id.' },
  // ---- key ceremonies (custodians, proposals, approvals)
  'Rejected.QuorumRequired': { status: 'FAILED_PRECONDITION', meaning: 'The action is guarded by the quorum policy: propose it (CreateProposal), have M custodians approve it (ApproveProposal), then ExecuteProposal.' },
  'Rejected.CeremonyNotInitialized': { status: 'FAILED_PRECONDITION', meaning: 'No custodians are registered yet: InitCeremony first.' },
  'Forbidden.ProposalNotFound': { status: 'NOT_FOUND', meaning: 'No proposal has this ProposalId.' },
  'Forbidden.CustodianNotFound': { status: 'PERMISSION_DENIED', meaning: 'The CustodianId is not in the current custodian set (unknown, or removed).' },
  'Rejected.SignatureInvalid': { status: 'INVALID_ARGUMENT', meaning: "The signature does not verify over the proposal's current document with the custodian's key (wrong key, altered bytes, or another proposal)." },
  'Rejected.StaleProposalRevision': { status: 'FAILED_PRECONDITION', meaning: 'The signature is over an older revision of the proposal; sign the current Document.' },
  'Rejected.AlreadyApproved': { status: 'ALREADY_EXISTS', meaning: 'This custodian has already approved this revision of the proposal.' },
  'Rejected.ProposalExpired': { status: 'FAILED_PRECONDITION', meaning: 'The proposal expired before it was executed: renew it (RenewProposal) or create a new one.' },
  'Rejected.ProposalCancelled': { status: 'FAILED_PRECONDITION', meaning: 'The proposal was cancelled by its requester.' },
  'Rejected.ProposalExecuted': { status: 'FAILED_PRECONDITION', meaning: 'The proposal was already executed; a proposal runs exactly once.' },
  'Rejected.QuorumNotMet': { status: 'FAILED_PRECONDITION', meaning: 'Fewer current custodians have approved the proposal than the threshold requires.' },
  'Rejected.NotRequester': { status: 'PERMISSION_DENIED', meaning: 'Only the requester of a proposal may cancel or renew it.' },
  // ---- authentication and authorization
  Unauthenticated: { status: 'UNAUTHENTICATED', meaning: 'The caller presented no usable identity (a client certificate that names no principal, or names it ambiguously).' },
  'Forbidden.NoPermission': { status: 'PERMISSION_DENIED', meaning: 'The authorization policy gives this principal no role or grant for this action on this CMK; the message names the principal, the action and the key.' },
  // ---- the store/token binding and destroys the token refused
  'ServiceUnavailable.KeyMaterialDestroyPending': { status: 'UNAVAILABLE', meaning: 'The key material is deleted in the metadata (the CMK is PendingImport) but the token refused to destroy it; kmsd retries until it is gone (each outcome audited). Repeating the call retries at once.' },
  // ---- access keys for the HTTP dialects
  'Forbidden.AccessKeyNotFound': { status: 'NOT_FOUND', meaning: 'No access key has this AccessKeyId (UpdateAccessKey, DeleteAccessKey).' },
  // ---- AWS external key store (XKS proxy)
  'Forbidden.XksKeyStoreNotFound': { status: 'NOT_FOUND', meaning: 'No external key store has this UriPathPrefix.' },
  'Forbidden.XksCredentialNotFound': { status: 'NOT_FOUND', meaning: 'No external key store credential has this AccessKeyId.' },
  'Forbidden.XksKeyNotFound': { status: 'NOT_FOUND', meaning: 'The external key store has no external key with this ExternalKeyId (or the CMK it exposed was deleted).' },
  'EntityAlreadyExists.XksKeyStore': { status: 'ALREADY_EXISTS', meaning: 'An external key store with this UriPathPrefix exists.' },
  'EntityAlreadyExists.XksKey': { status: 'ALREADY_EXISTS', meaning: 'The external key store already has an external key with this ExternalKeyId.' },
  'Rejected.XksCredentialLimit': { status: 'FAILED_PRECONDITION', meaning: 'The external key store already has two credentials (the current one and its replacement): delete the one AWS KMS no longer uses first.' },
  'Rejected.XksKeyStoreNotEmpty': { status: 'FAILED_PRECONDITION', meaning: 'The external key store still exposes external keys: DeleteXksKey them first.' },
  'Rejected.XksKeyUsage': { status: 'FAILED_PRECONDITION', meaning: 'The external key does not allow this operation (its Operations, set by CreateXksKey).' },
  // ---- what the token cannot do at all
  'Rejected.TokenLacksMechanism': { status: 'FAILED_PRECONDITION', meaning: 'The token cannot do what this CMK needs at all (CreateKey at this ProtectionLevel, GetParametersForImport): the message names the mechanisms it lacks, or that KMS_DISABLE_MECHANISMS turned off. Nothing was created.' },
} as const satisfies Record<string, { status: Status; meaning: string }>;

export type ErrorCode = keyof typeof ERROR_TABLE;

export class KmsError extends Error {
  readonly status: Status;
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'KmsError';
    this.status = ERROR_TABLE[code].status;
  }
}

export function invalid(field: string, rule: string): KmsError {
  return new KmsError('InvalidParameter', `${field}: ${rule}`);
}

export function missing(field: string): KmsError {
  return new KmsError('MissingParameter', `${field}: is required`);
}

/**
 * What a failed token call means to a caller, by the kind src/hsm/errors.ts gives it (one table from
 * PKCS#11 return values to kinds there, this one from kinds to domain errors). null: an internal
 * error, logged with its details and answered as InternalFailure. Typed as a Record over every
 * kind, so a kind added there does not compile until it is given a meaning here.
 */
const HSM_ERRORS: Record<HsmErrorKind, ErrorCode | null> = {
  CLOSED: 'ServiceUnavailable.Hsm', // shutting down
  TOKEN_GONE: 'ServiceUnavailable.Hsm',
  SESSION_LOST: null, // only after the retry on a fresh session failed too: a module fault
  KEY_MISSING: 'Rejected.KeyMaterialMissing',
  AUTH_FAILED: 'InvalidCiphertext',
  UNWRAP_FAILED: 'InvalidParameter.EncryptedKeyMaterial',
  MATERIAL_LENGTH: 'InvalidParameter.KeyMaterialLength',
  LOGIN_FAILED: null,
  ALREADY_DONE: null,
  UNSUPPORTED: null, // refused up front by the capability probe; reaching the token is a bug
  NOT_PERMITTED: null,
  BAD_INPUT: null, // kmsd validates input before the token sees it
  EXHAUSTED: null,
  CONFLICT: null,
  SETUP: null,
  INTERNAL: null,
};

/** The domain error for an HsmError (null for anything else, and for internal errors). */
export function fromHsm(e: unknown): KmsError | null {
  if (!(e instanceof HsmError)) return null;
  const code = HSM_ERRORS[e.kind];
  if (code === null) return null;
  switch (code) {
    case 'ServiceUnavailable.Hsm':
      return new KmsError(code, `the HSM is not available (${e.code})`);
    case 'Rejected.KeyMaterialMissing':
      return new KmsError(code, `KeyId: ${e.message}`);
    case 'InvalidCiphertext':
      return new KmsError(code, 'CiphertextBlob: authentication failed (the blob was altered, or the EncryptionContext differs from the one used to encrypt)');
    default:
      return new KmsError(code, `EncryptedKeyMaterial: ${e.message}`);
  }
}

/** A store that cannot be reached, as the caller's retryable error; null for any other error. */
export function storeUnavailable(e: unknown): KmsError | null {
  if (!(e instanceof StoreUnavailableError)) return null;
  return new KmsError('ServiceUnavailable.Store', `the metadata store is not reachable right now; nothing was changed, retry (${e.message})`);
}

/**
 * HSM conditions that mean "the token is not usable" rather than a bug, as the error a caller gets
 * (unary calls and batch items alike); null for any other error.
 */
export function hsmUnavailable(e: unknown): KmsError | null {
  const k = fromHsm(e);
  return k && k.code === 'ServiceUnavailable.Hsm' ? k : null;
}
