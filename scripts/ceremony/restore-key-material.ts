// restore-key-material: M share files → key material → encrypted with the CMK's import public key
// → an ImportKeyMaterial proposal for the custodians to approve. Used both to import split material
// the first time and to restore it after DeleteKeyMaterial or expiry (a CMK takes back only the
// material it was bound to). The material is in the clear only in this process, from combining
// the shares until it is encrypted, and is zeroed before exit.
//
// Config:
// {
//   "Endpoint": "127.0.0.1:50051",               (optional "Tls": {"Ca", "Cert", "Key"})
//   "KeyId": "<CMK id>",                         an EXTERNAL CMK
//   "Shares": [                                   at least the threshold recorded in the shares
//     {"File": "share-alice.json", "DecryptionKey": "alice-rsa.pem"},    key only for encrypted shares
//     {"File": "share-bob.json"}
//   ],
//   "ExpectedKeyCheckValue": "1A2B3C",            optional; the shares carry it as well
//   "WrappingAlgorithm": "RSAES_OAEP_SHA_256",    or RSAES_OAEP_SHA_1, RSAES_PKCS1_V1_5
//   "WrappingKeySpec": "RSA_2048",                or RSA_3072, RSA_4096
//   "KeyMaterialExpireUnix": 0,                   0 = never
//   "Requester": "restore-ops",
//   "ProposalExpiresInSeconds": 86400,            optional
//   "OutputDir": "restore-out"                    must not exist (or be empty)
// }

import fs from 'node:fs';
import crypto from 'node:crypto';
import { Cfg, ConfigError, Transcript, UUID_RE, WRAPPING_ALGORITHMS, connect, main, readConnection, readPrivateKey, sha256, wrapMaterial, createProposal } from './lib';
import { ShareFile, combineShares, keyCheckValue, parseShareFile, shareBytes } from '../../src/ceremony/shamir';

export function validate(configFile: string) {
  const c = Cfg.load(configFile);
  const conn = readConnection(c);
  const keyId = c.str('KeyId', { re: UUID_RE, rule: 'must be a CMK id (a lowercase UUID)' });
  const entries = c.list('Shares', 1, 255).map((x) => {
    const file = x.inputFile('File');
    const keyFile = x.inputFile('DecryptionKey', true);
    x.done();
    let share: ShareFile;
    try {
      share = parseShareFile(fs.readFileSync(file, 'utf8'), file);
    } catch (e) {
      throw new ConfigError(`${x.where}.File: ${(e as Error).message}`);
    }
    if (share.EncryptedShare && !keyFile) throw new ConfigError(`${x.where}: ${file} is encrypted to ${share.CustodianId}; give "DecryptionKey"`);
    return { file, share, key: keyFile ? readPrivateKey(keyFile, `${x.where}.DecryptionKey`, 'rsa') : undefined };
  });
  const first = entries[0].share;
  for (const e of entries) {
    if (e.share.SetId !== first.SetId) throw new ConfigError(`config.Shares: ${e.file} belongs to split ${e.share.SetId}, not ${first.SetId}; shares of different splits never combine`);
    if (e.share.Threshold !== first.Threshold || e.share.Shares !== first.Shares || e.share.KeyCheckValue !== first.KeyCheckValue) throw new ConfigError(`config.Shares: ${e.file} disagrees with ${entries[0].file} on Threshold, Shares or KeyCheckValue`);
  }
  const indices = new Set(entries.map((e) => e.share.ShareIndex));
  if (indices.size !== entries.length) throw new ConfigError('config.Shares: the same share is given twice');
  if (entries.length < first.Threshold) {
    throw new ConfigError(`config.Shares: ${entries.length} share${entries.length === 1 ? '' : 's'} given, but this material was split ${first.Threshold}-of-${first.Shares}: at least ${first.Threshold} are needed`);
  }
  const expected = c.str('ExpectedKeyCheckValue', { optional: true, re: /^[0-9A-F]{6}$/, rule: 'must be 6 upper-case hex digits' });
  if (expected && expected !== first.KeyCheckValue) throw new ConfigError(`config.ExpectedKeyCheckValue: ${expected} differs from the shares' ${first.KeyCheckValue}`);
  const alg = c.oneOf('WrappingAlgorithm', WRAPPING_ALGORITHMS, 'RSAES_OAEP_SHA_256');
  const spec = c.oneOf('WrappingKeySpec', ['RSA_2048', 'RSA_3072', 'RSA_4096'] as const, 'RSA_2048');
  const expireUnix = c.int('KeyMaterialExpireUnix', 0, 2 ** 40, 0);
  const requester = c.str('Requester', { re: /^[A-Za-z0-9._-]{1,64}$/, rule: 'must be 1 to 64 of A-Z, a-z, 0-9, . _ - (no @: kmsd writes the requester as Requester@caller)' });
  const ttl = c.int('ProposalExpiresInSeconds', 0, 7 * 86400, 0);
  const outputDir = c.outputDir('OutputDir');
  c.done();
  return { conn, keyId, entries, kcv: first.KeyCheckValue, setId: first.SetId, threshold: first.Threshold, alg, spec, expireUnix, requester, ttl, outputDir };
}

