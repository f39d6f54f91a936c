// Every kind of object kmsd keeps in a token, made through HsmToken's own templates and read back
// through graphene-pk11 (the auditor's separate path), attribute by attribute. The expected values
// are stated here in full: a template that stops stating an attribute, or a module that defaults it
// differently, fails this test rather than weakening a key unnoticed.

import crypto from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HsmToken } from '../../src/hsm/token';
import { AuditedObject, ROLE_RULES, RoleRule, ObjectRole, checkAttributes, listToken, roleRulesFor } from '../../src/hsm/token-audit';
import { createSoftHsmToken, SoftHsmToken } from '../helpers/softhsm-token';

let t: SoftHsmToken;
let objects: AuditedObject[];
/** The auditor's rules for this token's mechanisms (SoftHSM has KWP and ECDSA: the default ones). */
let rules: Record<ObjectRole, RoleRule>;

beforeAll(() => {
  t = createSoftHsmToken({ label: 'templates' });
  const token = HsmToken.open({ modulePath: t.modulePath, tokenLabel: t.label, pin: t.userPin });
  try {
    token.createInstance('instance-under-test', 7);
    token.generateAesKey('cmk', 'generated');
    const material = crypto.randomBytes(32);
    const transient = token.createTransientAesKey(material, 'data');
    material.fill(0);
    try {
      token.persistTransient(transient, 'cmk', 'imported');
    } finally {
      token.destroyTransient(transient);
    }
    token.ensureRootKey('root-v1');
    token.generateMacKey('import-token-v1');
    token.generateWrappingKeyPair('wrap-plain', 2048, false);
    token.generateWrappingKeyPair('wrap-raw', 2048, true);
    token.ensureSigningKeyPair('audit-v1');
  } finally {
    token.close(); // C_Finalize, so graphene initializes the module afresh
  }
  const listing = listToken({ modulePath: t.modulePath, tokenLabel: t.label, pin: t.userPin });
  objects = listing.objects;
  rules = roleRulesFor(listing.token.capabilities);
  expect(rules).toEqual(ROLE_RULES);
});

afterAll(() => t?.cleanup());

function one(label: string, cls: string): AuditedObject {
  const found = objects.filter((o) => o.label === label && o.class === cls);
  expect(found).toHaveLength(1);
  return found[0];
}

const SECRET_KEY_DEFAULTS = { token: true, private: true, modifiable: false, sensitive: true, extractable: false, local: true };

