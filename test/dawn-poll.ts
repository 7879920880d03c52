/**
 * Dawn's Node binding (the `webgpu` package) completes its asynchronous operations (mapAsync,
 * popErrorScope, onSubmittedWorkDone) by calling ProcessEvents from a setImmediate loop for as long as
 * one is pending: a busy wait that holds the main thread at a full core while lavapipe's threads run the
 * kernels. On a 2-core machine that was a third of the webgpu tests' CPU time, taken from lavapipe and
 * from the test file running beside them (bench/results/2026-12-04-test-time.md). In the test processes
 * that loop runs on a timer instead: each turn waits at least 1 ms, so a pending operation completes up
 * to a millisecond later and the thread sleeps meanwhile. Only Dawn's own callback is deferred (a native
 * function with no name and no parameters, which is what the binding hands to setImmediate); every other
 * caller gets setImmediate unchanged. The library itself patches nothing.
 */
const immediate = globalThis.setImmediate;
const source = Function.prototype.toString;

function isDawnTick(f: unknown): boolean {
  return typeof f === 'function' && f.name === '' && f.length === 0 && source.call(f).endsWith('{ [native code] }');
}

function deferred(callback: (...args: unknown[]) => void, ...args: unknown[]): NodeJS.Immediate {
  if (isDawnTick(callback)) return setTimeout(callback, 1, ...args) as unknown as NodeJS.Immediate;
  return immediate(callback, ...args);
}
globalThis.setImmediate = Object.assign(deferred, { __promisify__: immediate.__promisify__ }) as unknown as typeof setImmediate;
