// Event-loop turns: work queued here runs a bounded slice per turn, so I/O (and with it HTTP/2's
// flush of answers already written) and timers get in between slices. Two users:
//
//   unary calls (src/api/grpc/server.ts), with a 0.5 ms budget: grpc-js hands every request of one
//   socket read to its handlers inside a single macrotask and Node's HTTP/2 session flushes once per
//   turn, so if each handler did its work at once a burst of 64 requests was answered only after all
//   64 were done: the client waited while the server worked, then the other way round (responses
//   arrived in bursts of ~45 with ~7 ms gaps). Slices let client and server overlap: +25-30% unary
//   requests/s at concurrency 64 on two cores (measured by the bench), and a shorter event-loop stall;
//   batch checks (src/kms/batch.ts), one 64-item chunk per turn: many large batches arriving in one
//   socket read must not stall every other call while their lookups run.

/** Unary calls' budget: small enough that answers flush often, large enough to amortize a turn. */
export const CALL_TURN_BUDGET_MS = 0.5;

export class Turns {
  private queue: (() => void)[] = [];
  private head = 0;
  private scheduled = false;
  /** Turns run and the longest queue seen (tests read them). */
  readonly stats = { turns: 0, maxQueued: 0 };

  /** `budgetMs`: work started in one turn before yielding; 0 runs exactly one piece per turn. */
  constructor(private readonly budgetMs: number) {}

  /** Runs `start` in the next turn that has budget left. `start` must not throw (its caller answers its own errors). */
  run(start: () => void): void {
    this.queue.push(start);
    const queued = this.queue.length - this.head;
    if (queued > this.stats.maxQueued) this.stats.maxQueued = queued;
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.drain);
    }
  }

  /** Runs `fn` in a turn and settles with its result or its throw. */
  call<T>(fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) =>
      this.run(() => {
        try {
          resolve(fn());
        } catch (e) {
          reject(e);
        }
      }),
    );
  }

  get waiting(): number {
    return this.queue.length - this.head;
  }

  private readonly drain = (): void => {
    this.stats.turns++;
    const t0 = performance.now();
    while (this.head < this.queue.length) {
      const start = this.queue[this.head];
      this.queue[this.head++] = NOOP; // drop the closure now: it holds the call
      try {
        start();
      } catch {
        // A throw here must not strand the work behind it.
      }
      if (performance.now() - t0 >= this.budgetMs) break;
    }
    if (this.head >= this.queue.length) {
      this.queue = [];
      this.head = 0;
      this.scheduled = false;
    } else {
      // An immediate queued from an immediate runs on the next turn: I/O and timers go in between.
      setImmediate(this.drain);
    }
  };
}

const NOOP = () => undefined;
