// The `xks` section of the policy file: the XKS Proxy API's secondary authorization, on what AWS KMS
// says about each request (its requestMetadata), after the key store's principal has passed the
// grants. First match wins; no match takes `default`.
//
//   "xks": {
//     "rules": [
//       { "id": "no-bob",                                   // optional; named in logs and the audit
//         "effect": "deny",                                 // "allow" | "deny"
//         "uriPathPrefix": "keystore-1",                    // optional: key store(s), exact
//         "awsPrincipalArn": "arn:aws:iam::111122223333:user/bob*",   // optional: pattern(s)
//         "kmsKeyArn": ["arn:aws:kms:*:111122223333:key/*"],           // optional: pattern(s)
//         "kmsOperation": ["ReEncrypt", "GenerateDataKey*"] }         // optional: name(s) or pattern(s)
//     ],
//     "default": "allow"                                    // required: "allow" | "deny"
//   }
//
// A rule matches when each condition it has matches (any of a list); a request without the member a
// condition is on (GetKeyMetadata may come without kmsKeyArn) does not match it. Patterns are the
// policy's: "*" is any run of characters, the rest literal and case-sensitive. Only the key operations
// (XksGetKeyMetadata, XksEncrypt, XksDecrypt) are subject to the rules: GetHealthStatus is how AWS KMS
// decides whether the key store is connected, and carries no principal or key.

import { globToRegExp } from './policy';

export type XksEffect = 'allow' | 'deny';

export interface XksRule {
  id: string;
  effect: XksEffect;
  uriPathPrefix?: string[];
  awsPrincipalArn?: string[];
  kmsKeyArn?: string[];
  kmsOperation?: string[];
}

export interface XksSection {
  rules: XksRule[];
  default: XksEffect;
}

/** The actions the rules apply to, and the request members (as the XKS dialect names them) they read. */
export const XKS_RULED_ACTIONS: ReadonlySet<string> = new Set(['XksGetKeyMetadata', 'XksEncrypt', 'XksDecrypt']);

/** Each condition: its request member (src/api/http/xks names them so for the audit). */
const CONDITIONS = {
  uriPathPrefix: 'UriPathPrefix',
  awsPrincipalArn: 'AwsPrincipalArn',
  kmsKeyArn: 'KmsKeyArn',
  kmsOperation: 'KmsOperation',
} as const;
type Condition = keyof typeof CONDITIONS;
const CONDITION_NAMES = Object.keys(CONDITIONS) as Condition[];
const RULE_FIELDS = ['id', 'description', 'effect', ...CONDITION_NAMES];

/** The request metadata the rules look at (absent members match no condition). */
export type XksRequestFacts = Partial<Record<(typeof CONDITIONS)[Condition], string>>;

export type XksDecision = { allowed: boolean; rule: string; effect: XksEffect; matched: Partial<Record<Condition, string>> };

const PREFIX_RE = /^[A-Za-z0-9_-]+(?:\/[A-Za-z0-9_-]+)*$/;
const PREFIX_MAX = 116;
/** ARNs are up to 2,048 characters (the spec). */
const ARN_PATTERN_MAX = 2048;
/** An AWS API name, or a pattern of one ("GenerateDataKey*"). */
const OPERATION_RE = /^[A-Z*][A-Za-z0-9*]{0,63}$/;
/** kmsOperation values the spec's examples use: a near miss in case is named as such. */
const KNOWN_OPERATIONS = ['CreateKey', 'DescribeKey', 'Encrypt', 'Decrypt', 'ReEncrypt', 'GenerateDataKey', 'GenerateDataKeyWithoutPlaintext', 'GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext'];

interface CompiledRule {
  id: string;
  effect: XksEffect;
  conditions: [Condition, { text: string; test(s: string): boolean }[]][];
}

function matcher(text: string, glob: boolean): { text: string; test(s: string): boolean } {
  if (!glob || !text.includes('*')) return { text, test: (s) => s === text };
  const re = globToRegExp(text);
  return { text, test: (s) => re.test(s) };
}

/** The compiled section; immutable, rebuilt with the policy on reload. */
export class XksRules {
  private readonly rules: CompiledRule[];
  constructor(readonly section: XksSection) {
    this.rules = section.rules.map((r) => ({
      id: r.id,
      effect: r.effect,
      conditions: CONDITION_NAMES.filter((c) => r[c] !== undefined).map((c) => [c, r[c]!.map((t) => matcher(t, c !== 'uriPathPrefix'))] as CompiledRule['conditions'][number]),
    }));
  }

  get summary(): { xksRules: number; xksDefault: XksEffect } {
    return { xksRules: this.rules.length, xksDefault: this.section.default };
  }

