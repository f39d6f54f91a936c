import crypto from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { canonicalQuery, percentEncode, v2Signature } from '../../src/api/http/alibaba/signature';
import { percentCode } from '../helpers/alibaba-signers';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const rpcUtil = require('@alicloud/rpc-util').default as { getSignatureV1(q: Record<string, string>, method: string, secret: string): string };

// kmsd's V2 verifier must compute exactly what the official SDK's signer (what @alicloud/kms20160120
// 1.2.0 calls) computes, for any parameter names and values: spaces, !'()*, '~', non-ASCII.
describe('Alibaba signature V2', () => {
  it('matches @alicloud/rpc-util getSignatureV1 for arbitrary parameters', () => {
    fc.assert(
      fc.property(
        // `__proto__` is left out: the SDK's signer copies parameters by assignment, which drops it.
        fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !k.includes('.') && k !== '__proto__'), fc.string({ unit: 'grapheme', maxLength: 30 }), { maxKeys: 8 }),
        fc.constantFrom('GET', 'POST'),
        fc.string({ minLength: 1, maxLength: 40 }),
        (params, method, secret) => {
          const q = { Action: 'Encrypt', ...params };
          const ours = v2Signature(Buffer.from(secret, 'utf8'), method, Object.entries(q));
          expect(ours).toBe(rpcUtil.getSignatureV1(q, method, secret));
        },
      ),
      { numRuns: 300 },
    );
  });

  it('leaves Signature itself out of what is signed', () => {
    const q = { Action: 'ListKeys', Timestamp: '2026-01-01T00:00:00Z' };
    const s = Buffer.from('k');
    expect(v2Signature(s, 'POST', [...Object.entries(q), ['Signature', 'whatever']])).toBe(v2Signature(s, 'POST', Object.entries(q)));
  });
});

describe('Alibaba percent-encoding (V3 canonical query)', () => {
  it("is RFC 3986 with only A-Z a-z 0-9 - _ . ~ left, as Alibaba's documented percentCode", () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 40 }), (s) => {
        expect(percentEncode(s)).toBe(percentCode(s));
      }),
    );
    expect(percentEncode("a b!'()*~")).toBe('a%20b%21%27%28%29%2A~');
  });

  it('sorts by name before encoding and keeps empty values as name=', () => {
    expect(canonicalQuery([['b', '1'], ['a', ''], ['A', 'x y'], [': ', ''], ['- ', '']])).toBe('-%20=&%3A%20=&A=x%20y&a=&b=1');
  });

  it('a random key gives a different signature', () => {
    const q: [string, string][] = [['Action', 'Encrypt']];
    expect(v2Signature(crypto.randomBytes(8), 'POST', q)).not.toBe(v2Signature(crypto.randomBytes(8), 'POST', q));
  });
});
