// The authorization policy engine (src/policy) and the principal/resource helpers of
// src/api/grpc/auth.ts, without a daemon: validation messages, pattern matching, roles, conditions.

import { describe, expect, it } from 'vitest';
import { Policy, PolicyError } from '../../src/policy/policy';
import { KNOWN_ACTIONS } from '../../src/policy/actions';
import { parseSubjectAltName, principalFromCertificate, resourcesFor } from '../../src/api/grpc/auth';
import { buildHeader } from '../../src/kms/ciphertext';

const K1 = '11111111-1111-4111-8111-111111111111';
const K2 = '22222222-2222-4222-8222-222222222222';

function problems(doc: unknown): string[] {
  try {
    Policy.parse(JSON.stringify(doc));
  } catch (e) {
    expect(e).toBeInstanceOf(PolicyError);
    return (e as PolicyError).problems;
  }
  return [];
}

/** A CMK named by its id, or by an alias (which may or may not exist, so no keyId). */
const res = (ref: string, context?: Record<string, string>) => (ref.startsWith('alias/') ? { ref, alias: ref, context } : { ref, keyId: ref, context });
const cn = (name: string) => ({ kind: 'cn' as const, name });
const uri = (name: string) => ({ kind: 'uri' as const, name });

describe('policy validation', () => {
  it('accepts a complete document', () => {
    expect(
      problems({
        version: 1,
        description: 'prod',
        admins: ['ops-*'],
        custodians: ['alice'],
        grants: [{ id: 'a', principals: ['app'], actions: ['Encrypt', 'GenerateDataKey*'], keys: [K1, 'alias/app-*'], encryptionContext: { tenant: 'acme' } }],
      }),
    ).toEqual([]);
  });

  it('reports every problem with its path', () => {
    const p = problems({
      version: 2,
      admin: ['x'],
      grants: [
        { principals: 'app', actions: [], keys: [] },
        { id: 'dup', principals: ['a'], actions: ['encrypt'], keys: ['Key-1'] },
        { id: 'dup', principals: ['a'], actions: ['Nope*'], keys: ['*'] },
        { principals: ['a'], actions: ['DescribeKey', 'CreateKey'], keys: [K1], encryptionContext: { t: 'x' } },
        { principals: ['a\u0001'], actions: ['Encrypt'], keys: ['*'], encryptionContext: {} },
      ],
    });
    expect(p).toEqual(
      expect.arrayContaining([
        'admin: unknown field (allowed: version, description, admins, custodians, grants, xks)',
        'version: must be 1 (got 2)',
        'grants[0].principals: must be a non-empty array of principal names or patterns',
        'grants[0].actions: must be a non-empty array of action names or patterns',
        expect.stringMatching(/^grants\[0\]\.keys: must be a non-empty array/),
        'grants[1].actions[0]: unknown action "encrypt" (did you mean Encrypt?)',
        expect.stringMatching(/^grants\[1\]\.keys\[0\]: "Key-1" is not/),
        'grants[2].id: duplicate id "dup"',
        'grants[2].actions[0]: "Nope*" matches no action',
        'grants[3].keys: CreateKey is not about particular keys: grant it with keys ["*"]',
        expect.stringMatching(/^grants\[3\]\.encryptionContext: applies only to Encrypt, Decrypt, .*this grant also names DescribeKey, CreateKey/),
        'grants[4].principals[0]: must not contain control characters',
        'grants[4].encryptionContext: must be a non-empty object of required key/value pairs',
      ]),
    );
  });

  it('names principal patterns whose kind (URI SAN or CN) cannot be told, and those that can never match', () => {
    const p = problems({ version: 1, admins: ['admin', 'spiffe://corp/ops/*', '*', 'uri:*', 'cn:*'], custodians: ['*-custodian', 'x*:y', 'foo bar:1'], grants: [{ principals: ['cn:spiffe://corp/x', 'uri:admin', 'uri:', 'anonymous', 'uri:spiffe*'], actions: ['ListKeys'], keys: ['*'] }] });
    expect(p).toEqual([
      expect.stringMatching(/^admins\[2\]: "\*" is ambiguous: .*write "uri:\*" for URI SANs or "cn:\*" for subject CNs/),
      expect.stringMatching(/^custodians\[0\]: "\*-custodian" is ambiguous/),
      expect.stringMatching(/^custodians\[1\]: "x\*:y" is ambiguous/),
      expect.stringMatching(/^custodians\[2\]: "foo bar:1" is ambiguous/),
      'grants[0].principals[0]: "cn:spiffe://corp/x" can never match: kmsd never takes a URI-shaped name from a subject CN',
      expect.stringMatching(/^grants\[0\]\.principals\[1\]: "uri:admin" can never match: a URI SAN principal starts with a scheme/),
      'grants[0].principals[2]: "uri:" has an empty pattern after "uri:"',
    ]);
  });

  it('rejects what is not JSON or not an object', () => {
    expect(() => Policy.parse('{')).toThrow(/not valid JSON/);
    expect(() => Policy.parse('[]')).toThrow(/must be a JSON object/);
  });
});

