// The authorization policy: which principals may call which actions on which CMKs. One JSON file,
// validated completely at load (every problem reported with its path, nothing half-applied), and
// reloaded on SIGHUP by the daemon (a bad new file keeps the old policy in force).
//
//   {
//     "version": 1,
//     "admins": ["ops-admin"],                        // lifecycle, metadata, ceremonies, audit: every key
//     "custodians": ["alice", "bob"],                 // ApproveProposal and reading proposals
//     "grants": [
//       { "id": "app-1-data",                         // optional; named in logs
//         "principals": ["app-1", "spiffe://corp/app-1/*"],
//         "actions": ["Encrypt", "Decrypt", "GenerateDataKey*"],
//         "keys": ["alias/app-1-*", "1c4f...-uuid"],  // key ids, aliases or patterns; "*" for all
//         "encryptionContext": { "tenant": "acme" } } // optional: required key/values in the request
//     ],
//     "xks": { "rules": [...], "default": "allow" }   // optional: src/policy/xks.ts
//   }
//
// Patterns: "*" matches any run of characters (including "/"); everything else is literal and
// case-sensitive. A principal pattern matches one kind of principal only: "uri:PATTERN" or a pattern
// that starts with a URI scheme ("spiffe://corp/*") matches URI SAN principals; "cn:PATTERN" or a
// plain name (no ":", not starting with "*") matches subject CN principals; "anonymous" matches
// callers without a certificate. Anything else ("*", "*-admin") is refused as ambiguous. A key
// pattern on aliases ("alias/app-*") matches only the alias the caller named, never a key id. Deny by default: a call is allowed only when a role or a grant allows the action
// on every CMK the request names. A grant with encryptionContext conditions applies only to calls
// whose EncryptionContext holds every listed key with a matching value.

import fs from 'node:fs';
import { ACTIONS, ActionInfo, CONTEXT_ACTIONS, KNOWN_ACTIONS, ROLE_CLASSES, actionInfo } from './actions';
import { XksRules, XksSection, validateXks } from './xks';

export class PolicyError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(`invalid policy ${source}: ${problems.join('; ')}`);
    this.name = 'PolicyError';
  }
}

export interface Grant {
  id: string;
  principals: string[];
  actions: string[];
  keys: string[];
  encryptionContext?: Record<string, string>;
}

export interface PolicyDocument {
  version: 1;
  admins: string[];
  custodians: string[];
  grants: Grant[];
  /** The external key store's secondary authorization on AWS's request metadata. */
  xks?: XksSection;
}

/** One CMK a request is about, as far as the request and the metadata can tell. */
export interface KeyResource {
  /** The reference as given (key id, alias, or whatever the caller sent). */
  ref: string;
  /** The CMK id, when the reference is a key id or an existing alias. */
  keyId?: string;
  /**
   * The alias the caller named for this CMK (it need not exist). Alias patterns of grants match this
   * only: an alias an admin adds to some CMK later does not extend a grant to that CMK's key id.
   */
  alias?: string;
  /** The EncryptionContext that goes with this CMK in the request (Encrypt, Decrypt, ...). */
  context?: Record<string, string>;
  /** True when the request names a CMK the daemon cannot work out (a malformed ciphertext). */
  unknown?: boolean;
}

/** What kind of name a principal is: a certificate's URI SAN, its subject CN, or no certificate. */
export type PrincipalKind = 'uri' | 'cn' | 'anonymous';

export interface Principal {
  kind: PrincipalKind;
  name: string;
}

/** The name of callers that present no certificate (plaintext on loopback, TLS without a client CA). */
export const ANONYMOUS = 'anonymous';

/**
 * A name that starts like a URI (RFC 3986 scheme, then ":"). A CN of this shape is never taken as an
 * identity, so that no CN can pass for a URI SAN, and a URI SAN must have this shape.
 */
export function isUriShaped(s: string): boolean {
  return /^[A-Za-z][A-Za-z0-9+.-]*:/.test(s);
}

