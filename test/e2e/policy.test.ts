// Authorization end to end (issue 6, item 2 and the acceptance line "with a grant: allowed only on
// the granted keys and actions"): grants on key ids, aliases and patterns, EncryptionContext
// conditions, the admin and custodian roles, ciphertexts authorized by the CMK inside them, SIGHUP
// reload (a bad file keeps the old policy), and per-principal rate limits (Throttling).

import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClient } from '../../src/client/client';
import { TlsKmsd, issueClientCert, makePki, refused, startTlsKmsd } from './tls-fixture';

let t: TlsKmsd;
let admin: KmsClient;
let app1: KmsClient;
let app2: KmsClient;
const keys: Record<string, string> = {};
/** The policy in force once the key ids are known. */
let fullPolicy: object;

const basePolicy = (extra: object[] = []) => ({
  version: 1,
  admins: ['admin', 'spiffe://corp/ops/*'],
  custodians: ['custodian-1'],
  grants: [
    { id: 'app-1-aliases', principals: ['app-1'], actions: ['Encrypt', 'Decrypt', 'GenerateDataKey*', 'DescribeKey'], keys: ['alias/app-1-*'] },
    { id: 'flood', principals: ['flood'], actions: ['DescribeKey'], keys: ['*'] },
    ...extra,
  ],
});

beforeAll(async () => {
  const pki = makePki(['admin', 'custodian-1', 'app-1', 'app-2', 'flood', 'uri:spiffe://corp/ops/ops-alice']);
  // Issued by the trusted CA, no SAN, a CN that reads like an admin's URI identity.
  issueClientCert(pki, 'evil-cn', '/O=kmsd development/CN=spiffe:\\/\\/corp\\/ops\\/evil');
  t = await startTlsKmsd(pki, basePolicy(), { KMS_RATE_LIMIT: '40', KMS_RATE_BURST: '40' });
  admin = t.client('admin');
  app1 = t.client('app-1');
  app2 = t.client('app-2');
  for (const name of ['a', 'b', 'tenant', 'other', 'secret']) keys[name] = (await admin.createKey({ Description: name, ProtectionLevel: name === 'b' ? 'HSM' : 'SOFTWARE' })).KeyMetadata.KeyId;
  await admin.call('CreateAlias', { AliasName: 'alias/app-1-a', KeyId: keys.a });
  await admin.call('CreateAlias', { AliasName: 'alias/app-1-b', KeyId: keys.b });
  await admin.call('CreateAlias', { AliasName: 'alias/other', KeyId: keys.other });
  // Grants on key ids need the ids: write them in and reload, as an operator would.
  fullPolicy = basePolicy([
    { id: 'app-1-tenant', principals: ['app-1'], actions: ['Encrypt', 'Decrypt'], keys: [keys.tenant], encryptionContext: { tenant: 'acme', stage: 'prod-*' } },
    { id: 'app-2-reencrypt', principals: ['app-2'], actions: ['ReEncrypt', 'Encrypt'], keys: [keys.other] },
  ]);
  t.writePolicy(fullPolicy);
  expect(await t.reload()).toBe('authorization policy reloaded');
});

afterAll(async () => {
  await t?.stop();
});

async function denied(p: Promise<unknown>, principal: string, action: string) {
  const e = await refused(p);
  expect(e.grpcCode, e.message).toBe(grpc.status.PERMISSION_DENIED);
  expect(e.code).toBe('Forbidden.NoPermission');
  expect(e.message).toContain(`principal "${principal}" may not call ${action}`);
  return e;
}

