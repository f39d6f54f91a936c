// Signature nonces seen within the replay window, per access key. A nonce must be remembered only
// while its request's timestamp would still be accepted (timestamp + window), so entries live in
// one-minute buckets by that expiry and whole buckets are dropped as they pass. Entries are a
// 12-byte digest of (access key id, nonce), so memory per entry stays small whatever the nonce.
// Memory is bounded: past `max` live entries a new nonce is refused (the caller answers
// Throttling) rather than one forgotten that could then be replayed.

import crypto from 'node:crypto';

export const NONCE_WINDOW_MS = 15 * 60 * 1000;
/** About 60 MB at most; 1,000,000 nonces in 15 minutes is ~1,100 signed requests per second sustained. */
export const MAX_NONCES = 1_000_000;
const BUCKET_MS = 60_000;

export class NonceCache {
  private readonly buckets = new Map<number, Set<string>>();
  private count = 0;

  constructor(
    private readonly windowMs = NONCE_WINDOW_MS,
    private readonly max = MAX_NONCES,
  ) {}

  /**
   * Records the nonce of a request signed at `signedAt` (already checked to be within the window of
   * `now`); 'replayed' if it is still remembered, 'full' if no room is left.
   */
  use(accessKeyId: string, nonce: string, now: number, signedAt: number): 'ok' | 'replayed' | 'full' {
    this.expire(now);
    const id = crypto.createHash('sha256').update(accessKeyId).update('\n').update(nonce).digest('base64').slice(0, 16);
    for (const set of this.buckets.values()) if (set.has(id)) return 'replayed';
    if (this.count >= this.max) return 'full';
    const bucket = Math.floor((Math.max(now, signedAt) + this.windowMs) / BUCKET_MS) + 1;
    let set = this.buckets.get(bucket);
    if (!set) this.buckets.set(bucket, (set = new Set()));
    set.add(id);
    this.count++;
    return 'ok';
  }

  get size(): number {
    return this.count;
  }

  private expire(now: number): void {
    const current = Math.floor(now / BUCKET_MS);
    for (const [b, set] of this.buckets) {
      if (b <= current) {
        this.count -= set.size;
        this.buckets.delete(b);
      }
    }
  }
}
