// The token auditor's view of a token, read through graphene-pk11 rather than kmsd's own token code
// (token.ts and the native addon): an independent lookup and attribute layer, so a mistake in how
// kmsd finds objects or builds templates is not repeated by the tool that checks it.
//
// The roles and the attributes each role requires are stated here on their own, not imported from
// token.ts: they are the auditor's expectation, and token.ts drifting from them is a finding.
// This module only reads: it opens a read-only session and never creates, changes or destroys.

import * as graphene from 'graphene-pk11';

/** What kmsd keeps in a token, named by label prefix (kmsd:<kind>:<id>). */
export type ObjectRole = 'cmk' | 'root' | 'mac' | 'wrap-private' | 'wrap-public' | 'sign-private' | 'sign-public' | 'instance';

/** An object kind of the store's vocabulary, with the id that follows the label prefix. */
export type ObjectKindOfLabel = 'cmk' | 'root' | 'mac' | 'wrap' | 'sign' | 'instance';

export interface AuditedObject {
  /** CKO_ class by name (data, secret-key, private-key, public-key, certificate, ...). */
  class: string;
  /** CKK_ type by name for keys (AES, GENERIC_SECRET, RSA, EC, ...). */
  keyType?: string;
  label: string;
  /** CKA_ID as text when it is printable UTF-8, else as hex:.... */
  id: string | null;
  /** The role its label and class give it; null for an object that is not kmsd's, or a kmsd: label of no known kind. */
  role: ObjectRole | null;
  /** kmsd:<kind>:<id>: the kind and id parts, when the label has that shape. */
  labelKind?: ObjectKindOfLabel | string;
  labelId?: string;
  /** Every attribute the auditor read; 'unavailable' when the token does not report it for this object. */
  attributes: Record<string, boolean | number | string | 'unavailable'>;
}

/**
 * The mechanisms that decide which shape kmsd gives its per-token keys (token.ts decides from the
 * same mechanism list when it creates them): the root key wraps with CKM_AES_KEY_WRAP_PAD, or else
 * encrypts and decrypts blocks for RFC 5649 composed in kmsd; the audit signing key is ECDSA P-256,
 * or else an RSA-3072 pair.
 */
export interface TokenCapabilities {
  aesKeyWrapPad: boolean;
  ecKeyPairGen: boolean;
  ecdsa: boolean;
}

export interface TokenListing {
  token: { label: string; manufacturer: string; model: string; serialNumber: string; slotId: number; capabilities: TokenCapabilities };
  objects: AuditedObject[];
}

/** Why the token could not be listed (no module, no token, login refused); the message names the part. */
export class TokenAuditError extends Error {}

const CLASS_NAMES: Record<number, string> = {
  [graphene.ObjectClass.DATA]: 'data',
  [graphene.ObjectClass.CERTIFICATE]: 'certificate',
  [graphene.ObjectClass.PUBLIC_KEY]: 'public-key',
  [graphene.ObjectClass.PRIVATE_KEY]: 'private-key',
  [graphene.ObjectClass.SECRET_KEY]: 'secret-key',
};

const KEY_TYPE_NAMES: Record<number, string> = {
  [graphene.KeyType.AES]: 'AES',
  [graphene.KeyType.GENERIC_SECRET]: 'GENERIC_SECRET',
  [graphene.KeyType.RSA]: 'RSA',
  [graphene.KeyType.EC]: 'EC',
};

/** Attributes read from every object of a class (graphene's template names). */
const BOOLEAN_ATTRIBUTES: Record<string, string[]> = {
  'secret-key': ['token', 'private', 'modifiable', 'sensitive', 'extractable', 'alwaysSensitive', 'neverExtractable', 'encrypt', 'decrypt', 'wrap', 'unwrap', 'sign', 'verify', 'derive', 'local'],
  'private-key': ['token', 'private', 'modifiable', 'sensitive', 'extractable', 'alwaysSensitive', 'neverExtractable', 'decrypt', 'unwrap', 'sign', 'signRecover', 'derive', 'local'],
  'public-key': ['token', 'private', 'modifiable', 'encrypt', 'wrap', 'verify', 'verifyRecover', 'derive', 'local'],
  data: ['token', 'private', 'modifiable'],
};

function printable(b: Buffer): string {
  const text = b.toString('utf8');
  return /^[\x20-\x7e]*$/.test(text) && Buffer.from(text, 'utf8').equals(b) ? text : `hex:${b.toString('hex')}`;
}

