#!/usr/bin/env bash
# Candidates for the `best` preset, on the bundled dlm-tiny, one GPU run: learn2pd (learned_filter + EoTP),
# Fast-dLLM, and the learned filter / threshold 0.9 rules with and without the dual cache. Run while `best` was
# learned_filter + dual without EoTP (so its `best` row is that); BENCHMARKS.md says why EoTP went back in.
# Results go to $OUT (default: results/gpu-candidates). Run from the repository root; nothing is installed.
set -u
OUT=${OUT:-results/gpu-candidates}
mkdir -p "$OUT"
export PYTHONPATH=.
timeout 280 python3 -m dlm bench --configs best learn2pd fast-dllm --schedulers learned_filter threshold:threshold=0.9 \
    --caches none dual --n 64 --code-n 64 --gen-length 32 128 --batch-size 64 --repeats 3 --warmup-rows 64 \
    --device cuda --out "$OUT/candidates" > "$OUT/candidates.log" 2>&1
echo "rc=$?"
tar -C "$OUT" -czf "$OUT/candidates.tgz" candidates && rm -rf "$OUT/candidates"