describe('policy decisions', () => {
  const policy = Policy.parse(
    JSON.stringify({
      version: 1,
      admins: ['ops-*'],
      custodians: ['alice'],
      grants: [
        { id: 'app', principals: ['spiffe://corp/app/*'], actions: ['Encrypt', 'Decrypt'], keys: ['alias/app-*', K2] },
        { id: 'tenant', principals: ['t'], actions: ['Encrypt'], keys: [K1], encryptionContext: { tenant: 'acme', env: 'prod-*' } },
        { id: 'lister', principals: ['lister'], actions: ['ListKeys', 'DescribeKey'], keys: ['*'] },
        { id: 'some', principals: ['some'], actions: ['*'], keys: [K1] },
      ],
    }),
  );

  it('matches principals, actions and keys (by id, alias and pattern)', () => {
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Encrypt', resources: [res('alias/app-1')] })).toMatchObject({ allowed: true, via: 'grant:app' });
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Encrypt', resources: [{ ref: 'alias/app-main', keyId: K1, alias: 'alias/app-main' }] })).toMatchObject({ allowed: true });
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Encrypt', resources: [res(K2)] })).toMatchObject({ allowed: true });
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Encrypt', resources: [{ ref: 'alias/other', keyId: K1, alias: 'alias/other' }] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: uri('spiffe://corp/other/x'), action: 'Encrypt', resources: [res(K2)] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'GenerateDataKey', resources: [res(K2)] })).toMatchObject({ allowed: false });
  });

  it('needs every named key covered', () => {
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Encrypt', resources: [res(K2), res(K1)] })).toMatchObject({ allowed: false, reason: expect.stringMatching(new RegExp(`^no grant covers key ${K1} \\(grants on aliases cover only calls that name the CMK by a matching alias`)) });
  });

  it('applies EncryptionContext conditions (all keys required, values as patterns)', () => {
    const d = (context?: Record<string, string>) => policy.decide({ principal: cn('t'), action: 'Encrypt', resources: [res(K1, context)] }).allowed;
    expect(d({ tenant: 'acme', env: 'prod-eu', more: 'x' })).toBe(true);
    expect(d({ tenant: 'acme' })).toBe(false);
    expect(d({ tenant: 'acme', env: 'dev' })).toBe(false);
    expect(d(undefined)).toBe(false);
  });

  it('grants service-wide actions only with keys ["*"]; a pattern of actions on some keys does not reach them', () => {
    expect(policy.decide({ principal: cn('lister'), action: 'ListKeys', resources: [] })).toMatchObject({ allowed: true });
    expect(policy.decide({ principal: cn('some'), action: 'ListKeys', resources: [] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: cn('some'), action: 'CreateKey', resources: [] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: cn('some'), action: 'DisableKey', resources: [res(K1)] })).toMatchObject({ allowed: true });
  });

  it('gives admins the lifecycle but not key use or approvals, and custodians approvals only', () => {
    for (const a of ['CreateKey', 'ScheduleKeyDeletion', 'ImportKeyMaterial', 'ListKeys', 'CreateProposal', 'ExecuteProposal', 'VerifyAudit']) {
      expect(policy.decide({ principal: cn('ops-1'), action: a, resources: [res(K1)] }), a).toMatchObject({ allowed: true, via: 'role:admin' });
    }
    for (const a of ['Encrypt', 'Decrypt', 'GenerateDataKey', 'ApproveProposal']) expect(policy.decide({ principal: cn('ops-1'), action: a, resources: [res(K1)] }).allowed, a).toBe(false);
    expect(policy.decide({ principal: cn('alice'), action: 'ApproveProposal', resources: [] })).toMatchObject({ allowed: true, via: 'role:custodian' });
    expect(policy.decide({ principal: cn('alice'), action: 'ListProposals', resources: [] }).allowed).toBe(true);
    expect(policy.decide({ principal: cn('alice'), action: 'CreateKey', resources: [] }).allowed).toBe(false);
  });

  it('denies actions outside the catalogue and everything under denyAll', () => {
    expect(policy.decide({ principal: cn('ops-1'), action: 'SomeNewRpc', resources: [] }).allowed).toBe(false);
    for (const a of KNOWN_ACTIONS) expect(Policy.denyAll().decide({ principal: cn('ops-1'), action: a, resources: [] }).allowed).toBe(false);
  });

  it('matches a principal pattern against one kind of principal only', () => {
    const p = Policy.parse(
      JSON.stringify({
        version: 1,
        admins: ['admin', 'spiffe://corp/ops/*'],
        custodians: ['cn:*'],
        grants: [
          { id: 'uris', principals: ['uri:*'], actions: ['ListKeys'], keys: ['*'] },
          { id: 'anon', principals: ['anonymous'], actions: ['DescribeHsm'], keys: ['*'] },
        ],
      }),
    );
    const admin = (principal: { kind: 'cn' | 'uri' | 'anonymous'; name: string }) => p.decide({ principal, action: 'CreateKey', resources: [] }).allowed;
    expect(admin(uri('spiffe://corp/ops/alice'))).toBe(true);
    expect(admin(cn('admin'))).toBe(true);
    // The same names in the other name space are nobody.
    expect(admin(cn('spiffe://corp/ops/evil'))).toBe(false);
    expect(admin(uri('admin'))).toBe(false);
    expect(p.decide({ principal: cn('anyone'), action: 'ListProposals', resources: [] }).allowed).toBe(true);
    expect(p.decide({ principal: uri('spiffe://corp/x'), action: 'ListProposals', resources: [] }).allowed).toBe(false);
    expect(p.decide({ principal: uri('spiffe://corp/x'), action: 'ListKeys', resources: [] }).allowed).toBe(true);
    expect(p.decide({ principal: cn('x'), action: 'ListKeys', resources: [] }).allowed).toBe(false);
    expect(p.decide({ principal: { kind: 'anonymous', name: 'anonymous' }, action: 'DescribeHsm', resources: [] }).allowed).toBe(true);
    expect(p.decide({ principal: cn('anonymous'), action: 'DescribeHsm', resources: [] }).allowed).toBe(false);
    expect(p.decide({ principal: { kind: 'anonymous', name: 'anonymous' }, action: 'ListProposals', resources: [] }).allowed).toBe(false);
  });

  it('matches alias patterns only against the alias the caller named, never against a key id', () => {
    // K1 has the alias alias/app-main (an admin may add one at any time): by its id it is not covered.
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Encrypt', resources: [res(K1)] })).toMatchObject({ allowed: false, reason: expect.stringMatching(new RegExp(`^no grant covers key ${K1} \\(grants on aliases cover only calls that name the CMK by a matching alias`)) });
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Decrypt', resources: [{ ref: K1, keyId: K1, alias: 'alias/app-main' }] })).toMatchObject({ allowed: true });
    expect(policy.decide({ principal: uri('spiffe://corp/app/x'), action: 'Decrypt', resources: [{ ref: K1, keyId: K1 }] })).toMatchObject({ allowed: false });
  });

  it('names the grants an alias name would widen', () => {
    expect(policy.grantsReaching('alias/app-x')).toEqual(['app']);
    expect(policy.grantsReaching('alias/other')).toEqual([]);
  });

  it('treats regular-expression characters in patterns literally', () => {
    const p = Policy.parse(JSON.stringify({ version: 1, grants: [{ principals: ['a.b+c'], actions: ['ListKeys'], keys: ['*'] }] }));
    expect(p.decide({ principal: cn('a.b+c'), action: 'ListKeys', resources: [] }).allowed).toBe(true);
    expect(p.decide({ principal: cn('axbbc'), action: 'ListKeys', resources: [] }).allowed).toBe(false);
  });
});