/** Role of an object from its label and class: kmsd labels are kmsd:<kind>:<id>. */
export function roleOf(label: string, cls: string): { role: ObjectRole | null; labelKind?: string; labelId?: string } {
  const m = /^kmsd:([a-z]+):(.*)$/s.exec(label);
  if (!m) return { role: null };
  const [, kind, id] = m;
  const pair = (base: 'wrap' | 'sign'): ObjectRole | null => (cls === 'private-key' ? `${base}-private` : cls === 'public-key' ? `${base}-public` : null);
  const role: ObjectRole | null =
    kind === 'cmk' ? 'cmk' : kind === 'root' ? 'root' : kind === 'mac' ? 'mac' : kind === 'wrap' ? pair('wrap') : kind === 'sign' ? pair('sign') : kind === 'instance' ? 'instance' : null;
  return { role, labelKind: kind, labelId: id };
}

/**
 * Lists every object of the token with the label `tokenLabel` (exactly one such token), with the
 * attributes of its class. The session is read-only and logged in as the user, who alone sees
 * private objects.
 */
export function listToken(opts: { modulePath: string; tokenLabel: string; pin: string }): TokenListing {
  let mod: graphene.Module;
  try {
    mod = graphene.Module.load(opts.modulePath, 'kmsd-audit');
  } catch (e) {
    throw new TokenAuditError(`cannot load PKCS#11 module ${opts.modulePath}: ${(e as Error).message}`);
  }
  try {
    mod.initialize();
  } catch (e) {
    throw new TokenAuditError(`C_Initialize of ${opts.modulePath} failed: ${(e as Error).message}`);
  }
  try {
    const slots = mod.getSlots(true);
    const matches: graphene.Slot[] = [];
    for (let i = 0; i < slots.length; i++) {
      const slot = slots.items(i);
      if (slot.getToken().label.trim() === opts.tokenLabel) matches.push(slot);
    }
    if (matches.length === 0) throw new TokenAuditError(`no initialized token with label "${opts.tokenLabel}" in ${opts.modulePath}`);
    if (matches.length > 1) throw new TokenAuditError(`more than one token has label "${opts.tokenLabel}"`);
    const slot = matches[0];
    const info = slot.getToken();
    const session = slot.open(graphene.SessionFlag.SERIAL_SESSION); // read-only: the auditor changes nothing
    try {
      try {
        session.login(opts.pin, graphene.UserType.USER);
      } catch (e) {
        // The message is the CKR name only; the PIN is never part of it.
        const code = /CKR_[A-Z_]+/.exec((e as Error).message)?.[0] ?? 'failed';
        if (code !== 'CKR_USER_ALREADY_LOGGED_IN') throw new TokenAuditError(`login to token "${opts.tokenLabel}" failed: ${code}`);
      }
      const mechanisms = new Set<number>();
      const list = slot.getMechanisms();
      for (let i = 0; i < list.length; i++) mechanisms.add(list.items(i).type);
      const capabilities: TokenCapabilities = {
        aesKeyWrapPad: mechanisms.has(graphene.MechanismEnum.AES_KEY_WRAP_PAD),
        ecKeyPairGen: mechanisms.has(graphene.MechanismEnum.EC_KEY_PAIR_GEN),
        ecdsa: mechanisms.has(graphene.MechanismEnum.ECDSA),
      };
      const objects: AuditedObject[] = [];
      // graphene's find runs C_FindObjectsInit/C_FindObjects/C_FindObjectsFinal itself, Final in finally.
      const found = session.find({ token: true });
      for (let i = 0; i < found.length; i++) objects.push(describe(found.items(i)));
      return {
        token: { label: info.label.trim(), manufacturer: info.manufacturerID.trim(), model: info.model.trim(), serialNumber: info.serialNumber.trim(), slotId: Number(slot.handle.readBigUInt64LE(0)), capabilities },
        objects,
      };
    } finally {
      try {
        session.logout();
      } catch {
        /* not logged in */
      }
      session.close();
    }
  } finally {
    try {
      mod.finalize();
    } catch {
      /* best effort at exit */
    }
    mod.close();
  }
}

function read<T>(obj: graphene.SessionObject, name: string): T | 'unavailable' {
  try {
    // graphene names the result by its own table, which has two names for CKA_EC_PARAMS: take the one value.
    const v = Object.values(obj.getAttribute({ [name]: null }))[0] as T | null | undefined;
    return v === null || v === undefined ? 'unavailable' : v;
  } catch {
    // CKR_ATTRIBUTE_TYPE_INVALID or _SENSITIVE: the token does not give it for this object.
    return 'unavailable';
  }
}

/**
 * Reads several attributes in one C_GetAttributeValue (SoftHSM rereads an object's file on every
 * call: one call per attribute made a 2,000-object token take 21 s). A token that refuses one of
 * them fails the whole call; then each is read on its own, so one missing attribute costs nothing
 * but time.
 */
