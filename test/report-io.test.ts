// The IO counts of the report (src/cli/io.ts) on cases worked out by hand: flash reads K and V once per
// query block, standard pays N² per pass over the score matrices, and the tiles come from the backend.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tileSizes } from '../src/cpu/job.js';
import { cpuGeometry, flashForwardBytes, ioOf, problemOf, standardForwardBytes, streamedRows, webgpuGeometry } from '../src/cli/io.js';
import { backwardMatrixParams, forwardMatrixParams, forwardTiledParams } from '../src/webgpu/index.js';
import { forwardMatrixRows, forwardMatrixWorkgroupBytes } from '../src/webgpu/kernels/forward-matrix.js';
import { forwardTiledWorkgroupBytes } from '../src/webgpu/kernels/forward-tiled.js';
import type { Case } from '../src/cli/results.js';
import type { Gpu } from '../src/webgpu/device.js';

const base: Case = { B: 1, H: 1, N: 256, D: 64, causal: false, dtype: 'f32' };

test('streamedRows: every block streams all N rows, or the causal triangle in whole tiles', () => {
  assert.equal(streamedRows(256, 128, 128, false, true), 2 * 256);
  // Causal, Br = Bc = 128: query block 0 sees key block 0 (128 rows), block 1 sees both (256).
  assert.equal(streamedRows(256, 128, 128, true, true), 128 + 256);
  // Key blocks owning 128 keys: block 0 is seen by all 256 query rows, block 1 by rows 128..255.
  assert.equal(streamedRows(256, 128, 128, true, false), 256 + 128);
  // Tiles of 64 keys for query blocks of 128: block 0 (rows 0..127) loads 2 key tiles, block 1 loads 4.
  assert.equal(streamedRows(256, 128, 64, true, true), 128 + 256);
});

test('cpu flash forward: Q read and O written once, L written, K and V once per query block', () => {
  const g = cpuGeometry(base, 2);
  const { Br, Bc } = tileSizes(64);
  assert.deepEqual([g.flash.forward.Br, g.flash.forward.Bc], [Br, Bc], 'the tiles are the cpu backend’s own');
  assert.equal(Br, 128);
  // 4-byte elements: Q + O = 2·256·64·4, L = 256·4, K and V for 2 query blocks = 2·(2·256)·64·4.
  const expected = 2 * 256 * 64 * 4 + 256 * 4 + 2 * 2 * 256 * 64 * 4;
  assert.equal(flashForwardBytes(base, g), expected);
  const io = ioOf({ ...base, B: 2, H: 3 }, 'flash', 'forward', g);
  assert.equal(io.bytes, 6 * expected, 'times B·H');
  assert.ok(io.onChipBytes! > 0 && /Br=128/.test(io.model));
});

test('cpu standard forward: q, k, v, out once plus four N×N passes (S written, read twice, P written)', () => {
  const g = cpuGeometry(base, 2);
  assert.equal(standardForwardBytes(base, g), 4 * 64 * 4 * 256 + 4 * 256 + 4 * 256 * 256 * 4);
  const f16 = cpuGeometry({ ...base, dtype: 'f16' }, 2);
  assert.equal(f16.standard.scoreBytes, 2, 'f16 inputs: the cpu standard stores S and P in f16');
});

test('standard grows with N², flash with N²·d/Br: at large N flash moves fewer bytes', () => {
  const g = cpuGeometry({ ...base, N: 4096 }, 2);
  const flash = ioOf({ ...base, N: 4096 }, 'flash', 'forward+backward', g).bytes;
  const standard = ioOf({ ...base, N: 4096 }, 'standard', 'forward+backward', g).bytes;
  assert.ok(flash < standard, `${flash} < ${standard}`);
  const g2 = cpuGeometry({ ...base, N: 8192 }, 2);
  const ratio = ioOf({ ...base, N: 8192 }, 'standard', 'forward', g2).bytes / ioOf({ ...base, N: 4096 }, 'standard', 'forward', g).bytes;
  assert.ok(ratio > 3.9 && ratio < 4.01, `standard ×${ratio} for 2× N`);
});

test('webgpu: tiles from forwardParams within the device limit; f16 halves the element bytes', () => {
  const limits = { maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256, maxComputeWorkgroupSizeX: 256 } as GPUSupportedLimits;
  const gpu = { limits } as Gpu;
  const g = webgpuGeometry({ ...base, dtype: 'f16' }, gpu);
  assert.equal(g.elementBytes, 2);
  assert.ok(g.flash.forward.onChipBytes <= 16384, 'M fits the workgroup memory');
  const big = webgpuGeometry(base, { limits: { ...limits, maxComputeWorkgroupStorageSize: 49152 } as GPUSupportedLimits } as Gpu);
  assert.ok(big.flash.forward.Br * big.flash.forward.Bc >= g.flash.forward.Br * g.flash.forward.Bc, 'more workgroup memory, tiles at least as large');
  // WG = 128 threads: a matmul column tile is 32 wide, so PV reads P twice at D = 64.
  assert.equal(g.standard.forwardPasses, 5 + 2);
  assert.equal(g.standard.backwardPasses, 6 + 3 * 2);
  assert.equal(g.standard.scoreBytes, 2, 'f16 inputs: the webgpu standard stores S and P in f16');
  assert.equal(big.standard.scoreBytes, 4);
});

test('webgpu: the subgroup-matrix kernels\' tiles where they run (f16 on an adapter with f16 matrices)', () => {
  const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 256, maxComputeWorkgroupSizeX: 256 } as GPUSupportedLimits;
  const gpu = { limits, matrixF16: true, subgroupSize: 32 } as Gpu;
  const c: Case = { ...base, dtype: 'f16', N: 4096 };
  const g = webgpuGeometry(c, gpu);
  const fm = forwardMatrixParams(problemOf(c, 'flash', 'webgpu'), gpu);
  assert.ok(fm, 'the matrix forward applies');
  assert.deepEqual(g.flash.forward, { Br: forwardMatrixRows(fm), Bc: fm.Bc, onChipBytes: forwardMatrixWorkgroupBytes(fm) });
  const bm = backwardMatrixParams(problemOf(c, 'flash', 'webgpu'), gpu);
  assert.ok(bm, 'the matrix backward applies');
  assert.equal(g.flash.backwardKV.Bc, 16 * bm.kv.W, 'a dK/dV workgroup owns 16 keys per warp');
  const f32 = webgpuGeometry({ ...base, N: 4096 }, gpu);
  assert.notDeepEqual(f32.flash.forward, g.flash.forward, 'f32 runs the tiled kernel');
});

test("webgpu: the forward's IO counts read the tiled kernel's tiles where it runs (f32)", () => {
  const limits = { maxComputeWorkgroupStorageSize: 49152, maxComputeInvocationsPerWorkgroup: 256, maxComputeWorkgroupSizeX: 256 } as GPUSupportedLimits;
  const gpu = { limits, matrixF16: true, subgroupSize: 32 } as Gpu;
  for (const D of [64, 128]) {
    const c: Case = { ...base, D, N: 4096 };
    const t = forwardTiledParams(problemOf(c, 'flash', 'webgpu'), gpu);
    assert.ok(t, `the tiled forward applies at D = ${D}`);
    assert.deepEqual(webgpuGeometry(c, gpu).flash.forward, { Br: t.Br, Bc: t.Bc, onChipBytes: forwardTiledWorkgroupBytes(t) });
    assert.ok(forwardTiledWorkgroupBytes(t) <= 49152);
  }
});