  decide(facts: XksRequestFacts): XksDecision {
    for (const rule of this.rules) {
      const matched: Partial<Record<Condition, string>> = {};
      const all = rule.conditions.every(([c, ms]) => {
        const have = facts[CONDITIONS[c]];
        const m = have === undefined ? undefined : ms.find((x) => x.test(have));
        if (m) matched[c] = m.text;
        return m !== undefined;
      });
      if (all) return { allowed: rule.effect === 'allow', rule: rule.id, effect: rule.effect, matched };
    }
    return { allowed: this.section.default === 'allow', rule: 'default', effect: this.section.default, matched: {} };
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Validates the `xks` section, reporting every problem through `bad` (path, message). */
export function validateXks(raw: unknown, bad: (path: string, msg: string) => void): XksSection | undefined {
  if (!isObject(raw)) {
    bad('xks', 'must be an object with "rules" and "default"');
    return undefined;
  }
  for (const key of Object.keys(raw)) {
    if (!['description', 'rules', 'default'].includes(key)) bad(`xks.${key}`, 'unknown field (allowed: description, rules, default)');
  }
  if (raw.description !== undefined && typeof raw.description !== 'string') bad('xks.description', 'must be a string');
  const effect = (path: string, v: unknown): XksEffect | undefined => {
    if (v === 'allow' || v === 'deny') return v;
    bad(path, `must be "allow" or "deny" (got ${JSON.stringify(v) ?? 'nothing'})`);
    return undefined;
  };
  const dflt = effect('xks.default', raw.default);
  const rules: XksRule[] = [];
  if (!Array.isArray(raw.rules)) bad('xks.rules', 'must be an array of rules (it may be empty)');
  const ids = new Set<string>();
  let catchAll: string | undefined;
  (Array.isArray(raw.rules) ? raw.rules : []).forEach((r: unknown, i: number) => {
    const at = `xks.rules[${i}]`;
    if (!isObject(r)) return bad(at, 'must be an object');
    for (const key of Object.keys(r)) {
      if (!RULE_FIELDS.includes(key)) bad(`${at}.${key}`, `unknown field (allowed: ${RULE_FIELDS.join(', ')})`);
    }
    if (r.description !== undefined && typeof r.description !== 'string') bad(`${at}.description`, 'must be a string');
    let id = `xks.rules[${i}]`;
    if (r.id !== undefined) {
      if (typeof r.id !== 'string' || !/^[A-Za-z0-9_.:-]{1,64}$/.test(r.id)) bad(`${at}.id`, 'must be 1 to 64 of A-Z a-z 0-9 _ . : -');
      else if (ids.has(r.id)) bad(`${at}.id`, `duplicate id "${r.id}"`);
      else id = r.id;
    }
    ids.add(id);
    if (catchAll !== undefined) bad(at, `is never reached: ${catchAll} has no condition and matches every request first`);
    const e = effect(`${at}.effect`, r.effect);
    const rule: XksRule = { id, effect: e ?? 'deny' };
    for (const c of CONDITION_NAMES) {
      if (r[c] === undefined) continue;
      const list = typeof r[c] === 'string' ? [r[c]] : r[c];
      if (!Array.isArray(list) || list.length === 0) {
        bad(`${at}.${c}`, 'must be a string or a non-empty array of strings');
        continue;
      }
      const out: string[] = [];
      list.forEach((p: unknown, j: number) => {
        const where = typeof r[c] === 'string' ? `${at}.${c}` : `${at}.${c}[${j}]`;
        const problem = conditionProblem(c, p);
        if (problem) bad(where, problem);
        else out.push(p as string);
      });
      rule[c] = out;
    }
    if (CONDITION_NAMES.every((c) => r[c] === undefined)) catchAll = r.id !== undefined && typeof r.id === 'string' ? `rule "${r.id}"` : at;
    rules.push(rule);
  });
  if (dflt === undefined) return undefined;
  return { rules, default: dflt };
}

function conditionProblem(c: Condition, p: unknown): string | undefined {
  if (typeof p !== 'string' || p.length === 0) return 'must be a non-empty string';
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(p)) return 'must not contain control characters';
  const shown = JSON.stringify(p.length > 80 ? `${p.slice(0, 77)}...` : p);
  switch (c) {
    case 'uriPathPrefix':
      if (p.length > PREFIX_MAX || !PREFIX_RE.test(p)) return `${shown} is not a key store's UriPathPrefix (letters, digits, '-' and '_' in segments separated by '/', at most ${PREFIX_MAX}, no leading or trailing '/', no patterns)`;
      return undefined;
    case 'awsPrincipalArn':
    case 'kmsKeyArn': {
      if (p.length > ARN_PATTERN_MAX) return `at most ${ARN_PATTERN_MAX} characters (got ${p.length})`;
      // Up to its first "*", a pattern must agree with "arn:" or it can never match an ARN.
      const head = p.split('*')[0];
      if (!(head.startsWith('arn:') || (p.includes('*') && 'arn:'.startsWith(head)))) return `${shown} can never match: an ARN starts with "arn:" (use "*" for any)`;
      return undefined;
    }
    case 'kmsOperation': {
      if (!OPERATION_RE.test(p)) {
        const near = KNOWN_OPERATIONS.find((n) => n.toLowerCase() === p.toLowerCase());
        return `${shown} is not a KMS operation name or pattern (letters and digits, starting with a capital, "*" allowed)${near ? ` (did you mean ${near}?)` : ''}`;
      }
      return undefined;
    }
  }
}
