#!/usr/bin/env bash
# dlm-tiny on one GPU: the same named configurations loaded plain and with cuda_graphs + fused_kernels, one run
# after the other on the same machine. Results go to $OUT (default: results/gpu-tiny-graphs).
set -u
OUT=${OUT:-results/gpu-tiny-graphs}
mkdir -p "$OUT"
export PYTHONPATH=.
args="--configs fast-dllm learn2pd best lossless-stepwise --n 64 --code-n 64 --gen-length 32 128 --batch-size 64
      --repeats 3 --device cuda --no-plots"
timeout 200 python3 -m dlm bench $args --out "$OUT/plain" > "$OUT/plain.log" 2>&1; echo "plain rc=$?"
timeout 260 python3 -m dlm bench $args --cuda-graphs --fused-kernels --out "$OUT/graphs" > "$OUT/graphs.log" 2>&1
echo "graphs rc=$?"
tar -C "$OUT" -czf "$OUT/results.tgz" plain graphs && rm -rf "$OUT/plain" "$OUT/graphs"
