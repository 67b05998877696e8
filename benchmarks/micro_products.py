"""LLaDA-8B's matrix products at the engine's row counts on one GPU: torch's default (``F.linear``, cuBLAS's gemm)
against cuBLASLt (torch's global ``preferred_blas_library("cublaslt")``) and against ``torch.addmm`` with a zero
bias (which torch sends to cuBLASLt's bias epilogue: what dlm.models.skinny does for few rows), each in a CUDA
graph of several calls over distinct weights (as a layer stack reads them), microseconds per call; with whether
cuBLASLt's product equals cuBLAS's bit for bit and the bias route cuBLASLt's.

    python benchmarks/micro_products.py --out results/micro_products.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

# name: (out features, in features)
SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (24576, 4096), "down": (4096, 12288),
          "head": (126464, 4096)}
ROWS = (32, 64, 1024, 1152, 2432, 12288)  # batch 1's block and short refresh, a batch of 32's step, refreshes


def graph_us(fn, calls: int, replays: int = 5) -> float:
    """Microseconds per call of ``fn`` (which makes ``calls`` products) replayed from a CUDA graph."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(2):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / replays / calls * 1e3


def measure(name: str, n: int, k: int, rows: int, weights: list[torch.Tensor]) -> dict:
    calls = len(weights) if rows <= 1152 else 2
    ws = weights[:calls]
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    zero = torch.zeros(n, device="cuda", dtype=torch.bfloat16)
    res = {"cublas": graph_us(lambda: [F.linear(x, w) for w in ws], calls),
           "addmm_zero_bias": graph_us(lambda: [torch.addmm(zero, x, w.t()) for w in ws], calls)}
    before = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library("cublaslt")
    try:
        res["cublaslt"] = graph_us(lambda: [F.linear(x, w) for w in ws], calls)
        lt = F.linear(x, ws[0])
    finally:
        torch.backends.cuda.preferred_blas_library(before)
    ref = F.linear(x, ws[0])
    res["lt_equals_cublas"] = bool(torch.equal(lt, ref))
    res["lt_max_abs_diff"] = (lt.float() - ref.float()).abs().max().item()
    res["addmm_equals_lt"] = bool(torch.equal(torch.addmm(zero, x, ws[0].t()), lt))
    print(name, rows, {key: round(v, 2) if isinstance(v, float) else v for key, v in res.items()}, flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/micro_products.json"))
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for name, (n, k) in SHAPES.items():
        rows = (32, 64) if name == "head" else ROWS
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(4 if name == "head" else 8)]
        for m in rows:
            out[f"{name}_{m}"] = measure(name, n, k, m, weights)
        del weights
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