function readAll(obj: graphene.SessionObject, names: string[]): Record<string, unknown> {
  try {
    const got = obj.getAttribute(Object.fromEntries(names.map((n) => [n, null])));
    const out: Record<string, unknown> = {};
    for (const n of names) out[n] = got[n] === null || got[n] === undefined ? 'unavailable' : got[n];
    return out;
  } catch {
    return Object.fromEntries(names.map((n) => [n, read<unknown>(obj, n)]));
  }
}

/** What a secret key gives; most objects of a kmsd token are CMK material, so it is tried first. */
const SECRET_KEY_READ = ['class', 'label', ...BOOLEAN_ATTRIBUTES['secret-key'], 'keyType', 'id', 'valueLen'];

function attributeNames(cls: string): { booleans: string[]; extra: string[] } {
  const booleans = BOOLEAN_ATTRIBUTES[cls] ?? ['token', 'private', 'modifiable'];
  const extra = cls.endsWith('-key') ? ['keyType', 'id', ...(cls === 'secret-key' ? ['valueLen'] : [])] : cls === 'data' ? ['application', 'value'] : [];
  return { booleans, extra };
}

function describe(obj: graphene.SessionObject): AuditedObject {
  // One call for a secret key; any other class refuses an attribute of that list, and is read in two.
  let values: Record<string, unknown>;
  try {
    const got = obj.getAttribute(Object.fromEntries(SECRET_KEY_READ.map((n) => [n, null])));
    if (got.class !== graphene.ObjectClass.SECRET_KEY) throw new Error('not a secret key');
    values = Object.fromEntries(SECRET_KEY_READ.map((n) => [n, got[n] === null || got[n] === undefined ? 'unavailable' : got[n]]));
  } catch {
    const head = readAll(obj, ['class', 'label']);
    const c = head.class;
    const { booleans, extra } = attributeNames(typeof c === 'number' ? (CLASS_NAMES[c] ?? '') : '');
    values = { ...head, ...readAll(obj, [...booleans, ...extra]) };
  }
  const clsNum = values.class;
  const cls = typeof clsNum === 'number' ? (CLASS_NAMES[clsNum] ?? `class-0x${clsNum.toString(16)}`) : 'unknown';
  const label = typeof values.label === 'string' ? values.label : '';
  const isKey = cls.endsWith('-key');
  const { booleans } = attributeNames(cls);
  const attributes: AuditedObject['attributes'] = {};
  for (const name of booleans) attributes[name] = values[name] as boolean | 'unavailable';
  let keyType: string | undefined;
  let id: string | null = null;
  if (isKey) {
    const kt = values.keyType;
    keyType = typeof kt === 'number' ? (KEY_TYPE_NAMES[kt] ?? `0x${kt.toString(16)}`) : 'unknown';
    id = Buffer.isBuffer(values.id) ? printable(values.id) : null;
    if (cls === 'secret-key') attributes.valueLen = values.valueLen as number | 'unavailable';
    if (keyType === 'RSA') {
      const modulus = read<Buffer>(obj, 'modulus');
      attributes.modulusBits = modulus === 'unavailable' ? 'unavailable' : modulus.length * 8;
    }
    if (keyType === 'EC') {
      const params = read<Buffer>(obj, 'paramsEC');
      attributes.ecParams = params === 'unavailable' ? 'unavailable' : params.toString('hex');
    }
  }
  if (cls === 'data') {
    attributes.application = values.application as string | 'unavailable';
    // A data object's value is not secret by class; kmsd's instance object holds its instance id.
    attributes.value = Buffer.isBuffer(values.value) ? printable(values.value) : 'unavailable';
  }
  return { class: cls, ...(keyType ? { keyType } : {}), label, id, ...roleOf(label, cls), attributes };
}

// ------------------------------------------------------------------ what each role requires

/** DER OID of prime256v1: audit checkpoints are verified as P-256 signatures. */
const P256 = '06082a8648ce3d030107';

export interface RoleRule {
  class: string;
  keyType?: string;
  /** Attributes that must have exactly this value. */
  attributes: Record<string, boolean | number | string>;
}

/**
 * The security attributes each kind of kmsd object must carry. Usages not listed as true must be
 * false: a key does only its job. `neverExtractable` and `alwaysSensitive` are required of keys the
 * token generated; imported CMK material entered the token through an unwrap and cannot have them
 * (checked per object by the caller, who knows the CMK's origin).
 */
