// The CiphertextBlob format helpers (src/kms/ciphertext.ts, docs/ciphertext.md): header layout,
// parsing and its errors, the canonical EncryptionContext, the AAD, and context validation.

import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  FORMAT_VERSION,
  HEADER_BYTES,
  IV_BYTES,
  MAGIC,
  TAG_BYTES,
  aadFor,
  buildHeader,
  bytesToUuid,
  canonicalContext,
  parseBlob,
  uuidToBytes,
  validateContext,
} from '../../src/kms/ciphertext';
import { errorOf } from '../helpers/errors';

const KEY_ID = '0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0';
const VERSION_ID = '11223344-5566-4788-99aa-bbccddeeff00';
const IV = Buffer.from('000102030405060708090a0b', 'hex');


describe('constants', () => {
  it('match the documented layout', () => {
    expect(MAGIC.toString('ascii')).toBe('KMS');
    expect(FORMAT_VERSION).toBe(1);
    expect(HEADER_BYTES).toBe(3 + 1 + 16 + 16 + 12);
    expect(IV_BYTES).toBe(12);
    expect(TAG_BYTES).toBe(16);
  });
});

describe('uuid bytes', () => {
  it('round-trips and is the hex digits without dashes', () => {
    const b = uuidToBytes(KEY_ID);
    expect(b.toString('hex')).toBe('0f1e2d3c4b5a49788796a5b4c3d2e1f0');
    expect(b).toHaveLength(16);
    expect(bytesToUuid(b)).toBe(KEY_ID);
    for (let i = 0; i < 20; i++) {
      const id = crypto.randomUUID();
      expect(bytesToUuid(uuidToBytes(id))).toBe(id);
    }
  });
});

describe('buildHeader', () => {
  it('is magic, version, CMK id, key version id, IV (a known answer)', () => {
    const h = buildHeader(KEY_ID, VERSION_ID, IV);
    expect(h).toHaveLength(HEADER_BYTES);
    expect(h.toString('hex')).toBe('4b4d5301' + '0f1e2d3c4b5a49788796a5b4c3d2e1f0' + '112233445566478899aabbccddeeff00' + '000102030405060708090a0b');
  });
});

describe('parseBlob', () => {
  const header = buildHeader(KEY_ID, VERSION_ID, IV);
  const sealed = Buffer.concat([Buffer.from('ciphertext'), Buffer.alloc(16, 0xee)]);
  const blob = Buffer.concat([header, sealed]);

  it('reads back every field', () => {
    const p = parseBlob(blob);
    expect(p.keyId).toBe(KEY_ID);
    expect(p.keyVersionId).toBe(VERSION_ID);
    expect(p.iv.equals(IV)).toBe(true);
    expect(p.header.equals(header)).toBe(true);
    expect(p.sealed.equals(sealed)).toBe(true);
  });

  it('accepts the shortest blob (empty plaintext: header and tag)', () => {
    const p = parseBlob(Buffer.concat([header, Buffer.alloc(16)]));
    expect(p.sealed).toHaveLength(16);
  });

  it('refuses a blob shorter than header + tag, naming the lengths', () => {
    for (const len of [0, 1, 3, 4, 47, 48, 63]) {
      const e = errorOf(() => parseBlob(blob.subarray(0, len)));
      expect(e.code).toBe('InvalidCiphertext');
      expect(e.status).toBe('INVALID_ARGUMENT');
      expect(e.message).toBe(`CiphertextBlob: too short (${len} bytes; a blob has at least 64)`);
    }
  });

  it('refuses a bad magic and an unknown version', () => {
    for (const i of [0, 1, 2]) {
      const b = Buffer.from(blob);
      b[i] ^= 0x20;
      const e = errorOf(() => parseBlob(b));
      expect(e.code).toBe('InvalidCiphertext');
      expect(e.message).toMatch(/bad magic/);
    }
    for (const v of [0, 2, 0xff]) {
      const b = Buffer.from(blob);
      b[3] = v;
      expect(errorOf(() => parseBlob(b)).message).toBe(`CiphertextBlob: unknown format version ${v}`);
    }
  });
});