main('restore-key-material', async (configFile, dryRun) => {
  const p = validate(configFile);
  if (dryRun) {
    process.stdout.write(`config valid: ${p.entries.length} shares of split ${p.setId} (KCV ${p.kcv}) into CMK ${p.keyId} at ${p.conn.endpoint} with ${p.alg}\n`);
    return;
  }
  const t = new Transcript(p.outputDir, 'restore-key-material');
  t.value('KeyId', p.keyId);
  t.value('SetId', p.setId);
  t.value('Shares', p.entries.map((e) => `${e.share.CustodianId}#${e.share.ShareIndex}`).join(', '));
  t.value('ExpectedKeyCheckValue', p.kcv);
  const client = connect(p.conn);
  const shares: Buffer[] = [];
  let material: Buffer | null = null;
  let wrapped: Buffer;
  let params: { PublicKey: string; ImportToken: string; TokenExpireTime: string };
  try {
    t.step(`DescribeKey ${p.keyId}`);
    const meta = ((await client.call('DescribeKey', { KeyId: p.keyId })) as { KeyMetadata: Record<string, string> }).KeyMetadata;
    t.value('KeyState', meta.KeyState);
    t.value('ProtectionLevel', meta.ProtectionLevel);
    if (meta.Origin !== 'EXTERNAL') throw new Error(`CMK ${p.keyId} has Origin ${meta.Origin}; only an EXTERNAL CMK takes imported material`);
    t.step(`combine ${p.entries.length} shares`);
    for (const e of p.entries) shares.push(shareBytes(e.share, e.file, e.key));
    material = await combineShares(shares);
    const kcv = keyCheckValue(material);
    t.value('KeyCheckValue', kcv);
    if (kcv !== p.kcv) throw new Error(`the combined material has key check value ${kcv}, not ${p.kcv}: a share is wrong or corrupted; nothing was imported`);
    t.step(`GetParametersForImport ${p.alg} ${p.spec}`);
    params = (await client.call('GetParametersForImport', { KeyId: p.keyId, WrappingAlgorithm: p.alg, WrappingKeySpec: p.spec })) as typeof params;
    const der = Buffer.from(params.PublicKey, 'base64');
    t.value('ImportPublicKeySha256', sha256(der));
    t.value('TokenExpireTime', params.TokenExpireTime);
    t.artifact(`publickey_${p.keyId}.pem`, crypto.createPublicKey({ key: der, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }) as string);
    t.artifact(`token_${p.keyId}.txt`, params.ImportToken);
    t.step('encrypt the key material with the import public key');
    wrapped = wrapMaterial(material, der, p.alg);
  } finally {
    material?.fill(0);
    for (const s of shares) s.fill(0);
  }
  t.step('key material and shares zeroed in memory');
  try {
    t.artifact('encrypted-key-material.bin', wrapped);
    t.step('CreateProposal ImportKeyMaterial');
    const prop = await createProposal(client, t, {
      Action: 'ImportKeyMaterial',
      Parameters: { KeyId: p.keyId, EncryptedKeyMaterial: wrapped.toString('base64'), ImportToken: params.ImportToken, KeyMaterialExpireUnix: String(p.expireUnix) },
      Requester: p.requester,
      ExpiresInSeconds: p.ttl,
    });
    t.done([
      `${prop.Required} custodians sign proposal-${prop.ProposalId}.json: kmsctl SignProposal --KeyFile KEY.pem --DocumentFile proposal-${prop.ProposalId}.json, or openssl pkeyutl -sign -rawin -inkey KEY.pem -in proposal-${prop.ProposalId}.json -out ID.sig`,
      `kmsctl ApproveProposal --ProposalId ${prop.ProposalId} --CustodianId ID --SignatureFile ID.sig (once per custodian)`,
      `kmsctl ExecuteProposal --ProposalId ${prop.ProposalId}, then check DescribeKey shows Enabled`,
    ]);
  } finally {
    client.close();
  }
});
