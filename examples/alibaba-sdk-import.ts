// The seed's "Import the key material by using KMS SDK" samples (Java and Go), step by step with the
// official Alibaba Cloud SDK for Node (@alicloud/kms20160120, unmodified) pointed at kmsd's HTTP
// listener: create an external CMK, get the parameters for import (RSAES_OAEP_SHA_1, RSA_2048),
// wrap 32 bytes of key material with the public key (node:crypto), import it, see the CMK Enabled,
// Encrypt and Decrypt with an EncryptionContext, then delete the key material.
//
//   npx tsc -p . && node dist/examples/alibaba-sdk-import.js [--endpoint 127.0.0.1:8080]
//        [--access-key-file var/dev-access-key.json] [--protection-level HSM]
//
// The access key file is what `kmsctl CreateAccessKey` prints ({"AccessKeyId","AccessKeySecret"});
// `npm start` writes one for the local admin to var/dev-access-key.json.
//
// Differences from the samples, on purpose: the key material comes from a CSPRNG (the samples'
// java.util.Random and math/rand are not fit for keys), and it is zeroed when done (a real import
// keeps a copy offline: only the same material can revive the CMK after DeleteKeyMaterial).
// Plaintext and CiphertextBlob are base64, as everywhere in kmsd.

import crypto from 'node:crypto';
import fs from 'node:fs';
import Kms, * as $Kms from '@alicloud/kms20160120';

function option(argv: string[], name: string, fallback: string): string {
  const i = argv.indexOf(name);
  return i >= 0 && argv[i + 1] ? argv[i + 1] : fallback;
}

// Encapsulate the operations, as the samples' KmsClient (Java) and kms* functions (Go) do.
async function kmsCreateKey(client: Kms, protectionLevel: string): Promise<string> {
  const response = await client.createKey(new $Kms.CreateKeyRequest({ origin: 'EXTERNAL', protectionLevel })); // Create an external CMK.
  return response.keyMetadata.keyId;
}

async function kmsGetParametersForImport(client: Kms, keyId: string, wrappingKeySpec: string, wrappingAlgorithm: string): Promise<{ publicKey: string; importToken: string }> {
  const response = await client.getParametersForImport(new $Kms.GetParametersForImportRequest({ keyId, wrappingKeySpec, wrappingAlgorithm }));
  return { publicKey: response.publicKey, importToken: response.importToken };
}

async function kmsImportKeyMaterial(client: Kms, keyId: string, importToken: string, encryptedKeyMaterial: string, keyMaterialExpireUnix: number): Promise<void> {
  await client.importKeyMaterial(new $Kms.ImportKeyMaterialRequest({ keyId, importToken, encryptedKeyMaterial, keyMaterialExpireUnix }));
}

async function main(argv: string[]): Promise<void> {
  const endpoint = option(argv, '--endpoint', '127.0.0.1:8080');
  const keyFile = option(argv, '--access-key-file', 'var/dev-access-key.json');
  const protectionLevel = option(argv, '--protection-level', 'SOFTWARE');
  const credentials = JSON.parse(fs.readFileSync(keyFile, 'utf8')) as { AccessKeyId: string; AccessKeySecret: string };
  // The samples' DefaultProfile.getProfile(region, ak, secret) / NewClientWithAccessKey: here the
  // endpoint is kmsd's HTTP listener and the protocol plain http (loopback) or https (with TLS).
  const client = new Kms({ accessKeyId: credentials.AccessKeyId, accessKeySecret: credentials.AccessKeySecret, endpoint, protocol: 'http', regionId: 'local' } as never);

  // Generate a 32-byte random number (the key material). In real use it comes from your own key
  // management system.
  const keyMaterial = crypto.randomBytes(32);
  try {
    // Create an external CMK: it waits for key material (PendingImport).
    const keyId = await kmsCreateKey(client, protectionLevel);
    console.log(`CreateKey: KeyId ${keyId}`);

    // Obtain the parameters that are used to import key material.
    const { publicKey: encryptPublicKey, importToken } = await kmsGetParametersForImport(client, keyId, 'RSA_2048', 'RSAES_OAEP_SHA_1');
    console.log('GetParametersForImport: RSA_2048 public key and import token received');

    // Decode the public key in Base64 and generate an RSA public key from the DER SubjectPublicKeyInfo.
    const publicKey = crypto.createPublicKey({ key: Buffer.from(encryptPublicKey, 'base64'), format: 'der', type: 'spki' });

    // Encrypt the key material: RSAES_OAEP_SHA_1 is RSA-OAEP with SHA-1 and MGF1 SHA-1, no label
    // (Java's "RSA/ECB/OAEPWithSHA-1AndMGF1Padding", `openssl rsautl -encrypt -oaep`).
    const cipherDer = crypto.publicEncrypt({ key: publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha1' }, keyMaterial);

    // Encode the encrypted key material in Base64 and import it; 0: the key material does not expire.
    await kmsImportKeyMaterial(client, keyId, importToken, cipherDer.toString('base64'), 0);
    console.log('ImportKeyMaterial: done');

    // DescribeKey: the CMK is Enabled now.
    const described = await client.describeKey(new $Kms.DescribeKeyRequest({ keyId }));
    const state = described.keyMetadata.keyState;
    console.log(`DescribeKey: KeyState ${state}, Origin ${described.keyMetadata.origin}, Arn ${described.keyMetadata.arn}`);
    if (state !== 'Enabled') throw new Error(`expected KeyState Enabled after the import, got ${state}`);

    // Encrypt and Decrypt with an EncryptionContext (the SDK sends it as EncryptionContext.KEY=VALUE).
    const plaintext = Buffer.from('hello from the Alibaba Cloud SDK', 'utf8');
    const encryptionContext = { example: 'alibaba-sdk-import' };
    const enc = await client.encrypt(new $Kms.EncryptRequest({ keyId, plaintext: plaintext.toString('base64'), encryptionContext }));
    const dec = await client.decrypt(new $Kms.DecryptRequest({ ciphertextBlob: enc.ciphertextBlob, encryptionContext }));
    if (!Buffer.from(dec.plaintext, 'base64').equals(plaintext)) throw new Error('Decrypt did not return the plaintext');
    console.log('Encrypt/Decrypt with an EncryptionContext: round trip OK');

    // Delete the key material: the CMK is back to PendingImport until the same material is imported again.
    await client.deleteKeyMaterial(new $Kms.DeleteKeyMaterialRequest({ keyId }));
    const after = (await client.describeKey(new $Kms.DescribeKeyRequest({ keyId }))).keyMetadata.keyState;
    console.log(`DeleteKeyMaterial: KeyState ${after}`);
    if (after !== 'PendingImport') throw new Error(`expected KeyState PendingImport after DeleteKeyMaterial, got ${after}`);
    console.log(JSON.stringify({ KeyId: keyId, CiphertextBlob: enc.ciphertextBlob, KeyStateAfterImport: state, KeyStateAfterDelete: after }));
  } finally {
    keyMaterial.fill(0);
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  // The SDK's errors carry the answer's {"Code","Message","RequestId"} in `data`.
  const data = (e as { data?: { Code?: string; Message?: string } }).data;
  process.stderr.write(JSON.stringify(data?.Code ? { Code: data.Code, Message: data.Message } : { Code: 'ClientError', Message: (e as Error).message }) + '\n');
  process.exit(1);
});
