// The auditor's cross-check (auditListing) on listings and store views made here, for the findings
// that are slow or destructive to make on a real token (test/e2e/audit-token.test.ts makes the rest
// for real): the role rules that depend on the store, the per-token keys, and the instance binding.

import { describe, expect, it } from 'vitest';
import { StoreView, auditListing } from '../../src/cli/audit-token';
import { AuditedObject, ROLE_RULES, TokenListing, roleOf } from '../../src/hsm/token-audit';

/** An object that satisfies its role's rule exactly (plus what the store-dependent checks add). */
function obj(label: string, cls: string, over: Record<string, boolean | number | string> = {}, id?: string | null): AuditedObject {
  const r = roleOf(label, cls);
  const rule = r.role ? ROLE_RULES[r.role] : { keyType: undefined, attributes: {} };
  return { class: cls, ...(rule.keyType ? { keyType: rule.keyType } : {}), label, id: id === undefined ? (r.role === 'instance' ? null : (r.labelId ?? null)) : id, ...r, attributes: { ...rule.attributes, ...over } };
}

const GENERATED = { alwaysSensitive: true, neverExtractable: true };

function base(): { listing: TokenListing; store: StoreView } {
  const listing: TokenListing = {
    token: { label: 'T', manufacturer: 'm', model: 'x', serialNumber: '1', slotId: 1, capabilities: { aesKeyWrapPad: true, ecKeyPairGen: true, ecdsa: true } },
    objects: [
      obj('kmsd:root:root-v1', 'secret-key'),
      obj('kmsd:mac:import-token-v1', 'secret-key'),
      obj('kmsd:sign:audit-v1', 'private-key'),
      obj('kmsd:sign:audit-v1', 'public-key'),
      obj('kmsd:instance:5', 'data', { value: 'inst-1' }),
      obj('kmsd:cmk:v-gen', 'secret-key', GENERATED),
      obj('kmsd:cmk:v-imp', 'secret-key', { alwaysSensitive: false, neverExtractable: false }),
      obj('kmsd:wrap:w1', 'private-key', { decrypt: true }),
      obj('kmsd:wrap:w1', 'public-key'),
    ],
  };
  const cmk = (key_id: string, origin: string) => ({ key_id, origin, protection_level: 'HSM' }) as StoreView['cmks'][number];
  const store: StoreView = {
    instanceId: 'inst-1',
    tokenSequence: 5,
    cmks: [cmk('k-gen', 'Aliyun_KMS'), cmk('k-imp', 'EXTERNAL')],
    versions: [
      { version_id: 'v-gen', key_id: 'k-gen', creation_date: 0, software_wrapped: null, material_state: 'Present' },
      { version_id: 'v-imp', key_id: 'k-imp', creation_date: 0, software_wrapped: null, material_state: 'Present' },
    ],
    wrappingKeys: [{ wrap_id: 'w1', key_spec: 'RSA_2048', raw_decrypt: 1, public_key: Buffer.alloc(0), created: 0, key_id: 'k-imp', algorithm: 'RSAES_OAEP_SHA_256', expires: 1 }],
    intents: [],
    pendingDestroys: [],
  };
  return { listing, store };
}

const run = (b: { listing: TokenListing; store: StoreView }) => auditListing(b.listing, b.store, { allowForeignObjects: false, dataDir: '/d' });

