// The error a call must fail with, for assertions on its code and message.
import { expect } from 'vitest';
import { KmsClientError } from '../../src/client/client';
import { KmsError } from '../../src/kms/errors';
import { HsmError } from '../../src/hsm/errors';

/** Runs fn and returns the KmsError it throws; fails the test if it throws anything else or nothing. */
export function errorOf(fn: () => unknown): KmsError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KmsError);
    return e as KmsError;
  }
  throw new Error('did not throw');
}

/** errorOf for a call on the token context itself: the HsmError it throws. */
export function hsmErrorOf(fn: () => unknown, what = 'the call'): HsmError {
  try {
    fn();
  } catch (e) {
    expect(e, what).toBeInstanceOf(HsmError);
    return e as HsmError;
  }
  throw new Error(`${what} did not throw`);
}

/** Awaits a client call that must fail; returns its KmsClientError (fails the test on success or any other error). */
export async function clientErrorOf(p: Promise<unknown>): Promise<KmsClientError> {
  const e = await p.then(
    () => null,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(KmsClientError);
  return e as KmsClientError;
}
