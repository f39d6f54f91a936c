// The XKS Proxy API's errors: `{"errorName","errorMessage"}` with the spec's HTTP status, and the one
// mapping from kmsd's error codes onto them (by the code where the spec has a name for the case, by
// the code's gRPC status otherwise, so a code added later still lands on a sensible name).

import type { ErrorCode, Status } from '../../../kms/errors';

/** The spec's error names and their HTTP statuses ("Error codes"). */
export const XKS_ERRORS = {
  ValidationException: 400,
  InvalidStateException: 400,
  InvalidCiphertextException: 400,
  InvalidKeyUsageException: 400,
  AuthenticationFailedException: 401,
  AccessDeniedException: 403,
  KeyNotFoundException: 404,
  InvalidUriPathException: 404,
  ThrottlingException: 429,
  UnsupportedOperationException: 501,
  DependencyTimeoutException: 503,
  InternalException: 500,
} as const;
export type XksErrorName = keyof typeof XKS_ERRORS;

/** A refusal of the XKS dialect itself (route, method, signature, body), before any action runs. */
export class XksFault extends Error {
  constructor(
    readonly errorName: XksErrorName,
    message: string,
    /** Only for the 405 of a GET: the spec gives that case a status but no error name. */
    readonly status: number = XKS_ERRORS[errorName],
  ) {
    super(message);
    this.name = 'XksFault';
  }
}

/** Domain errors the spec names a case for. */
const BY_CODE: Partial<Record<ErrorCode, XksErrorName>> = {
  InvalidCiphertext: 'InvalidCiphertextException',
  'Rejected.XksKeyUsage': 'InvalidKeyUsageException',
  'Forbidden.XksKeyNotFound': 'KeyNotFoundException',
  'Forbidden.XksKeyStoreNotFound': 'InvalidUriPathException',
  'Forbidden.NoPermission': 'AccessDeniedException',
  Throttling: 'ThrottlingException',
  // The token failing is the backing key manager failing: the spec's InternalException.
  'ServiceUnavailable.Hsm': 'InternalException',
  // The store is a dependency the proxy waits on: AWS KMS retries DependencyTimeout.
  'ServiceUnavailable.Store': 'DependencyTimeoutException',
};

/** Every other code by its status: a Disabled, PendingDeletion or material-less CMK is InvalidState. */
const BY_STATUS: Record<Status, XksErrorName> = {
  INVALID_ARGUMENT: 'ValidationException',
  NOT_FOUND: 'KeyNotFoundException',
  ALREADY_EXISTS: 'ValidationException',
  FAILED_PRECONDITION: 'InvalidStateException',
  PERMISSION_DENIED: 'AccessDeniedException',
  UNAUTHENTICATED: 'AuthenticationFailedException',
  RESOURCE_EXHAUSTED: 'ThrottlingException',
  UNAVAILABLE: 'DependencyTimeoutException',
  INTERNAL: 'InternalException',
};

export function xksErrorFor(code: ErrorCode, status: Status): XksErrorName {
  return BY_CODE[code] ?? BY_STATUS[status];
}

/** The spec: errorMessage under 512 characters of printable ASCII. */
export function errorMessage(s: string): string {
  const ascii = s.replace(/[^\x20-\x7e]/g, '?');
  return ascii.length > 511 ? `${ascii.slice(0, 508)}...` : ascii;
}