describe('grants', () => {
  it('allow the granted actions on keys named by an alias that matches the pattern', async () => {
    const viaAlias = await app1.encrypt('alias/app-1-a', Buffer.from('one'));
    const viaB = await app1.encrypt('alias/app-1-b', Buffer.from('two'));
    // Decrypt: the ciphertext names the CMK; KeyId names the alias it is reached by.
    expect((await app1.decrypt(viaAlias.CiphertextBlob, undefined, 'alias/app-1-a')).Plaintext.toString()).toBe('one');
    expect((await app1.decrypt(viaB.CiphertextBlob, undefined, 'alias/app-1-b')).Plaintext.toString()).toBe('two');
    await app1.call('GenerateDataKey', { KeyId: 'alias/app-1-a' });
    await app1.call('GenerateDataKeyWithoutPlaintext', { KeyId: 'alias/app-1-b' });
  });

  it('match alias patterns only against the alias the caller named, never a key id or a ciphertext alone', async () => {
    // keys.b has the alias alias/app-1-b, yet a grant on alias/app-1-* does not reach it by its id.
    await denied(app1.encrypt(keys.b, Buffer.from('x')), 'app-1', 'Encrypt');
    await denied(app1.call('DescribeKey', { KeyId: keys.b }), 'app-1', 'DescribeKey');
    const blob = (await app1.encrypt('alias/app-1-b', Buffer.from('y'))).CiphertextBlob;
    await denied(app1.decrypt(blob), 'app-1', 'Decrypt');
    await denied(app1.decrypt(blob, undefined, keys.b), 'app-1', 'Decrypt');
    // An alias that matches the pattern but points at another CMK does not name this one.
    await denied(app1.decrypt(blob, undefined, 'alias/app-1-a'), 'app-1', 'Decrypt');
  });

  it('an alias an admin points at another CMK reaches only calls that name that alias, and is audited as a widened grant', async () => {
    await denied(app1.encrypt(keys.secret, Buffer.from('x')), 'app-1', 'Encrypt');
    await admin.call('CreateAlias', { AliasName: 'alias/app-1-x', KeyId: keys.secret });
    // The attack of the report: the raw id of the CMK stays out of reach.
    await denied(app1.encrypt(keys.secret, Buffer.from('x')), 'app-1', 'Encrypt');
    // The alias itself is a delegation by whoever manages aliases, recorded as such.
    const blob = (await app1.encrypt('alias/app-1-x', Buffer.from('delegated'))).CiphertextBlob;
    expect((await app1.decrypt(blob, undefined, 'alias/app-1-x')).Plaintext.toString()).toBe('delegated');
    const ev = await t.call('AuditService', 'admin', 'ListAuditEvents', { Action: 'GrantWidened', KeyId: keys.secret });
    expect(ev.Events).toHaveLength(1);
    expect(ev.Events[0]).toMatchObject({ Principal: 'admin', KeyId: keys.secret, Outcome: 'ok' });
    expect(JSON.parse(ev.Events[0].Details)).toEqual({ AliasName: 'alias/app-1-x', By: 'CreateAlias', Grants: ['app-1-aliases'] });
    // An alias no grant matches widens nothing.
    await admin.call('CreateAlias', { AliasName: 'alias/unrelated-x', KeyId: keys.secret });
    expect((await t.call('AuditService', 'admin', 'ListAuditEvents', { Action: 'GrantWidened', KeyId: keys.secret })).TotalCount).toBe(1);
    // Re-pointed elsewhere, the alias widens the grant to the new CMK and no longer opens SECRET's ciphertexts.
    await admin.call('UpdateAlias', { AliasName: 'alias/app-1-x', KeyId: keys.other });
    const moved = await t.call('AuditService', 'admin', 'ListAuditEvents', { Action: 'GrantWidened', KeyId: keys.other });
    expect(moved.Events.map((e: { Details: string }) => JSON.parse(e.Details))).toEqual([{ AliasName: 'alias/app-1-x', By: 'UpdateAlias', Grants: ['app-1-aliases'] }]);
    await denied(app1.decrypt(blob, undefined, 'alias/app-1-x'), 'app-1', 'Decrypt');
    await admin.call('DeleteAlias', { AliasName: 'alias/app-1-x' });
    // The log says why a ciphertext alone is not enough.
    expect(t.k.logs()).toContain('grants on aliases cover only calls that name the CMK by a matching alias; for a ciphertext, in KeyId');
  });

  it('refuse the same actions on other keys, whether or not they exist', async () => {
    await denied(app1.encrypt(keys.other, Buffer.from('x')), 'app-1', 'Encrypt');
    const e = await denied(app1.encrypt('alias/other', Buffer.from('x')), 'app-1', 'Encrypt');
    expect(e.message).toContain(`key ${keys.other} (alias/other)`);
    // A key id that does not exist is refused the same way: no existence oracle.
    await denied(app1.encrypt('00000000-0000-4000-8000-000000000000', Buffer.from('x')), 'app-1', 'Encrypt');
  });

  it('refuse actions that were not granted, even on granted keys', async () => {
    await denied(app1.call('DisableKey', { KeyId: keys.a }), 'app-1', 'DisableKey');
    await denied(app1.call('ReEncrypt', { CiphertextBlob: 'AAAA', DestinationKeyId: keys.a }), 'app-1', 'ReEncrypt');
    await denied(app1.call('ListKeys', {}), 'app-1', 'ListKeys');
    await denied(app1.createKey(), 'app-1', 'CreateKey');
  });

  it('authorize Decrypt by the CMK named inside the ciphertext', async () => {
    const blob = (await app2.encrypt(keys.other, Buffer.from('app-2 data'))).CiphertextBlob;
    const e = await denied(app1.decrypt(blob), 'app-1', 'Decrypt');
    expect(e.message).toContain(keys.other);
    // Saying another KeyId does not help: the blob's CMK is what is checked.
    await denied(app1.decrypt(blob, undefined, 'alias/app-1-a'), 'app-1', 'Decrypt');
    // A blob that names no readable CMK needs a grant on "*".
    await denied(app1.call('Decrypt', { CiphertextBlob: Buffer.from('garbage').toString('base64') }), 'app-1', 'Decrypt');
  });

  it('need ReEncrypt on both the source and the destination CMK', async () => {
    const src = (await app2.encrypt(keys.other, Buffer.from('move me'))).CiphertextBlob;
    const ok = await app2.call('ReEncrypt', { CiphertextBlob: src, DestinationKeyId: keys.other });
    expect(ok.KeyId).toBe(keys.other);
    await denied(app2.call('ReEncrypt', { CiphertextBlob: src, DestinationKeyId: keys.a }), 'app-2', 'ReEncrypt');
  });

  it('with EncryptionContext conditions apply only when the context holds the required values', async () => {
    const good = { tenant: 'acme', stage: 'prod-eu', extra: 'fine' };
    const blob = (await app1.encrypt(keys.tenant, Buffer.from('tenant data'), good)).CiphertextBlob;
    expect((await app1.decrypt(blob, good)).Plaintext.toString()).toBe('tenant data');
    await denied(app1.encrypt(keys.tenant, Buffer.from('x')), 'app-1', 'Encrypt');
    await denied(app1.encrypt(keys.tenant, Buffer.from('x'), { tenant: 'evil', stage: 'prod-eu' }), 'app-1', 'Encrypt');
    await denied(app1.encrypt(keys.tenant, Buffer.from('x'), { tenant: 'acme', stage: 'dev' }), 'app-1', 'Encrypt');
    await denied(app1.decrypt(blob, { tenant: 'acme' }), 'app-1', 'Decrypt');
  });
});

