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

/** crypto.hash (Node 20.12 and later) makes no Hash object per call. */
const sha256Base64: (s: string) => string =
  typeof crypto.hash === 'function' ? (s) => crypto.hash('sha256', s, 'base64') : (s) => crypto.createHash('sha256').update(s).digest('base64');

export class NonceCache {
  /** Every remembered entry and the bucket it expires with: one lookup whatever the bucket count. */
  private readonly ids = new Set<string>();
  /** The entries of each bucket, for dropping them when it passes. */
  private readonly buckets = new Map<number, string[]>();

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
    const id = sha256Base64(`${accessKeyId}\n${nonce}`).slice(0, 16);
    if (this.ids.has(id)) return 'replayed';
    if (this.ids.size >= this.max) return 'full';
    const bucket = Math.floor((Math.max(now, signedAt) + this.windowMs) / BUCKET_MS) + 1;
    let list = this.buckets.get(bucket);
    if (!list) this.buckets.set(bucket, (list = []));
    list.push(id);
    this.ids.add(id);
    return 'ok';
  }

  get size(): number {
    return this.ids.size;
  }

  private expire(now: number): void {
    const current = Math.floor(now / BUCKET_MS);
    for (const [b, list] of this.buckets) {
      if (b <= current) {
        for (const id of list) this.ids.delete(id);
        this.buckets.delete(b);
      }
    }
  }
}
