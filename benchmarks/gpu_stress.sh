#!/usr/bin/env bash
# The stress figures of BENCHMARKS.md ("Where parallel decoding breaks") for the bundled dlm-tiny, in one run
# (from the repository root):  bash benchmarks/gpu_stress.sh OUT
#   1. dlm bench choose-best      - the stress preset on the val split (tuning lengths and seeds), the rule of
#                                   docs/benchmarks.md; rewrites dlm/bench/best.json (copied to OUT/best.json)
#   2. dlm bench --preset stress  - every configuration on the test split (evaluation lengths and seeds, disjoint
#                                   from the tuning ones), with best as just chosen: OUT/stress/results.{json,md}
# and prints the tables of `best` against the reference and where each rule starts to fail.
# Settings (environment): DEVICE (cuda), N_VAL (64 per family), N_TEST (200 per family), BEST (the file choose-best
# writes and the preset reads: dlm/bench/best.json; point it elsewhere for a dry run, then step 2 runs the old best).
set -u
OUT=${1:?usage: bash benchmarks/gpu_stress.sh OUT}
DEVICE=${DEVICE:-cuda}
N_VAL=${N_VAL:-64}
N_TEST=${N_TEST:-200}
BEST=${BEST:-dlm/bench/best.json}
mkdir -p "$OUT"
export PYTHONPATH=.
extra=()
if [ "$DEVICE" = cpu ]; then extra=(--threads 1); fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU";
  python3 -c "import torch; print('torch', torch.__version__)"; } > "$OUT/device.txt"

timeout 280 python3 -m dlm bench choose-best --n "$N_VAL" --device "$DEVICE" "${extra[@]}" \
    --run-out "$OUT/stress-val" --out "$BEST" > "$OUT/choose.txt" 2> "$OUT/choose.log"
echo "choose-best exit $?" >> "$OUT/choose.log"
cp "$BEST" "$OUT/best.json"
cat "$OUT/choose.txt"

timeout 280 python3 -m dlm bench --preset stress --n "$N_TEST" --device "$DEVICE" "${extra[@]}" \
    --out "$OUT/stress" > "$OUT/stress.log" 2>&1
echo "stress exit $?" >> "$OUT/stress.log"
sed -n '/^### `best` against the reference/,/^### By answer length/p;/^### Where each rule starts to fail/,/^### Learned/p' \
    "$OUT/stress/results.md"