describe('principals from client certificates', () => {
  it('parses subjectaltname strings, quoted values included', () => {
    expect(parseSubjectAltName('DNS:a.example, URI:spiffe://corp/app, IP Address:127.0.0.1')).toEqual([
      { type: 'DNS', value: 'a.example' },
      { type: 'URI', value: 'spiffe://corp/app' },
      { type: 'IP Address', value: '127.0.0.1' },
    ]);
    expect(parseSubjectAltName('URI:"spiffe://corp/a, b", DNS:x')).toEqual([
      { type: 'URI', value: 'spiffe://corp/a, b' },
      { type: 'DNS', value: 'x' },
    ]);
  });

  it('prefers one URI SAN, else the CN; refuses ambiguity and odd characters', () => {
    const cert = (subject: object, san?: string) => ({ subject, subjectaltname: san }) as never;
    expect(principalFromCertificate(cert({ CN: 'app-1' }))).toEqual({ principal: 'app-1', kind: 'cn' });
    expect(principalFromCertificate(cert({ CN: 'app-1' }, 'URI:spiffe://corp/app-1, DNS:x'))).toEqual({ principal: 'spiffe://corp/app-1', kind: 'uri' });
    expect(principalFromCertificate(cert({ CN: 'x' }, 'URI:a://1, URI:a://2'))).toHaveProperty('refused');
    expect(principalFromCertificate(cert({ CN: ['a', 'b'] }))).toHaveProperty('refused');
    expect(principalFromCertificate(cert({ O: 'no cn' }))).toHaveProperty('refused');
    expect(principalFromCertificate(cert({ CN: 'bad\nname' }))).toHaveProperty('refused');
  });

  it('never takes a URI-shaped identity from a CN, nor a name without a scheme from a URI SAN', () => {
    const cert = (subject: object, san?: string) => ({ subject, subjectaltname: san }) as never;
    for (const name of ['spiffe://corp/ops/evil', 'urn:corp:ops', 'host:1']) {
      expect(principalFromCertificate(cert({ CN: name })), name).toEqual({ refused: expect.stringMatching(/subject CN .* shape of a URI/) });
    }
    // A DNS SAN is no identity: the CN still decides, and still may not look like a URI.
    expect(principalFromCertificate(cert({ CN: 'spiffe://corp/ops/evil' }, 'DNS:evil.example'))).toHaveProperty('refused');
    expect(principalFromCertificate(cert({ CN: 'x' }, 'URI:admin'))).toEqual({ refused: expect.stringMatching(/URI SAN .* not a URI/) });
    expect(principalFromCertificate(cert({ CN: 'anonymous' }))).toEqual({ refused: expect.stringMatching(/reserved/) });
    expect(principalFromCertificate(cert({ CN: 'ops@corp.example' }))).toEqual({ principal: 'ops@corp.example', kind: 'cn' });
    expect(principalFromCertificate(cert({ CN: '9to5' }, 'URI:urn:corp:ops'))).toEqual({ principal: 'urn:corp:ops', kind: 'uri' });
  });
});

