// Turns (src/turns.ts): queued work runs in slices of bounded work, so the event loop (and HTTP/2's
// flush of finished answers) gets a turn between slices. Unary calls use a 0.5 ms budget, batch
// checks a budget of 0 (one piece per turn).

import { describe, expect, it } from 'vitest';
import { Turns } from '../../src/turns';

function busy(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    /* work */
  }
}

describe('Turns', () => {
  it('starts every call once, in arrival order', async () => {
    const turns = new Turns(0.5);
    const ran: number[] = [];
    const all = Array.from({ length: 200 }, (_, i) => new Promise<void>((resolve) => turns.run(() => (ran.push(i), resolve()))));
    expect(ran).toEqual([]); // nothing runs inside the caller's macrotask
    await Promise.all(all);
    expect(ran).toEqual(Array.from({ length: 200 }, (_, i) => i));
    expect(turns.waiting).toBe(0);
  });

  it('yields to the event loop once a turn has used its budget', async () => {
    const turns = new Turns(1);
    const events: string[] = [];
    const done = Array.from({ length: 6 }, (_, i) => new Promise<void>((resolve) => turns.run(() => (busy(0.6), events.push(`call ${i}`), resolve()))));
    // An I/O-phase callback queued meanwhile must get in between the slices, not after all six.
    setImmediate(() => setImmediate(() => events.push('other work')));
    await Promise.all(done);
    const other = events.indexOf('other work');
    expect(other).toBeGreaterThan(0);
    expect(other).toBeLessThan(events.length - 1);
    expect(turns.stats.turns).toBeGreaterThanOrEqual(3); // 2 calls of 0.6 ms fill a 1 ms budget
    expect(turns.stats.maxQueued).toBe(6);
  });

  it('a call that throws does not strand the calls behind it', async () => {
    const turns = new Turns(0.5);
    turns.run(() => {
      throw new Error('boom');
    });
    await expect(new Promise<string>((resolve) => turns.run(() => resolve('next ran')))).resolves.toBe('next ran');
  });

  it('with a budget of 0 runs one piece per turn, and call() settles with the result or the throw', async () => {
    const turns = new Turns(0);
    const order: string[] = [];
    const a = turns.call(() => (order.push('a'), 1));
    const b = turns.call(() => {
      order.push('b');
      throw new Error('b failed');
    });
    const c = turns.call(() => (order.push('c'), 3));
    setImmediate(() => order.push('other work'));
    await expect(a).resolves.toBe(1);
    await expect(b).rejects.toThrow('b failed');
    await expect(c).resolves.toBe(3);
    expect(turns.stats.turns).toBe(3);
    expect(order.indexOf('other work')).toBeGreaterThan(0);
    expect(order.indexOf('other work')).toBeLessThan(3);
  });
});
