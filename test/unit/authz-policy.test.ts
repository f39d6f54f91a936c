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

const res = (ref: string, aliases: string[] = [], context?: Record<string, string>) => ({ ref, keyId: ref.startsWith('alias/') ? undefined : ref, aliases, context });

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
        'admin: unknown field (allowed: version, description, admins, custodians, grants)',
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
    expect(policy.decide({ principal: 'spiffe://corp/app/x', action: 'Encrypt', resources: [res('alias/app-1', [])] })).toMatchObject({ allowed: true, via: 'grant:app' });
    expect(policy.decide({ principal: 'spiffe://corp/app/x', action: 'Encrypt', resources: [res(K1, ['alias/app-main'])] })).toMatchObject({ allowed: true });
    expect(policy.decide({ principal: 'spiffe://corp/app/x', action: 'Encrypt', resources: [res(K2)] })).toMatchObject({ allowed: true });
    expect(policy.decide({ principal: 'spiffe://corp/app/x', action: 'Encrypt', resources: [res(K1, ['alias/other'])] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: 'spiffe://corp/other/x', action: 'Encrypt', resources: [res(K2)] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: 'spiffe://corp/app/x', action: 'GenerateDataKey', resources: [res(K2)] })).toMatchObject({ allowed: false });
  });

  it('needs every named key covered', () => {
    expect(policy.decide({ principal: 'spiffe://corp/app/x', action: 'Encrypt', resources: [res(K2), res(K1)] })).toMatchObject({ allowed: false, reason: `no grant covers key ${K1}` });
  });

  it('applies EncryptionContext conditions (all keys required, values as patterns)', () => {
    const d = (context?: Record<string, string>) => policy.decide({ principal: 't', action: 'Encrypt', resources: [res(K1, [], context)] }).allowed;
    expect(d({ tenant: 'acme', env: 'prod-eu', more: 'x' })).toBe(true);
    expect(d({ tenant: 'acme' })).toBe(false);
    expect(d({ tenant: 'acme', env: 'dev' })).toBe(false);
    expect(d(undefined)).toBe(false);
  });

  it('grants service-wide actions only with keys ["*"]; a pattern of actions on some keys does not reach them', () => {
    expect(policy.decide({ principal: 'lister', action: 'ListKeys', resources: [] })).toMatchObject({ allowed: true });
    expect(policy.decide({ principal: 'some', action: 'ListKeys', resources: [] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: 'some', action: 'CreateKey', resources: [] })).toMatchObject({ allowed: false });
    expect(policy.decide({ principal: 'some', action: 'DisableKey', resources: [res(K1)] })).toMatchObject({ allowed: true });
  });

  it('gives admins the lifecycle but not key use or approvals, and custodians approvals only', () => {
    for (const a of ['CreateKey', 'ScheduleKeyDeletion', 'ImportKeyMaterial', 'ListKeys', 'CreateProposal', 'ExecuteProposal', 'VerifyAudit']) {
      expect(policy.decide({ principal: 'ops-1', action: a, resources: [res(K1)] }), a).toMatchObject({ allowed: true, via: 'role:admin' });
    }
    for (const a of ['Encrypt', 'Decrypt', 'GenerateDataKey', 'ApproveProposal']) expect(policy.decide({ principal: 'ops-1', action: a, resources: [res(K1)] }).allowed, a).toBe(false);
    expect(policy.decide({ principal: 'alice', action: 'ApproveProposal', resources: [] })).toMatchObject({ allowed: true, via: 'role:custodian' });
    expect(policy.decide({ principal: 'alice', action: 'ListProposals', resources: [] }).allowed).toBe(true);
    expect(policy.decide({ principal: 'alice', action: 'CreateKey', resources: [] }).allowed).toBe(false);
  });

  it('denies actions outside the catalogue and everything under denyAll', () => {
    expect(policy.decide({ principal: 'ops-1', action: 'SomeNewRpc', resources: [] }).allowed).toBe(false);
    for (const a of KNOWN_ACTIONS) expect(Policy.denyAll().decide({ principal: 'ops-1', action: a, resources: [] }).allowed).toBe(false);
  });

  it('treats regular-expression characters in patterns literally', () => {
    const p = Policy.parse(JSON.stringify({ version: 1, grants: [{ principals: ['a.b+c'], actions: ['ListKeys'], keys: ['*'] }] }));
    expect(p.decide({ principal: 'a.b+c', action: 'ListKeys', resources: [] }).allowed).toBe(true);
    expect(p.decide({ principal: 'axbbc', action: 'ListKeys', resources: [] }).allowed).toBe(false);
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
    expect(principalFromCertificate(cert({ CN: 'app-1' }))).toEqual({ principal: 'app-1' });
    expect(principalFromCertificate(cert({ CN: 'app-1' }, 'URI:spiffe://corp/app-1, DNS:x'))).toEqual({ principal: 'spiffe://corp/app-1' });
    expect(principalFromCertificate(cert({ CN: 'x' }, 'URI:a://1, URI:a://2'))).toHaveProperty('refused');
    expect(principalFromCertificate(cert({ CN: ['a', 'b'] }))).toHaveProperty('refused');
    expect(principalFromCertificate(cert({ O: 'no cn' }))).toHaveProperty('refused');
    expect(principalFromCertificate(cert({ CN: 'bad\nname' }))).toHaveProperty('refused');
  });
});

describe('resources of a request', () => {
  const dir = {
    resolve: (ref: string) =>
      ref === 'alias/a' ? { keyId: K1, aliases: ['alias/a', 'alias/b'] } : ref === K1 ? { keyId: K1, aliases: ['alias/a', 'alias/b'] } : ref.startsWith('alias/') ? { aliases: [ref] } : { keyId: ref, aliases: [] },
  };
  const blob = Buffer.concat([buildHeader(K1, K2, Buffer.alloc(12)), Buffer.alloc(20)]).toString('base64');

  it('names the CMK of a ciphertext, and both CMKs of ReEncrypt with their contexts', () => {
    expect(resourcesFor('Decrypt', { CiphertextBlob: blob, EncryptionContext: { a: '1' } }, dir)).toEqual([{ ref: K1, keyId: K1, aliases: ['alias/a', 'alias/b'], context: { a: '1' } }]);
    const r = resourcesFor('ReEncrypt', { CiphertextBlob: blob, DestinationKeyId: K2, SourceEncryptionContext: { s: '1' }, DestinationEncryptionContext: { d: '2' } }, dir);
    expect(r.map((x) => [x.keyId, x.context])).toEqual([
      [K1, { s: '1' }],
      [K2, { d: '2' }],
    ]);
    expect(resourcesFor('Decrypt', { CiphertextBlob: 'bm90IGEgYmxvYg==' }, dir)[0].unknown).toBe(true);
  });

  it('names the alias and the key for alias actions', () => {
    expect(resourcesFor('CreateAlias', { AliasName: 'alias/new', KeyId: K1 }, dir).map((x) => x.ref)).toEqual(['alias/new', K1]);
    expect(resourcesFor('DeleteAlias', { AliasName: 'alias/a' }, dir)[0]).toMatchObject({ keyId: K1 });
    expect(resourcesFor('ListKeys', {}, dir)).toEqual([]);
  });
});
