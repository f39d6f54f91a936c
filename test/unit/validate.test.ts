// Parameter rules (src/kms/validate.ts): each failure is InvalidParameter or MissingParameter with a
// message that starts with the parameter's name and states the rule.

import { describe, expect, it } from 'vitest';
import { errorOf } from '../helpers/errors';
import * as v from '../../src/kms/validate';

const ID = '0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f0';


function expectInvalid(fn: () => unknown, message: string | RegExp): void {
  const e = errorOf(fn);
  expect(e.code).toBe('InvalidParameter');
  expect(e.status).toBe('INVALID_ARGUMENT');
  if (typeof message === 'string') expect(e.message).toBe(message);
  else expect(e.message).toMatch(message);
}

function expectMissing(fn: () => unknown, field: string): void {
  const e = errorOf(fn);
  expect(e.code).toBe('MissingParameter');
  expect(e.status).toBe('INVALID_ARGUMENT');
  expect(e.message).toBe(`${field}: is required`);
}

describe('requireString', () => {
  it('returns a value and refuses undefined, null and empty', () => {
    expect(v.requireString('F', 'x')).toBe('x');
    expect(v.requireString('F', ' ')).toBe(' ');
    expectMissing(() => v.requireString('F', undefined), 'F');
    expectMissing(() => v.requireString('F', null), 'F');
    expectMissing(() => v.requireString('F', ''), 'F');
  });
});

describe('KeyId parameters', () => {
  it('accept a lowercase UUID or an alias', () => {
    expect(v.keyIdOrAlias('KeyId', ID)).toEqual({ keyId: ID });
    expect(v.keyIdOrAlias('KeyId', 'alias/orders')).toEqual({ alias: 'alias/orders' });
    expect(v.keyIdOrAlias('DestinationKeyId', 'alias/a/b_c-d')).toEqual({ alias: 'alias/a/b_c-d' });
  });

  it('refuse anything else, naming the field, and truncate long input in the message', () => {
    for (const bad of [ID.toUpperCase(), ID.replace(/-/g, ''), `${ID} `, ` ${ID}`, `{${ID}}`, 'key-1', 'acs:kms:local:kmsd:key/' + ID, '0f1e2d3c-4b5a-4978-8796-a5b4c3d2e1f', 'gggggggg-4b5a-4978-8796-a5b4c3d2e1f0']) {
      expectInvalid(() => v.keyIdOrAlias('KeyId', bad), /^KeyId: ".*" is neither a key id \(a lowercase UUID\) nor an alias \(alias\/\.\.\.\)$/);
    }
    const long = 'x'.repeat(500);
    const e = errorOf(() => v.keyIdOrAlias('KeyId', long));
    expect(e.message).toContain(`"${'x'.repeat(77)}..."`);
    expect(e.message.length).toBeLessThan(200);
    expectMissing(() => v.keyIdOrAlias('KeyId', undefined), 'KeyId');
    expectMissing(() => v.keyIdOrAlias('SourceKeyId', ''), 'SourceKeyId');
    // An alias-looking KeyId is held to the alias rules, under the KeyId name.
    expectInvalid(() => v.keyIdOrAlias('KeyId', 'alias/'), /^KeyId: must be "alias\/" followed by/);
    expectInvalid(() => v.keyIdOrAlias('KeyId', 'alias/a b'), /^KeyId: must be "alias\/"/);
  });

  it('isUuid and keyVersionId', () => {
    expect(v.isUuid(ID)).toBe(true);
    expect(v.isUuid(ID.toUpperCase())).toBe(false);
    expect(v.isUuid(`${ID}\n`)).toBe(false);
    expect(v.keyVersionId('KeyVersionId', ID)).toBe(ID);
    expectInvalid(() => v.keyVersionId('KeyVersionId', 'v1'), 'KeyVersionId: "v1" is not a key version id (a lowercase UUID)');
    expectMissing(() => v.keyVersionId('KeyVersionId', ''), 'KeyVersionId');
  });
});

describe('aliasName', () => {
  it('accepts alias/ + 1..249 of letters, digits, _ - /', () => {
    for (const ok of ['alias/a', 'alias/Orders_2024-v1', 'alias/team/app/key', `alias/${'a'.repeat(249)}`, 'alias/-', 'alias//']) {
      expect(v.aliasName('AliasName', ok)).toBe(ok);
    }
  });

  it('refuses the rest with the rule in the message', () => {
    const rule = 'AliasName: must be "alias/" followed by 1 to 249 letters, digits, underscores (_), hyphens (-) or slashes (/)';
    for (const bad of ['alias/', 'orders', 'Alias/orders', 'alias:orders', 'alias/a b', 'alias/a.b', 'alias/é', 'alias/a*', `alias/${'a'.repeat(250)}`, 'alias/a\n', ' alias/a']) {
      expectInvalid(() => v.aliasName('AliasName', bad), rule);
    }
    for (const reserved of ['alias/acs', 'alias/acs/kms', 'alias/acsfoo']) {
      expectInvalid(() => v.aliasName('AliasName', reserved), 'AliasName: must not start with "alias/acs" (reserved)');
    }
    expectMissing(() => v.aliasName('AliasName', undefined), 'AliasName');
  });
});

