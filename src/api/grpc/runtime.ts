// DescribeRuntime, a debug RPC with the daemon's own runtime figures, so the benchmark
// (scripts/bench.ts) can show what load does to kmsd's event loop: perf_hooks.monitorEventLoopDelay
// percentiles over a window the caller resets, the native addon's threads and the HSM counters.
// Nothing here touches the token or key material.

import { monitorEventLoopDelay, IntervalHistogram } from 'node:perf_hooks';
import type { Keyring } from '../../kms/keyring';

/** Timer interval of the histogram, ms. Every sample includes it, so an idle loop reads about 1 ms. */
export const EVENT_LOOP_RESOLUTION_MS = 1;

let histogram: IntervalHistogram | null = null;
let windowStart = 0;

/** Starts the (process-wide) event-loop delay histogram; idempotent. */
export function startRuntimeMonitor(): void {
  if (histogram) return;
  histogram = monitorEventLoopDelay({ resolution: EVENT_LOOP_RESOLUTION_MS });
  histogram.enable();
  windowStart = performance.now();
}

const ms = (ns: number) => (Number.isFinite(ns) ? Math.round(ns / 1e4) / 100 : 0);

export function describeRuntime(keyring: Keyring, req: { ResetEventLoopDelay?: boolean }) {
  startRuntimeMonitor();
  const h = histogram as IntervalHistogram;
  const native = keyring.nativeInfo();
  const out = {
    EventLoopDelayP50Ms: h.count ? ms(h.percentile(50)) : 0,
    EventLoopDelayP99Ms: h.count ? ms(h.percentile(99)) : 0,
    EventLoopDelayMaxMs: h.count ? ms(h.max) : 0,
    EventLoopDelayMeanMs: h.count ? ms(h.mean) : 0,
    EventLoopDelaySamples: h.count,
    WindowSeconds: Math.round(performance.now() - windowStart) / 1000,
    NativeAddon: keyring.nativeAttached,
    NativeThreads: native?.threads ?? 0,
    NativeSessionsReopened: native?.sessionsReopened ?? 0,
    Counters: { ...keyring.stats },
    RssBytes: process.memoryUsage.rss(),
    Pid: process.pid,
  };
  if (req.ResetEventLoopDelay) {
    h.reset();
    windowStart = performance.now();
  }
  return out;
}
