// Which forward kernel the webgpu backend picks, and with which tiles, on described devices (no adapter
// needed): subgroup matrices for f16 where the adapter has them, else the register-tiled kernel within the
// device's limits, else (head dims whose O_i rows no longer fit registers) the portable kernel.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryTracker } from '../src/index.js';
import type { Precision } from '../src/options.js';
import type { Problem } from '../src/problem.js';
import type { Gpu } from '../src/webgpu/device.js';
import { forwardChoice, forwardTiledParams, forwardTiles, TILED_MAX_ACCUMULATOR } from '../src/webgpu/index.js';
import { KernelConfigError } from '../src/webgpu/kernels/common.js';
import { forwardMatrixWGSL, forwardMatrixWorkgroupBytes } from '../src/webgpu/kernels/forward-matrix.js';
import { forwardTiledAccumulator, forwardTiledShape, forwardTiledWGSL, forwardTiledWorkgroupBytes } from '../src/webgpu/kernels/forward-tiled.js';

function device(workgroupBytes: number, invocations: number, extra: Partial<Gpu> = {}): Gpu {
  const limits = { maxComputeWorkgroupStorageSize: workgroupBytes, maxComputeInvocationsPerWorkgroup: invocations, maxComputeWorkgroupSizeX: invocations } as GPUSupportedLimits;
  return { limits, software: false, matrixF16: false, subgroupSize: undefined, ...extra } as Gpu;
}

function problem(D: number, dtype: 'f32' | 'f16' = 'f32', causal = false, precision: Precision = 'highest'): Problem {
  return { B: 1, H: 2, Hkv: 2, Nq: 256, Nk: 256, D, dtype, layout: 'BNHD', causal, scale: 1 / Math.sqrt(D), backend: 'webgpu', algorithm: 'flash', precision, memory: new MemoryTracker(), onGpu: false, mods: causal ? { band: { left: -1, right: 0 } } : {} };
}

const h100 = device(49152, 1024, { subgroupSize: 32 });

test('f32 on a GPU: the tiled kernel, 4×2 micro-tiles (the best of the H100 sweep), loops unrolled', () => {
  const expected: Record<number, [number, number, number, number]> = { 64: [32, 32, 4, 2], 128: [64, 16, 4, 2], 256: [16, 16, 2, 2] };
  for (const [D, [Br, Bc, TM, TN]] of Object.entries(expected)) {
    const choice = forwardChoice(problem(Number(D)), h100);
    assert.equal(choice.kernel, 'forwardTiled', `D = ${D}`);
    assert.deepEqual({ ...choice.params }, { D: Number(D), Br, Bc, TM, TN, split: false, blockSum: true, unroll: true, dtype: 'f32', causal: false });
  }
});

test('every head dim of the grid gets tiles within the limits, on large and small devices', () => {
  for (const gpu of [h100, device(32768, 1024, { software: true }), device(16384, 256)]) {
    for (const D of [1, 8, 40, 59, 64, 111, 128, 256]) {
      for (const dtype of ['f32', 'f16'] as const) {
        const t = forwardTiledParams(problem(D, dtype), gpu);
        assert.ok(t, `D = ${D} ${dtype} on ${gpu.limits.maxComputeWorkgroupStorageSize} B`);
        assert.ok(forwardTiledWorkgroupBytes(t) <= gpu.limits.maxComputeWorkgroupStorageSize, 'workgroup memory');
        assert.ok(forwardTiledShape(t).WG <= gpu.limits.maxComputeInvocationsPerWorkgroup, 'invocations');
        assert.ok(forwardTiledAccumulator(t) <= TILED_MAX_ACCUMULATOR, 'registers');
        assert.equal(t.unroll, !gpu.software, 'loops stay opaque on software adapters only');
      }
    }
  }
});

test('software adapters: 2×2 micro-tiles (they compile in seconds on lavapipe)', () => {
  const t = forwardTiledParams(problem(64), device(32768, 1024, { software: true }));
  assert.deepEqual(t && [t.Br, t.Bc, t.TM, t.TN, t.unroll], [32, 16, 2, 2, false]);
});

