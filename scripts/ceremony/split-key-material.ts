// split-key-material: generate 32 random bytes of AES-256 key material (openssl rand, or a PKCS#11
// token's RNG), split them into N Shamir shares with threshold M, write one share file per
// custodian (each optionally encrypted to that custodian's RSA public key), and print the key check
// value. The material exists in the clear only in this process and is zeroed before it exits.
//
// Config:
// {
//   "Label": "payments CMK backup",             what the shares are for (copied into each file)
//   "Threshold": 3,                              M, with 2 <= M <= N
//   "Custodians": [                              N entries, one share file each
//     {"CustodianId": "alice", "EncryptionPublicKey": "alice-rsa.pub"},   optional RSA key (PEM)
//     {"CustodianId": "bob"}
//   ],
//   "RandomSource": "openssl",                   or "pkcs11" with "Pkcs11": {"Module", "TokenLabel", "PinFile"}
//   "OutputDir": "split-out"                     must not exist (or be empty)
// }
// Import or restore with restore-key-material (M share files → material → ImportKeyMaterial proposal).

import { Cfg, Transcript, main, randomMaterial, readRandomSource, readSplitPlan, writeShares } from './lib';
import { keyCheckValue } from '../../src/ceremony/shamir';

export function validate(configFile: string) {
  const c = Cfg.load(configFile);
  const split = readSplitPlan(c);
  const source = readRandomSource(c);
  const outputDir = c.outputDir('OutputDir');
  c.done();
  return { split, source, outputDir };
}

main('split-key-material', async (configFile, dryRun) => {
  const p = validate(configFile);
  if (dryRun) {
    process.stdout.write(`config valid: ${p.split.threshold}-of-${p.split.custodians.length} split of new key material from ${p.source.kind} into ${p.outputDir}\n`);
    return;
  }
  const t = new Transcript(p.outputDir, 'split-key-material');
  t.value('Label', p.split.label);
  t.value('Quorum', `${p.split.threshold} of ${p.split.custodians.length}`);
  t.value('Custodians', p.split.custodians.map((x) => x.id).join(', '));
  let material: Buffer | null = null;
  try {
    t.step(`generate 32 bytes of key material (${p.source.kind})`);
    material = await randomMaterial(p.source);
    t.value('KeyCheckValue', keyCheckValue(material));
    await writeShares(t, material, p.split);
  } finally {
    material?.fill(0);
  }
  t.step('key material and shares zeroed in memory');
  t.done([
    'hand each custodian their share file; keep no copy of the unencrypted ones here',
    `to import or restore: restore-key-material with any ${p.split.threshold} share files (config "Shares")`,
  ]);
});
