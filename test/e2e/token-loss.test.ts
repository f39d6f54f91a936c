// A token that goes away under a running kmsd (a network HSM unplugged, a SoftHSM token directory
// removed): the gRPC health service says NOT_SERVING within its 500 ms check, so load balancers and
// KmsClient's endpoint lists go elsewhere; calls that need the token are answered with the
// retryable ServiceUnavailable.Hsm, never an internal error; kmsd keeps running.

import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KmsClientError } from '../../src/client/client';
import { startKmsd, type Kmsd } from '../helpers/daemon';
import { healthOf } from '../helpers/health';
import { within } from '../helpers/poll';

let k: Kmsd;
let tokenDir: string;
let movedTo: string;

beforeAll(async () => {
  k = await startKmsd();
  const tokens = path.join(k.dataDir, 'softhsm', 'tokens');
  const [only] = fs.readdirSync(tokens);
  tokenDir = path.join(tokens, only);
  movedTo = path.join(k.dataDir, 'token-away');
});

afterAll(async () => {
  if (fs.existsSync(movedTo)) fs.renameSync(movedTo, tokenDir);
  await k?.stop();
});

describe('the token gone under a running kmsd', () => {
  it('health goes NOT_SERVING, DescribeHsm answers ServiceUnavailable.Hsm, and kmsd keeps running', async () => {
    expect(await healthOf(k.port)).toBe('SERVING');
    fs.renameSync(tokenDir, movedTo);
    expect(await within(3000, async () => (await healthOf(k.port)) === 'NOT_SERVING')).toBeGreaterThanOrEqual(0);
    expect(await healthOf(k.port, 'kms.v1.KeyManagementService')).toBe('NOT_SERVING');
    const err = await k.client.call('DescribeHsm', {}).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KmsClientError);
    expect((err as KmsClientError).code).toBe('ServiceUnavailable.Hsm');
    expect((err as KmsClientError).message).toMatch(/HSM is not available/);
    expect(k.logs()).not.toMatch(/"msg":"internal error"/);
    // Still running and answering what needs no token.
    expect(await healthOf(k.port)).toBe('NOT_SERVING');
    expect(k.kmsctl(['ListKeys']).code).toBe(0);
  });
});