test('f16: subgroup matrices where the adapter has them, else the tiled kernel', () => {
  assert.equal(forwardChoice(problem(128, 'f16'), { ...h100, matrixF16: true }).kernel, 'forwardMatrix');
  assert.equal(forwardChoice(problem(128, 'f16'), h100).kernel, 'forwardTiled');
  assert.equal(forwardChoice(problem(40, 'f16'), { ...h100, matrixF16: true }).kernel, 'forwardTiled', 'D not a multiple of 16');
});

test('f32 at precision high where the adapter has f16 subgroup matrices: the subgroup-matrix kernel on split halves, Bc = 16 (not causal, D ≤ 128)', () => {
  const gpu = { ...h100, matrixF16: true };
  const high = (D: number, causal = false) => problem(D, 'f32', causal, 'high');
  assert.equal(forwardChoice(problem(128), gpu).kernel, 'forwardTiled', "precision 'highest' (the default): f32 multiply-adds");
  for (const D of [64, 128]) {
    const choice = forwardChoice(high(D), gpu);
    assert.equal(choice.kernel, 'forwardMatrix', `D = ${D}`);
    assert.deepEqual({ ...choice.params }, { D, Bc: 16, RF: 1, W: 8, PAD: 8, OC: true, SGS: 32, causal: false, dtype: 'f32' });
    assert.ok(forwardTiles(choice).onChipBytes <= 49152, 'fits 48 KiB');
  }
  assert.equal(forwardChoice(high(256), gpu).kernel, 'forwardTiled', 'D = 256: registers');
  assert.equal(forwardChoice(high(128, true), gpu).kernel, 'forwardTiled', 'causal: the tiled kernel was faster');
  assert.equal(forwardChoice(problem(128, 'f16', true, 'high'), gpu).kernel, 'forwardMatrix', 'f16 causal stays on subgroup matrices');
  assert.equal(forwardChoice(high(40), gpu).kernel, 'forwardTiled', 'D not a multiple of 16');
});

test('head dims past the tiled kernel\'s registers run the portable kernel', () => {
  assert.equal(forwardChoice(problem(512), h100).kernel, 'forwardTiled');
  assert.equal(forwardChoice(problem(700), h100).kernel, 'forward');
});

test('tiled WGSL checks its workgroup memory against the device limit, with the reason', () => {
  const t = forwardTiledParams(problem(128), h100)!;
  assert.throws(() => forwardTiledWGSL(t, 16384), (e: unknown) => e instanceof KernelConfigError && /48896 bytes/.test(e.message));
  assert.throws(() => forwardTiledWGSL({ ...t, TM: 3 }, 49152), /Br = 64 is not a multiple of TM = 3/);
});

test('subgroup-matrix forward WGSL declares the workgroup memory its formula counts', () => {
  const declared = (wgsl: string) =>
    [...wgsl.matchAll(/var<workgroup> \w+: array<(f32|f16), (\d+)>/g)].reduce((bytes, [, type, n]) => bytes + (type === 'f32' ? 4 : 2) * Number(n), 0);
  const base = { RF: 1, PAD: 8, SGS: 32, causal: false };
  for (const p of [
    { ...base, D: 128, Bc: 32, W: 8 },
    { ...base, D: 64, Bc: 16, W: 8, causal: true },
    { ...base, D: 64, Bc: 16, W: 4, RF: 2 },
    { ...base, D: 128, Bc: 16, W: 8, dtype: 'f32' as const, OC: true },
  ]) {
    assert.equal(declared(forwardMatrixWGSL(p, 49152)), forwardMatrixWorkgroupBytes(p), JSON.stringify(p));
  }
  assert.throws(() => forwardMatrixWGSL({ ...base, D: 128, Bc: 64, W: 8 }, 49152), KernelConfigError);
});
