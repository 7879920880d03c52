#!/usr/bin/env bash
# On the GPU machine (through the device tool; see ../shared/gpu/README.md): the webgpu tests, then the
# benchmarks, logs under $OUT. Usage: bash .gpu/enter.sh bash bench/gpu.sh
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
node dist/src/cli/main.js info 2>&1 | tee "$out/info.txt"
FLASHATTN_REQUIRE_WEBGPU=1 FLASHATTN_TEST_BACKENDS=webgpu \
  node --test --test-concurrency=4 --test-reporter=spec dist/test/*.test.js > "$out/tests.txt" 2>&1
echo "tests exit $?"; grep -E '^ℹ (tests|pass|fail|skipped)' "$out/tests.txt"
# Issue 3's comparison point: B=4, H=16, N=4096, D=128, f16, flash against the standard baseline.
node dist/src/cli/main.js bench --backend webgpu --dtype f16 --batch 4 --heads 16 --dim 128 --n 4096 --repeats 5 --json "$out/std-4096.json" 2>/dev/null | tee "$out/std-4096.txt"
# FlashAttention's benchmark shapes: B·N = 16384, H·D = 2048.
for D in 64 128; do
  for N in 1024 2048 4096 8192 16384; do
    node dist/src/cli/main.js bench --backend webgpu --dtype f16 --batch $((16384 / N)) --heads $((2048 / D)) --dim $D --n $N \
      --repeats 3 --no-standard 2>/dev/null | grep -E '│ +[0-9]+ │' | sed "s/^/D=$D /"
  done
done | tee "$out/sweep.txt"
