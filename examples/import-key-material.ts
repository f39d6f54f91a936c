// The seed's "Import the key material by using KMS SDK" samples (Java and Go), in TypeScript with
// node:crypto and kmsd's client: create an external CMK, make 32 bytes of key material, get the
// parameters for import with RSAES_OAEP_SHA_256, decode the base64 DER public key, encrypt the key
// material with RSA-OAEP SHA-256 (MGF1 SHA-256), base64 it, import it with an expiry; then use the CMK.
//
//   npx tsc -p . && KMS_ENDPOINT=127.0.0.1:50051 node dist/examples/import-key-material.js [--protection-level HSM]
//
// Differences from the samples, on purpose:
//   - the key material comes from a CSPRNG (crypto.randomBytes); the Java sample's java.util.Random and
//     the Go sample's math/rand are not fit for keys (the seed itself says to use a secure source);
//   - the expiry is one day ahead (the Java sample's 1546272000 is in the past, which kmsd refuses);
//   - the material is zeroed when done. A real import keeps a copy offline (see
//     scripts/import-key-material.sh --keep-material): only the same material can ever revive the CMK.

import crypto from 'node:crypto';
import { KmsClient, KmsClientError } from '../src/client/client';

// Encapsulate the operations, as the samples' KmsClient (Java) and kms* functions (Go) do.
async function kmsCreateKey(client: KmsClient, protectionLevel?: string): Promise<string> {
  const response = await client.call('CreateKey', { Origin: 'EXTERNAL', ...(protectionLevel ? { ProtectionLevel: protectionLevel } : {}) }); // Create an external CMK.
  return response.KeyMetadata.KeyId;
}

async function kmsGetParametersForImport(client: KmsClient, keyId: string, wrappingKeySpec: string, wrappingAlgorithm: string): Promise<{ publicKey: string; importToken: string }> {
  const response = await client.call('GetParametersForImport', { KeyId: keyId, WrappingKeySpec: wrappingKeySpec, WrappingAlgorithm: wrappingAlgorithm });
  return { publicKey: response.PublicKey, importToken: response.ImportToken };
}

async function kmsImportKeyMaterial(client: KmsClient, keyId: string, importToken: string, encryptedKeyMaterial: string, keyMaterialExpireUnix: number): Promise<void> {
  await client.call('ImportKeyMaterial', { KeyId: keyId, ImportToken: importToken, EncryptedKeyMaterial: encryptedKeyMaterial, KeyMaterialExpireUnix: keyMaterialExpireUnix });
}

async function main(argv: string[]): Promise<void> {
  const i = argv.indexOf('--protection-level');
  const protectionLevel = i >= 0 ? argv[i + 1] : undefined;
  const client = new KmsClient(); // KMS_ENDPOINT, else 127.0.0.1:50051
  // Generate a 32-byte random number (the key material). In real use it comes from your own key
  // management system.
  const keyMaterial = crypto.randomBytes(32);
  try {
    // Create an external CMK.
    const keyId = await kmsCreateKey(client, protectionLevel);
    console.log(`CreateKey: KeyId ${keyId}`);

    // Obtain the parameters that are used to import key material.
    const { publicKey: encryptPublicKey, importToken } = await kmsGetParametersForImport(client, keyId, 'RSA_2048', 'RSAES_OAEP_SHA_256');
    console.log('GetParametersForImport: RSA_2048 public key and import token received');

    // Decode the public key in Base64, and generate an RSA public key from the DER SubjectPublicKeyInfo.
    const publicKeyDer = Buffer.from(encryptPublicKey, 'base64');
    const publicKey = crypto.createPublicKey({ key: publicKeyDer, format: 'der', type: 'spki' });

    // Encrypt the key material: RSA-OAEP with SHA-256, and MGF1 with SHA-256 (Java's OAEPParameterSpec
    // with MGF1ParameterSpec("SHA-256"), Go's rsa.EncryptOAEP(sha256.New(), ...)), no label.
    const cipherDer = crypto.publicEncrypt({ key: publicKey, padding: crypto.constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, keyMaterial);

    // Encode the encrypted key material in Base64.
    const encryptedKeyMaterial = cipherDer.toString('base64');

    // Import the key material. The UNIX time in seconds; 0 means the key material does not expire.
    const expireTimestamp = Math.floor(Date.now() / 1000) + 86400;
    await kmsImportKeyMaterial(client, keyId, importToken, encryptedKeyMaterial, expireTimestamp);
    const meta = (await client.describeKey(keyId)).KeyMetadata;
    console.log(`ImportKeyMaterial: KeyState ${meta.KeyState}, MaterialExpireTime ${meta.MaterialExpireTime}, ProtectionLevel ${meta.ProtectionLevel}, MaterialImportPath ${meta.MaterialImportPath}`);

    // Use the CMK: Encrypt and Decrypt.
    const plaintext = Buffer.from('hello from an imported key', 'utf8');
    const context = { example: 'import-key-material' };
    const { CiphertextBlob } = await client.encrypt(keyId, plaintext, context);
    const decrypted = await client.decrypt(CiphertextBlob, context);
    if (!decrypted.Plaintext.equals(plaintext)) throw new Error('Decrypt did not return the plaintext');
    console.log(`Encrypt/Decrypt: round trip OK (${Buffer.from(CiphertextBlob, 'base64').length}-byte CiphertextBlob)`);

    // The ciphertext is AES-256-GCM under exactly this key material (docs/ciphertext.md): it decrypts
    // without kmsd, too.
    const blob = Buffer.from(CiphertextBlob, 'base64');
    const d = crypto.createDecipheriv('aes-256-gcm', keyMaterial, blob.subarray(36, 48));
    d.setAAD(Buffer.concat([blob.subarray(0, 48), Buffer.from(JSON.stringify(context), 'utf8')]));
    d.setAuthTag(blob.subarray(blob.length - 16));
    const offline = Buffer.concat([d.update(blob.subarray(48, blob.length - 16)), d.final()]);
    if (!offline.equals(plaintext)) throw new Error('offline decryption did not return the plaintext');
    console.log('Offline decryption with the key material: OK');
    console.log(JSON.stringify({ KeyId: keyId, KeyState: meta.KeyState, MaterialExpireTime: meta.MaterialExpireTime }));
  } finally {
    keyMaterial.fill(0);
    client.close();
  }
}

main(process.argv.slice(2)).catch((e: unknown) => {
  const out = e instanceof KmsClientError ? { Code: e.code, Message: e.message } : { Code: 'ClientError', Message: (e as Error).message };
  process.stderr.write(JSON.stringify(out) + '\n');
  process.exit(1);
});