export const ROLE_RULES: Record<ObjectRole, RoleRule> = {
  cmk: {
    class: 'secret-key',
    keyType: 'AES',
    attributes: { token: true, private: true, sensitive: true, extractable: false, modifiable: false, encrypt: true, decrypt: true, wrap: false, unwrap: false, sign: false, verify: false, derive: false, valueLen: 32 },
  },
  root: {
    class: 'secret-key',
    keyType: 'AES',
    attributes: { token: true, private: true, sensitive: true, extractable: false, modifiable: false, alwaysSensitive: true, neverExtractable: true, wrap: true, unwrap: true, encrypt: false, decrypt: false, sign: false, verify: false, derive: false, valueLen: 32 },
  },
  mac: {
    class: 'secret-key',
    keyType: 'GENERIC_SECRET',
    attributes: { token: true, private: true, sensitive: true, extractable: false, modifiable: false, alwaysSensitive: true, neverExtractable: true, sign: true, verify: true, encrypt: false, decrypt: false, wrap: false, unwrap: false, derive: false, valueLen: 32 },
  },
  'wrap-private': {
    class: 'private-key',
    keyType: 'RSA',
    // decrypt is per key (raw RSA only where the host-assisted OAEP path was allowed): checked by the caller.
    attributes: { token: true, private: true, sensitive: true, extractable: false, modifiable: false, alwaysSensitive: true, neverExtractable: true, unwrap: true, sign: false, signRecover: false, derive: false },
  },
  'wrap-public': {
    class: 'public-key',
    keyType: 'RSA',
    // Not required of a public half: modifiable and verifyRecover. kmsd before this auditor left them to
    // SoftHSM's defaults (true), and a public key's usages grant nothing anyone could not do outside the
    // token with the public key itself; kmsd states both false now (test/integration/token-templates.test.ts).
    attributes: { token: true, private: false, encrypt: true, wrap: true, verify: false, derive: false },
  },
  'sign-private': {
    class: 'private-key',
    keyType: 'EC',
    attributes: { token: true, private: true, sensitive: true, extractable: false, modifiable: false, alwaysSensitive: true, neverExtractable: true, sign: true, signRecover: false, decrypt: false, unwrap: false, derive: false, ecParams: P256 },
  },
  'sign-public': {
    class: 'public-key',
    keyType: 'EC',
    // verifyRecover is not required, as for the wrapping key's public half (the audit key is never remade).
    attributes: { token: true, private: false, modifiable: false, verify: true, encrypt: false, wrap: false, derive: false, ecParams: P256 },
  },
  instance: {
    class: 'data',
    // Modifiable on purpose: its label carries kmsd's creation sequence.
    attributes: { token: true, private: true, modifiable: true, application: 'kmsd:instance' },
  },
};

/**
 * The rules for a token with these mechanisms. Where the token lacks CKM_AES_KEY_WRAP_PAD, kmsd's
 * root key encrypts and decrypts AES blocks instead of wrapping (never both: where wrap exists, a
 * plain decrypt would bypass the key-wrap integrity check). Where it lacks CKM_EC_KEY_PAIR_GEN or
 * CKM_ECDSA, the audit signing pair is RSA-3072 with the same single usage. Deciding from the token
 * rather than from the key's own attributes means a root key of the wrong shape for its token is a
 * finding, not a second accepted shape.
 */
export function roleRulesFor(caps: TokenCapabilities): Record<ObjectRole, RoleRule> {
  const rules = { ...ROLE_RULES };
  if (!caps.aesKeyWrapPad) {
    rules.root = { ...ROLE_RULES.root, attributes: { ...ROLE_RULES.root.attributes, wrap: false, unwrap: false, encrypt: true, decrypt: true } };
  }
  if (!(caps.ecKeyPairGen && caps.ecdsa)) {
    const rsa = (r: RoleRule): RoleRule => {
      const { ecParams: _ec, ...rest } = r.attributes; // eslint-disable-line @typescript-eslint/no-unused-vars
      return { ...r, keyType: 'RSA', attributes: { ...rest, modulusBits: 3072 } };
    };
    rules['sign-private'] = rsa(ROLE_RULES['sign-private']);
    rules['sign-public'] = rsa(ROLE_RULES['sign-public']);
  }
  return rules;
}

/** An attribute whose value differs from what the role requires. */
export interface AttributeMismatch {
  attribute: string;
  expected: boolean | number | string;
  actual: boolean | number | string;
}

/** Checks an object against its role in `rules`; `extra` adds or overrides per-object requirements. */
export function checkAttributes(obj: AuditedObject, rules: Record<ObjectRole, RoleRule>, extra: Record<string, boolean | number | string> = {}): AttributeMismatch[] {
  if (!obj.role) return [];
  const rule = rules[obj.role];
  const out: AttributeMismatch[] = [];
  if (obj.class !== rule.class) out.push({ attribute: 'class', expected: rule.class, actual: obj.class });
  if (rule.keyType && obj.keyType !== rule.keyType) out.push({ attribute: 'keyType', expected: rule.keyType, actual: obj.keyType ?? 'none' });
  for (const [name, expected] of Object.entries({ ...rule.attributes, ...extra })) {
    const actual = obj.attributes[name] ?? 'unavailable';
    if (actual !== expected) out.push({ attribute: name, expected, actual });
  }
  return out;
}
