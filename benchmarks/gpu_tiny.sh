#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md for the bundled dlm-tiny, in one run (run from the repository root):
#   1. examples/filter_bench.py sweep  - thresholds of `threshold` and `learned_filter` on the val split
#   2. examples/filter_bench.py bench  - learned_filter vs threshold vs the reference on the test split
#   3. dlm bench --preset full         - every named configuration + the scheduler x cache grid
#   4. dlm bench (grid)                - learned_filter and threshold 0.9, with and without dual, + EoTP
# Results go to $OUT (default: results/gpu-tiny). The machine has the packages; nothing is installed.
set -u
OUT=${OUT:-results/gpu-tiny}
mkdir -p "$OUT"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>&1
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__)" >> "$OUT/device.txt"

timeout 150 python3 examples/filter_bench.py sweep --device cuda --n 50 > "$OUT/filter_sweep.md" 2> "$OUT/filter.log"
tuned=$(sed -n 's/.*\*\*threshold tuned: \([0-9.]*\)\*\*.*/\1/p' "$OUT/filter_sweep.md" | head -1)
timeout 150 python3 examples/filter_bench.py bench --device cuda --n 200 --tuned-threshold "${tuned:-0.95}" --filter-thresholds 0.95 0.98 --code-n 64 \
    --json "$OUT/filter_bench.json" > "$OUT/filter_bench.md" 2>> "$OUT/filter.log"

timeout 270 python3 -m dlm bench --preset full --device cuda --out "$OUT/full" > "$OUT/bench.log" 2>&1
tar -C "$OUT" -czf "$OUT/full.tgz" full && rm -rf "$OUT/full"

# 4. the learned filter and the threshold rule, each with and without the dual cache, all with EoTP
timeout 150 python3 -m dlm bench --configs best fast-dllm learn2pd --schedulers learned_filter threshold:threshold=0.9 \
    --caches none dual --set eotp=true --n 64 --code-n 64 --gen-length 32 128 --batch-size 64 --repeats 3 \
    --warmup-rows 64 --device cuda --out "$OUT/eotp" > "$OUT/eotp.log" 2>&1
tar -C "$OUT" -czf "$OUT/eotp.tgz" eotp && rm -rf "$OUT/eotp"
