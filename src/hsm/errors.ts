// The one table from PKCS#11 return values to the conditions kmsd tells apart, and the typed
// errors raised by the token layer. Every path to the token (pkcs11js on the event loop, the native
// addon's workers) reports failures through it: the addon hands over the bare return value and
// this file names it. The domain (src/kms/errors.ts) maps each HsmErrorKind to a domain error in a
// table the compiler checks for completeness; nothing above src/hsm matches a CKR_ name.

/**
 * What kmsd distinguishes about a failed token call. Append-only: the domain's table maps every
 * kind, so a new one does not compile until it is given a meaning there.
 */
export const HSM_ERROR_KINDS = [
  'CLOSED', // the token context was closed (shutdown); the caller is told the HSM is unavailable
  'TOKEN_GONE', // the device or token went away
  'SESSION_LOST', // the session died under the call; the token layer reopens it and retries once
  'KEY_MISSING', // the object (or its handle) is not in the token
  'AUTH_FAILED', // AES-GCM authentication failed: wrong key, AAD or bytes
  'UNWRAP_FAILED', // wrapped key material did not unwrap (one error for every padding failure)
  'LOGIN_FAILED', // the PIN or the user was refused
  'ALREADY_DONE', // C_Initialize / C_Login had already been done: not a failure
  'UNSUPPORTED', // the token lacks the mechanism, parameter or attribute
  'NOT_PERMITTED', // the object's attributes forbid the operation
  'BAD_INPUT', // the token refused the data, a template or a size
  'EXHAUSTED', // host or device memory, or sessions, ran out
  'CONFLICT', // the object exists already, or a lookup matched more than one
  'SETUP', // module, slot, token or PIN file cannot be used as configured
  'MATERIAL_LENGTH', // imported material is not a 256-bit AES key
  'INTERNAL', // anything else: a bug or a module failure, reported as an internal error
] as const;
export type HsmErrorKind = (typeof HSM_ERROR_KINDS)[number];

