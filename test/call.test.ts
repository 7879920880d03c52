// A webgpu call's buffers are made inside an 'out-of-memory' error scope: a device that cannot hold them
// gives an OutOfMemoryError (not an invalid buffer that fails later as a ValueError), after the device
// has freed what the call made, and a call that fails before submitting still closes its scopes. Both scopes are closed after the submission, with one
// wait (the work is on the GPU before the host waits). A stand-in device records the scopes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OutOfMemoryError, ValueError } from '../src/errors.js';
import { MemoryTracker } from '../src/memory.js';
import type { Problem } from '../src/problem.js';
import type { Gpu } from '../src/webgpu/device.js';
import { Call } from '../src/webgpu/index.js';

/**
 * A device whose scopes are a stack. Popping the 'out-of-memory' scope reports `oom` if given; then the
 * submission was of buffers that could not be made, which Dawn reports as a validation error too (and
 * runs nothing), so popping the 'validation' scope reports one. `invalid`: a validation error alone.
 */
function standIn(oom?: string, invalid?: string) {
  const scopes: string[] = [];
  const events: string[] = [];
  const device = {
    pushErrorScope: (filter: string) => void scopes.push(filter),
    popErrorScope: async () => {
      const filter = scopes.pop();
      assert.ok(filter !== undefined, 'a scope is popped only after it was pushed');
      events.push(`pop ${filter}`);
      if (filter === 'out-of-memory') return oom ? { message: oom } : null;
      return oom ? { message: 'invalid buffer' } : invalid ? { message: invalid } : null;
    },
    createCommandEncoder: () => ({ finish: () => ({}), clearBuffer: () => void events.push('clear') }),
    createBuffer: () => ({ destroy: () => undefined }),
    queue: { submit: () => void events.push('submit'), onSubmittedWorkDone: async () => void events.push('done') },
  };
  return { gpu: { device } as unknown as Gpu, scopes, events };
}

const p = { B: 1, H: 2, Hkv: 2, Nq: 8, Nk: 8, D: 4, dtype: 'f32', memory: new MemoryTracker() } as unknown as Problem;
// WebGPU's usage flags, as a browser (or Dawn's globals) defines them: no real device is made here.
(globalThis as { GPUBufferUsage?: object }).GPUBufferUsage ??= { COPY_DST: 0x8 };

test('a call whose buffers ran out of device memory throws OutOfMemoryError at submit, naming q', async () => {
  const { gpu, scopes, events } = standIn('vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY');
  const call = new Call(p, gpu);
  assert.deepEqual(scopes, ['out-of-memory']);
  await assert.rejects(
    call.submit(async () => undefined),
    (e: unknown) => e instanceof OutOfMemoryError && e.message.includes('q') && e.message.includes('VK_ERROR_OUT_OF_DEVICE_MEMORY'),
  );
  call.dispose();
  assert.deepEqual(scopes, [], 'every scope is closed');
  // After the out-of-memory: a clear submitted and waited for, so that the device frees the memory of
  // the buffers the call destroyed before the next call makes its own (its scope swallows any error).
  assert.deepEqual(events, ['submit', 'pop validation', 'pop out-of-memory', 'clear', 'submit', 'done', 'pop out-of-memory']);
});

test('a call submits before it waits for its error scopes, and a validation error alone is a ValueError', async () => {
  const ok = standIn();
  const call = new Call(p, ok.gpu);
  await call.submit(async () => undefined);
  call.dispose();
  assert.deepEqual(ok.events, ['submit', 'pop validation', 'pop out-of-memory'], 'the submission comes before any scope is closed');
  assert.deepEqual(ok.scopes, []);
  const bad = standIn(undefined, 'Buffer is associated with another device');
  const other = new Call(p, bad.gpu);
  await assert.rejects(other.submit(async () => undefined), (e: unknown) => e instanceof ValueError && e.message.includes('another device'));
  other.dispose();
  assert.deepEqual(bad.scopes, []);
});

test('a call whose encoding throws closes both scopes', async () => {
  const { gpu, scopes } = standIn();
  const call = new Call(p, gpu);
  await assert.rejects(
    call.submit(async () => {
      throw new RangeError('encode failed');
    }),
    RangeError,
  );
  call.dispose();
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(scopes, []);
});

test('a call that fails before submitting closes its out-of-memory scope when disposed', async () => {
  const { gpu, scopes } = standIn();
  const call = new Call(p, gpu);
  call.dispose();
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(scopes, []);
});
