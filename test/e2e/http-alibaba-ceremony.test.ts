// The ceremony and audit actions of the Alibaba dialect (what the web console calls): a 2-of-3
// proposal made, signed with openssl, approved and executed over V3-signed HTTP; the list shapes;
// VerifyAudit; a principal without the role refused in Alibaba's shape with nothing changed; API
// answers never cacheable.

import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeTempDir } from '../helpers/daemon';
import { HttpKmsd, rawRequest, startHttpKmsd } from '../helpers/http';
import { Credentials, signV3, toQuery, v2Params } from '../helpers/alibaba-signers';
import { CustodianKeyFiles, custodianKeys, opensslSign, writeDoc } from '../helpers/ceremony';

let k: HttpKmsd;
let dir: string;
let keys: Record<string, CustodianKeyFiles>;
let viewer: Credentials;

const policy = {
  version: 1,
  admins: ['local-admin', 'anonymous'],
  custodians: ['local-admin', 'anonymous'],
  grants: [{ id: 'viewer-list', principals: ['viewer'], actions: ['ListKeys'], keys: ['*'] }],
};

beforeAll(async () => {
  dir = makeTempDir('kmsd-http-ceremony-');
  const policyFile = path.join(dir, 'policy.json');
  fs.writeFileSync(policyFile, JSON.stringify(policy));
  k = await startHttpKmsd({ args: ['--policy', policyFile] });
  keys = custodianKeys(dir, ['alice', 'bob', 'carol']);
  const init = k.kmsctl(['InitCeremony', '--Custodians', Object.values(keys).map((c) => `${c.id}=${c.pub}`).join(','), '--Threshold', '2']);
  expect(init.code, init.stderr).toBe(0);
  const r = k.kmsctl(['CreateAccessKey', '--Principal', 'viewer']);
  expect(r.code, r.stderr).toBe(0);
  viewer = r.json;
});