describe('canonicalContext', () => {
  it('is empty for no context and for {}', () => {
    expect(canonicalContext(undefined)).toHaveLength(0);
    expect(canonicalContext({})).toHaveLength(0);
  });

  it('sorts keys, has no whitespace, and does not depend on insertion order', () => {
    const a = canonicalContext({ b: '2', a: '1', c: 'x y' });
    expect(a.toString('utf8')).toBe('{"a":"1","b":"2","c":"x y"}');
    expect(canonicalContext({ c: 'x y', a: '1', b: '2' }).equals(a)).toBe(true);
  });

  it('sorts by UTF-16 code unit (uppercase before lowercase, astral before U+FFFF) and encodes UTF-8', () => {
    const ctx = { z: '1', Z: '2', é: '3', '\u{1F600}': '4', '\uFFFF': '5', '10': '6', '9': '7' };
    const s = canonicalContext(ctx).toString('utf8');
    expect(s).toBe('{"10":"6","9":"7","Z":"2","z":"1","é":"3","\u{1F600}":"4","\uFFFF":"5"}');
    expect(canonicalContext({ é: 'ü' }).equals(Buffer.from('{"é":"ü"}', 'utf8'))).toBe(true);
  });

  it('escapes as JSON does, so distinct contexts never share bytes', () => {
    const tricky = canonicalContext({ a: 'b","c":"d' });
    const plain = canonicalContext({ a: 'b', c: 'd' });
    expect(tricky.equals(plain)).toBe(false);
    expect(tricky.toString()).toBe('{"a":"b\\",\\"c\\":\\"d"}');
    expect(canonicalContext({ k: 'line\nbreak' }).toString()).toBe('{"k":"line\\nbreak"}');
    expect(canonicalContext({ a: '' }).toString()).toBe('{"a":""}');
  });
});

describe('aadFor', () => {
  it('is the header followed by the canonical context', () => {
    const h = buildHeader(KEY_ID, VERSION_ID, IV);
    expect(aadFor(h, undefined).equals(h)).toBe(true);
    expect(aadFor(h, {}).equals(h)).toBe(true);
    expect(aadFor(h, { b: '2', a: '1' }).equals(Buffer.concat([h, Buffer.from('{"a":"1","b":"2"}')]))).toBe(true);
  });

  it('binds header and context: a blob sealed with it opens only with the same AAD (documented recipe)', () => {
    const key = crypto.randomBytes(32);
    const h = buildHeader(KEY_ID, VERSION_ID, IV);
    const ctx = { purpose: 'unit' };
    const c = crypto.createCipheriv('aes-256-gcm', key, IV);
    c.setAAD(aadFor(h, ctx));
    const blob = Buffer.concat([h, c.update(Buffer.from('hello')), c.final(), c.getAuthTag()]);
    const open = (b: Buffer, aadCtx: Record<string, string> | undefined) => {
      const p = parseBlob(b);
      const d = crypto.createDecipheriv('aes-256-gcm', key, p.iv);
      d.setAAD(aadFor(p.header, aadCtx));
      d.setAuthTag(p.sealed.subarray(p.sealed.length - 16));
      return Buffer.concat([d.update(p.sealed.subarray(0, p.sealed.length - 16)), d.final()]).toString();
    };
    expect(open(blob, ctx)).toBe('hello');
    expect(() => open(blob, undefined)).toThrow();
    expect(() => open(blob, { purpose: 'other' })).toThrow();
    const relabelled = Buffer.from(blob);
    uuidToBytes(crypto.randomUUID()).copy(relabelled, 4);
    expect(() => open(relabelled, ctx)).toThrow();
  });
});

describe('validateContext', () => {
  it('accepts absent, empty and up to 64 entries / 8192 bytes', () => {
    expect(() => validateContext('EncryptionContext', undefined)).not.toThrow();
    expect(() => validateContext('EncryptionContext', {})).not.toThrow();
    expect(() => validateContext('EncryptionContext', Object.fromEntries(Array.from({ length: 64 }, (_, i) => [`k${i}`, 'v'])))).not.toThrow();
    expect(() => validateContext('EncryptionContext', { k: 'v'.repeat(8191) })).not.toThrow();
  });

  it('refuses more than 64 entries, an empty key, a non-string value and more than 8192 bytes, naming the field', () => {
    const cases: [Record<string, unknown>, string][] = [
      [Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`k${i}`, 'v'])), 'SourceEncryptionContext: at most 64 entries'],
      [{ '': 'v' }, 'SourceEncryptionContext: keys must not be empty'],
      [{ n: 1 }, 'SourceEncryptionContext: value of "n" must be a string'],
      [{ k: 'v'.repeat(8192) }, 'SourceEncryptionContext: at most 8192 bytes of keys and values in total'],
      // Bytes, not characters: 4200 characters, but 8400 bytes in UTF-8.
      [{ ['é'.repeat(2000)]: 'ü'.repeat(2200) }, 'SourceEncryptionContext: at most 8192 bytes of keys and values in total'],
    ];
    for (const [ctx, message] of cases) {
      const e = errorOf(() => validateContext('SourceEncryptionContext', ctx as Record<string, string>));
      expect(e.code).toBe('InvalidParameter');
      expect(e.message).toBe(message);
    }
  });
});
