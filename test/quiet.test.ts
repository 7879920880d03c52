// The library writes nothing to the console: a user's forward() and backward() with the default backend
// print nothing, in a process of their own (Dawn's warnings come from native code, straight to the
// process's stderr, so only a child process shows them). Dawn is not loaded where it could only find
// no adapter or a software one that 'auto' would not pick (device.ts, "Keeping Dawn quiet").
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { mayHaveGpu, vulkanLoaderMissing } from '../src/webgpu/device.js';

const INDEX = fileURLToPath(new URL('../src/index.js', import.meta.url));

/**
 * What Dawn itself may print once per process where it loads for a real GPU: it lists the adapters of a
 * driver that reports more dynamic buffers than it supports. Native code writes it; nothing in
 * JavaScript can stop it (see README, "Console output").
 */
const DAWN_LIMIT_WARNING = /^Warning: maxDynamic(Uniform|Storage)BuffersPerPipelineLayout artificially reduced from \d+ to \d+ to fit dynamic offset allocation limit\.$/;

/** stdout and stderr of a Node process that runs `body` after importing the built library as `lib`. */
async function child(body: string): Promise<{ stdout: string; stderr: string }> {
  const code = `const lib = await import(${JSON.stringify(INDEX)});\n${body}`;
  return promisify(execFile)(process.execPath, ['--input-type=module', '-e', code], { timeout: 120_000 });
}

const CALLS = `
const [B, N, H, D] = [1, 128, 2, 32];
const t = () => lib.tensor(new Float32Array(B * N * H * D).map(Math.random), [B, N, H, D]);
const [q, k, v] = [t(), t(), t()];
const { out, lse, backend } = await lib.forward(q, k, v, { causal: true, ...OPTIONS });
await lib.backward(t(), q, k, v, out, lse, { causal: true, ...OPTIONS });
if (!['cpu', 'webgpu'].includes(backend)) throw new Error('ran on ' + backend);
`;

test('forward() and backward() with the default backend write nothing to stdout or stderr', async () => {
  const { stdout, stderr } = await child(CALLS.replaceAll('OPTIONS', '{}'));
  assert.equal(stdout, '');
  if (!(await mayHaveGpu())) {
    assert.equal(stderr, '', 'no GPU device here: Dawn is not loaded, nothing is printed');
  } else {
    // A GPU device is here: 'auto' asks Dawn for the adapter, and Dawn may print its limit warnings.
    const other = stderr.split('\n').filter((line) => line && !DAWN_LIMIT_WARNING.test(line));
    assert.deepEqual(other, [], 'nothing but the documented Dawn warnings');
  }
});

test("backend 'cpu' writes nothing, on any machine", async () => {
  const { stdout, stderr } = await child(CALLS.replaceAll('OPTIONS', "{ backend: 'cpu' }"));
  assert.equal(stdout, '');
  assert.equal(stderr, '');
});

test('no Vulkan loader where dlopen looks: Dawn is not loaded, and the reason says what to install', async () => {
  const none = { existsSync: () => false, readFileSync: () => Buffer.from('libc.so.6\0libm.so.6\0') };
  const missing = await vulkanLoaderMissing('linux', {}, none as never);
  assert.match(missing ?? '', /libvulkan\.so\.1/);
  assert.match(missing ?? '', /scripts\/install-lavapipe\.sh/);
  const cached = { existsSync: () => false, readFileSync: () => Buffer.from('libc.so.6\0libvulkan.so.1\0') };
  assert.equal(await vulkanLoaderMissing('linux', {}, cached as never), undefined, 'in /etc/ld.so.cache');
  const onPath = { existsSync: (f: string) => f === '/opt/vk/lib/libvulkan.so.1', readFileSync: () => Buffer.from('') };
  assert.equal(await vulkanLoaderMissing('linux', { LD_LIBRARY_PATH: '/opt/vk/lib' }, onPath as never), undefined, 'on LD_LIBRARY_PATH');
  const noCache = { existsSync: (f: string) => f === '/usr/lib/libvulkan.so.1', readFileSync: () => { throw new Error('ENOENT'); } };
  assert.equal(await vulkanLoaderMissing('linux', {}, noCache as never), undefined, 'in /usr/lib, without a cache (musl)');
  assert.equal(await vulkanLoaderMissing('darwin', {}, none as never), undefined, 'only Linux is checked');
});

test("a Linux machine with no GPU device: 'auto' does not load Dawn", async () => {
  const fs = (files: Record<string, string[]>, dxg = false) => ({
    readdirSync: (dir: string) => {
      if (!(dir in files)) throw new Error('ENOENT');
      return files[dir];
    },
    existsSync: (f: string) => dxg && f === '/dev/dxg',
  });
  assert.equal(await mayHaveGpu('linux', fs({ '/dev': ['null', 'tty'] }) as never), false);
  assert.equal(await mayHaveGpu('linux', fs({ '/dev/dri': ['card0', 'renderD128'], '/dev': [] }) as never), true, 'a DRM render node');
  assert.equal(await mayHaveGpu('linux', fs({ '/dev': ['nvidiactl', 'nvidia0'] }) as never), true, 'an NVIDIA device');
  assert.equal(await mayHaveGpu('linux', fs({ '/dev': [] }, true) as never), true, "WSL's /dev/dxg");
  assert.equal(await mayHaveGpu('darwin', fs({}) as never), true, 'other systems are not checked');
});