describe('principals', () => {
  it('a URI SAN principal matches a URI pattern: spiffe://corp/ops/* is admin', async () => {
    const ops = t.client('ops-alice');
    expect((await ops.call('ListKeys', { PageSize: 1 })).TotalCount).toBeGreaterThanOrEqual(1);
    await denied(ops.encrypt(keys.a, Buffer.from('x')), 'spiffe://corp/ops/ops-alice', 'Encrypt');
  });

  it('a certificate whose CN reads like a URI identity is refused, not taken for spiffe://corp/ops/*', async () => {
    const evil = t.client('evil-cn');
    const e = await refused(evil.call('ListKeys', { PageSize: 1 }));
    expect(e.grpcCode, e.message).toBe(grpc.status.UNAVAILABLE);
    expect(t.k.logs()).toMatch(/"subject":"spiffe:\/\/corp\/ops\/evil","reason":"the subject CN of the client certificate has the shape of a URI[^"]*","msg":"TLS connection refused"/);
  });

  it('a policy with a pattern that does not say which kind of principal it names is refused, naming it', async () => {
    t.writePolicy({ ...fullPolicy, admins: ['admin', '*'] });
    expect(await t.reload()).toMatch(/^policy reload failed/);
    expect(t.k.logs()).toContain('admins[1]: \\"*\\" is ambiguous');
    t.writePolicy(fullPolicy);
    expect(await t.reload()).toBe('authorization policy reloaded');
  });
});

