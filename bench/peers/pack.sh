#!/usr/bin/env bash
# Pack onnxruntime-web's WebGPU bundle for the GPU machine (which has no network): the files that
# onnxruntime-decode.mjs loads, ort.webgpu.bundle.min.mjs and ort-wasm-simd-threaded.asyncify.{mjs,wasm},
# into bench/peers/ort-web.tar.xz (about 4 MB, git-ignored). Run here, in the project root:
#   bash bench/peers/pack.sh
# then carry bench/peers/ort-web.tar.xz with .gpu and dist; bench/gpu.sh decode unpacks it and runs the peer.
set -euo pipefail
cd "$(dirname "$0")"
[ -d node_modules/onnxruntime-web ] || npm ci --no-audit --no-fund --ignore-scripts
dist=node_modules/onnxruntime-web/dist
tar -C "$dist" -cJf ort-web.tar.xz ort.webgpu.bundle.min.mjs ort-wasm-simd-threaded.asyncify.mjs ort-wasm-simd-threaded.asyncify.wasm
echo "packed: bench/peers/ort-web.tar.xz ($(du -h ort-web.tar.xz | cut -f1), onnxruntime-web $(node -p "require('./$dist/../package.json').version"))"
