#!/usr/bin/env bash
# device call 1 of session 4 (not committed)
out=${OUT:-/tmp/out}; mkdir -p $out
start=$(date +%s)
left() { echo $(( 570 - ($(date +%s) - start) )); }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $out/gpu.txt 2>&1
timeout 200 node dist/bench/variants/forward-matrix.js full '{"128":[{"Bc":32,"RF":1,"W":8,"PAD":8},{"Bc":16,"RF":1,"W":16,"PAD":8},{"Bc":32,"RF":2,"W":4,"PAD":8}],"64":[{"Bc":16,"RF":1,"W":8,"PAD":8},{"Bc":32,"RF":1,"W":4,"PAD":8}]}' > $out/fwd-sweep.txt 2>&1
echo "fwd sweep rc $? at $(( $(date +%s) - start ))s"
FLASHATTN_REQUIRE_WEBGPU=1 FLASHATTN_TEST_BACKENDS=webgpu timeout 120 node --test --test-reporter=spec dist/test/edge.test.js > $out/edge.txt 2>&1
echo "edge rc $? at $(( $(date +%s) - start ))s"; grep -E "^ℹ (pass|fail)|✖" $out/edge.txt | head
timeout 180 node dist/bench/variants/backward-matrix.js '[{"Bc":16,"RF":1,"W":8,"PAD":8}]' '[{"QF":1,"W":8,"PAD":8},{"QF":1,"W":4,"PAD":8},{"QF":2,"W":4,"PAD":8}]' > $out/bwd.txt 2>&1
echo "bwd rc $? at $(( $(date +%s) - start ))s"
timeout 60 node dist/src/cli/main.js bench --sweeps N --n 4096 --dim 128 --no-standard --no-encoder --repeats 5 --out /tmp/probe > $out/bench-probe.txt 2>&1
echo "probe rc $? at $(( $(date +%s) - start ))s"
timeout $(left) node dist/bench/variants/forward-tiled.js > $out/tiled.txt 2>&1
echo "tiled rc $? at $(( $(date +%s) - start ))s"
