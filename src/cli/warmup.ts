/**
 * Warm-up until times are steady. The first calls in a process are slow for reasons that are not the
 * work: the JIT compiling the kernels (on the cpu the first forwards at N = 256, D = 64 took 174, 20 and
 * 15 ms, then 7.7 ms every time), GPU pipelines compiling, worker threads starting. A single warm-up call
 * left the cpu bench's base row about 2× slow, and every comparison built on it wrong. So a case is run
 * until the last `window` calls agree within `tolerance` (the slowest at most that much above the
 * fastest, or `floorMs` for calls too short for a fraction to mean much), with at least `minCalls`
 * calls, and at most `maxMs` of warm-up (past it, whatever the times, the samples begin: a case whose
 * calls take seconds has long been warm) or `maxCalls` calls. The rule is the same on every backend.
 */

export interface WarmUpRule {
  /** Calls made whatever the times. */
  minCalls: number;
  /** The last this many calls must agree. */
  window: number;
  /** ...within this fraction, or this many ms: max − min ≤ max(tolerance · min, floorMs). */
  tolerance: number;
  floorMs: number;
  /** Stop warming up once this many ms have been spent (after minCalls). */
  maxMs: number;
  /** And after this many calls. */
  maxCalls: number;
}

export const WARM_UP: WarmUpRule = { minCalls: 3, window: 3, tolerance: 0.15, floorMs: 0.05, maxMs: 2000, maxCalls: 50 };

export interface WarmUp {
  /** ms of each warm-up call, in order. */
  timesMs: number[];
  /** Whether the last `window` calls agreed (false: stopped by maxMs or maxCalls). */
  steady: boolean;
}

/** Whether the last `window` of `times` agree within `tolerance`. */
export function steady(times: readonly number[], rule: Pick<WarmUpRule, 'window' | 'tolerance' | 'floorMs'>): boolean {
  if (times.length < rule.window) return false;
  const last = times.slice(-rule.window);
  const [min, max] = [Math.min(...last), Math.max(...last)];
  return max - min <= Math.max(rule.tolerance * min, rule.floorMs);
}

/**
 * Call `run` (one call of the work about to be timed, done when it resolves) until its times are steady
 * by `rule`, timing each with `now` (ms; performance.now, or a fake clock in tests).
 */
export async function warmUp(run: () => Promise<void>, now: () => number = () => performance.now(), rule: WarmUpRule = WARM_UP): Promise<WarmUp> {
  const timesMs: number[] = [];
  const start = now();
  for (;;) {
    const t0 = now();
    await run();
    const t1 = now();
    timesMs.push(t1 - t0);
    if (timesMs.length < rule.minCalls) continue;
    if (steady(timesMs, rule)) return { timesMs, steady: true };
    if (t1 - start >= rule.maxMs || timesMs.length >= rule.maxCalls) return { timesMs, steady: false };
  }
}