describe('oneOf', () => {
  const levels = ['SOFTWARE', 'HSM'] as const;
  it('returns a listed value or the default, case-sensitively', () => {
    expect(v.oneOf('ProtectionLevel', 'HSM', levels)).toBe('HSM');
    expect(v.oneOf('ProtectionLevel', undefined, levels, 'SOFTWARE')).toBe('SOFTWARE');
    expect(v.oneOf('ProtectionLevel', '', levels, 'SOFTWARE')).toBe('SOFTWARE');
    expectInvalid(() => v.oneOf('ProtectionLevel', 'hsm', levels, 'SOFTWARE'), 'ProtectionLevel: must be one of SOFTWARE, HSM (got "hsm")');
    expectInvalid(() => v.oneOf('ProtectionLevel', 'HSM ', levels), /^ProtectionLevel: must be one of SOFTWARE, HSM/);
    expectMissing(() => v.oneOf('ProtectionLevel', undefined, levels), 'ProtectionLevel');
  });
});

describe('base64', () => {
  it('decodes strict, padded standard base64', () => {
    expect(v.base64('Plaintext', 'aGVsbG8=').toString()).toBe('hello');
    expect(v.base64('Plaintext', 'YQ==').toString()).toBe('a');
    expect(v.base64('Plaintext', 'YWI=').toString()).toBe('ab');
    expect(v.base64('Plaintext', 'YWJj').toString()).toBe('abc');
    expect(v.base64('Plaintext', '+/+/').equals(Buffer.from([0xfb, 0xff, 0xbf]))).toBe(true);
  });

  it('refuses anything else, naming the field and the rule', () => {
    const rule = 'Plaintext: must be standard base64 (A-Z, a-z, 0-9, +, /, with = padding)';
    for (const bad of ['aGVsbG8', 'YQ', 'YQ=', 'Y===', 'aGVs bG8=', 'aGVsbG8=\n', '-_8=', 'aGVsbG8==', '====', 'a', 'hello world!', 'YQ==YQ==']) {
      expectInvalid(() => v.base64('Plaintext', bad), rule);
    }
    expectMissing(() => v.base64('CiphertextBlob', ''), 'CiphertextBlob');
    expectMissing(() => v.base64('CiphertextBlob', undefined), 'CiphertextBlob');
    expect(v.base64('X', '', { allowEmpty: true })).toHaveLength(0);
  });

  it('takes exactly the strings the strict pattern takes, non-zero trailing bits included, and decodes them as before', () => {
    const pattern = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
    // Short strings over an alphabet with the awkward characters, every length up to 9: the
    // round-trip shortcut must never take what the pattern refuses, nor refuse what it takes.
    const alphabet = ['A', 'Q', 'R', 'z', '+', '/', '=', '-', ' ', '\n', 'é'];
    let state = 7;
    const rnd = () => ((state = (state * 1103515245 + 12345) >>> 0) >>> 8) % alphabet.length;
    for (let i = 0; i < 20000; i++) {
      const len = 1 + (i % 9);
      const s = Array.from({ length: len }, rnd).map((j) => alphabet[j]).join('');
      let got: Buffer | undefined;
      try {
        got = v.base64('Plaintext', s);
      } catch {
        got = undefined;
      }
      expect(got !== undefined, JSON.stringify(s)).toBe(pattern.test(s));
      if (got) expect(got.equals(Buffer.from(s, 'base64'))).toBe(true);
    }
    // Non-canonical padding bits (what a lenient encoder might send) are still taken.
    expect(v.base64('Plaintext', 'YR==').toString()).toBe('a');
    expect(v.base64('Plaintext', 'YWJ=').toString()).toBe('ab');
  });

  it('enforces maxBytes after decoding: the limit itself passes, one more byte fails', () => {
    const at = Buffer.alloc(6144, 1).toString('base64');
    const over = Buffer.alloc(6145, 1).toString('base64');
    expect(v.base64('Plaintext', at, { maxBytes: 6144 })).toHaveLength(6144);
    expectInvalid(() => v.base64('Plaintext', over, { maxBytes: 6144 }), 'Plaintext: at most 6144 bytes after base64 decoding (got 6145)');
  });
});