/** PKCS#11 v2.40 section 3.6 return values: name -> [value, kind]. */
const RETURN_VALUES = {
  CKR_OK: [0x0, 'INTERNAL'],
  CKR_CANCEL: [0x1, 'INTERNAL'],
  CKR_HOST_MEMORY: [0x2, 'EXHAUSTED'],
  CKR_SLOT_ID_INVALID: [0x3, 'SETUP'],
  CKR_GENERAL_ERROR: [0x5, 'INTERNAL'],
  CKR_FUNCTION_FAILED: [0x6, 'INTERNAL'],
  CKR_ARGUMENTS_BAD: [0x7, 'BAD_INPUT'],
  CKR_NO_EVENT: [0x8, 'INTERNAL'],
  CKR_NEED_TO_CREATE_THREADS: [0x9, 'SETUP'],
  CKR_CANT_LOCK: [0xa, 'SETUP'],
  CKR_ATTRIBUTE_READ_ONLY: [0x10, 'NOT_PERMITTED'],
  CKR_ATTRIBUTE_SENSITIVE: [0x11, 'NOT_PERMITTED'],
  CKR_ATTRIBUTE_TYPE_INVALID: [0x12, 'UNSUPPORTED'],
  CKR_ATTRIBUTE_VALUE_INVALID: [0x13, 'BAD_INPUT'],
  CKR_ACTION_PROHIBITED: [0x1b, 'NOT_PERMITTED'],
  CKR_DATA_INVALID: [0x20, 'BAD_INPUT'],
  CKR_DATA_LEN_RANGE: [0x21, 'BAD_INPUT'],
  CKR_DEVICE_ERROR: [0x30, 'TOKEN_GONE'],
  CKR_DEVICE_MEMORY: [0x31, 'EXHAUSTED'],
  CKR_DEVICE_REMOVED: [0x32, 'TOKEN_GONE'],
  CKR_ENCRYPTED_DATA_INVALID: [0x40, 'BAD_INPUT'],
  CKR_ENCRYPTED_DATA_LEN_RANGE: [0x41, 'BAD_INPUT'],
  CKR_FUNCTION_CANCELED: [0x50, 'INTERNAL'],
  CKR_FUNCTION_NOT_PARALLEL: [0x51, 'UNSUPPORTED'],
  CKR_FUNCTION_NOT_SUPPORTED: [0x54, 'UNSUPPORTED'],
  CKR_KEY_HANDLE_INVALID: [0x60, 'KEY_MISSING'],
  CKR_KEY_SIZE_RANGE: [0x62, 'BAD_INPUT'],
  CKR_KEY_TYPE_INCONSISTENT: [0x63, 'BAD_INPUT'],
  CKR_KEY_NOT_NEEDED: [0x64, 'BAD_INPUT'],
  CKR_KEY_CHANGED: [0x65, 'BAD_INPUT'],
  CKR_KEY_NEEDED: [0x66, 'BAD_INPUT'],
  CKR_KEY_INDIGESTIBLE: [0x67, 'BAD_INPUT'],
  CKR_KEY_FUNCTION_NOT_PERMITTED: [0x68, 'NOT_PERMITTED'],
  CKR_KEY_NOT_WRAPPABLE: [0x69, 'NOT_PERMITTED'],
  CKR_KEY_UNEXTRACTABLE: [0x6a, 'NOT_PERMITTED'],
  CKR_MECHANISM_INVALID: [0x70, 'UNSUPPORTED'],
  CKR_MECHANISM_PARAM_INVALID: [0x71, 'UNSUPPORTED'],
  CKR_OBJECT_HANDLE_INVALID: [0x82, 'KEY_MISSING'],
  CKR_OPERATION_ACTIVE: [0x90, 'SESSION_LOST'],
  CKR_OPERATION_NOT_INITIALIZED: [0x91, 'BAD_INPUT'],
  CKR_PIN_INCORRECT: [0xa0, 'LOGIN_FAILED'],
  CKR_PIN_INVALID: [0xa1, 'LOGIN_FAILED'],
  CKR_PIN_LEN_RANGE: [0xa2, 'LOGIN_FAILED'],
  CKR_PIN_EXPIRED: [0xa3, 'LOGIN_FAILED'],
  CKR_PIN_LOCKED: [0xa4, 'LOGIN_FAILED'],
  CKR_SESSION_CLOSED: [0xb0, 'SESSION_LOST'],
  CKR_SESSION_COUNT: [0xb1, 'EXHAUSTED'],
  CKR_SESSION_HANDLE_INVALID: [0xb3, 'SESSION_LOST'],
  CKR_SESSION_PARALLEL_NOT_SUPPORTED: [0xb4, 'UNSUPPORTED'],
  CKR_SESSION_READ_ONLY: [0xb5, 'NOT_PERMITTED'],
  CKR_SESSION_EXISTS: [0xb6, 'SETUP'],
  CKR_SESSION_READ_ONLY_EXISTS: [0xb7, 'SETUP'],
  CKR_SESSION_READ_WRITE_SO_EXISTS: [0xb8, 'SETUP'],
  CKR_SIGNATURE_INVALID: [0xc0, 'BAD_INPUT'],
  CKR_SIGNATURE_LEN_RANGE: [0xc1, 'BAD_INPUT'],
  CKR_TEMPLATE_INCOMPLETE: [0xd0, 'BAD_INPUT'],
  CKR_TEMPLATE_INCONSISTENT: [0xd1, 'BAD_INPUT'],
  CKR_TOKEN_NOT_PRESENT: [0xe0, 'TOKEN_GONE'],
  CKR_TOKEN_NOT_RECOGNIZED: [0xe1, 'SETUP'],
  CKR_TOKEN_WRITE_PROTECTED: [0xe2, 'NOT_PERMITTED'],
  CKR_UNWRAPPING_KEY_HANDLE_INVALID: [0xf0, 'KEY_MISSING'],
  CKR_UNWRAPPING_KEY_SIZE_RANGE: [0xf1, 'BAD_INPUT'],
  CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT: [0xf2, 'BAD_INPUT'],
  CKR_USER_ALREADY_LOGGED_IN: [0x100, 'ALREADY_DONE'],
  CKR_USER_NOT_LOGGED_IN: [0x101, 'SESSION_LOST'],
  CKR_USER_PIN_NOT_INITIALIZED: [0x102, 'LOGIN_FAILED'],
  CKR_USER_TYPE_INVALID: [0x103, 'LOGIN_FAILED'],
  CKR_USER_ANOTHER_ALREADY_LOGGED_IN: [0x104, 'LOGIN_FAILED'],
  CKR_USER_TOO_MANY_TYPES: [0x105, 'LOGIN_FAILED'],
  CKR_WRAPPED_KEY_INVALID: [0x110, 'BAD_INPUT'],
  CKR_WRAPPED_KEY_LEN_RANGE: [0x112, 'BAD_INPUT'],
  CKR_WRAPPING_KEY_HANDLE_INVALID: [0x113, 'KEY_MISSING'],
  CKR_WRAPPING_KEY_SIZE_RANGE: [0x114, 'BAD_INPUT'],
  CKR_WRAPPING_KEY_TYPE_INCONSISTENT: [0x115, 'BAD_INPUT'],
  CKR_RANDOM_SEED_NOT_SUPPORTED: [0x120, 'UNSUPPORTED'],
  CKR_RANDOM_NO_RNG: [0x121, 'UNSUPPORTED'],
  CKR_DOMAIN_PARAMS_INVALID: [0x130, 'UNSUPPORTED'],
  CKR_CURVE_NOT_SUPPORTED: [0x140, 'UNSUPPORTED'],
  CKR_BUFFER_TOO_SMALL: [0x150, 'BAD_INPUT'],
  CKR_SAVED_STATE_INVALID: [0x160, 'UNSUPPORTED'],
  CKR_INFORMATION_SENSITIVE: [0x170, 'NOT_PERMITTED'],
  CKR_STATE_UNSAVEABLE: [0x180, 'UNSUPPORTED'],
  CKR_CRYPTOKI_NOT_INITIALIZED: [0x190, 'SETUP'],
  CKR_CRYPTOKI_ALREADY_INITIALIZED: [0x191, 'ALREADY_DONE'],
  CKR_MUTEX_BAD: [0x1a0, 'SETUP'],
  CKR_MUTEX_NOT_LOCKED: [0x1a1, 'SETUP'],
  CKR_NEW_PIN_MODE: [0x1b0, 'LOGIN_FAILED'],
  CKR_NEXT_OTP: [0x1b1, 'LOGIN_FAILED'],
  CKR_EXCEEDED_MAX_ITERATIONS: [0x1b5, 'BAD_INPUT'],
  CKR_FIPS_SELF_TEST_FAILED: [0x1b6, 'INTERNAL'],
  CKR_LIBRARY_LOAD_FAILED: [0x1b7, 'SETUP'],
  CKR_PIN_TOO_WEAK: [0x1b8, 'LOGIN_FAILED'],
  CKR_PUBLIC_KEY_INVALID: [0x1b9, 'BAD_INPUT'],
  CKR_FUNCTION_REJECTED: [0x200, 'NOT_PERMITTED'],
} as const satisfies Record<`CKR_${string}`, readonly [number, HsmErrorKind]>;

