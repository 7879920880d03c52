#!/usr/bin/env bash
# gpt2speed: GPT-2 small decode before (main 01c6766) and after (branch gpt2speed) on the GPU machine.
set -u
out=${OUT:-/tmp/out}; mkdir -p "$out"
model=/tmp/gpt2-small
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
s() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$out/log.txt"; }
s env; { date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; node --version; node -e 'console.log("webgpu", require("./node_modules/webgpu/package.json").version)'; } >> "$out/log.txt" 2>&1
s make; timeout 80 python3 bench/models/gpt2_speed_hf.py make "$model" > "$out/hf.jsonl" 2> "$out/hf.err"; s "make exit $?"
for v in after before; do
  d=report/gpt2speed/$v/dist/bench/models
  for b in 1 16; do
    s "profile $v $b"; timeout 40 node $d/gpt2-profile.js --model "$model" --dtype f16 --batch $b --prompt 512 --steps 30 >> "$out/profile-$v.jsonl" 2>> "$out/profile-$v.err"; s "exit $?"
  done
  s "speed $v"; timeout 75 node $d/gpt2-speed.js --model "$model" --samples 3 > "$out/ours-$v.jsonl" 2> "$out/ours-$v.err"; s "exit $?"
done
s done
cat "$out"/profile-*.jsonl; grep -hE '"kind":"(decode|check|prefill)' "$out"/ours-*.jsonl | cut -c1-300
