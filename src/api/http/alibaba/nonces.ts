// Signature nonces seen within the replay window, per access key. Memory is bounded: entries expire
// with the window, and past MAX_NONCES live entries a new nonce is refused (the caller answers
// Throttling) rather than forgetting one that could then be replayed.

export const NONCE_WINDOW_MS = 15 * 60 * 1000;
export const MAX_NONCES = 500_000;

export class NonceCache {
  private readonly seen = new Map<string, number>();
  private lastSweep = 0;

  constructor(
    private readonly windowMs = NONCE_WINDOW_MS,
    private readonly max = MAX_NONCES,
  ) {}

  /** Records the nonce; 'replayed' if it was seen within the window, 'full' if no room is left. */
  use(accessKeyId: string, nonce: string, now: number): 'ok' | 'replayed' | 'full' {
    const key = `${accessKeyId}\n${nonce}`;
    const until = this.seen.get(key);
    if (until !== undefined && until > now) return 'replayed';
    if (this.seen.size >= this.max || now - this.lastSweep > 60_000) this.sweep(now);
    if (this.seen.size >= this.max) return 'full';
    // A request may carry a timestamp up to the window ahead of our clock; remember it that long.
    this.seen.set(key, now + 2 * this.windowMs);
    return 'ok';
  }

  get size(): number {
    return this.seen.size;
  }

  private sweep(now: number): void {
    this.lastSweep = now;
    for (const [k, until] of this.seen) if (until <= now) this.seen.delete(k);
  }
}