describe('intInRange', () => {
  it('applies the default for absent and zero (proto3 cannot tell them apart) when there is one', () => {
    expect(v.intInRange('PageSize', undefined, 1, 100, 10)).toBe(10);
    expect(v.intInRange('PageSize', 0, 1, 100, 10)).toBe(10);
    expect(v.intInRange('PageSize', 1, 1, 100, 10)).toBe(1);
    expect(v.intInRange('PageSize', 100, 1, 100, 10)).toBe(100);
  });

  it('refuses out-of-range and non-integer values with the range in the message', () => {
    expectInvalid(() => v.intInRange('PendingWindowInDays', 6, 7, 366), 'PendingWindowInDays: must be an integer from 7 to 366 (got 6)');
    expectInvalid(() => v.intInRange('PendingWindowInDays', 367, 7, 366), 'PendingWindowInDays: must be an integer from 7 to 366 (got 367)');
    expectInvalid(() => v.intInRange('PendingWindowInDays', 7.5, 7, 366), 'PendingWindowInDays: must be an integer from 7 to 366 (got 7.5)');
    expectInvalid(() => v.intInRange('PendingWindowInDays', 0, 7, 366), 'PendingWindowInDays: must be an integer from 7 to 366 (got 0)');
    expectInvalid(() => v.intInRange('PageSize', 101, 1, 100, 10), /^PageSize: must be an integer from 1 to 100/);
    expectInvalid(() => v.intInRange('PageSize', -1, 1, 100, 10), /^PageSize: /);
    expectInvalid(() => v.intInRange('PageSize', Number.NaN, 1, 100, 10), /^PageSize: /);
    expectMissing(() => v.intInRange('PendingWindowInDays', undefined, 7, 366), 'PendingWindowInDays');
    expect(v.intInRange('PendingWindowInDays', 7, 7, 366)).toBe(7);
    expect(v.intInRange('PendingWindowInDays', 366, 7, 366)).toBe(366);
  });
});

describe('description', () => {
  it('allows up to 8192 characters', () => {
    expect(v.description('Description', undefined)).toBe('');
    expect(v.description('Description', 'd'.repeat(8192))).toHaveLength(8192);
    expectInvalid(() => v.description('Description', 'd'.repeat(8193)), 'Description: at most 8192 characters');
  });
});

describe('rotationIntervalSeconds', () => {
  const min = 7 * 86400;
  const max = 730 * 86400;
  it('reads <integer><unit> with d, h, m, s', () => {
    expect(v.rotationIntervalSeconds('RotationInterval', '30d', min, max)).toBe(30 * 86400);
    expect(v.rotationIntervalSeconds('RotationInterval', '7d', min, max)).toBe(min);
    expect(v.rotationIntervalSeconds('RotationInterval', '730d', min, max)).toBe(max);
    expect(v.rotationIntervalSeconds('RotationInterval', '604800s', min, max)).toBe(604800);
    expect(v.rotationIntervalSeconds('RotationInterval', '168h', min, max)).toBe(604800);
    expect(v.rotationIntervalSeconds('RotationInterval', '10080m', min, max)).toBe(604800);
  });

  it('refuses other forms and values outside min..max, naming the field', () => {
    const format = 'RotationInterval: must be an integer followed by a unit d, h, m or s (for example "365d" or "604800s")';
    for (const bad of ['30', 'd', '0s', '0d', '01d', '30D', ' 30d', '30d ', '1.5d', '30dd', '-7d', '7 d', '', '12345678901s']) {
      expectInvalid(() => v.rotationIntervalSeconds('RotationInterval', bad, min, max), format);
    }
    expectInvalid(() => v.rotationIntervalSeconds('RotationInterval', '6d', min, max), 'RotationInterval: must be from 604800s to 63072000s (got 518400s)');
    expectInvalid(() => v.rotationIntervalSeconds('RotationInterval', '731d', min, max), 'RotationInterval: must be from 604800s to 63072000s (got 63158400s)');
    expectInvalid(() => v.rotationIntervalSeconds('RotationInterval', '604799s', min, max), /got 604799s/);
  });
});

describe('requestIdentifiers', () => {
  it('checks CMK references in full and bounds every other identifier, naming the field', () => {
    const long = 'x'.repeat(257);
    v.requestIdentifiers({ KeyId: ID, DestinationKeyId: 'alias/a', AliasName: 'alias/b', Requester: 'ops', Items: [{ KeyId: 'not-checked-here' }] });
    v.requestIdentifiers({ KeyId: '', AliasName: 'x'.repeat(256) }); // empty: the action says whether it is required
    expectInvalid(() => v.requestIdentifiers({ KeyId: ID.toUpperCase() }), /^KeyId: ".*" is neither a key id/);
    expectInvalid(() => v.requestIdentifiers({ KeyId: `alias/${'a'.repeat(4 * 1024 * 1024)}` }), 'KeyId: at most 256 characters (got 4194310)');
    expectInvalid(() => v.requestIdentifiers({ DestinationKeyId: 'bogus' }), /^DestinationKeyId: /);
    for (const f of ['AliasName', 'KeyVersionId', 'ProposalId', 'CustodianId', 'Requester', 'BatchId']) {
      expectInvalid(() => v.requestIdentifiers({ [f]: long }), `${f}: at most 256 characters (got 257)`);
    }
    expectInvalid(() => v.requestIdentifiers({ Items: [{ KeyId: ID }, { KeyId: long }] }), 'Items[1].KeyId: at most 256 characters (got 257)');
    expectInvalid(() => v.requestIdentifiers({ Custodians: [{ CustodianId: long }] }), 'Custodians[0].CustodianId: at most 256 characters (got 257)');
  });
});
