"""Would a matrix kernel of dlm's own, with SwiGLU fused into it, beat cuBLAS at a layer's gate/up products? An
experiment on one Hopper GPU (not part of the package: it did not pay, BENCHMARKS.md "A gate/up product with
SwiGLU in one Triton kernel").

The kernel here (Triton, TMA descriptors, a persistent grid of one program per multiprocessor) takes tiles of 128
rows x 128 columns of the MLP's input to SwiGLU: it multiplies the rows by 128 columns of the gate weight and the
same 128 columns of the up weight (the two halves of a joined gate/up weight), accumulates in float32 over the
depth in blocks of 64, rounds both accumulators to bfloat16 as the products' outputs are rounded, and applies
:func:`dlm.models.swiglu_kernel.silu_product`, so the two products are never written to memory. Against it: what
the package runs, cuBLAS's two products then dlm's SwiGLU kernel. LLaDA-8B's and Dream-7B's widths, the engine's
row counts; each in a CUDA graph over four layers' weights, the two measured in turn twice (the faster of each
kept: the GPU's clock moves under a long run of products), microseconds per layer; with whether the kernel's
output equals the reference's bit for bit.

    python benchmarks/micro_swiglu_product.py --out results/micro_swiglu_product.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from micro_products import graph_us
from triton.tools.tensor_descriptor import TensorDescriptor

from dlm.models import swiglu_kernel
from dlm.models.swiglu_kernel import silu_product

GEOMETRIES = {"llada-8b": (4096, 12288), "dream-7b": (3584, 18944)}  # (hidden, MLP width)
ROWS = (256, 512, 1024, 2048, 4096, 12288)
LAYERS = 4
BM, BN, BK, STAGES, WARPS, GROUP = 128, 128, 64, 3, 8, 8


@triton.jit
def _tile_position(tile, tiles_m, tiles_n, GROUP: tl.constexpr):
    """Tiles in groups of ``GROUP`` row blocks, column by column within a group."""
    per_group = GROUP * tiles_n
    first_m = (tile // per_group) * GROUP
    size_m = min(tiles_m - first_m, GROUP)
    return first_m + (tile % per_group) % size_m, (tile % per_group) // size_m


@triton.jit(do_not_specialize=["rows"])
def _swiglu_product(x_desc, w_desc, o_desc, rows, width, depth, PROGRAMS: tl.constexpr, BM: tl.constexpr,
                    BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr):
    tiles_m = tl.cdiv(rows, BM)
    tiles_n = tl.cdiv(width, BN)
    for tile in range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS):
        pm, pn = _tile_position(tile, tiles_m, tiles_n, GROUP)
        r, c = pm * BM, pn * BN
        gate = tl.zeros((BM, BN), dtype=tl.float32)
        up = tl.zeros((BM, BN), dtype=tl.float32)
        for k in range(tl.cdiv(depth, BK)):
            x = x_desc.load([r, k * BK])
            gate = tl.dot(x, w_desc.load([c, k * BK]).T, gate)
            up = tl.dot(x, w_desc.load([width + c, k * BK]).T, up)
        out = silu_product(gate.to(tl.bfloat16).to(tl.float32), up.to(tl.bfloat16).to(tl.float32), tl.bfloat16,
                           True)
        o_desc.store([r, c], out.to(tl.bfloat16))


def swiglu_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``silu(x @ gate.T) * (x @ up.T)`` of bfloat16 ``x`` (rows, depth) and a joined ``weight`` (2 x width,
    depth), in one kernel."""
    rows, depth = x.shape
    width = weight.shape[0] // 2
    out = torch.empty(rows, width, dtype=x.dtype, device=x.device)
    descs = (TensorDescriptor.from_tensor(x, [BM, BK]), TensorDescriptor.from_tensor(weight, [BN, BK]),
             TensorDescriptor.from_tensor(out, [BM, BN]))
    programs = torch.cuda.get_device_properties(x.device).multi_processor_count
    tiles = triton.cdiv(rows, BM) * triton.cdiv(width, BN)
    _swiglu_product[(min(programs, tiles),)](*descs, rows, width, depth, PROGRAMS=programs, BM=BM, BN=BN, BK=BK,
                                             GROUP=GROUP, num_stages=STAGES, num_warps=WARPS)
    return out


def reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """What the package runs: cuBLAS's two products (many rows: one per part), then the SwiGLU kernel."""
    gate, up = weight.chunk(2)
    return swiglu_kernel.swiglu(F.linear(x, gate), F.linear(x, up))


def measure(name: str, depth: int, rows: int, weights: list[torch.Tensor]) -> dict:
    x = torch.randn(rows, depth, device="cuda", dtype=torch.bfloat16)
    same = torch.equal(swiglu_product(x, weights[0]), reference(x, weights[0]))
    times = {"reference": [], "kernel": []}
    for _ in range(2):
        times["reference"].append(graph_us(lambda: [reference(x, w) for w in weights], LAYERS))
        times["kernel"].append(graph_us(lambda: [swiglu_product(x, w) for w in weights], LAYERS))
    ref, fused = min(times["reference"]), min(times["kernel"])
    flops = 2 * rows * depth * weights[0].shape[0]
    row = {"geometry": name, "rows": rows, "reference_us": ref, "kernel_us": fused, "kernel_over_reference": fused / ref,
           "bits_equal": same, "tflops_kernel": flops / fused / 1e6}
    print(f"{name} {rows:6d} rows: cuBLAS + SwiGLU kernel {ref:8.1f} us, one kernel {fused:8.1f} us "
          f"({fused / ref:.3f}x, {row['tflops_kernel']:.0f} TFLOP/s), bits equal: {same}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/micro_swiglu_product.json"))
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "rows": []}
    for name, (depth, width) in GEOMETRIES.items():
        weights = [torch.randn(2 * width, depth, device="cuda", dtype=torch.bfloat16) * depth ** -0.5
                   for _ in range(LAYERS)]
        for rows in args.rows:
            results["rows"].append(measure(name, depth, rows, weights))
        del weights
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
