// Waiting for a condition another process or a timer brings about (a replica's cache, a health
// status, the scheduler's work).

/** Polls `probe` every `everyMs` until it returns true or `ms` passes; the time it took, or -1. */
export async function within(ms: number, probe: () => boolean | Promise<boolean>, everyMs = 20): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - t0;
    if (Date.now() - t0 > ms) return -1;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** within(), failing with "timed out waiting for WHAT" when `ms` passes first. */
export async function until(what: string, probe: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  if ((await within(ms, probe)) < 0) throw new Error(`timed out waiting for ${what}`);
}
