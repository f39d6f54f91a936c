// import-external-key: the seed's walkthrough with m-of-n approval. Creates an EXTERNAL CMK (or
// uses a given one), gets the import parameters, generates 32 bytes of key material (openssl rand
// or the token's RNG), optionally splits a backup of it into custodian shares (the seed recommends
// keeping a copy), encrypts it with the import public key and proposes ImportKeyMaterial. The
// custodians then sign and approve, and anyone runs ExecuteProposal. The material is in the clear
// only in this process and is zeroed before the proposal is even created.
//
// Config:
// {
//   "Endpoint": "127.0.0.1:50051",               (optional "Tls": {"Ca", "Cert", "Key"})
//   "KeyId": "<existing EXTERNAL CMK>",           or, to create one:
//   "Description": "External key", "ProtectionLevel": "HSM",
//   "WrappingAlgorithm": "RSAES_OAEP_SHA_1",      RSAES_OAEP_SHA_256 (default), RSAES_OAEP_SHA_1, RSAES_PKCS1_V1_5
//   "WrappingKeySpec": "RSA_2048",
//   "KeyMaterialExpireUnix": 0,
//   "RandomSource": "openssl",                    or "pkcs11" with "Pkcs11": {"Module", "TokenLabel", "PinFile"}
//   "Backup": {"Label": "...", "Threshold": 2, "Custodians": [{"CustodianId": "alice", "EncryptionPublicKey": "a.pub"}, ...]},
//   "Requester": "ops",
//   "ProposalExpiresInSeconds": 86400,            optional
//   "OutputDir": "import-out"                     must not exist (or be empty)
// }

import crypto from 'node:crypto';
import { Cfg, ConfigError, SplitPlan, Transcript, UUID_RE, WRAPPING_ALGORITHMS, connect, main, randomMaterial, readConnection, readRandomSource, readSplitPlan, sha256, wrapMaterial, writeShares, createProposal } from './lib';
import { keyCheckValue } from '../../src/ceremony/shamir';

export function validate(configFile: string) {
  const c = Cfg.load(configFile);
  const conn = readConnection(c);
  const keyId = c.str('KeyId', { optional: true, re: UUID_RE, rule: 'must be a CMK id (a lowercase UUID)' });
  const description = c.str('Description', { optional: true });
  const level = c.oneOf('ProtectionLevel', ['HSM', 'SOFTWARE'] as const, 'HSM');
  if (keyId && (description || c.has('ProtectionLevel'))) throw new ConfigError('config: give either KeyId (an existing CMK) or Description/ProtectionLevel (a new one), not both');
  const alg = c.oneOf('WrappingAlgorithm', WRAPPING_ALGORITHMS, 'RSAES_OAEP_SHA_256');
  const spec = c.oneOf('WrappingKeySpec', ['RSA_2048', 'RSA_3072', 'RSA_4096'] as const, 'RSA_2048');
  const expireUnix = c.int('KeyMaterialExpireUnix', 0, 2 ** 40, 0);
  const source = readRandomSource(c);
  const backupCfg = c.obj('Backup', true);
  let backup: SplitPlan | null = null;
  if (backupCfg) {
    backup = readSplitPlan(backupCfg);
    backupCfg.done();
  }
  const requester = c.str('Requester', { re: /^[A-Za-z0-9._-]{1,64}$/, rule: 'must be 1 to 64 of A-Z, a-z, 0-9, . _ - (no @: kmsd writes the requester as Requester@caller)' });
  const ttl = c.int('ProposalExpiresInSeconds', 0, 7 * 86400, 0);
  const outputDir = c.outputDir('OutputDir');
  c.done();
  return { conn, keyId, description, level, alg, spec, expireUnix, source, backup, requester, ttl, outputDir };
}

