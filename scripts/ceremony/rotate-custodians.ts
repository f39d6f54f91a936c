// rotate-custodians: propose a new custodian set and threshold (adding, removing or replacing
// custodians' keys). The config states the whole new set, declaratively; the script shows the
// difference from the current set, creates the SetCustodians proposal and writes its document for
// the CURRENT custodians to sign. Once executed, approvals by removed custodians (or made with a
// replaced key) stop counting, on every proposal still open.
//
// Config:
// {
//   "Endpoint": "127.0.0.1:50051",               (optional "Tls": {"Ca", "Cert", "Key"})
//   "Custodians": [{"CustodianId": "alice", "PublicKey": "alice.pub"}, ...],   Ed25519 PEM files
//   "Threshold": 2,                               1 <= M <= N
//   "Requester": "ops",
//   "ProposalExpiresInSeconds": 86400,            optional
//   "OutputDir": "rotate-out"                     must not exist (or be empty)
// }

import { Cfg, ConfigError, CUSTODIAN_ID_RE, Transcript, connect, main, readConnection, readPublicKey, sha256, createProposal } from './lib';

export function validate(configFile: string) {
  const c = Cfg.load(configFile);
  const conn = readConnection(c);
  const list = c.list('Custodians', 1, 64);
  const ids = new Set<string>();
  const keys = new Map<string, string>();
  const custodians = list.map((x) => {
    const id = x.str('CustodianId', { re: CUSTODIAN_ID_RE, rule: 'must be a custodian id (a-z, 0-9, ., _, -)' });
    if (ids.has(id)) throw new ConfigError(`${x.where}.CustodianId: ${id} is listed twice`);
    ids.add(id);
    const file = x.inputFile('PublicKey');
    x.done();
    const der = readPublicKey(file, `${x.where}.PublicKey`, 'ed25519').export({ type: 'spki', format: 'der' });
    const fp = sha256(der);
    if (keys.has(fp)) throw new ConfigError(`${x.where}.PublicKey: the same key as custodian ${keys.get(fp)}; every custodian needs a key of their own`);
    keys.set(fp, id);
    return { id, der, fingerprint: fp };
  });
  const threshold = c.int('Threshold', 1, custodians.length);
  const requester = c.str('Requester', { re: /^[A-Za-z0-9._-]{1,64}$/, rule: 'must be 1 to 64 of A-Z, a-z, 0-9, . _ - (no @: kmsd writes the requester as Requester@caller)' });
  const ttl = c.int('ProposalExpiresInSeconds', 0, 7 * 86400, 0);
  const outputDir = c.outputDir('OutputDir');
  c.done();
  return { conn, custodians, threshold, requester, ttl, outputDir };
}

main('rotate-custodians', async (configFile, dryRun) => {
  const p = validate(configFile);
  if (dryRun) {
    process.stdout.write(`config valid: propose ${p.threshold}-of-${p.custodians.length} (${p.custodians.map((x) => x.id).join(', ')}) at ${p.conn.endpoint}\n`);
    return;
  }
  const t = new Transcript(p.outputDir, 'rotate-custodians');
  const client = connect(p.conn);
  try {
    t.step('DescribeCeremony');
    const cur = (await client.call('DescribeCeremony', {})) as { Initialized: boolean; Threshold: number; Custodians: { CustodianId: string; Fingerprint: string }[]; CustodianSetVersion: number };
    if (!cur.Initialized) throw new Error('the ceremony is not initialized on this kmsd: use kmsctl InitCeremony for the first custodian set');
    t.value('CurrentQuorum', `${cur.Threshold} of ${cur.Custodians.length} (set version ${cur.CustodianSetVersion})`);
    const before = new Map(cur.Custodians.map((x) => [x.CustodianId, x.Fingerprint]));
    for (const x of p.custodians) {
      const old = before.get(x.id);
      t.value(`Custodian ${x.id}`, `${old === undefined ? 'ADDED' : old === x.fingerprint ? 'kept' : 'KEY REPLACED'} key sha256=${x.fingerprint}`);
    }
    for (const id of before.keys()) if (!p.custodians.some((x) => x.id === id)) t.value(`Custodian ${id}`, 'REMOVED');
    t.value('NewQuorum', `${p.threshold} of ${p.custodians.length}`);
    t.step('CreateProposal SetCustodians');
    const prop = await createProposal(client, t, {
      Action: 'SetCustodians',
      Parameters: { Custodians: p.custodians.map((x) => `${x.id}=${x.der.toString('base64')}`).join(','), Threshold: String(p.threshold) },
      Requester: p.requester,
      ExpiresInSeconds: p.ttl,
    });
    t.done([
      `${prop.Required} of the CURRENT custodians sign proposal-${prop.ProposalId}.json and call kmsctl ApproveProposal`,
      `kmsctl ExecuteProposal --ProposalId ${prop.ProposalId}; then kmsctl DescribeCeremony shows the new set`,
    ]);
  } finally {
    client.close();
  }
});
