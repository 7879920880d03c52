#!/usr/bin/env bash
# On the GPU machine (through the device tool; see ../shared/gpu/README.md), logs under $OUT:
#   bash .gpu/enter.sh bash bench/gpu.sh tests   the whole test spec on the webgpu backend
#   bash .gpu/enter.sh bash bench/gpu.sh bench   flash against the standard baseline, then the shape sweep
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
flashattn() { node dist/src/cli/main.js "$@"; }
case "${1:-}" in
  tests)
    FLASHATTN_REQUIRE_WEBGPU=1 FLASHATTN_TEST_BACKENDS=webgpu \
      node --test --test-concurrency=8 --test-reporter=spec dist/test/*.test.js > "$out/tests.txt" 2>&1
    echo "tests exit $?"; grep -E '^ℹ (tests|pass|fail|skipped|duration)' "$out/tests.txt" ;;
  bench)
    flashattn info | tee "$out/info.txt"
    # B=4, H=16, N=4096, D=128, f16: flash against the standard baseline (time and peak memory).
    flashattn bench --backend webgpu --dtype f16 --batch 4 --heads 16 --dim 128 --n 4096 --repeats 5 \
      --json "$out/std-4096.json" 2>/dev/null | tee "$out/std-4096.txt"
    # FlashAttention's benchmark shapes: B·N = 16384, H·D = 2048; flash only.
    for D in 64 128; do
      for N in 1024 2048 4096 8192 16384; do
        flashattn bench --backend webgpu --dtype f16 --batch $((16384 / N)) --heads $((2048 / D)) --dim $D --n $N \
          --repeats 3 --no-standard 2>/dev/null | grep -E '│ +[0-9]+ │' | sed "s/^/D=$D B=$((16384 / N)) H=$((2048 / D)) /"
      done
    done | tee "$out/sweep.txt" ;;
  *) echo "usage: bench/gpu.sh tests|bench" >&2; exit 2 ;;
esac