export type Pkcs11ReturnName = keyof typeof RETURN_VALUES;

/** The token layer's own codes (no PKCS#11 return value behind them). */
const OWN_CODES = {
  CLOSED: 'CLOSED',
  NOT_FOUND: 'KEY_MISSING',
  AMBIGUOUS: 'CONFLICT',
  EXISTS: 'CONFLICT',
  UNSUPPORTED: 'UNSUPPORTED',
  DESTROY_UNCONFIRMED: 'INTERNAL',
  MODULE_LOAD_FAILED: 'SETUP',
  TOKEN_NOT_FOUND: 'SETUP',
  // A shared token this process sees stale until it has read it again (HsmToken.reload): retryable.
  STALE_VIEW: 'TOKEN_GONE',
  // C_GetTokenInfo failed whatever the return value: the token is not usable now (health, DescribeHsm).
  TOKEN_UNANSWERED: 'TOKEN_GONE',
  TOKEN_INIT_FAILED: 'SETUP',
  PIN_FILE: 'SETUP',
  UNWRAP_FAILED: 'UNWRAP_FAILED',
  DECRYPT_FAILED: 'AUTH_FAILED',
  MATERIAL_LENGTH: 'MATERIAL_LENGTH',
  UNWRAPPED_KEY_LENGTH: 'MATERIAL_LENGTH', // the token refused an unwrapped key's length (opencryptoki checks it in C_UnwrapKey)
  ERR_INVALID_ARG_VALUE: 'BAD_INPUT', // the native addon's TypeError for a bad argument
} as const satisfies Record<string, HsmErrorKind>;

