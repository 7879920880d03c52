/**
 * A call timed on a machine shared with other work: its wall time, this process's CPU time during it (all
 * threads), and the share of the machine's CPU time that other processes took meanwhile (Linux /proc/stat;
 * undefined elsewhere). Jiffies are 10 ms, so a short call's share is coarse: it is clamped to [0, 1].
 * bench/variants/cpu-wasm.ts and bench/peers/cpu-peers.mjs (as dist/bench/load.js) use it.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** Busy jiffies of the whole machine (Linux), or undefined. */
function busy(): number | undefined {
  try {
    const [, ...f] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
    const n = f.map(Number);
    return n.reduce((a, b) => a + b, 0) - n[3] - n[4]; // less idle and iowait
  } catch {
    return undefined;
  }
}

export async function timedCall(call: () => Promise<unknown>): Promise<{ ms: number; ownMs: number; others: number | undefined }> {
  const b0 = busy();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  await call();
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const b1 = busy();
  const ownMs = (c.user + c.system) / 1000;
  const others = b0 === undefined || b1 === undefined ? undefined : Math.min(1, Math.max(0, ((b1 - b0) * 10 - ownMs) / (ms * availableParallelism())));
  return { ms, ownMs, others };
}
