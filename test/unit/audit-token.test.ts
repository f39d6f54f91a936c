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
    token: { label: 'T', manufacturer: 'm', model: 'x', serialNumber: '1', slotId: 1 },
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