main('import-external-key', async (configFile, dryRun) => {
  const p = validate(configFile);
  if (dryRun) {
    process.stdout.write(`config valid: import new material (${p.source.kind}) into ${p.keyId || `a new ${p.level} CMK`} at ${p.conn.endpoint} with ${p.alg}${p.backup ? `, backup split ${p.backup.threshold}-of-${p.backup.custodians.length}` : ''}\n`);
    return;
  }
  const t = new Transcript(p.outputDir, 'import-external-key');
  const client = connect(p.conn);
  try {
    let keyId = p.keyId;
    if (!keyId) {
      t.step(`CreateKey --Origin EXTERNAL --ProtectionLevel ${p.level}`);
      const res = (await client.call('CreateKey', { Origin: 'EXTERNAL', ProtectionLevel: p.level, Description: p.description })) as { KeyMetadata: { KeyId: string; KeyState: string } };
      keyId = res.KeyMetadata.KeyId;
      t.value('KeyId', keyId);
      t.value('KeyState', res.KeyMetadata.KeyState);
    } else {
      t.step(`DescribeKey ${keyId}`);
      const meta = ((await client.call('DescribeKey', { KeyId: keyId })) as { KeyMetadata: Record<string, string> }).KeyMetadata;
      if (meta.Origin !== 'EXTERNAL') throw new Error(`CMK ${keyId} has Origin ${meta.Origin}; only an EXTERNAL CMK takes imported material`);
      t.value('KeyState', meta.KeyState);
    }
    t.step(`GetParametersForImport ${p.alg} ${p.spec}`);
    const params = (await client.call('GetParametersForImport', { KeyId: keyId, WrappingAlgorithm: p.alg, WrappingKeySpec: p.spec })) as { PublicKey: string; ImportToken: string; TokenExpireTime: string };
    const der = Buffer.from(params.PublicKey, 'base64');
    t.value('ImportPublicKeySha256', sha256(der));
    t.value('TokenExpireTime', params.TokenExpireTime);
    t.artifact(`publickey_${keyId}.bin`, der);
    t.artifact(`publickey_${keyId}.pem`, crypto.createPublicKey({ key: der, format: 'der', type: 'spki' }).export({ type: 'spki', format: 'pem' }) as string);
    t.artifact(`token_${keyId}.txt`, params.ImportToken);

    let material: Buffer | null = null;
    let wrapped: Buffer;
    try {
      t.step(`generate 32 bytes of key material (${p.source.kind})`);
      material = await randomMaterial(p.source);
      t.value('KeyCheckValue', keyCheckValue(material));
      if (p.backup) await writeShares(t, material, p.backup);
      else t.line('WARNING  no Backup configured: once imported, this material exists only in the HSM (the seed recommends keeping a copy)');
      t.step('encrypt the key material with the import public key');
      wrapped = wrapMaterial(material, der, p.alg);
    } finally {
      material?.fill(0);
    }
    t.step('key material zeroed in memory');
    t.artifact('encrypted-key-material.bin', wrapped);
    t.step('CreateProposal ImportKeyMaterial');
    const prop = await createProposal(client, t, {
      Action: 'ImportKeyMaterial',
      Parameters: { KeyId: keyId, EncryptedKeyMaterial: wrapped.toString('base64'), ImportToken: params.ImportToken, KeyMaterialExpireUnix: String(p.expireUnix) },
      Requester: p.requester,
      ExpiresInSeconds: p.ttl,
    });
    t.done([
      `${prop.Required} custodians review and sign proposal-${prop.ProposalId}.json (kmsctl SignProposal --KeyFile KEY.pem --DocumentFile ..., or openssl pkeyutl -sign -rawin -inkey KEY.pem -in ... -out ID.sig)`,
      `kmsctl ApproveProposal --ProposalId ${prop.ProposalId} --CustodianId ID --SignatureFile ID.sig (once per custodian)`,
      `kmsctl ExecuteProposal --ProposalId ${prop.ProposalId}; then DescribeKey ${keyId} shows Enabled`,
    ]);
  } finally {
    client.close();
  }
});
