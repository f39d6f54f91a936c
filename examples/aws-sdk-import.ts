// AWS's "Importing key material" flow with the unmodified AWS SDK for JavaScript v3
// (@aws-sdk/client-kms) pointed at kmsd's HTTP listener: an external CMK, the import parameters for
// RSA_AES_KEY_WRAP_SHA_256 with an RSA_4096 wrapping key, the key material wrapped with node:crypto
// (RSA-OAEP SHA-256 of an ephemeral AES-256 key, then the key material under that key with the
// RFC 5649 AES key wrap with padding), imported with a ValidTo that passes; then the same material
// imported again without expiry, aliases and ARNs, GenerateDataKey then Decrypt, and ReEncrypt to a
// second CMK.
//
//   npx tsc -p . && node dist/examples/aws-sdk-import.js --endpoint http://127.0.0.1:8080 \
//       [--access-key-file var/dev-access-key.json] [--region us-east-1] [--protection-level HSM] [--valid-for 10]
//
// The access key file is what `kmsctl CreateAccessKey` prints ({"AccessKeyId","AccessKeySecret"});
// `npm start` writes one for the local admin to var/dev-access-key.json. It prints each step, then
// one JSON line with what it made; on an API error {"Code","Message"} on stderr and exit 1.

import crypto from 'node:crypto';
import fs from 'node:fs';
import {
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DeleteAliasCommand,
  DescribeKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GetParametersForImportCommand,
  ImportKeyMaterialCommand,
  KMSClient,
  ListAliasesCommand,
  ReEncryptCommand,
  UpdateAliasCommand,
} from '@aws-sdk/client-kms';

interface Options {
  endpoint: string;
  accessKeyFile: string;
  region: string;
  protectionLevel?: string;
  validForSeconds: number;
}

function options(argv: string[]): Options {
  const o: Options = { endpoint: 'http://127.0.0.1:8080', accessKeyFile: 'var/dev-access-key.json', region: 'us-east-1', validForSeconds: 10 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (value === undefined) throw new Error(`${flag}: needs a value`);
    if (flag === '--endpoint') o.endpoint = value;
    else if (flag === '--access-key-file') o.accessKeyFile = value;
    else if (flag === '--region') o.region = value;
    else if (flag === '--protection-level') o.protectionLevel = value;
    else if (flag === '--valid-for') o.validForSeconds = Number(value);
    else throw new Error(`unknown flag ${flag}`);
  }
  if (!Number.isInteger(o.validForSeconds) || o.validForSeconds < 1) throw new Error('--valid-for: a whole number of seconds, at least 1');
  return o;
}

/**
 * RSA_AES_KEY_WRAP_SHA_256: a fresh AES-256 key encrypted under the wrapping public key with
 * RSA-OAEP (SHA-256, MGF1 SHA-256), followed by the key material wrapped under that AES key with the
 * AES key wrap with padding (RFC 5649; OpenSSL's id-aes256-wrap-pad, whose default IV is RFC 5649's
 * A65959A6). The ephemeral key is zeroed when done.
 */