export type OwnCode = keyof typeof OWN_CODES;
/** A return value outside the table (vendor-defined): CKR_0x%08x. */
export type UnknownReturnName = `CKR_0x${string}`;
export type HsmCode = Pkcs11ReturnName | UnknownReturnName | OwnCode;

const NAME_OF = new Map<number, Pkcs11ReturnName>(Object.entries(RETURN_VALUES).map(([name, [rv]]) => [rv, name as Pkcs11ReturnName]));

/** The CKR_ name of a return value; CKR_0x%08x for one the table does not know. */
export function ckrName(rv: number): Pkcs11ReturnName | UnknownReturnName {
  return NAME_OF.get(rv) ?? `CKR_0x${(rv >>> 0).toString(16).padStart(8, '0')}`;
}

/** The kind of a code; a vendor-defined return value is INTERNAL. */
export function kindOf(code: HsmCode): HsmErrorKind {
  if (code in RETURN_VALUES) return RETURN_VALUES[code as Pkcs11ReturnName][1];
  if (code in OWN_CODES) return OWN_CODES[code as OwnCode];
  return 'INTERNAL';
}

export class HsmError extends Error {
  readonly kind: HsmErrorKind;
  constructor(
    message: string,
    /** The CKR_ name of the return value, or one of the token layer's own codes; for logs and tests. */
    readonly code: HsmCode,
    /** The PKCS#11 function that failed, when there is one. */
    readonly pkcs11Function?: string,
    /** The PKCS#11 return value, when there is one. */
    readonly rv?: number,
  ) {
    super(message);
    this.name = 'HsmError';
    this.kind = kindOf(code);
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

/**
 * Worth reopening the session and trying once more. CKR_OPERATION_ACTIVE means an earlier failed
 * call left an operation open on the session (some modules do not terminate it on argument errors);
 * a removed device may be back by the time a fresh session is opened.
 */
export function isSessionLost(err: unknown): boolean {
  return err instanceof HsmError && (err.kind === 'SESSION_LOST' || err.code === 'CKR_DEVICE_REMOVED');
}

/**
 * Normalises whatever a binding threw: pkcs11js's Pkcs11Error carries the return value as a number
 * in `code`, the native addon as `rv` (with `pkcs11Function`), or its own string code.
 */
export function toHsmError(err: unknown, fn?: string): HsmError {
  if (err instanceof HsmError) return err;
  const e = (err ?? {}) as { code?: unknown; rv?: unknown; pkcs11Function?: unknown; message?: unknown };
  const func = typeof e.pkcs11Function === 'string' ? e.pkcs11Function : fn;
  let code: HsmCode | undefined;
  const rv = typeof e.rv === 'number' ? e.rv : typeof e.code === 'number' ? e.code : undefined;
  if (rv !== undefined) code = ckrName(rv);
  else if (typeof e.code === 'string' && (e.code in OWN_CODES || e.code in RETURN_VALUES)) code = e.code as HsmCode;
  else {
    const m = /^(CKR_[A-Z0-9_]+)/.exec(typeof e.message === 'string' ? e.message : String(err));
    if (m && m[1] in RETURN_VALUES) code = m[1] as Pkcs11ReturnName;
  }
  if (!code) return new HsmError(`${func ?? 'token call'} failed: ${typeof e.message === 'string' ? e.message : String(err)}`, 'CKR_GENERAL_ERROR', func);
  if (code in OWN_CODES) return new HsmError(typeof e.message === 'string' ? e.message : code, code, func);
  return new HsmError(`${func ?? 'token call'} failed: ${code}`, code, func, rv ?? RETURN_VALUES[code as Pkcs11ReturnName]?.[0]);
}

/**
 * Return values that mean "AES-GCM authentication failed" in C_Decrypt. SoftHSM reports a bad tag
 * as CKR_GENERAL_ERROR, other modules as CKR_ENCRYPTED_DATA_INVALID; a too-short input is LEN_RANGE.
 */
export function isGcmAuthFailure(code: HsmCode): boolean {
  return code === 'CKR_ENCRYPTED_DATA_INVALID' || code === 'CKR_GENERAL_ERROR' || code === 'CKR_ENCRYPTED_DATA_LEN_RANGE';
}
