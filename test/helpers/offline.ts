// Decrypting a kmsd CiphertextBlob without kmsd, from the raw key material (docs/ciphertext.md): the
// proof that what a CMK encrypts is under the material its user imported.

import crypto from 'node:crypto';

/** docs/ciphertext.md: canonical EncryptionContext (keys sorted, no whitespace; empty = no bytes). */
export function canonicalContext(ctx: Record<string, string>): Buffer {
  const keys = Object.keys(ctx).sort();
  return keys.length ? Buffer.from(JSON.stringify(Object.fromEntries(keys.map((x) => [x, ctx[x]]))), 'utf8') : Buffer.alloc(0);
}

/** docs/ciphertext.md: decrypts a CiphertextBlob with the raw key material, without kmsd. */
export function offlineDecrypt(material: Buffer, blobB64: string, ctx: Record<string, string>): Buffer {
  const blob = Buffer.from(blobB64, 'base64');
  const d = crypto.createDecipheriv('aes-256-gcm', material, blob.subarray(36, 48));
  d.setAAD(Buffer.concat([blob.subarray(0, 48), canonicalContext(ctx)]));
  d.setAuthTag(blob.subarray(blob.length - 16));
  return Buffer.concat([d.update(blob.subarray(48, blob.length - 16)), d.final()]);
}
