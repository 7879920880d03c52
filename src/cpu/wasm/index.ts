/**
 * The cpu backend's WebAssembly kernels (issue 19): the forward and the backward of flash.ts in 128-bit SIMD, with the
 * fused multiply-add of relaxed SIMD where the runtime has it (chosen at run time, see wasmSupport), every
 * variant included (score-mod.ts in the modules, variants.ts's hooks between their functions), and the
 * split-KV decode kernel of ../decode.ts on the forward's tile functions (decode.ts here).
 * Where WebAssembly SIMD is unavailable, the JavaScript kernels of flash.ts run. setCpuKernels('js') makes
 * every call take them (tests and measurements compare the two).
 */
export { wasmBackward } from './backward.js';
export { wasmDecode } from './decode.js';
export { wasmForward } from './forward.js';
export { setWasmVariant, wasmSupport } from './instance.js';

let kernels: 'wasm' | 'js' = 'wasm';

/** The kernels later cpu calls use: 'wasm' (where they can run, the default) or 'js' (flash.ts's). */
export function setCpuKernels(k: 'wasm' | 'js'): void {
  kernels = k;
}

export function cpuKernels(): 'wasm' | 'js' {
  return kernels;
}