export interface AccessRequest {
  principal: Principal;
  action: string;
  /** The CMKs the request is about; empty for actions on the service as a whole. */
  resources: KeyResource[];
}

export type Decision = { allowed: true; via: string } | { allowed: false; reason: string };

const MAX_PATTERN = 512;
const UUID_PATTERN = /^[0-9a-f*-]+$/;

/** Glob with "*" only; compiled once per pattern. */
export function globToRegExp(pattern: string): RegExp {
  const body = pattern
    .split('*')
    .map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${body}$`, 's');
}

class Pattern {
  private readonly re: RegExp | null;
  constructor(readonly text: string) {
    this.re = text.includes('*') ? globToRegExp(text) : null;
  }
  test(s: string): boolean {
    return this.re ? this.re.test(s) : s === this.text;
  }
  get any(): boolean {
    return this.text === '*';
  }
}

/** A principal pattern bound to the one kind of principal it can match. */
class PrincipalPattern {
  private readonly pattern: Pattern;
  constructor(
    readonly kind: PrincipalKind,
    body: string,
  ) {
    this.pattern = new Pattern(body);
  }
  test(p: Principal): boolean {
    return p.kind === this.kind && this.pattern.test(p.name);
  }
}

/** Whether some URI-shaped name matches this pattern (its text before the first "*" must allow it). */
function canMatchUri(pattern: string): boolean {
  if (!pattern.includes('*')) return isUriShaped(pattern);
  return /^(?:[A-Za-z][A-Za-z0-9+.-]*(?::[\s\S]*)?)?$/.test(pattern.split('*')[0]);
}

/** Which kind of principal a pattern names, or why it cannot be told or can never match. */
export function classifyPrincipalPattern(text: string): { kind: PrincipalKind; body: string } | { problem: string } {
  if (text === ANONYMOUS) return { kind: 'anonymous', body: text };
  const explicit = /^(uri|cn):/.exec(text);
  if (explicit) {
    const kind = explicit[1] as 'uri' | 'cn';
    const body = text.slice(explicit[0].length);
    if (!body) return { problem: `"${text}" has an empty pattern after "${kind}:"` };
    if (kind === 'uri' && !canMatchUri(body)) return { problem: `"${text}" can never match: a URI SAN principal starts with a scheme ("spiffe:", "urn:", ...)` };
    if (kind === 'cn' && isUriShaped(body.split('*')[0])) return { problem: `"${text}" can never match: kmsd never takes a URI-shaped name from a subject CN` };
    return { kind, body };
  }
  if (isUriShaped(text.split('*')[0])) return { kind: 'uri', body: text };
  if (!text.includes(':') && !text.startsWith('*')) return { kind: 'cn', body: text };
  return {
    problem:
      `"${text}" is ambiguous: it could match URI SAN and CN principals alike; ` +
      `write "uri:${text}" for URI SANs or "cn:${text}" for subject CNs (a plain name without ":" that does not start with "*" is a CN, a name that starts with a URI scheme is a URI SAN)`,
  };
}

function compilePrincipal(text: string): PrincipalPattern {
  const c = classifyPrincipalPattern(text);
  // Validation refused every pattern with a problem before a Policy is built.
  if ('problem' in c) throw new Error(c.problem);
  return new PrincipalPattern(c.kind, c.body);
}

interface CompiledGrant {
  id: string;
  principals: PrincipalPattern[];
  actions: Set<string>;
  /** Patterns on key ids: matched against the CMK id. */
  keyIds: Pattern[];
  /** Patterns on aliases (alias/...): matched against the alias the caller named only. */
  aliases: Pattern[];
  anyKey: boolean;
  context: [string, Pattern][];
}

/** A validated, compiled policy. Immutable: a reload builds a new one. */
export class Policy {
  private readonly admins: PrincipalPattern[];
  private readonly custodians: PrincipalPattern[];
  private readonly grants: CompiledGrant[];
  /** The `xks` section's rules; absent when the file has none (every XKS call the grants allow runs). */
  readonly xks?: XksRules;

  private constructor(
    readonly doc: PolicyDocument,
    readonly source: string,
  ) {
    this.admins = doc.admins.map(compilePrincipal);
    this.custodians = doc.custodians.map(compilePrincipal);
    this.grants = doc.grants.map((gr) => ({
      id: gr.id,
      principals: gr.principals.map(compilePrincipal),
      actions: new Set(expandActions(gr.actions)),
      keyIds: gr.keys.filter((p) => p !== '*' && !p.startsWith('alias/')).map((p) => new Pattern(p)),
      aliases: gr.keys.filter((p) => p.startsWith('alias/')).map((p) => new Pattern(p)),
      anyKey: gr.keys.includes('*'),
      context: Object.entries(gr.encryptionContext ?? {}).map(([key, val]) => [key, new Pattern(val)] as [string, Pattern]),
    }));
    if (doc.xks) this.xks = new XksRules(doc.xks);
  }

  /** Parses and validates a policy document; throws PolicyError listing every problem. */
  static parse(text: string, source = 'policy'): Policy {
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new PolicyError(source, [`not valid JSON: ${(e as Error).message}`]);
    }
    return new Policy(validate(raw, source), source);
  }

  static load(file: string): Policy {
    let text: string;
    try {
      text = fs.readFileSync(file, 'utf8');
    } catch (e) {
      throw new PolicyError(file, [`cannot read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`]);
    }
    return Policy.parse(text, file);
  }

  /** A policy that grants nothing (TLS on and no policy file: deny by default). */
  static denyAll(source = 'deny-all (no policy file)'): Policy {
    return new Policy({ version: 1, admins: [], custodians: [], grants: [] }, source);
  }

  get summary(): { admins: number; custodians: number; grants: number; xksRules?: number; xksDefault?: string } {
    return { admins: this.admins.length, custodians: this.custodians.length, grants: this.grants.length, ...this.xks?.summary };
  }

  /**
   * Ids of the grants that an alias of this name opens to their principals: those with an alias
   * pattern matching it (a grant on "*" reaches every key anyway). Pointing such an alias at a CMK
   * widens them to that CMK.
   */
  grantsReaching(alias: string): string[] {
    return this.grants.filter((gr) => !gr.anyKey && gr.aliases.some((p) => p.test(alias))).map((gr) => gr.id);
  }

  decide(req: AccessRequest): Decision {
    const info = actionInfo(req.action);
    // Roles: an action of the role's classes, on every key.
    if (info) {
      if (ROLE_CLASSES.admin.includes(info.cls) && this.admins.some((p) => p.test(req.principal))) return { allowed: true, via: 'role:admin' };
      if (ROLE_CLASSES.custodian.includes(info.cls) && this.custodians.some((p) => p.test(req.principal))) return { allowed: true, via: 'role:custodian' };
    }
    const mine = this.grants.filter((gr) => gr.actions.has(req.action) && gr.principals.some((p) => p.test(req.principal)));
    if (mine.length === 0) return { allowed: false, reason: 'no role or grant gives this action' };
    const keyed = info?.keyed ?? false;
    if (!keyed || req.resources.length === 0) {
      // An action on the service as a whole needs a grant on every key.
      const gr = mine.find((x) => x.anyKey && x.context.length === 0);
      return gr ? { allowed: true, via: `grant:${gr.id}` } : { allowed: false, reason: 'grants of this action are limited to particular keys' };
    }
    const via: string[] = [];
    for (const res of req.resources) {
      const gr = mine.find((x) => grantCovers(x, res));
      if (!gr) {
        // Named by key id (or by a ciphertext) where the caller holds alias grants: say how those apply.
        const hint = res.alias === undefined && !res.unknown && mine.some((x) => x.aliases.length > 0) ? ' (grants on aliases cover only calls that name the CMK by a matching alias; for a ciphertext, in KeyId)' : '';
        return { allowed: false, reason: `no grant covers ${describeResource(res)}${hint}` };
      }
      via.push(gr.id);
    }
    return { allowed: true, via: `grant:${[...new Set(via)].join(',')}` };
  }
}

function grantCovers(gr: CompiledGrant, res: KeyResource): boolean {
  let keyOk = gr.anyKey;
  if (!keyOk && !res.unknown) {
    keyOk = (res.keyId !== undefined && gr.keyIds.some((p) => p.test(res.keyId!))) || (res.alias !== undefined && gr.aliases.some((p) => p.test(res.alias!)));
  }
  if (!keyOk) return false;
  for (const [key, want] of gr.context) {
    const have = res.context?.[key];
    if (have === undefined || !want.test(have)) return false;
  }
  return true;
}

export function describeResource(res: KeyResource): string {
  if (res.unknown) return 'a ciphertext whose CMK cannot be read';
  if (res.keyId && res.ref !== res.keyId) return `key ${res.keyId} (${res.ref})`;
  if (res.alias && res.alias !== res.ref) return `key ${res.ref} (${res.alias})`;
  return `key ${res.ref}`;
}

function expandActions(list: string[]): string[] {
  const out: string[] = [];
  for (const a of list) {
    if (a.includes('*')) {
      const re = globToRegExp(a);
      out.push(...KNOWN_ACTIONS.filter((n) => re.test(n)));
    } else out.push(a);
  }
  return out;
}

// ------------------------------------------------------------------ validation

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function validate(raw: unknown, source: string): PolicyDocument {
  const problems: string[] = [];
  const bad = (path: string, msg: string) => problems.push(`${path}: ${msg}`);
  if (!isObject(raw)) throw new PolicyError(source, ['the document must be a JSON object']);
  for (const key of Object.keys(raw)) {
    if (!['version', 'description', 'admins', 'custodians', 'grants', 'xks'].includes(key)) bad(key, 'unknown field (allowed: version, description, admins, custodians, grants, xks)');
  }
  if (raw.version !== 1) bad('version', `must be 1 (got ${JSON.stringify(raw.version)})`);
  if (raw.description !== undefined && typeof raw.description !== 'string') bad('description', 'must be a string');

  const principalList = (path: string, v: unknown, required: boolean): string[] => {
    if (v === undefined && !required) return [];
    if (!Array.isArray(v) || (required && v.length === 0)) {
      bad(path, required ? 'must be a non-empty array of principal names or patterns' : 'must be an array of principal names or patterns');
      return [];
    }
    const out: string[] = [];
    v.forEach((p, i) => {
      if (typeof p !== 'string' || p.length === 0 || p.length > MAX_PATTERN) bad(`${path}[${i}]`, `must be a non-empty string of at most ${MAX_PATTERN} characters`);
      // eslint-disable-next-line no-control-regex
      else if (/[\u0000-\u001f\u007f]/.test(p)) bad(`${path}[${i}]`, 'must not contain control characters');
      else {
        const c = classifyPrincipalPattern(p);
        if ('problem' in c) bad(`${path}[${i}]`, c.problem);
        else out.push(p);
      }
    });
    return out;
  };

  const admins = principalList('admins', raw.admins, false);
  const custodians = principalList('custodians', raw.custodians, false);
  const grants: Grant[] = [];
  if (raw.grants !== undefined && !Array.isArray(raw.grants)) bad('grants', 'must be an array');
  const ids = new Set<string>();
  (Array.isArray(raw.grants) ? raw.grants : []).forEach((gr: unknown, i: number) => {
    const at = `grants[${i}]`;
    if (!isObject(gr)) return bad(at, 'must be an object');
    for (const key of Object.keys(gr)) {
      if (!['id', 'description', 'principals', 'actions', 'keys', 'encryptionContext'].includes(key)) {
        bad(`${at}.${key}`, 'unknown field (allowed: id, description, principals, actions, keys, encryptionContext)');
      }
    }
    let id = `#${i}`;
    if (gr.id !== undefined) {
      if (typeof gr.id !== 'string' || !/^[A-Za-z0-9_.:-]{1,64}$/.test(gr.id)) bad(`${at}.id`, 'must be 1 to 64 of A-Z a-z 0-9 _ . : -');
      else if (ids.has(gr.id)) bad(`${at}.id`, `duplicate id "${gr.id}"`);
      else id = gr.id;
    }
    ids.add(id);
    const principals = principalList(`${at}.principals`, gr.principals, true);

    const actions: string[] = [];
    if (!Array.isArray(gr.actions) || gr.actions.length === 0) bad(`${at}.actions`, 'must be a non-empty array of action names or patterns');
    else {
      gr.actions.forEach((a: unknown, j: number) => {
        if (typeof a !== 'string' || a.length === 0) return bad(`${at}.actions[${j}]`, 'must be a non-empty string');
        if (a.includes('*')) {
          if (expandActions([a]).length === 0) return bad(`${at}.actions[${j}]`, `"${a}" matches no action`);
        } else if (!actionInfo(a)) {
          const near = KNOWN_ACTIONS.find((n) => n.toLowerCase() === a.toLowerCase());
          return bad(`${at}.actions[${j}]`, `unknown action "${a}"${near ? ` (did you mean ${near}?)` : ''}`);
        }
        actions.push(a);
      });
    }
    const expanded = expandActions(actions).map((a) => [a, ACTIONS[a]] as [string, ActionInfo | undefined]);

    const keys: string[] = [];
    if (!Array.isArray(gr.keys) || gr.keys.length === 0) bad(`${at}.keys`, 'must be a non-empty array: key ids, aliases (alias/...), patterns, or "*"');
    else {
      gr.keys.forEach((key: unknown, j: number) => {
        if (typeof key !== 'string' || key.length === 0 || key.length > MAX_PATTERN) return bad(`${at}.keys[${j}]`, 'must be a non-empty string');
        if (key !== '*' && !key.startsWith('alias/') && !UUID_PATTERN.test(key)) {
          return bad(`${at}.keys[${j}]`, `"${key}" is not "*", a key id (lowercase UUID, "*" allowed) or an alias pattern (alias/...)`);
        }
        keys.push(key);
      });
      if (!keys.includes('*')) {
        // Named explicitly only: a pattern such as "*" on some keys simply does not reach them.
        const global = actions.filter((a) => !a.includes('*') && actionInfo(a) && !actionInfo(a)!.keyed);
        if (global.length) bad(`${at}.keys`, `${global.join(', ')} ${global.length > 1 ? 'are' : 'is'} not about particular keys: grant ${global.length > 1 ? 'them' : 'it'} with keys ["*"]`);
      }
    }

    let encryptionContext: Record<string, string> | undefined;
    if (gr.encryptionContext !== undefined) {
      if (!isObject(gr.encryptionContext) || Object.keys(gr.encryptionContext).length === 0) {
        bad(`${at}.encryptionContext`, 'must be a non-empty object of required key/value pairs');
      } else {
        encryptionContext = {};
        for (const [key, val] of Object.entries(gr.encryptionContext)) {
          if (key.length === 0 || typeof val !== 'string' || val.length === 0) bad(`${at}.encryptionContext.${key || '""'}`, 'keys and values must be non-empty strings');
          else encryptionContext[key] = val;
        }
        const without = expanded.filter(([, info]) => info && !info.context).map(([a]) => a);
        if (without.length) {
          bad(`${at}.encryptionContext`, `applies only to ${CONTEXT_ACTIONS.join(', ')}; this grant also names ${without.join(', ')} (put those in a grant of their own)`);
        }
      }
    }
    grants.push({ id, principals, actions, keys, encryptionContext });
  });
  const xks = raw.xks === undefined ? undefined : validateXks(raw.xks, bad);
  if (problems.length) throw new PolicyError(source, problems);
  return { version: 1, admins, custodians, grants, ...(xks ? { xks } : {}) };
}
