import { describe, expect, it } from 'vitest';
import { ciphertextDataIntegrityValue } from '../../src/kms/xks';

// The worked example of the XKS Proxy API spec, Appendix C: its encrypt request and response, and the
// CDIV it gives for them.
describe('Ciphertext Data Integrity Value (XKS Proxy API, Appendix C)', () => {
  const aad = Buffer.from('cHJvamVjdD1uaWxlLGRlcGFydG1lbnQ9bWFya2V0aW5n', 'base64');
  const response = {
    authenticationTag: Buffer.from('vBxN2ncH1oEkR8WVXpmyYQ==', 'base64'),
    ciphertext: Buffer.from('ghxkK1txeDNn3q8Y', 'base64'),
    ciphertextMetadata: Buffer.from('a2V5X3ZlcnNpb249MQ==', 'base64'),
    initializationVector: Buffer.from('HMrlRw85cAJUd5Ax', 'base64'),
  };

  it('is the spec example value', () => {
    expect(ciphertextDataIntegrityValue(aad, response).toString('base64')).toBe('qHA/ImC9h5HsLRXqCyPmWgYx7tzyoTplzILbP0fPXsc=');
  });

  it('changes with any byte of the AAD, metadata, IV, ciphertext or tag', () => {
    const base = ciphertextDataIntegrityValue(aad, response).toString('base64');
    expect(ciphertextDataIntegrityValue(undefined, response).toString('base64')).not.toBe(base);
    for (const field of Object.keys(response) as (keyof typeof response)[]) {
      const b = Buffer.from(response[field]);
      b[0] ^= 1;
      expect(ciphertextDataIntegrityValue(aad, { ...response, [field]: b }).toString('base64'), field).not.toBe(base);
    }
  });
});
