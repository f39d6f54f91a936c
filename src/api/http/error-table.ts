// The one table from kmsd's error codes to the two HTTP dialects: the code and HTTP status Alibaba
// Cloud KMS answers with, and the `__type` and status AWS KMS answers with. Keyed by the domain
// ErrorCode union, so a code added to src/kms/errors.ts without a row here does not compile.
// docs/errors.md shows these columns (test/unit/errors-doc.test.ts keeps the two identical).
//
// Below it, the refusals that happen before any domain action runs (signature, timestamp, nonce,
// unknown action, body size): they are the transport's, so they are not domain error codes.

import type { ErrorCode } from '../../kms/errors';

export interface DialectError {
  /** Alibaba `Code` and HTTP status. */
  alibaba: { code: string; status: number };
  /** AWS `__type` and HTTP status. */
  aws: { type: string; status: number };
}

const ali = (code: string, status: number) => ({ code, status });
const aws = (type: string, status = 400) => ({ type, status });

export const HTTP_ERROR_TABLE: Record<ErrorCode, DialectError> = {
  InvalidParameter: { alibaba: ali('InvalidParameter', 400), aws: aws('ValidationException') },
  MissingParameter: { alibaba: ali('MissingParameter', 400), aws: aws('ValidationException') },
  'Forbidden.KeyNotFound': { alibaba: ali('Forbidden.KeyNotFound', 404), aws: aws('NotFoundException') },
  'Forbidden.AliasNotFound': { alibaba: ali('Forbidden.AliasNotFound', 404), aws: aws('NotFoundException') },
  'Forbidden.KeyVersionNotFound': { alibaba: ali('Forbidden.KeyVersionNotFound', 404), aws: aws('NotFoundException') },
  'EntityAlreadyExists.Alias': { alibaba: ali('EntityAlreadyExists.Alias', 409), aws: aws('AlreadyExistsException') },
  'Rejected.Disabled': { alibaba: ali('Rejected.Disabled', 409), aws: aws('DisabledException') },
  'Rejected.PendingImport': { alibaba: ali('Rejected.PendingImport', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.PendingDeletion': { alibaba: ali('Rejected.PendingDeletion', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.NotPendingDeletion': { alibaba: ali('Rejected.NotPendingDeletion', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.ExternalKey': { alibaba: ali('Rejected.ExternalKey', 409), aws: aws('UnsupportedOperationException') },
  'Rejected.NotExternalKey': { alibaba: ali('Rejected.NotExternalKey', 409), aws: aws('UnsupportedOperationException') },
  'Rejected.KeyMaterialMismatch': { alibaba: ali('Rejected.KeyMaterialMismatch', 409), aws: aws('IncorrectKeyMaterialException') },
  'Rejected.KeyMaterialMissing': { alibaba: ali('Rejected.KeyMaterialMissing', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.UnsupportedWrappingAlgorithm': { alibaba: ali('Rejected.UnsupportedWrappingAlgorithm', 409), aws: aws('UnsupportedOperationException') },
  'Rejected.ImportTokenInvalid': { alibaba: ali('InvalidImportToken', 400), aws: aws('InvalidImportTokenException') },
  'Rejected.ImportTokenExpired': { alibaba: ali('ExpiredImportToken', 400), aws: aws('ExpiredImportTokenException') },
  'Rejected.ImportTokenKeyMismatch': { alibaba: ali('InvalidImportToken', 400), aws: aws('InvalidImportTokenException') },
  'InvalidParameter.EncryptedKeyMaterial': { alibaba: ali('InvalidKeyMaterial', 400), aws: aws('InvalidCiphertextException') },
  'InvalidParameter.KeyMaterialLength': { alibaba: ali('InvalidKeyMaterial', 400), aws: aws('IncorrectKeyMaterialException') },
  InvalidCiphertext: { alibaba: ali('InvalidCiphertext', 400), aws: aws('InvalidCiphertextException') },
  IncorrectKeyId: { alibaba: ali('IncorrectKeyId', 400), aws: aws('IncorrectKeyException') },
  Throttling: { alibaba: ali('Throttling', 429), aws: aws('ThrottlingException') },
  'ServiceUnavailable.Hsm': { alibaba: ali('Throttling.Hsm', 503), aws: aws('KMSInternalException', 500) },
  'ServiceUnavailable.Store': { alibaba: ali('ServiceUnavailableTemporary', 503), aws: aws('DependencyTimeoutException', 500) },
  InternalFailure: { alibaba: ali('InternalFailure', 500), aws: aws('KMSInternalException', 500) },
  'Rejected.QuorumRequired': { alibaba: ali('Rejected.QuorumRequired', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.CeremonyNotInitialized': { alibaba: ali('Rejected.CeremonyNotInitialized', 409), aws: aws('KMSInvalidStateException') },
  'Forbidden.ProposalNotFound': { alibaba: ali('Forbidden.ProposalNotFound', 404), aws: aws('NotFoundException') },
  'Forbidden.CustodianNotFound': { alibaba: ali('Forbidden.CustodianNotFound', 403), aws: aws('AccessDeniedException') },
  'Rejected.SignatureInvalid': { alibaba: ali('Rejected.SignatureInvalid', 400), aws: aws('ValidationException') },
  'Rejected.StaleProposalRevision': { alibaba: ali('Rejected.StaleProposalRevision', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.AlreadyApproved': { alibaba: ali('Rejected.AlreadyApproved', 409), aws: aws('AlreadyExistsException') },
  'Rejected.ProposalExpired': { alibaba: ali('Rejected.ProposalExpired', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.ProposalCancelled': { alibaba: ali('Rejected.ProposalCancelled', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.ProposalExecuted': { alibaba: ali('Rejected.ProposalExecuted', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.QuorumNotMet': { alibaba: ali('Rejected.QuorumNotMet', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.NotRequester': { alibaba: ali('Rejected.NotRequester', 403), aws: aws('AccessDeniedException') },
  Unauthenticated: { alibaba: ali('InvalidAccessKeyId.NotFound', 404), aws: aws('UnrecognizedClientException') },
  'Forbidden.NoPermission': { alibaba: ali('Forbidden.NoPermission', 403), aws: aws('AccessDeniedException') },
  'ServiceUnavailable.KeyMaterialDestroyPending': { alibaba: ali('ServiceUnavailableTemporary', 503), aws: aws('KMSInternalException', 500) },
  'Forbidden.AccessKeyNotFound': { alibaba: ali('InvalidAccessKeyId.NotFound', 404), aws: aws('NotFoundException') },
  'Forbidden.XksKeyStoreNotFound': { alibaba: ali('Forbidden.XksKeyStoreNotFound', 404), aws: aws('NotFoundException') },
  'Forbidden.XksCredentialNotFound': { alibaba: ali('Forbidden.XksCredentialNotFound', 404), aws: aws('NotFoundException') },
  'Forbidden.XksKeyNotFound': { alibaba: ali('Forbidden.XksKeyNotFound', 404), aws: aws('NotFoundException') },
  'EntityAlreadyExists.XksKeyStore': { alibaba: ali('EntityAlreadyExists.XksKeyStore', 409), aws: aws('AlreadyExistsException') },
  'EntityAlreadyExists.XksKey': { alibaba: ali('EntityAlreadyExists.XksKey', 409), aws: aws('AlreadyExistsException') },
  'Rejected.XksCredentialLimit': { alibaba: ali('Rejected.XksCredentialLimit', 409), aws: aws('LimitExceededException') },
  'Rejected.XksKeyStoreNotEmpty': { alibaba: ali('Rejected.XksKeyStoreNotEmpty', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.XksKeyUsage': { alibaba: ali('Rejected.XksKeyUsage', 409), aws: aws('KMSInvalidStateException') },
  'Rejected.TokenLacksMechanism': { alibaba: ali('Rejected.TokenLacksMechanism', 409), aws: aws('UnsupportedOperationException') },
};

/** Refusals of the HTTP transport itself, before a domain action runs. */
export type HttpRefusal =
  | 'UnknownAccessKey' // no such access key id
  | 'InactiveAccessKey' // the access key is Inactive
  | 'SignatureMismatch' // the signature does not verify (wrong secret, altered parameter)
  | 'IncompleteSignature' // a signature parameter or header is missing or malformed
  | 'StaleTimestamp' // Timestamp / x-acs-date / X-Amz-Date outside 15 minutes
  | 'ReplayedNonce' // SignatureNonce seen again within 15 minutes
  | 'UnknownAction' // no such action / X-Amz-Target
  | 'MalformedRequest' // a query, form or JSON body that does not parse
  | 'BodyTooLarge' // over 1 MiB
  | 'HeadersTooLarge' // request line and headers over 16 KiB
  | 'RequestTimeout' // headers or body not received in time
  | 'NotHttp' // bytes that are not an HTTP/1.1 request
  | 'UnsupportedMediaType' // a body type the dialect does not read
  | 'TokenOpening'; // kmsd listens but its token is not open yet (as ServiceUnavailable.Hsm)

export const HTTP_REFUSAL_TABLE: Record<HttpRefusal, DialectError> = {
  UnknownAccessKey: { alibaba: ali('InvalidAccessKeyId.NotFound', 404), aws: aws('UnrecognizedClientException') },
  InactiveAccessKey: { alibaba: ali('InvalidAccessKeyId.Inactive', 400), aws: aws('UnrecognizedClientException') },
  SignatureMismatch: { alibaba: ali('SignatureDoesNotMatch', 400), aws: aws('InvalidSignatureException') },
  IncompleteSignature: { alibaba: ali('IncompleteSignature', 400), aws: aws('IncompleteSignatureException') },
  StaleTimestamp: { alibaba: ali('IllegalTimestamp', 400), aws: aws('InvalidSignatureException') },
  ReplayedNonce: { alibaba: ali('SignatureNonceUsed', 400), aws: aws('InvalidSignatureException') },
  UnknownAction: { alibaba: ali('InvalidAction.NotFound', 404), aws: aws('UnknownOperationException') },
  MalformedRequest: { alibaba: ali('InvalidParameter', 400), aws: aws('SerializationException') },
  BodyTooLarge: { alibaba: ali('RequestEntityTooLarge', 413), aws: aws('ValidationException', 413) },
  HeadersTooLarge: { alibaba: ali('RequestHeaderFieldsTooLarge', 431), aws: aws('ValidationException', 431) },
  RequestTimeout: { alibaba: ali('RequestTimeout', 408), aws: aws('RequestTimeoutException', 408) },
  NotHttp: { alibaba: ali('MalformedRequest', 400), aws: aws('SerializationException') },
  UnsupportedMediaType: { alibaba: ali('UnsupportedMediaType', 415), aws: aws('SerializationException', 415) },
  TokenOpening: { alibaba: ali('Throttling.Hsm', 503), aws: aws('KMSInternalException', 500) },
};

/** A refusal of the HTTP transport, thrown by a dialect's authentication and parsing. */
export class HttpRefusalError extends Error {
  constructor(
    readonly refusal: HttpRefusal,
    message: string,
  ) {
    super(message);
    this.name = 'HttpRefusalError';
  }
}
