// Parameter rules shared by every action. Each failure names the parameter and the rule.

import { invalid, missing } from './errors';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const ALIAS_RE = /^alias\/[A-Za-z0-9_\-/]{1,249}$/;

export function requireString(field: string, v: string | undefined | null): string {
  if (v === undefined || v === null || v === '') throw missing(field);
  return v;
}

export function isUuid(v: string): boolean {
  return UUID_RE.test(v);
}

/** A KeyId parameter: a CMK id (UUID) or an alias name (alias/...). */
export function keyIdOrAlias(field: string, v: string | undefined): { keyId?: string; alias?: string } {
  const s = requireString(field, v);
  if (s.startsWith('alias/')) return { alias: aliasName(field, s) };
  if (!isUuid(s)) throw invalid(field, `"${truncate(s)}" is neither a key id (a lowercase UUID) nor an alias (alias/...)`);
  return { keyId: s };
}

export function keyVersionId(field: string, v: string | undefined): string {
  const s = requireString(field, v);
  if (!isUuid(s)) throw invalid(field, `"${truncate(s)}" is not a key version id (a lowercase UUID)`);
  return s;
}

export function aliasName(field: string, v: string | undefined): string {
  const s = requireString(field, v);
  if (!ALIAS_RE.test(s)) {
    throw invalid(field, 'must be "alias/" followed by 1 to 249 letters, digits, underscores (_), hyphens (-) or slashes (/)');
  }
  if (s.startsWith('alias/acs')) throw invalid(field, 'must not start with "alias/acs" (reserved)');
  return s;
}

export function oneOf<T extends string>(field: string, v: string | undefined, allowed: readonly T[], dflt?: T): T {
  if (v === undefined || v === null || v === '') {
    if (dflt !== undefined) return dflt;
    throw missing(field);
  }
  if (!(allowed as readonly string[]).includes(v)) throw invalid(field, `must be one of ${allowed.join(', ')} (got "${truncate(v)}")`);
  return v as T;
}

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Strict standard base64 (padding required, no whitespace); an empty value is missing. */
export function base64(field: string, v: string | undefined, opts: { maxBytes?: number; allowEmpty?: boolean } = {}): Buffer {
  if (v === undefined || v === null || v === '') {
    if (opts.allowEmpty) return Buffer.alloc(0);
    throw missing(field);
  }
  const b = Buffer.from(v, 'base64');
  // What a standard encoder produced is exactly what re-encoding gives back (a native round trip,
  // several times cheaper than the pattern on a 4 KiB blob); only other strings meet the pattern,
  // which also takes non-zero trailing bits, as it always has.
  if (b.toString('base64') !== v && !BASE64_RE.test(v)) {
    b.fill(0);
    throw invalid(field, 'must be standard base64 (A-Z, a-z, 0-9, +, /, with = padding)');
  }
  if (opts.maxBytes !== undefined && b.length > opts.maxBytes) throw invalid(field, `at most ${opts.maxBytes} bytes after base64 decoding (got ${b.length})`);
  return b;
}

export function intInRange(field: string, v: number | undefined, min: number, max: number, dflt?: number): number {
  if (v === undefined || v === null || (v === 0 && dflt !== undefined)) {
    if (dflt !== undefined) return dflt;
    throw missing(field);
  }
  if (!Number.isInteger(v) || v < min || v > max) throw invalid(field, `must be an integer from ${min} to ${max} (got ${v})`);
  return v;
}

export function description(field: string, v: string | undefined): string {
  const s = v ?? '';
  if (s.length > 8192) throw invalid(field, 'at most 8192 characters');
  return s;
}

/** RotationInterval: "<integer><unit>" with unit d, h, m or s (Alibaba's format, e.g. "30d", "604800s"). */
export function rotationIntervalSeconds(field: string, v: string, minSeconds: number, maxSeconds: number): number {
  const m = /^([1-9][0-9]{0,9})([dhms])$/.exec(v);
  if (!m) throw invalid(field, 'must be an integer followed by a unit d, h, m or s (for example "365d" or "604800s")');
  const n = Number(m[1]) * { d: 86400, h: 3600, m: 60, s: 1 }[m[2] as 'd' | 'h' | 'm' | 's'];
  if (n < minSeconds || n > maxSeconds) throw invalid(field, `must be from ${minSeconds}s to ${maxSeconds}s (got ${n}s)`);
  return n;
}

/** Longest identifier a request may carry in any field (the longest legal one, an alias, is 255). */
export const MAX_IDENTIFIER_CHARS = 256;

/** Fields that name a CMK: a CMK id or an alias, checked in full where a call is first seen. */
const KEY_REF_FIELDS = ['KeyId', 'DestinationKeyId'] as const;
/** Other identifiers, bounded where a call is first seen (their own rules apply in the action). */
const BOUNDED_FIELDS = ['AliasName', 'KeyVersionId', 'ProposalId', 'CustodianId', 'Requester', 'BatchId'] as const;

function bounded(field: string, v: unknown): void {
  if (typeof v === 'string' && v.length > MAX_IDENTIFIER_CHARS) throw invalid(field, `at most ${MAX_IDENTIFIER_CHARS} characters (got ${v.length})`);
}

/**
 * The identifier parameters of a request, checked before anything logs, audits, counts or looks
 * them up: CMK references must be a CMK id or an alias, every other identifier (and each batch
 * item's KeyId, whose syntax the batch answers per item) at most MAX_IDENTIFIER_CHARS long.
 * Empty fields are left to the action, which knows whether they are required.
 */
export function requestIdentifiers(req: unknown): void {
  if (!req || typeof req !== 'object') return;
  const r = req as Record<string, unknown>;
  for (const f of KEY_REF_FIELDS) {
    const val = r[f];
    if (typeof val === 'string' && val !== '') {
      bounded(f, val);
      keyIdOrAlias(f, val);
    }
  }
  for (const f of BOUNDED_FIELDS) bounded(f, r[f]);
  if (Array.isArray(r.Items)) {
    r.Items.forEach((it: unknown, i: number) => {
      if (it && typeof it === 'object') for (const f of [...KEY_REF_FIELDS, 'KeyVersionId']) bounded(`Items[${i}].${f}`, (it as Record<string, unknown>)[f]);
    });
  }
  if (Array.isArray(r.Custodians)) {
    r.Custodians.forEach((it: unknown, i: number) => {
      if (it && typeof it === 'object') bounded(`Custodians[${i}].CustodianId`, (it as Record<string, unknown>).CustodianId);
    });
  }
}

function truncate(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
