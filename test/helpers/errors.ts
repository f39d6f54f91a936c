// Runs fn and returns the KmsError it throws; fails the test if it throws anything else or nothing.
import { expect } from 'vitest';
import { KmsError } from '../../src/kms/errors';

export function errorOf(fn: () => unknown): KmsError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KmsError);
    return e as KmsError;
  }
  throw new Error('did not throw');
}
