// hsmUnavailable (src/kms/errors.ts): the HSM conditions a caller is told about as
// ServiceUnavailable.Hsm / UNAVAILABLE, for unary calls, streams and batch items alike.
import { describe, expect, it } from 'vitest';
import { HsmError } from '../../src/hsm/errors';
import { hsmUnavailable } from '../../src/kms/errors';

describe('hsmUnavailable', () => {
  it('maps a closed context and a token that is gone, naming the condition', () => {
    for (const code of ['CLOSED', 'CKR_DEVICE_REMOVED', 'CKR_TOKEN_NOT_PRESENT', 'CKR_DEVICE_ERROR'] as const) {
      const e = hsmUnavailable(new HsmError(`${code} happened`, code));
      expect(e?.code).toBe('ServiceUnavailable.Hsm');
      expect(e?.status).toBe('UNAVAILABLE');
      expect(e?.message).toBe(`the HSM is not available (${code})`);
    }
  });

  it('leaves every other error alone (those are internal failures or domain errors)', () => {
    expect(hsmUnavailable(new HsmError('bad key', 'CKR_KEY_HANDLE_INVALID'))).toBeNull();
    expect(hsmUnavailable(new Error('CKR_DEVICE_REMOVED'))).toBeNull();
    expect(hsmUnavailable('CLOSED')).toBeNull();
  });
});