describe('resources of a request', async () => {
  const dir = {
    resolve: async (ref: string) => (ref === 'alias/a' || ref === 'alias/b' ? { keyId: K1 } : ref === 'alias/elsewhere' ? { keyId: K2 } : ref.startsWith('alias/') ? {} : { keyId: ref }),
  };
  const blob = Buffer.concat([buildHeader(K1, K2, Buffer.alloc(12)), Buffer.alloc(20)]).toString('base64');

  it('names the CMK of a ciphertext, and both CMKs of ReEncrypt with their contexts', async () => {
    expect((await resourcesFor('Decrypt', { CiphertextBlob: blob, EncryptionContext: { a: '1' } }, dir))).toEqual([{ ref: K1, keyId: K1, context: { a: '1' } }]);
    const r = (await resourcesFor('ReEncrypt', { CiphertextBlob: blob, DestinationKeyId: K2, SourceEncryptionContext: { s: '1' }, DestinationEncryptionContext: { d: '2' } }, dir));
    expect(r.map((x) => [x.keyId, x.context])).toEqual([
      [K1, { s: '1' }],
      [K2, { d: '2' }],
    ]);
    expect((await resourcesFor('Decrypt', { CiphertextBlob: 'bm90IGEgYmxvYg==' }, dir))[0].unknown).toBe(true);
  });

  it('takes the KeyId beside a ciphertext as the alias it was named by only when that alias points at its CMK', async () => {
    expect((await resourcesFor('Decrypt', { CiphertextBlob: blob, KeyId: 'alias/a' }, dir))).toEqual([{ ref: K1, keyId: K1, alias: 'alias/a', context: {} }]);
    expect((await resourcesFor('Decrypt', { CiphertextBlob: blob, KeyId: 'alias/elsewhere' }, dir))).toEqual([{ ref: K1, keyId: K1, context: {} }]);
    expect((await resourcesFor('Decrypt', { CiphertextBlob: blob, KeyId: K1 }, dir))).toEqual([{ ref: K1, keyId: K1, context: {} }]);
    const items = (await resourcesFor('DecryptBatch', { Items: [{ CiphertextBlob: blob }, { CiphertextBlob: blob, KeyId: 'alias/a' }] }, dir));
    expect(items.map((x) => x.alias)).toEqual([undefined, 'alias/a']);
    expect((await resourcesFor('Encrypt', { KeyId: K1 }, dir))).toEqual([{ ref: K1, keyId: K1, context: {} }]);
    expect((await resourcesFor('Encrypt', { KeyId: 'alias/a' }, dir))).toEqual([{ ref: 'alias/a', keyId: K1, alias: 'alias/a', context: {} }]);
  });

  it('names the alias and the key for alias actions', async () => {
    expect((await resourcesFor('CreateAlias', { AliasName: 'alias/new', KeyId: K1 }, dir)).map((x) => x.ref)).toEqual(['alias/new', K1]);
    expect((await resourcesFor('DeleteAlias', { AliasName: 'alias/a' }, dir))[0]).toMatchObject({ keyId: K1 });
    expect((await resourcesFor('ListKeys', {}, dir))).toEqual([]);
  });
});