describe('auditListing', () => {
  it('a consistent token and store are clean; imported material need not be "never extractable"', () => {
    const r = run(base());
    expect(r.findings).toEqual([]);
    expect(r.clean).toBe(true);
  });

  it('generated CMK material that was once extractable is a finding', () => {
    const b = base();
    b.listing.objects[5] = obj('kmsd:cmk:v-gen', 'secret-key', { alwaysSensitive: true, neverExtractable: false });
    expect(run(b).findings).toMatchObject([{ kind: 'attributes', object: 'kmsd:cmk:v-gen', detail: 'neverExtractable is false, its role (cmk) requires true' }]);
  });

  it('a wrapping key may raw-decrypt only where its row allows it', () => {
    const b = base();
    b.store.wrappingKeys[0].raw_decrypt = 0;
    expect(run(b).findings).toMatchObject([{ kind: 'attributes', object: 'kmsd:wrap:w1', detail: 'decrypt is true, its role (wrap-private) requires false' }]);
  });

  it('imported material may lack CKA_VALUE_LEN or report 0 (created, not unwrapped); generated material may not, and a reported length must be 32', () => {
    const b = base();
    b.listing.objects[6].attributes.valueLen = 'unavailable';
    expect(run(b).findings).toEqual([]);
    // SoftHSM reports such an object's CKA_VALUE_LEN as 0 rather than leaving it out.
    b.listing.objects[6].attributes.valueLen = 0;
    expect(run(b).findings).toEqual([]);
    b.listing.objects[6].attributes.valueLen = 16;
    b.listing.objects[5].attributes.valueLen = 'unavailable';
    expect(run(b).findings.map((f) => `${f.object} ${f.detail}`)).toEqual([
      'kmsd:cmk:v-gen valueLen is unavailable, its role (cmk) requires 32',
      'kmsd:cmk:v-imp valueLen is 16, its role (cmk) requires 32',
    ]);
  });

  it('a missing half of a wrapping key pair, and a missing per-token key, are missing', () => {
    const b = base();
    b.listing.objects = b.listing.objects.filter((o) => !(o.label === 'kmsd:wrap:w1' && o.class === 'public-key') && o.label !== 'kmsd:root:root-v1');
    expect(run(b).findings.map((f) => `${f.kind} ${f.object}`).sort()).toEqual(['missing kmsd:root:root-v1', 'missing kmsd:wrap:w1']);
  });

  it('a second root key is an orphan', () => {
    const b = base();
    b.listing.objects.push(obj('kmsd:root:root-v2', 'secret-key'));
    expect(run(b).findings).toMatchObject([{ kind: 'orphan', object: 'kmsd:root:root-v2' }]);
  });

  it('an instance object naming another store, or ahead of the store, is an instance finding', () => {
    const b = base();
    b.store.instanceId = 'inst-2';
    expect(run(b).findings).toMatchObject([{ kind: 'instance', detail: 'the token belongs to instance inst-1, the store is instance inst-2' }]);
    const c = base();
    c.store.tokenSequence = 4;
    expect(run(c).findings).toMatchObject([{ kind: 'instance', detail: expect.stringMatching(/creation sequence 5 is ahead of the store's 4/) }]);
  });

  it('an object whose destroy is pending is explained, not an orphan', () => {
    const b = base();
    b.listing.objects.push(obj('kmsd:cmk:v-old', 'secret-key', GENERATED));
    b.store.pendingDestroys.push({ kind: 'cmk', object_id: 'v-old', key_id: 'k-gone', reason: 'deleted', since: 0, attempts: 1, last_error: null });
    const r = run(b);
    expect(r.findings).toEqual([]);
    expect(r.explained).toEqual([{ object: 'kmsd:cmk:v-old', reason: 'pending-destroy', present: true }]);
  });

  it('a key version whose material was deleted on purpose (Absent) claims no object', () => {
    const b = base();
    b.store.versions[1].material_state = 'Absent';
    expect(run(b).findings).toMatchObject([{ kind: 'orphan', object: 'kmsd:cmk:v-imp' }]);
  });
});

describe('auditListing on a token without CKM_AES_KEY_WRAP_PAD or ECDSA (opencryptoki 3.8)', () => {
  const NO_KWP_NO_EC = { aesKeyWrapPad: false, ecKeyPairGen: false, ecdsa: false };
  /** What kmsd makes there: a root key that encrypts and decrypts blocks, and an RSA-3072 audit signing pair. */
  function ockShaped(): { listing: TokenListing; store: StoreView } {
    const b = base();
    b.listing.token.capabilities = { ...NO_KWP_NO_EC };
    const rsa = { keyType: 'RSA', modulusBits: 3072, ecParams: 'unavailable' };
    b.listing.objects = b.listing.objects.map((o) => {
      if (o.role === 'root') return { ...o, attributes: { ...o.attributes, wrap: false, unwrap: false, encrypt: true, decrypt: true } };
      if (o.role === 'sign-private' || o.role === 'sign-public') return { ...o, keyType: 'RSA', attributes: { ...o.attributes, ...rsa } };
      return o;
    });
    return b;
  }

  it('accepts the composed root key and the RSA-3072 signing pair kmsd makes there', () => {
    expect(run(ockShaped()).findings).toEqual([]);
  });

  it('still requires sensitive, non-extractable, non-modifiable and only the needed usages', () => {
    const b = ockShaped();
    const root = b.listing.objects.find((o) => o.role === 'root')!;
    Object.assign(root.attributes, { modifiable: true, sign: true });
    const priv = b.listing.objects.find((o) => o.role === 'sign-private')!;
    Object.assign(priv.attributes, { extractable: true, decrypt: true, modulusBits: 2048 });
    const details = run(b).findings.map((f) => `${f.object} ${f.detail}`);
    expect(details).toEqual([
      'kmsd:root:root-v1 modifiable is true, its role (root) requires false; sign is true, its role (root) requires false',
      'kmsd:sign:audit-v1 extractable is true, its role (sign-private) requires false; decrypt is true, its role (sign-private) requires false; modulusBits is 2048, its role (sign-private) requires 3072',
    ]);
  });

  it('a root key that both wraps and encrypts is a finding on either kind of token', () => {
    for (const kwp of [true, false]) {
      const b = ockShaped();
      b.listing.token.capabilities.aesKeyWrapPad = kwp;
      const root = b.listing.objects.find((o) => o.role === 'root')!;
      Object.assign(root.attributes, { wrap: true, unwrap: true, encrypt: true, decrypt: true });
      expect(run(b).findings, `aesKeyWrapPad ${kwp}`).toMatchObject([{ kind: 'attributes', object: 'kmsd:root:root-v1', detail: kwp ? expect.stringMatching(/^encrypt is true.*decrypt is true/) : expect.stringMatching(/^wrap is true.*unwrap is true/) }]);
    }
  });

  it('the shape is decided by the token: the composed root or an RSA signing key on a token with KWP and ECDSA is a finding', () => {
    const b = ockShaped();
    b.listing.token.capabilities = { aesKeyWrapPad: true, ecKeyPairGen: true, ecdsa: true };
    expect(run(b).findings.map((f) => `${f.object} ${f.detail.split(';')[0]}`)).toEqual([
      'kmsd:root:root-v1 wrap is false, its role (root) requires true',
      'kmsd:sign:audit-v1 keyType is RSA, its role (sign-private) requires EC',
      'kmsd:sign:audit-v1 keyType is RSA, its role (sign-public) requires EC',
    ]);
  });

  it('an EC signing pair on a token without ECDSA is a finding (kmsd could not sign with it)', () => {
    const b = base();
    b.listing.token.capabilities = { ...NO_KWP_NO_EC, aesKeyWrapPad: true };
    expect(run(b).findings.map((f) => `${f.object} ${f.detail.split(';')[0]}`)).toEqual([
      'kmsd:sign:audit-v1 keyType is EC, its role (sign-private) requires RSA',
      'kmsd:sign:audit-v1 keyType is EC, its role (sign-public) requires RSA',
    ]);
  });
});
