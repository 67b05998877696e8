"""The non-product pieces of one LLaDA-8B layer at 1,024 and 12,288 fed positions, on one GPU: the key/value
write of k and v (``index_copy_`` against the row copy as 8-byte words), RoPE (the Triton kernel, the compiled
function and the eager one), SwiGLU (the Triton kernel on views of a joined gate/up output and on two separate
tensors, the compiled function, the eager one; ``--swiglu-sweep``: the kernel's tilings), RMSNorm and a residual
add as ``fused_ops`` runs them; and a copy of SwiGLU's bytes (read two thirds, write one) for the bandwidth.

    python benchmarks/micro_elementwise.py --out results/micro_elementwise.json [--positions 32 1024 12288]

Each figure is the mean of 50 back-to-back calls between two CUDA events, in microseconds: where a call's host
overhead exceeds its kernel (small shapes), the host overhead is what shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dlm.models import elementwise as ew
from dlm.models import rope_kernel, swiglu_kernel
from dlm.models.rows import copy_rows
from dlm.models.transformer import rope_cos_sin

HEADS, HEAD_DIM, MLP = 32, 128, 12288


def timed_us(fn, calls: int = 50) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(calls):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / calls * 1e3


def measure(positions: int, sweep: bool = False) -> dict:
    dev, dt = "cuda", torch.bfloat16
    ops = ew.fused_ops(("micro_elementwise",))
    width = HEADS * HEAD_DIM
    qkv = torch.randn(1, positions, 3 * width, device=dev, dtype=dt)  # a joined projection's output
    q, k, v = (t.view(1, positions, HEADS, HEAD_DIM) for t in qkv.split(width, -1))
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cos, sin = rope_cos_sin(torch.arange(positions, device=dev).remainder(384).unsqueeze(0), HEAD_DIM, 5e5)
    compiled = ew._compiled(ew.rope)
    kt, vt = ops.rope(q, k, cos, sin, True)[1][0].transpose(0, 1), v[0]  # (T, heads, D), as the attention has them
    pool = torch.zeros(32 * 400, HEADS, HEAD_DIM, device=dev, dtype=dt)
    rows = torch.arange(positions, device=dev) + torch.arange(positions, device=dev) // 384 * 16
    gate, up = torch.randn(1, positions, 2 * MLP, device=dev, dtype=dt).split(MLP, -1)
    gate_s, up_s = gate.contiguous(), up.contiguous()  # a refresh's separate gate and up products
    swiglu_compiled = ew._compiled(ew.swiglu)
    moved = 3 * positions * MLP // 2  # a copy of this many values moves SwiGLU's bytes (2 read + 1 written)
    src, dst = torch.empty(moved, device=dev, dtype=dt), torch.empty(moved, device=dev, dtype=dt)
    x = torch.randn(1, positions, width, device=dev, dtype=dt)
    weight = torch.ones(width, device=dev, dtype=dt)
    out = {
        "kv_write_index_copy_us": timed_us(lambda: (pool.index_copy_(0, rows, kt), pool.index_copy_(0, rows, vt))),
        "kv_write_words_us": timed_us(lambda: (copy_rows(pool, rows, kt), copy_rows(pool, rows, vt))),
        "rope_compiled_us": timed_us(lambda: compiled(q, k, cos, sin, True)),
        "rope_eager_us": timed_us(lambda: ew.rope(q, k, cos, sin, True)),
        "swiglu_us": timed_us(lambda: ops.swiglu(gate, up)),
        "swiglu_separate_us": timed_us(lambda: ops.swiglu(gate_s, up_s)),
        "swiglu_compiled_us": timed_us(lambda: swiglu_compiled(gate_s, up_s)),
        "swiglu_eager_us": timed_us(lambda: ew.swiglu(gate_s, up_s)),
        "swiglu_bytes_copy_us": timed_us(lambda: dst.copy_(src)),
        "rmsnorm_us": timed_us(lambda: ops.rms_norm(x, weight, 1e-5)),
        "add_us": timed_us(lambda: x + x),
        "bytes_rope_or_kv_write": 4 * positions * width * 2,
        "bytes_swiglu": 3 * positions * MLP * 2,
    }
    if rope_kernel.applies(q, k, cos, sin):
        out["rope_kernel_us"] = timed_us(lambda: rope_kernel.rope(q, k, cos, sin, True))
    if sweep and swiglu_kernel.applies(gate_s, up_s):
        out["swiglu_sweep"] = swiglu_sweep(gate_s, up_s)
    return out


def swiglu_sweep(gate: torch.Tensor, up: torch.Tensor) -> dict:
    """The SwiGLU kernel's microseconds per tiling (columns per program x warps), its module's own restored."""
    saved = swiglu_kernel.BLOCK, swiglu_kernel.NUM_WARPS
    out = {}
    try:
        for block in (512, 1024, 2048, 4096):
            for warps in (2, 4, 8, 16):
                if block // (32 * warps) < 1:
                    continue
                swiglu_kernel.BLOCK, swiglu_kernel.NUM_WARPS = block, warps
                out[f"{block}x{warps}"] = timed_us(lambda: swiglu_kernel.swiglu(gate, up))
    finally:
        swiglu_kernel.BLOCK, swiglu_kernel.NUM_WARPS = saved
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--positions", type=int, nargs="+", default=[1024, 12288])
    ap.add_argument("--swiglu-sweep", action="store_true", help="time the SwiGLU kernel's tilings too")
    args = ap.parse_args()
    results = {"device": torch.cuda.get_device_name()}
    for positions in args.positions:
        results[positions] = measure(positions, args.swiglu_sweep)
        print(positions, json.dumps(results[positions]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
