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
//     ]
//   }
//
// Patterns: "*" matches any run of characters (including "/"); everything else is literal and
// case-sensitive. Deny by default: a call is allowed only when a role or a grant allows the action
// on every CMK the request names. A grant with encryptionContext conditions applies only to calls
// whose EncryptionContext holds every listed key with a matching value.

import fs from 'node:fs';
import { ACTIONS, ActionInfo, CONTEXT_ACTIONS, KNOWN_ACTIONS, ROLE_CLASSES, actionInfo } from './actions';

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
}

/** One CMK a request is about, as far as the request and the metadata can tell. */
export interface KeyResource {
  /** The reference as given (key id, alias, or whatever the caller sent). */
  ref: string;
  /** The CMK id, when the reference is a key id or an existing alias. */
  keyId?: string;
  /** Alias names of the CMK (and the alias given, even if it does not exist). */
  aliases: string[];
  /** The EncryptionContext that goes with this CMK in the request (Encrypt, Decrypt, ...). */
  context?: Record<string, string>;
  /** True when the request names a CMK the daemon cannot work out (a malformed ciphertext). */
  unknown?: boolean;
}

export interface AccessRequest {
  principal: string;
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

interface CompiledGrant {
  id: string;
  principals: Pattern[];
  actions: Set<string>;
  keys: Pattern[];
  anyKey: boolean;
  context: [string, Pattern][];
}

/** A validated, compiled policy. Immutable: a reload builds a new one. */
export class Policy {
  private readonly admins: Pattern[];
  private readonly custodians: Pattern[];
  private readonly grants: CompiledGrant[];

  private constructor(
    readonly doc: PolicyDocument,
    readonly source: string,
  ) {
    this.admins = doc.admins.map((p) => new Pattern(p));
    this.custodians = doc.custodians.map((p) => new Pattern(p));
    this.grants = doc.grants.map((gr) => ({
      id: gr.id,
      principals: gr.principals.map((p) => new Pattern(p)),
      actions: new Set(expandActions(gr.actions)),
      keys: gr.keys.map((p) => new Pattern(p)),
      anyKey: gr.keys.includes('*'),
      context: Object.entries(gr.encryptionContext ?? {}).map(([key, val]) => [key, new Pattern(val)] as [string, Pattern]),
    }));
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

  get summary(): { admins: number; custodians: number; grants: number } {
    return { admins: this.admins.length, custodians: this.custodians.length, grants: this.grants.length };
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
      if (!gr) return { allowed: false, reason: `no grant covers ${describeResource(res)}` };
      via.push(gr.id);
    }
    return { allowed: true, via: `grant:${[...new Set(via)].join(',')}` };
  }
}

function grantCovers(gr: CompiledGrant, res: KeyResource): boolean {
  let keyOk = gr.anyKey;
  if (!keyOk && !res.unknown) {
    const names = [res.ref, ...(res.keyId ? [res.keyId] : []), ...res.aliases];
    keyOk = gr.keys.some((p) => names.some((n) => p.test(n)));
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
    if (!['version', 'description', 'admins', 'custodians', 'grants'].includes(key)) bad(key, 'unknown field (allowed: version, description, admins, custodians, grants)');
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
      else out.push(p);
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
  if (problems.length) throw new PolicyError(source, problems);
  return { version: 1, admins, custodians, grants };
}
