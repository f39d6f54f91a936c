// The proposal document: the exact bytes a custodian reviews and signs. Human-readable JSON with
// keys sorted at every level and two-space indentation, ending in a newline, so that the same
// proposal always renders to the same bytes and `openssl pkeyutl -sign -rawin` signs what kmsd
// verifies. kmsd stores the bytes it issued and verifies against them, never against a re-rendering.

import crypto from 'node:crypto';

export const DOCUMENT_FORMAT = 'kmsd-proposal/v1';

function sortDeep(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortDeep);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return Object.fromEntries(
      Object.keys(o)
        .filter((k) => o[k] !== undefined)
        .sort()
        .map((k) => [k, sortDeep(o[k])]),
    );
  }
  return v;
}

export function renderDocument(doc: Record<string, unknown>): Buffer {
  return Buffer.from(JSON.stringify(sortDeep(doc), null, 2) + '\n', 'utf8');
}

export function sha256Hex(b: Buffer | string): string {
  return crypto.createHash('sha256').update(b).digest('hex');
}

/** Verifies an Ed25519 signature over exactly these bytes (what openssl pkeyutl -rawin makes). */
export function verifyEd25519(key: crypto.KeyObject, document: Buffer, signature: Buffer): boolean {
  if (signature.length !== 64) return false;
  try {
    return crypto.verify(null, document, key, signature);
  } catch {
    return false;
  }
}
