// Typed errors raised by the token layer. The domain turns them into KmsErrors
// (src/kms/errors.ts); nothing above src/hsm sees a raw pkcs11js exception.

export class HsmError extends Error {
  constructor(
    message: string,
    /** CKR_ name (e.g. CKR_PIN_INCORRECT) or one of ours: CLOSED, NOT_FOUND, AMBIGUOUS, UNSUPPORTED. */
    readonly code: string,
    /** The PKCS#11 function that failed, when there is one. */
    readonly pkcs11Function?: string,
  ) {
    super(message);
    this.name = 'HsmError';
  }
}

/** Every call after close() fails with this, never with a dangling-handle crash. */
export class HsmClosedError extends HsmError {
  constructor() {
    super('the token context is closed', 'CLOSED');
  }
}

/** The wrapped key material could not be unwrapped: one error for every padding or integrity failure. */
export class UnwrapFailedError extends HsmError {
  constructor() {
    super('the encrypted key material cannot be decrypted with this wrapping key', 'UNWRAP_FAILED');
  }
}

/** AES-GCM authentication failed: wrong key, wrong AAD or altered bytes. */
export class DecryptFailedError extends HsmError {
  constructor() {
    super('authenticated decryption failed', 'DECRYPT_FAILED');
  }
}

// CKR_OPERATION_ACTIVE means an earlier failed call left an operation open on the session (some
// modules do not terminate it on argument errors); a fresh session is the portable way out.
const SESSION_LOST = new Set(['CKR_SESSION_HANDLE_INVALID', 'CKR_SESSION_CLOSED', 'CKR_DEVICE_REMOVED', 'CKR_USER_NOT_LOGGED_IN', 'CKR_OPERATION_ACTIVE']);

export function isSessionLost(err: unknown): boolean {
  return err instanceof HsmError && SESSION_LOST.has(err.code);
}

/** pkcs11js throws Pkcs11Error whose message starts with the CKR_ name; normalise it. */
export function toHsmError(err: unknown, fn: string): HsmError {
  if (err instanceof HsmError) return err;
  const message = err instanceof Error ? err.message : String(err);
  const m = /^(CKR_[A-Z0-9_]+)/.exec(message);
  const code = m ? m[1] : 'CKR_GENERAL_ERROR';
  return new HsmError(`${fn} failed: ${code}`, code, fn);
}

/**
 * PKCS#11 codes that mean "AES-GCM authentication failed" in C_Decrypt. SoftHSM reports a bad tag as
 * CKR_GENERAL_ERROR, other modules as CKR_ENCRYPTED_DATA_INVALID; a too-short input is LEN_RANGE.
 */
export function isGcmAuthFailure(code: string): boolean {
  return code === 'CKR_ENCRYPTED_DATA_INVALID' || code === 'CKR_GENERAL_ERROR' || code === 'CKR_ENCRYPTED_DATA_LEN_RANGE';
}
