import { describe, expect, it } from 'vitest';
import { NonceCache } from '../../src/api/http/alibaba/nonces';

const MIN = 60_000;

describe('signature nonce cache', () => {
  it('refuses a nonce again while its timestamp is accepted, per access key', () => {
    const c = new NonceCache(15 * MIN, 100);
    const t = 1_000_000 * MIN;
    expect(c.use('AK1', 'n', t, t)).toBe('ok');
    expect(c.use('AK1', 'n', t + 14 * MIN, t)).toBe('replayed');
    expect(c.use('AK2', 'n', t + MIN, t)).toBe('ok');
  });

  it('forgets a nonce once its request could no longer be accepted, and only then', () => {
    const c = new NonceCache(15 * MIN, 100);
    const t = 1_000_000 * MIN;
    // Signed 10 minutes ahead of the server's clock: valid until t + 25 min.
    expect(c.use('AK', 'ahead', t, t + 10 * MIN)).toBe('ok');
    expect(c.use('AK', 'ahead', t + 24 * MIN, t + 10 * MIN)).toBe('replayed');
    expect(c.use('AK', 'ahead', t + 27 * MIN, t + 10 * MIN)).toBe('ok');
  });

  it('is bounded: when full it refuses new nonces instead of forgetting live ones, and recovers as they expire', () => {
    const c = new NonceCache(15 * MIN, 3);
    const t = 1_000_000 * MIN;
    for (const n of ['a', 'b', 'c']) expect(c.use('AK', n, t, t)).toBe('ok');
    expect(c.use('AK', 'd', t, t)).toBe('full');
    expect(c.use('AK', 'a', t, t)).toBe('replayed');
    expect(c.size).toBe(3);
    expect(c.use('AK', 'd', t + 17 * MIN, t + 17 * MIN)).toBe('ok');
    expect(c.size).toBe(1);
  });
});
