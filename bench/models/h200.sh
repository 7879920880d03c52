#!/usr/bin/env bash
# GPT-2 on the GPU machine in one call (python3 with torch and transformers, no network; node from .gpu/):
#   1. the test fixture: python3 bench/models/make_gpt2_fixture.py (on the CPU), as $OUT/gpt2-tiny.tar
#   2. GPT-2 small (124M) with random weights made by transformers (gpt2_speed_hf.py make), then its decode
#      and prefill times with transformers eager, ours (dist/bench/models/gpt2-speed.js, webgpu f16), and
#      transformers with torch.compile (static cache) last, since its compilations may not finish in time.
# Each step has its own time cap, so that a slow one leaves the others' results. Run after npm run build,
# through .gpu/enter.sh:   bash .gpu/enter.sh bash bench/models/h200.sh
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
log="$out/log.txt"
model=/tmp/gpt2-small
step() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$log"; }

step "environment"
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import torch, transformers, safetensors; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__, "safetensors", safetensors.__version__)'
  echo "node $(node --version)"
  node -e 'console.log("webgpu", require("./node_modules/webgpu/package.json").version)'
  cat COMMIT 2>/dev/null || true
} >> "$log" 2>&1

step "1. fixture"
root=$PWD
mkdir -p /tmp/fixture
(cd /tmp/fixture && timeout "${FIXTURE_TIMEOUT:-60}" python3 "$root/bench/models/make_gpt2_fixture.py" test/fixtures/gpt2-tiny) >> "$log" 2>&1
step "fixture exit $?"
[ -d /tmp/fixture/test/fixtures/gpt2-tiny ] && tar -C /tmp/fixture/test/fixtures -cf "$out/gpt2-tiny.tar" gpt2-tiny

step "2. GPT-2 small checkpoint"
timeout "${MAKE_TIMEOUT:-60}" python3 bench/models/gpt2_speed_hf.py make "$model" > "$out/hf.jsonl" 2> "$out/hf.err"
step "make exit $?"
ls -la "$model" >> "$log" 2>&1

step "3. transformers eager"
timeout "${EAGER_TIMEOUT:-90}" python3 bench/models/gpt2_speed_hf.py eager "$model" >> "$out/hf.jsonl" 2>> "$out/hf.err"
step "eager exit $?"

step "4. flashattn"
timeout "${OURS_TIMEOUT:-170}" node dist/bench/models/gpt2-speed.js --model "$model" > "$out/ours.jsonl" 2> "$out/ours.err"
step "ours exit $?"

step "5. transformers torch.compile"
timeout "${COMPILE_TIMEOUT:-100}" python3 bench/models/gpt2_speed_hf.py compile "$model" > "$out/hf-compile.jsonl" 2> "$out/hf-compile.err"
step "compile exit $?"

step "done"
cat "$out/hf.jsonl" "$out/ours.jsonl" "$out/hf-compile.jsonl" 2>/dev/null | grep -E '"kind": ?"(decode|prefill|attention|check)' | cut -c1-400
