// A webgpu call's buffers are made inside an 'out-of-memory' error scope: a device that cannot hold them
// gives an OutOfMemoryError (not an invalid buffer that fails later as a ValueError), and a call that
// fails before submitting still closes its scope. A stand-in device records the scopes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OutOfMemoryError } from '../src/errors.js';
import { MemoryTracker } from '../src/memory.js';
import type { Problem } from '../src/problem.js';
import type { Gpu } from '../src/webgpu/device.js';
import { Call } from '../src/webgpu/index.js';

/** A device whose scopes are a stack; popping the 'out-of-memory' scope reports `oom` if given. */
function standIn(oom?: string) {
  const scopes: string[] = [];
  const device = {
    pushErrorScope: (filter: string) => void scopes.push(filter),
    popErrorScope: async () => {
      const filter = scopes.pop();
      assert.ok(filter !== undefined, 'a scope is popped only after it was pushed');
      return filter === 'out-of-memory' && oom ? { message: oom } : null;
    },
  };
  return { gpu: { device } as unknown as Gpu, scopes };
}

const p = { B: 1, H: 2, Hkv: 2, Nq: 8, Nk: 8, D: 4, dtype: 'f32', memory: new MemoryTracker() } as unknown as Problem;

test('a call whose buffers ran out of device memory throws OutOfMemoryError at submit, naming q', async () => {
  const { gpu, scopes } = standIn('vkAllocateMemory failed with VK_ERROR_OUT_OF_DEVICE_MEMORY');
  const call = new Call(p, gpu);
  assert.deepEqual(scopes, ['out-of-memory']);
  let encoded = false;
  await assert.rejects(
    call.submit(async () => void (encoded = true)),
    (e: unknown) => e instanceof OutOfMemoryError && e.message.includes('q') && e.message.includes('VK_ERROR_OUT_OF_DEVICE_MEMORY'),
  );
  assert.equal(encoded, false, 'nothing is encoded with buffers that could not be made');
  call.dispose();
  assert.deepEqual(scopes, [], 'every scope is closed');
});

test('a call that fails before submitting closes its out-of-memory scope when disposed', async () => {
  const { gpu, scopes } = standIn();
  const call = new Call(p, gpu);
  call.dispose();
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(scopes, []);
});