describe('templates, read back through graphene-pk11', () => {
  it('holds exactly the objects made, and nothing of the session keys', () => {
    expect(objects.map((o) => `${o.class} ${o.label}`).sort()).toEqual(
      [
        'data kmsd:instance:7',
        'secret-key kmsd:cmk:generated',
        'secret-key kmsd:cmk:imported',
        'secret-key kmsd:root:root-v1',
        'secret-key kmsd:mac:import-token-v1',
        'private-key kmsd:wrap:wrap-plain',
        'public-key kmsd:wrap:wrap-plain',
        'private-key kmsd:wrap:wrap-raw',
        'public-key kmsd:wrap:wrap-raw',
        'private-key kmsd:sign:audit-v1',
        'public-key kmsd:sign:audit-v1',
      ].sort(),
    );
  });

  it('generated CMK material', () => {
    const o = one('kmsd:cmk:generated', 'secret-key');
    expect(o).toMatchObject({ keyType: 'AES', id: 'generated', role: 'cmk' });
    expect(o.attributes).toEqual({ ...SECRET_KEY_DEFAULTS, alwaysSensitive: true, neverExtractable: true, encrypt: true, decrypt: true, wrap: false, unwrap: false, sign: false, verify: false, derive: false, valueLen: 32 });
    expect(checkAttributes(o, rules, { alwaysSensitive: true, neverExtractable: true })).toEqual([]);
  });

  it('imported CMK material: non-extractable and non-modifiable once persisted, though it was known outside once', () => {
    const o = one('kmsd:cmk:imported', 'secret-key');
    expect(o).toMatchObject({ keyType: 'AES', id: 'imported', role: 'cmk' });
    // The value came from the host (C_CreateObject), so the token rightly never calls it always sensitive or never extractable.
    expect(o.attributes).toEqual({ ...SECRET_KEY_DEFAULTS, local: false, alwaysSensitive: false, neverExtractable: false, encrypt: true, decrypt: true, wrap: false, unwrap: false, sign: false, verify: false, derive: false, valueLen: 32 });
    expect(checkAttributes(o, rules)).toEqual([]);
  });

  it('the root key', () => {
    const o = one('kmsd:root:root-v1', 'secret-key');
    expect(o).toMatchObject({ keyType: 'AES', id: 'root-v1', role: 'root' });
    expect(o.attributes).toEqual({ ...SECRET_KEY_DEFAULTS, alwaysSensitive: true, neverExtractable: true, encrypt: false, decrypt: false, wrap: true, unwrap: true, sign: false, verify: false, derive: false, valueLen: 32 });
    expect(checkAttributes(o, rules)).toEqual([]);
  });

  it('the MAC key of import tokens', () => {
    const o = one('kmsd:mac:import-token-v1', 'secret-key');
    expect(o).toMatchObject({ keyType: 'GENERIC_SECRET', id: 'import-token-v1', role: 'mac' });
    expect(o.attributes).toEqual({ ...SECRET_KEY_DEFAULTS, alwaysSensitive: true, neverExtractable: true, encrypt: false, decrypt: false, wrap: false, unwrap: false, sign: true, verify: true, derive: false, valueLen: 32 });
    expect(checkAttributes(o, rules)).toEqual([]);
  });

  it.each([
    ['wrap-plain', false],
    ['wrap-raw', true],
  ])('the wrapping key pair %s (raw decrypt %s)', (id, raw) => {
    const priv = one(`kmsd:wrap:${id}`, 'private-key');
    expect(priv).toMatchObject({ keyType: 'RSA', id, role: 'wrap-private' });
    expect(priv.attributes).toEqual({ token: true, private: true, modifiable: false, sensitive: true, extractable: false, alwaysSensitive: true, neverExtractable: true, decrypt: raw, unwrap: true, sign: false, signRecover: false, derive: false, local: true, modulusBits: 2048 });
    expect(checkAttributes(priv, rules, { decrypt: raw })).toEqual([]);
    const pub = one(`kmsd:wrap:${id}`, 'public-key');
    expect(pub).toMatchObject({ keyType: 'RSA', id, role: 'wrap-public' });
    expect(pub.attributes).toEqual({ token: true, private: false, modifiable: false, encrypt: true, wrap: true, verify: false, verifyRecover: false, derive: false, local: true, modulusBits: 2048 });
    expect(checkAttributes(pub, rules)).toEqual([]);
  });

  it('the audit signing key pair (P-256)', () => {
    const p256 = '06082a8648ce3d030107';
    const priv = one('kmsd:sign:audit-v1', 'private-key');
    expect(priv).toMatchObject({ keyType: 'EC', id: 'audit-v1', role: 'sign-private' });
    expect(priv.attributes).toEqual({ token: true, private: true, modifiable: false, sensitive: true, extractable: false, alwaysSensitive: true, neverExtractable: true, decrypt: false, unwrap: false, sign: true, signRecover: false, derive: false, local: true, ecParams: p256 });
    expect(checkAttributes(priv, rules)).toEqual([]);
    const pub = one('kmsd:sign:audit-v1', 'public-key');
    expect(pub.attributes).toEqual({ token: true, private: false, modifiable: false, encrypt: false, wrap: false, verify: true, verifyRecover: false, derive: false, local: true, ecParams: p256 });
    expect(checkAttributes(pub, rules)).toEqual([]);
  });

  it('the instance data object binding the token to its store', () => {
    const o = one('kmsd:instance:7', 'data');
    expect(o).toMatchObject({ role: 'instance', id: null });
    expect(o.attributes).toEqual({ token: true, private: true, modifiable: true, application: 'kmsd:instance', value: 'instance-under-test' });
    expect(checkAttributes(o, rules)).toEqual([]);
  });

  it('every role has a rule the objects above were checked against', () => {
    expect(Object.keys(ROLE_RULES).sort()).toEqual(['cmk', 'instance', 'mac', 'root', 'sign-private', 'sign-public', 'wrap-private', 'wrap-public']);
  });
});
