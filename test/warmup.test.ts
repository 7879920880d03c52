// The bench's warm-up rule on a fake clock: calls until the last three agree within 15 %, at least
// three, at most 2 s of warm-up (src/cli/warmup.ts). The cpu's first forwards in a process (174, 20,
// 15, then 7.7 ms) are warmed past; a case whose calls take seconds stops at the time cap.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { steady, warmUp, WARM_UP } from '../src/cli/warmup.js';

/** A fake clock and a call that takes the next of `durations` on it (the last one repeats). */
function scripted(durations: number[]) {
  let t = 0;
  let i = 0;
  return {
    now: () => t,
    run: async () => {
      t += durations[Math.min(i++, durations.length - 1)];
    },
    calls: () => i,
  };
}

test("the cpu's cold start (174, 20, 15 ms, then 7.7): warmed until three calls agree", async () => {
  const clock = scripted([174, 20, 15, 7.7, 7.8, 7.7, 7.7]);
  const w = await warmUp(clock.run, clock.now);
  assert.deepEqual(w.timesMs.map((t) => Math.round(t * 10) / 10), [174, 20, 15, 7.7, 7.8, 7.7]);
  assert.equal(w.steady, true);
  assert.equal(clock.calls(), 6, 'no call more than needed');
});

test('at least three calls, even when the first two agree', async () => {
  const clock = scripted([5, 5, 5]);
  const w = await warmUp(clock.run, clock.now);
  assert.equal(w.timesMs.length, 3);
  assert.equal(w.steady, true);
});

test('times that never settle stop at 2 s of warm-up', async () => {
  const clock = scripted([300, 500, 300, 500, 300, 500, 300, 500, 300, 500]);
  const w = await warmUp(clock.run, clock.now);
  assert.equal(w.steady, false);
  assert.ok(w.timesMs.reduce((a, b) => a + b, 0) >= WARM_UP.maxMs);
  assert.equal(w.timesMs.length, 6, 'stopped by the first call that ends past 2 s (at 2.4 s)');
});

test('calls of seconds: three calls, then the samples begin', async () => {
  const clock = scripted([4000, 1500, 1400]);
  const w = await warmUp(clock.run, clock.now);
  assert.equal(w.timesMs.length, 3);
});

test('steady: a fraction of the fastest, or a floor for calls too short for a fraction', () => {
  assert.equal(steady([10, 11, 11.4], WARM_UP), true);
  assert.equal(steady([10, 11, 11.6], WARM_UP), false);
  assert.equal(steady([0.01, 0.05, 0.03], WARM_UP), true, 'within 0.05 ms');
  assert.equal(steady([7.7, 7.7], WARM_UP), false, 'fewer calls than the window');
});
