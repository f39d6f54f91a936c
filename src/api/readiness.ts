// Calls that arrive before the token is open. kmsd listens first and opens the token after (on a
// full SoftHSM token the module's first use alone takes tens of seconds); until it is ready every
// call on every transport waits here, for a bounded time, and is then turned away with a clear
// ServiceUnavailable: it never hangs, and nothing reaches the domain before the store/token
// binding check has passed.

import { KmsError } from '../kms/errors';

export const TOKEN_OPENING_MESSAGE = 'the token is still opening';

interface Waiter {
  resolve(): void;
  reject(e: KmsError): void;
  timer: NodeJS.Timeout;
}

export class Readiness {
  private state: 'opening' | 'ready' | 'failed' = 'opening';
  private readonly waiters = new Set<Waiter>();
  private readonly startedAt = Date.now();

  /** waitMs: how long a call waits for the token before it is turned away (0: at once). */
  constructor(private readonly waitMs: number) {}

  get ready(): boolean {
    return this.state === 'ready';
  }

  /** 'Opening', 'Ready' or 'Failed': DescribeHsm's TokenState. */
  get tokenState(): 'Opening' | 'Ready' | 'Failed' {
    return this.state === 'opening' ? 'Opening' : this.state === 'ready' ? 'Ready' : 'Failed';
  }

  /**
   * Resolves once the token is ready; rejects with ServiceUnavailable.Hsm when it is not ready
   * within waitMs, or could not be opened.
   */
  wait(): Promise<void> {
    if (this.state === 'ready') return Promise.resolve();
    if (this.state === 'failed') return Promise.reject(this.failedError());
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.delete(w);
          reject(this.openingError());
        }, this.waitMs),
      };
      this.waiters.add(w);
    });
  }

  markReady(): void {
    if (this.state !== 'opening') return;
    this.state = 'ready';
    this.settle((w) => w.resolve());
  }

  /** The token could not be opened or was refused (kmsd is about to exit): waiting calls are answered now. */
  markFailed(): void {
    if (this.state !== 'opening') return;
    this.state = 'failed';
    this.settle((w) => w.reject(this.failedError()));
  }

  private settle(fn: (w: Waiter) => void): void {
    for (const w of this.waiters) {
      clearTimeout(w.timer);
      fn(w);
    }
    this.waiters.clear();
  }

  private openingError(): KmsError {
    const s = Math.round((Date.now() - this.startedAt) / 100) / 10;
    return new KmsError('ServiceUnavailable.Hsm', `${TOKEN_OPENING_MESSAGE} (kmsd started ${s} s ago and serves calls once the token is open and checked; health reports SERVING then): try again later`);
  }

  private failedError(): KmsError {
    // The reason is in kmsd's log and on its stderr, not in an answer to whoever asked.
    return new KmsError('ServiceUnavailable.Hsm', 'the token could not be opened or does not belong to this store; kmsd is stopping (its log says why)');
  }
}