afterAll(async () => {
  await k?.stop();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** One V3-signed call with its parameters in a form body, as the console sends it. */
async function call(action: string, params: Record<string, string>, cred: Credentials = k.devKey) {
  const req = signV3(cred, k.httpEndpoint, action, {}, { body: params });
  return rawRequest(k.httpPort, req);
}

describe('ceremony actions over the Alibaba dialect', () => {
  it('DescribeCeremony names the custodians and the threshold', async () => {
    const r = await call('DescribeCeremony', {});
    expect(r.status, r.body).toBe(200);
    expect(r.json.Initialized).toBe(true);
    expect(r.json.Threshold).toBe(2);
    expect(r.json.Custodians.map((c: { CustodianId: string }) => c.CustodianId).sort()).toEqual(['alice', 'bob', 'carol']);
    expect(r.headers['cache-control']).toBe('no-store');
  });

  it('a guarded DisableKey is refused directly, then proposed, approved 2 of 3 with openssl signatures and executed', async () => {
    const created = await call('CreateKey', { ProtectionLevel: 'HSM' });
    expect(created.status, created.body).toBe(200);
    const keyId = created.json.KeyMetadata.KeyId;
    const direct = await call('DisableKey', { KeyId: keyId });
    expect(direct.status).toBe(409);
    expect(direct.json.Code).toBe('Rejected.QuorumRequired');

    const p = await call('CreateProposal', { Action: 'DisableKey', Parameters: JSON.stringify({ KeyId: keyId }), Requester: 'ops' });
    expect(p.status, p.body).toBe(200);
    expect(p.json.State).toBe('Open');
    expect(p.json.Required).toBe(2);
    const pid = p.json.ProposalId;

    const listed = await call('ListProposals', { State: 'Open' });
    expect(listed.status, listed.body).toBe(200);
    expect(listed.json.Proposals.Proposal.map((x: { ProposalId: string }) => x.ProposalId)).toContain(pid);

    const early = await call('ExecuteProposal', { ProposalId: pid });
    expect(early.status).toBe(409);
    expect(early.json.Code).toBe('Rejected.QuorumNotMet');

    const doc = writeDoc(dir, `${pid}.json`, p.json.Document);
    const bad = await call('ApproveProposal', { ProposalId: pid, CustodianId: 'alice', Signature: opensslSign(keys.bob.pem, doc) });
    expect(bad.status).toBe(400);
    expect(bad.json.Code).toBe('Rejected.SignatureInvalid');
    for (const id of ['alice', 'bob']) {
      const a = await call('ApproveProposal', { ProposalId: pid, CustodianId: id, Signature: opensslSign(keys[id].pem, doc) });
      expect(a.status, a.body).toBe(200);
    }
    const got = await call('GetProposal', { ProposalId: pid });
    expect(got.json.Approvals).toBe(2);

    const ex = await call('ExecuteProposal', { ProposalId: pid });
    expect(ex.status, ex.body).toBe(200);
    expect(ex.json.Outcome).toBe('Succeeded');
    const d = await call('DescribeKey', { KeyId: keyId });
    expect(d.json.KeyMetadata.KeyState).toBe('Disabled');
  });

  it('InitCeremony is not served over HTTP (it takes a list of custodians: kmsctl)', async () => {
    const r = await call('InitCeremony', {});
    expect(r.status).toBe(404);
    expect(r.json.Code).toBe('InvalidAction.NotFound');
  });

  it('under V2 the Action and Signature parameters are the protocol\'s: the fields of the same name are missing', async () => {
    const before = (await call('ListProposals', {})).json.TotalCount;
    const v2 = (action: string, params: Record<string, string>) => rawRequest(k.httpPort, { headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: toQuery(v2Params(k.devKey, action, params)) });
    const p = await v2('CreateProposal', { Parameters: '{"KeyId":"x"}' });
    expect(p.status, p.body).toBe(400);
    expect(p.json.Code).toBe('MissingParameter');
    expect(p.json.Message).toMatch(/^Action/);
    expect((await call('ListProposals', {})).json.TotalCount).toBe(before);
    const keyId = (await call('CreateKey', { ProtectionLevel: 'HSM' })).json.KeyMetadata.KeyId;
    const open = await call('CreateProposal', { Action: 'DisableKey', Parameters: JSON.stringify({ KeyId: keyId }) });
    expect(open.status, open.body).toBe(200);
    const a = await v2('ApproveProposal', { ProposalId: open.json.ProposalId, CustodianId: 'alice' });
    expect(a.status, a.body).toBe(400);
    expect(a.json.Code, a.json.Message).toBe('MissingParameter');
    expect(a.json.Message).toMatch(/^Signature/);
    expect((await call('GetProposal', { ProposalId: open.json.ProposalId })).json.Approvals).toBe(0);
    const listed = await v2('ListAuditEvents', { PageSize: '1' });
    expect(listed.status, listed.body).toBe(200);
  });

  it('a parameter the action does not take is refused naming it', async () => {
    const r = await call('GetProposal', { ProposalId: 'x', KeyId: 'y' });
    expect(r.status).toBe(400);
    expect(r.json.Code).toBe('InvalidParameter');
    expect(r.json.Message).toMatch(/KeyId.*not a parameter of GetProposal/);
  });
});

describe('audit actions over the Alibaba dialect', () => {
  it('ListAuditEvents pages the trail in Alibaba list shape, newest calls included', async () => {
    const r = await call('ListAuditEvents', { PageSize: '100', Action: 'ExecuteProposal' });
    expect(r.status, r.body).toBe(200);
    const events = r.json.Events.Event as { Action: string; Principal: string; Outcome: string }[];
    expect(events.length).toBeGreaterThan(0);
    expect(events.every((e) => e.Action === 'ExecuteProposal')).toBe(true);
    expect(events.map((e) => e.Outcome)).toContain('ok');
    expect(events.map((e) => e.Principal)).toContain('local-admin');
  });

  it('VerifyAudit checks the whole chain', async () => {
    const r = await call('VerifyAudit', {});
    expect(r.status, r.body).toBe(200);
    expect(r.json.Valid).toBe(true);
    expect(Number(r.json.RecordsChecked)).toBeGreaterThan(0);
  });

  it('a principal without the role is refused in Alibaba shape, and nothing is proposed', async () => {
    const before = (await call('ListProposals', {})).json.TotalCount;
    for (const [action, params] of [
      ['ListAuditEvents', {}],
      ['VerifyAudit', {}],
      ['CreateProposal', { Action: 'DisableKey', Parameters: '{"KeyId":"x"}' }],
    ] as const) {
      const r = await call(action, params, viewer);
      expect(r.status, `${action}: ${r.body}`).toBe(403);
      expect(r.json.Code).toBe('Forbidden.NoPermission');
      expect(r.headers['cache-control']).toBe('no-store');
    }
    expect((await call('ListProposals', {})).json.TotalCount).toBe(before);
    const ok = await call('ListKeys', {}, viewer);
    expect(ok.status, ok.body).toBe(200);
  });
});
