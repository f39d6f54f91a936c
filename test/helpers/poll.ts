// Waiting for a condition another process brings about (a replica's cache, a health status).

/** Polls `probe` until it returns true or `ms` passes; the time it took, or -1. */
export async function within(ms: number, probe: () => Promise<boolean>): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - t0;
    if (Date.now() - t0 > ms) return -1;
    await new Promise((r) => setTimeout(r, 20));
  }
}
