// Proposal ownership under mutual TLS: only the principal that created a proposal (with the same
// Requester name) may cancel or renew it, whatever names other principals choose for their
// certificates or their --Requester. Real kmsd, certificates from scripts/dev-ca.sh, custodian keys
// from openssl.

import fs from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/daemon';
import { custodianKeys } from '../helpers/ceremony';
import { TlsKmsd, makePki, refused, startTlsKmsd } from './tls-fixture';

/* eslint-disable @typescript-eslint/no-explicit-any */
type J = Record<string, any>;

let t: TlsKmsd;
let dir: string;
let keyId: string;

beforeAll(async () => {
  dir = makeTempDir('kmsd-requester-keys-');
  const keys = custodianKeys(dir, ['alice', 'bob']);
  // "@" is allowed in a CN; the ports-like suffixes differ only after the last ":".
  const pki = makePki(['admin', 'alice', 'ops@alice', 'alice@x', 'x', 'uri:spiffe://corp/ops:1', 'uri:spiffe://corp/ops:2']);
  t = await startTlsKmsd(pki, { version: 1, admins: ['cn:*', 'uri:spiffe://corp/*'] });
  await t.call('CeremonyService', 'admin', 'InitCeremony', {
    Custodians: ['alice', 'bob'].map((id) => ({ CustodianId: id, PublicKey: fs.readFileSync(keys[id].pub, 'utf8') })),
    Threshold: 2,
  });
  keyId = (await t.client('admin').createKey({ ProtectionLevel: 'HSM' })).KeyMetadata.KeyId;
});

afterAll(async () => {
  await t?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

const propose = (principal: string, requester?: string): Promise<J> =>
  t.call('CeremonyService', principal, 'CreateProposal', { Action: 'DisableKey', Parameters: { KeyId: keyId }, ...(requester ? { Requester: requester } : {}) });

async function notRequester(p: Promise<unknown>) {
  const e = await refused(p);
  expect(e.code, e.message).toBe('Rejected.NotRequester');
}

describe('who may cancel or renew a proposal', () => {
  it('not a principal whose CN spells the requester identity of another ("ops@alice" vs alice with Requester ops)', async () => {
    const p = await propose('alice', 'ops');
    expect(p.Requester).toBe('ops@alice');
    await notRequester(t.call('CeremonyService', 'ops@alice', 'CancelProposal', { ProposalId: p.ProposalId }));
    await notRequester(t.call('CeremonyService', 'ops@alice', 'RenewProposal', { ProposalId: p.ProposalId }));
    const now = await t.call('CeremonyService', 'admin', 'GetProposal', { ProposalId: p.ProposalId });
    expect(now).toMatchObject({ State: 'Open', Revision: 1 });
    // And the other way round: ops@alice's own proposal is not alice's.
    const q = await propose('ops@alice');
    expect(q.Requester).toBe('@ops@alice');
    await notRequester(t.call('CeremonyService', 'alice', 'CancelProposal', { ProposalId: q.ProposalId, Requester: 'ops' }));
    expect((await t.call('CeremonyService', 'ops@alice', 'CancelProposal', { ProposalId: q.ProposalId })).State).toBe('Cancelled');
    expect((await t.call('CeremonyService', 'alice', 'CancelProposal', { ProposalId: p.ProposalId, Requester: 'ops' })).State).toBe('Cancelled');
  });

  it('not a principal that puts "@" in its Requester to spell another identity', async () => {
    const p = await propose('alice@x', 'ops');
    expect(p.Requester).toBe('ops@alice@x');
    const e = await refused(t.call('CeremonyService', 'x', 'CancelProposal', { ProposalId: p.ProposalId, Requester: 'ops@alice' }));
    expect(e.code).toBe('InvalidParameter');
    expect(e.message).toMatch(/^Requester: .*"@" is not allowed/);
    await refused(propose('x', 'ops@alice'));
    expect((await t.call('CeremonyService', 'admin', 'GetProposal', { ProposalId: p.ProposalId })).State).toBe('Open');
    expect((await t.call('CeremonyService', 'alice@x', 'RenewProposal', { ProposalId: p.ProposalId, Requester: 'ops' })).Revision).toBe(2);
  });

  it('not a principal that differs only after a last ":" (URI SANs are compared whole)', async () => {
    const p = await propose('ops_1', 'ops');
    expect(p.Requester).toBe('ops@spiffe://corp/ops:1');
    await notRequester(t.call('CeremonyService', 'ops_2', 'CancelProposal', { ProposalId: p.ProposalId, Requester: 'ops' }));
    expect((await t.call('CeremonyService', 'ops_1', 'CancelProposal', { ProposalId: p.ProposalId, Requester: 'ops' })).State).toBe('Cancelled');
  });
});
