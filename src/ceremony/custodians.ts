// Custodians: people who approve sensitive actions, each known to kmsd only by an id and an Ed25519
// public key. kmsd never sees a custodian's private key; approvals are signatures made offline.

import crypto from 'node:crypto';
import { KmsError, invalid } from '../kms/errors';

export const CUSTODIAN_ID_RE = /^[a-z0-9][a-z0-9._-]{0,63}$/;
/** A quorum bigger than this is a configuration mistake, not a ceremony. */
export const MAX_CUSTODIANS = 64;

export interface CustodianKey {
  custodianId: string;
  /** DER SubjectPublicKeyInfo. */
  der: Buffer;
  /** SHA-256 hex of der: what custodians compare out of band. */
  fingerprint: string;
  key: crypto.KeyObject;
}

export function custodianId(field: string, v: string | undefined): string {
  if (!v) throw new KmsError('MissingParameter', `${field}: is required`);
  if (!CUSTODIAN_ID_RE.test(v)) throw invalid(field, `"${v.slice(0, 80)}" is not a custodian id (1 to 64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit)`);
  return v;
}

/** Accepts a PEM public key, or base64 of its DER; refuses anything but Ed25519. */
export function parseCustodianKey(field: string, id: string, text: string): CustodianKey {
  // createPublicKey would happily derive the public half of a private key: a custodian's private
  // key must never be sent anywhere, so refuse it outright rather than accept it silently.
  if (/PRIVATE KEY-----/.test(text)) throw invalid(field, `custodian ${id}: that is a private key; give the public key (openssl pkey -in key.pem -pubout)`);
  let key: crypto.KeyObject;
  try {
    key = text.includes('-----BEGIN')
      ? crypto.createPublicKey({ key: text, format: 'pem' })
      : crypto.createPublicKey({ key: Buffer.from(text.trim(), 'base64'), format: 'der', type: 'spki' });
  } catch {
    throw invalid(field, `the public key of custodian ${id} is not a PEM (or base64 DER) SubjectPublicKeyInfo`);
  }
  if (key.type !== 'public') throw invalid(field, `custodian ${id}: give the public key, never the private key`);
  if (key.asymmetricKeyType !== 'ed25519') throw invalid(field, `custodian ${id}: the key must be Ed25519 (got ${key.asymmetricKeyType})`);
  const der = key.export({ type: 'spki', format: 'der' });
  return { custodianId: id, der, fingerprint: crypto.createHash('sha256').update(der).digest('hex'), key };
}

export function publicKeyPem(der: Buffer): string {
  return crypto.createPublicKey({ key: der, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }) as string;
}

/**
 * A custodian set and its threshold: ids unique, keys unique (one person holding two ids would
 * count twice), and 1 <= M <= N. A threshold of 0 would let anything through; M > N, nothing.
 */
export function validateSet(field: string, set: CustodianKey[], threshold: number | undefined, thresholdField = 'Threshold'): number {
  if (set.length === 0) throw new KmsError('MissingParameter', `${field}: at least one custodian is required`);
  if (set.length > MAX_CUSTODIANS) throw invalid(field, `at most ${MAX_CUSTODIANS} custodians`);
  const ids = new Set<string>();
  const keys = new Map<string, string>();
  for (const c of set) {
    if (ids.has(c.custodianId)) throw invalid(field, `custodian ${c.custodianId} is listed twice`);
    ids.add(c.custodianId);
    const other = keys.get(c.fingerprint);
    if (other) throw invalid(field, `custodians ${other} and ${c.custodianId} have the same public key; every custodian needs a key of their own`);
    keys.set(c.fingerprint, c.custodianId);
  }
  if (threshold === undefined || threshold === null) throw new KmsError('MissingParameter', `${thresholdField}: is required`);
  if (!Number.isInteger(threshold) || threshold < 1 || threshold > set.length) {
    throw invalid(thresholdField, `must satisfy 1 <= M <= N, the number of custodians (M=${threshold}, N=${set.length})`);
  }
  return threshold;
}

/** "alice=<PEM or base64 DER>,bob=..." as carried in a SetCustodians proposal. */
export function parseCustodianList(field: string, v: string | undefined): CustodianKey[] {
  if (!v) throw new KmsError('MissingParameter', `${field}: is required`);
  return v.split(',').map((entry) => {
    const eq = entry.indexOf('=');
    if (eq <= 0) throw invalid(field, 'must be a comma-separated list of id=public-key (kmsctl turns id=file.pub into this)');
    const id = custodianId(field, entry.slice(0, eq).trim());
    return parseCustodianKey(field, id, entry.slice(eq + 1));
  });
}
