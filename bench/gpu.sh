#!/usr/bin/env bash
# On a machine with a GPU, after npm ci and npm run build; logs and reports under $OUT (default /tmp/out).
# The developers run it on their GPU machine through .gpu/enter.sh (their device tool's wrapper), e.g.:
#   bash .gpu/enter.sh bash bench/gpu.sh tests     the whole test spec on the webgpu backend
#   bash .gpu/enter.sh bash bench/gpu.sh product [bench options]
#                                                  PyTorch's SDPA figures, then the product grid beside them
#                                                  (SDPA_ANCHOR=file.jsonl: PyTorch's lines from an earlier run instead)
#   bash .gpu/enter.sh bash bench/gpu.sh default [bench options]
#                                                  PyTorch's encoder (docs/encoder-experiment.md), then `flashattn bench` beside it
#                                                  (SEED_ANCHOR=file.jsonl: PyTorch's lines from an earlier run instead)
# The PyTorch scripts are bench/anchors/; the machine's python3 has torch.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
flashattn() { node dist/src/cli/main.js "$@"; }
case "${1:-}" in
  tests)
    FLASHATTN_REQUIRE_WEBGPU=1 FLASHATTN_TEST_BACKENDS=webgpu \
      node --test --test-concurrency=8 --test-reporter=spec dist/test/*.test.js > "$out/tests.txt" 2>&1
    echo "tests exit $?"; grep -E '^ℹ (tests|pass|fail|skipped|duration)' "$out/tests.txt" ;;
  product)
    shift
    if [ -n "${SDPA_ANCHOR:-}" ]; then cp "$SDPA_ANCHOR" "$out/sdpa.jsonl"
    else python3 bench/anchors/pytorch_sdpa.py > "$out/sdpa.jsonl" 2> "$out/sdpa.err"; fi
    flashattn bench --suite product --anchor "$out/sdpa.jsonl" --out "$out/product" "$@" > "$out/product.txt" 2> "$out/product.err"
    echo "bench exit $?"; tail -n 60 "$out/product.txt" ;;
  default)
    shift
    if [ -n "${SEED_ANCHOR:-}" ]; then cp "$SEED_ANCHOR" "$out/seed.jsonl"
    else python3 bench/anchors/pytorch_seed_notebook.py > "$out/seed.jsonl" 2> "$out/seed.err"; fi
    flashattn bench --anchor "$out/seed.jsonl" --out "$out/default" "$@" > "$out/default.txt" 2> "$out/default.err"
    echo "bench exit $?"; tail -n 60 "$out/default.txt" ;;
  *) echo "usage: bench/gpu.sh tests|product|default" >&2; exit 2 ;;
esac
