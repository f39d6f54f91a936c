// The policy file's `xks` section without a daemon: every validation problem named with its path, and
// the first-match decision with what each condition matched (test/e2e/xks-policy.test.ts runs it in kmsd).

import { describe, expect, it } from 'vitest';
import { Policy, PolicyError } from '../../src/policy/policy';

function problems(xks: unknown): string[] {
  try {
    Policy.parse(JSON.stringify({ version: 1, xks }));
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return (e as PolicyError).problems;
  }
  return [];
}

const rules = (xks: unknown) => Policy.parse(JSON.stringify({ version: 1, xks })).xks!;
const ALICE = 'arn:aws:iam::111122223333:user/Alice';
const KEY = 'arn:aws:kms:eu-west-1:111122223333:key/1234';

describe('xks section validation', () => {
  it('accepts rules with every condition, a single pattern or a list, and an empty rule list', () => {
    expect(
      problems({
        description: 'secondary authorization',
        rules: [
          { id: 'a', description: 'x', effect: 'deny', uriPathPrefix: 'ks/one', awsPrincipalArn: 'arn:aws:iam::*:role/c-*', kmsKeyArn: ['*', KEY], kmsOperation: ['GenerateDataKey*', 'Encrypt'] },
          { effect: 'allow' },
        ],
        default: 'deny',
      }),
    ).toEqual([]);
    expect(problems({ rules: [], default: 'allow' })).toEqual([]);
  });

  it('names every problem with its path', () => {
    expect(
      problems({
        rules: [
          { id: 'dup', effect: 'allow', awsPrincipalArn: 'user/Alice', kmsKeyArn: [], kmsOperation: ['encrypt', 'Decrypt!'], extra: 1 },
          { id: 'dup', effect: 'Deny', uriPathPrefix: ['/ks/', 'a*'] },
          { id: 'all', effect: 'deny' },
          { effect: 'allow', awsPrincipalArn: 'arn:aws:iam::1:user/\u0001' },
          'not a rule',
        ],
        other: true,
      }),
    ).toEqual([
      'xks.other: unknown field (allowed: description, rules, default)',
      'xks.default: must be "allow" or "deny" (got nothing)',
      'xks.rules[0].extra: unknown field (allowed: id, description, effect, uriPathPrefix, awsPrincipalArn, kmsKeyArn, kmsOperation)',
      'xks.rules[0].awsPrincipalArn: "user/Alice" can never match: an ARN starts with "arn:" (use "*" for any)',
      'xks.rules[0].kmsKeyArn: must be a string or a non-empty array of strings',
      'xks.rules[0].kmsOperation[0]: "encrypt" is not a KMS operation name or pattern (letters and digits, starting with a capital, "*" allowed) (did you mean Encrypt?)',
      'xks.rules[0].kmsOperation[1]: "Decrypt!" is not a KMS operation name or pattern (letters and digits, starting with a capital, "*" allowed)',
      'xks.rules[1].id: duplicate id "dup"',
      'xks.rules[1].effect: must be "allow" or "deny" (got "Deny")',
      `xks.rules[1].uriPathPrefix[0]: "/ks/" is not a key store's UriPathPrefix (letters, digits, '-' and '_' in segments separated by '/', at most 116, no leading or trailing '/', no patterns)`,
      `xks.rules[1].uriPathPrefix[1]: "a*" is not a key store's UriPathPrefix (letters, digits, '-' and '_' in segments separated by '/', at most 116, no leading or trailing '/', no patterns)`,
      'xks.rules[3]: is never reached: rule "all" has no condition and matches every request first',
      'xks.rules[3].awsPrincipalArn: must not contain control characters',
      'xks.rules[4]: must be an object',
    ]);
    expect(problems([])).toEqual(['xks: must be an object with "rules" and "default"']);
  });
});

describe('xks decisions', () => {
  const r = rules({
    rules: [
      { id: 'no-alice-reencrypt', effect: 'deny', awsPrincipalArn: ALICE, kmsOperation: 'ReEncrypt' },
      { id: 'ks1-keys', effect: 'allow', uriPathPrefix: 'ks1', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/*' },
    ],
    default: 'deny',
  });

  it('the first rule whose conditions all match decides, and says what matched', () => {
    expect(r.decide({ UriPathPrefix: 'ks1', AwsPrincipalArn: ALICE, KmsKeyArn: KEY, KmsOperation: 'ReEncrypt' })).toEqual({
      allowed: false,
      rule: 'no-alice-reencrypt',
      effect: 'deny',
      matched: { awsPrincipalArn: ALICE, kmsOperation: 'ReEncrypt' },
    });
    expect(r.decide({ UriPathPrefix: 'ks1', AwsPrincipalArn: ALICE, KmsKeyArn: KEY, KmsOperation: 'Encrypt' })).toEqual({
      allowed: true,
      rule: 'ks1-keys',
      effect: 'allow',
      matched: { uriPathPrefix: 'ks1', kmsKeyArn: 'arn:aws:kms:eu-west-1:111122223333:key/*' },
    });
  });

  it('no match takes the default; a missing member matches no condition on it', () => {
    expect(r.decide({ UriPathPrefix: 'ks2', AwsPrincipalArn: ALICE, KmsKeyArn: KEY, KmsOperation: 'Encrypt' })).toMatchObject({ allowed: false, rule: 'default' });
    expect(r.decide({ UriPathPrefix: 'ks1', AwsPrincipalArn: ALICE, KmsOperation: 'CreateKey' })).toMatchObject({ allowed: false, rule: 'default' });
    // The key store prefix is exact, ARNs are case-sensitive.
    expect(r.decide({ UriPathPrefix: 'ks1/x', KmsKeyArn: KEY })).toMatchObject({ rule: 'default' });
    expect(r.decide({ UriPathPrefix: 'ks1', KmsKeyArn: KEY.toUpperCase() })).toMatchObject({ rule: 'default' });
  });

  it('a policy without the section has no xks rules', () => {
    expect(Policy.parse(JSON.stringify({ version: 1 })).xks).toBeUndefined();
  });
});