function wrapRsaAesKeyWrapSha256(publicKeyDer: Uint8Array, keyMaterial: Buffer): Buffer {
  const publicKey = crypto.createPublicKey({ key: Buffer.from(publicKeyDer), format: 'der', type: 'spki' });
  const ephemeral = crypto.randomBytes(32);
  try {
    const wrappedKey = crypto.publicEncrypt({ key: publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, ephemeral);
    const kw = crypto.createCipheriv('id-aes256-wrap-pad', ephemeral, Buffer.from('A65959A6', 'hex'));
    const wrappedMaterial = Buffer.concat([kw.update(keyMaterial), kw.final()]);
    return Buffer.concat([wrappedKey, wrappedMaterial]);
  } finally {
    ephemeral.fill(0);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(argv: string[]): Promise<void> {
  const o = options(argv);
  const key = JSON.parse(fs.readFileSync(o.accessKeyFile, 'utf8')) as { AccessKeyId: string; AccessKeySecret: string };
  // The SDK as any application configures it; only the endpoint points at kmsd.
  const kms = new KMSClient({ endpoint: o.endpoint, region: o.region, credentials: { accessKeyId: key.AccessKeyId, secretAccessKey: key.AccessKeySecret }, maxAttempts: 1 });
  const tags = o.protectionLevel ? [{ TagKey: 'kmsd:ProtectionLevel', TagValue: o.protectionLevel }] : undefined;
  const suffix = crypto.randomBytes(4).toString('hex');
  const keyMaterial = crypto.randomBytes(32); // in real use: from your own key management system, kept offline
  try {
    // 1. An external CMK: no key material yet.
    const created = await kms.send(new CreateKeyCommand({ Origin: 'EXTERNAL', Description: 'imported with the AWS SDK', Tags: tags }));
    const keyId = created.KeyMetadata!.KeyId!;
    const keyArn = created.KeyMetadata!.Arn!;
    console.log(`CreateKey: ${keyArn} is ${created.KeyMetadata!.KeyState}`);

    // 2. The wrapping public key (DER SubjectPublicKeyInfo) and the import token.
    const params = await kms.send(new GetParametersForImportCommand({ KeyId: keyId, WrappingAlgorithm: 'RSA_AES_KEY_WRAP_SHA_256', WrappingKeySpec: 'RSA_4096' }));
    console.log(`GetParametersForImport: RSA_4096 public key, import token valid to ${params.ParametersValidTo!.toISOString()}`);

    // 3. Wrap and import, valid for a few seconds only.
    const encrypted = wrapRsaAesKeyWrapSha256(params.PublicKey!, keyMaterial);
    const validTo = new Date(Math.floor(Date.now() / 1000 + o.validForSeconds) * 1000);
    await kms.send(new ImportKeyMaterialCommand({ KeyId: keyId, ImportToken: params.ImportToken, EncryptedKeyMaterial: encrypted, ExpirationModel: 'KEY_MATERIAL_EXPIRES', ValidTo: validTo }));
    const imported = (await kms.send(new DescribeKeyCommand({ KeyId: keyArn }))).KeyMetadata!;
    console.log(`ImportKeyMaterial: ${imported.KeyState}, ${imported.ExpirationModel}, ValidTo ${imported.ValidTo?.toISOString()}`);

    // 4. ValidTo passes: the key material is deleted and the CMK waits for an import again.
    await sleep(validTo.getTime() - Date.now() + 1000);
    let expiredEncrypt = '';
    try {
      await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from('too late') }));
    } catch (e) {
      expiredEncrypt = (e as Error).name;
    }
    const expired = (await kms.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata!;
    console.log(`after ValidTo: Encrypt refused with ${expiredEncrypt}; the CMK is ${expired.KeyState}`);

    // 5. The same key material again (a CMK takes one material for life), now without expiry.
    const again = await kms.send(new GetParametersForImportCommand({ KeyId: keyId, WrappingAlgorithm: 'RSA_AES_KEY_WRAP_SHA_256', WrappingKeySpec: 'RSA_4096' }));
    await kms.send(new ImportKeyMaterialCommand({ KeyId: keyId, ImportToken: again.ImportToken, EncryptedKeyMaterial: wrapRsaAesKeyWrapSha256(again.PublicKey!, keyMaterial), ExpirationModel: 'KEY_MATERIAL_DOES_NOT_EXPIRE' }));
    const reimported = (await kms.send(new DescribeKeyCommand({ KeyId: keyId }))).KeyMetadata!;
    console.log(`ImportKeyMaterial again: ${reimported.KeyState}, ${reimported.ExpirationModel}`);

    // 6. An alias, and the CMK by alias name and by alias ARN.
    const aliasName = `alias/aws-sdk-import-${suffix}`;
    await kms.send(new CreateAliasCommand({ AliasName: aliasName, TargetKeyId: keyId }));
    const aliases = (await kms.send(new ListAliasesCommand({ KeyId: keyArn }))).Aliases!;
    const aliasArn = aliases.find((a) => a.AliasName === aliasName)!.AliasArn!;
    const byAliasArn = (await kms.send(new DescribeKeyCommand({ KeyId: aliasArn }))).KeyMetadata!;
    console.log(`CreateAlias: ${aliasArn} -> ${byAliasArn.KeyId}`);

    // 7. A data key under the imported material, and its ciphertext decrypted back.
    const context = { purpose: 'aws-sdk-import example' };
    const dataKey = await kms.send(new GenerateDataKeyCommand({ KeyId: aliasName, KeySpec: 'AES_256', EncryptionContext: context }));
    const opened = await kms.send(new DecryptCommand({ CiphertextBlob: dataKey.CiphertextBlob, EncryptionContext: context, KeyId: keyArn }));
    const dataKeyMatches = Buffer.from(opened.Plaintext!).equals(Buffer.from(dataKey.Plaintext!));
    console.log(`GenerateDataKey then Decrypt: ${dataKey.Plaintext!.length}-byte data key, ${dataKeyMatches ? 'same' : 'DIFFERENT'} after Decrypt`);

    // 8. ReEncrypt under a second CMK (made by kmsd), named by key ARN, then the alias moved to it.
    const second = (await kms.send(new CreateKeyCommand({ Description: 'ReEncrypt destination', Tags: tags }))).KeyMetadata!;
    const moved = await kms.send(new ReEncryptCommand({ CiphertextBlob: dataKey.CiphertextBlob, SourceEncryptionContext: context, SourceKeyId: aliasArn, DestinationKeyId: second.Arn, DestinationEncryptionContext: context }));
    const reopened = await kms.send(new DecryptCommand({ CiphertextBlob: moved.CiphertextBlob, EncryptionContext: context }));
    const reEncryptMatches = Buffer.from(reopened.Plaintext!).equals(Buffer.from(dataKey.Plaintext!));
    console.log(`ReEncrypt: ${moved.SourceKeyId} -> ${moved.KeyId}, ${reEncryptMatches ? 'same' : 'DIFFERENT'} data key after Decrypt`);
    await kms.send(new UpdateAliasCommand({ AliasName: aliasName, TargetKeyId: second.KeyId }));
    const aliasNow = (await kms.send(new DescribeKeyCommand({ KeyId: aliasName }))).KeyMetadata!.KeyId;
    await kms.send(new DeleteAliasCommand({ AliasName: aliasName }));
    console.log(`UpdateAlias: ${aliasName} -> ${aliasNow}; DeleteAlias done`);

    console.log(
      JSON.stringify({
        KeyId: keyId,
        KeyArn: keyArn,
        ImportedState: imported.KeyState,
        ImportedExpirationModel: imported.ExpirationModel,
        ExpiredEncryptError: expiredEncrypt,
        ExpiredState: expired.KeyState,
        ReimportedState: reimported.KeyState,
        ReimportedExpirationModel: reimported.ExpirationModel,
        AliasArn: aliasArn,
        AliasTarget: byAliasArn.KeyId,
        DataKeyMatches: dataKeyMatches,
        ReEncryptKeyId: moved.KeyId,
        ReEncryptSourceKeyId: moved.SourceKeyId,
        ReEncryptMatches: reEncryptMatches,
        AliasMovedTo: aliasNow,
        SecondKeyId: second.KeyId,
      }),
    );
  } finally {
    keyMaterial.fill(0);
    kms.destroy();
  }
}

main(process.argv.slice(2)).catch((e: Error & { $metadata?: unknown }) => {
  // AWS service errors carry the __type as their name.
  console.error(JSON.stringify({ Code: e.name, Message: e.message }));
  process.exit(1);
});
