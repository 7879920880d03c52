#!/usr/bin/env bash
out=${OUT:-/tmp/out}; mkdir -p $out
start=$(date +%s)
t() { echo "$1 rc $2 at $(( $(date +%s) - start ))s"; }
timeout 260 node dist/bench/variants/backward-matrix.js '[{"Bc":16,"RF":1,"W":8,"PAD":8}]' '[{"QF":1,"W":8,"PAD":8},{"QF":1,"W":4,"PAD":8},{"QF":2,"W":4,"PAD":8}]' > $out/bwd.txt 2>&1; t bwd $?
FLASHATTN_REQUIRE_WEBGPU=1 FLASHATTN_TEST_BACKENDS=webgpu timeout 60 node --test --test-reporter=spec dist/test/edge.test.js > $out/edge.txt 2>&1; t edge $?
grep -E "^ℹ (pass|fail)|✖" $out/edge.txt | head -4
for dt in f16 f32; do
timeout 90 node dist/src/cli/main.js bench --sweeps N --n 4096 --dim 128 --dtype $dt --no-standard --no-encoder --repeats 5 --out /tmp/probe-$dt > $out/bench-probe-$dt.txt 2>&1; t probe-$dt $?
done
timeout 60 node dist/bench/variants/forward-matrix.js quick '[{"Bc":32,"RF":1,"W":8,"PAD":8}]' 128 > $out/fwd-quick.txt 2>&1; t fwdq $?