describe('roles', () => {
  it('admin runs the lifecycle on every key but cannot use keys', async () => {
    await admin.call('DisableKey', { KeyId: keys.a });
    await admin.call('EnableKey', { KeyId: keys.a });
    await admin.call('UpdateKeyDescription', { KeyId: keys.b, Description: 'changed by admin' });
    expect((await admin.call('ListKeys', { PageSize: 100 })).TotalCount).toBeGreaterThanOrEqual(4);
    await denied(admin.encrypt(keys.a, Buffer.from('x')), 'admin', 'Encrypt');
  });

  it('custodians may approve proposals; admins may not', async () => {
    const asCustodian = await refused(t.call('CeremonyService', 'custodian-1', 'ApproveProposal', { ProposalId: '00000000-0000-4000-8000-000000000000', CustodianId: 'x', Signature: 'AAAA' }));
    expect(asCustodian.code).not.toBe('Forbidden.NoPermission'); // past authorization, refused by the ceremony itself
    await denied(t.call('CeremonyService', 'admin', 'ApproveProposal', { ProposalId: '00000000-0000-4000-8000-000000000000', CustodianId: 'x', Signature: 'AAAA' }), 'admin', 'ApproveProposal');
    await t.call('CeremonyService', 'custodian-1', 'ListProposals', {});
    await denied(t.call('CeremonyService', 'custodian-1', 'CreateProposal', { Action: 'DisableKey', Parameters: { KeyId: keys.a } }), 'custodian-1', 'CreateProposal');
    await denied(t.client('custodian-1').call('DescribeKey', { KeyId: keys.a }), 'custodian-1', 'DescribeKey');
  });
});

describe('SIGHUP', () => {
  it('reloads the policy: a new grant applies at once', async () => {
    await denied(app2.encrypt(keys.a, Buffer.from('x')), 'app-2', 'Encrypt');
    t.writePolicy(basePolicy([{ id: 'app-2-a', principals: ['app-2'], actions: ['Encrypt'], keys: [keys.a] }]));
    expect(await t.reload()).toBe('authorization policy reloaded');
    await app2.encrypt(keys.a, Buffer.from('now allowed'));
  });

  it('keeps the current policy when the new file is invalid, and logs why', async () => {
    t.writePolicy({ version: 1, grants: [{ principals: ['app-2'], actions: ['Encrypt'], keys: ['not-a-key'] }] });
    expect(await t.reload()).toMatch(/^policy reload failed/);
    expect(t.k.logs()).toContain('grants[0].keys[0]: \\"not-a-key\\" is not');
    await app2.encrypt(keys.a, Buffer.from('still allowed'));
    await denied(app2.encrypt(keys.b, Buffer.from('x')), 'app-2', 'Encrypt');
  });
});

describe('rate limits', () => {
  it('throttle one principal with RESOURCE_EXHAUSTED Throttling while others are served', async () => {
    const flood = t.client('flood');
    await flood.describeKey(keys.a); // connect first
    const started = Date.now();
    const results = await Promise.allSettled(Array.from({ length: 200 }, () => flood.describeKey(keys.a)));
    const elapsed = (Date.now() - started) / 1000;
    const adminMeanwhile = await admin.describeKey(keys.a);
    expect(adminMeanwhile.KeyMetadata.KeyId).toBe(keys.a);
    const rejected = results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason);
    for (const e of rejected) {
      expect(e.grpcCode).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(e.code).toBe('Throttling');
      expect(e.message).toMatch(/principal flood is over its rate limit of 40 requests per second/);
    }
    // A bucket of 40 refilled at 40/s: what got through is bounded by the time the burst took.
    const accepted = results.length - rejected.length;
    expect(accepted).toBeGreaterThanOrEqual(39);
    expect(accepted).toBeLessThanOrEqual(40 + Math.ceil(40 * elapsed) + 2);
    expect(rejected.length).toBeGreaterThan(0);
    await new Promise((r) => setTimeout(r, 1100)); // refilled
    await flood.describeKey(keys.a);
  });
});
