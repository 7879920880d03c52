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
#   bash .gpu/enter.sh bash bench/gpu.sh decode [bench options]
#                                                  PyTorch's SDPA decode (bench/anchors/pytorch_decode.py), then
#                                                  onnxruntime-web's GroupQueryAttention where bench/peers/ort-web.tar.xz
#                                                  was carried (bash bench/peers/pack.sh makes it), then
#                                                  `flashattn bench --suite decode` beside both
#                                                  (DECODE_ANCHOR, ORT_ANCHOR=file.jsonl: a peer's lines from an
#                                                  earlier run instead; ORT=0: no onnxruntime; TORCH_TIMEOUT,
#                                                  ORT_TIMEOUT: seconds each peer may take, default 200 and 120,
#                                                  since a device call lasts at most 10 minutes)
# TAR=1: everything under $OUT packed into $OUT/all.tar.gz at the end, the rest removed (a device call
# brings back only a few files: one run lost its decode.txt and report that way).
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
  decode)
    shift
    # Only complete JSON lines of a peer's output (a peer stopped by its timeout may leave half a line).
    keep() { grep -E '^\{.*\}$' "$1" > "$2" || true; }
    if [ -n "${DECODE_ANCHOR:-}" ]; then cp "$DECODE_ANCHOR" "$out/decode-torch.jsonl"
    else
      timeout "${TORCH_TIMEOUT:-200}" python3 bench/anchors/pytorch_decode.py > "$out/decode-torch.raw" 2> "$out/decode-torch.err"
      echo "pytorch exit $?"; keep "$out/decode-torch.raw" "$out/decode-torch.jsonl"
    fi
    anchors=()
    grep -q '"Nk"' "$out/decode-torch.jsonl" 2>/dev/null && anchors+=(--anchor "$out/decode-torch.jsonl")
    if [ -n "${ORT_ANCHOR:-}" ]; then cp "$ORT_ANCHOR" "$out/decode-ort.jsonl"; anchors+=(--anchor "$out/decode-ort.jsonl")
    elif [ "${ORT:-1}" != 0 ] && [ -f bench/peers/ort-web.tar.xz ]; then
      mkdir -p /tmp/ort-web && tar -C /tmp/ort-web -xJf bench/peers/ort-web.tar.xz
      ORT_WEB=/tmp/ort-web timeout "${ORT_TIMEOUT:-120}" node bench/peers/onnxruntime-decode.mjs > "$out/decode-ort.raw" 2> "$out/decode-ort.err"
      echo "onnxruntime exit $?"; keep "$out/decode-ort.raw" "$out/decode-ort.jsonl"
      grep -q '"Nk"' "$out/decode-ort.jsonl" && anchors+=(--anchor "$out/decode-ort.jsonl")
    fi
    flashattn bench --suite decode ${anchors[@]+"${anchors[@]}"} --out "$out/decode" "$@" > "$out/decode.txt" 2> "$out/decode.err"
    echo "bench exit $?"; sed -n '/^Decode: GB\/s/,/^heads:/p' "$out/decode.txt"; tail -n 3 "$out/decode.txt" ;;
  *) echo "usage: bench/gpu.sh tests|product|default|decode" >&2; exit 2 ;;
esac
if [ "${TAR:-0}" = 1 ]; then
  tar -czf /tmp/gpu-out.tar.gz -C "$out" . && find "$out" -mindepth 1 -delete && mv /tmp/gpu-out.tar.gz "$out/all.tar.gz"
  echo "packed: $out/all.tar.gz"
fi
