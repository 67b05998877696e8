"""A layer's gate/up products with SwiGLU on one Hopper GPU: cuBLAS's two products then dlm's SwiGLU kernel (what
runs without dlm.models.swiglu_product_kernel) against that one kernel, at LLaDA-8B's and Dream-7B's widths and
the engine's row counts; each in a CUDA graph over four layers' weights, the two measured in turn twice (the
faster of each kept: the GPU's clock moves under a long run of products), microseconds per layer; with whether
the kernel's output equals the reference's bit for bit.

    python benchmarks/micro_swiglu_product.py --out results/micro_swiglu_product.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from micro_products import graph_us

from dlm.models import elementwise as ew
from dlm.models import swiglu_kernel
from dlm.models import swiglu_product_kernel as kernel
from dlm.models.joined import JoinedLinear

GEOMETRIES = {"llada-8b": (4096, 12288), "dream-7b": (3584, 18944)}  # (hidden, MLP width)
ROWS = (256, 512, 1024, 2048, 4096, 12288)  # below the kernel's minimum too, to show why it is the minimum
LAYERS = 4


def layers(depth: int, width: int) -> list[JoinedLinear]:
    out = []
    for _ in range(LAYERS):
        parts = [torch.nn.Linear(depth, width, bias=False, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
        out.append(JoinedLinear(("gate", "up"), parts).requires_grad_(False))
    return out


def reference(module: JoinedLinear, x: torch.Tensor) -> torch.Tensor:
    gate, up = module.weight.split(module.sizes)
    return swiglu_kernel.swiglu(F.linear(x, gate), F.linear(x, up))


def measure(name: str, depth: int, width: int, rows: int, modules: list[JoinedLinear]) -> dict:
    x = torch.randn(rows, depth, device="cuda", dtype=torch.bfloat16)
    same = torch.equal(kernel.swiglu_product(modules[0], x), ew.swiglu(*F.linear(x, modules[0].weight).split(width, -1)))
    times = {"reference": [], "kernel": []}
    for _ in range(2):
        times["reference"].append(graph_us(lambda: [reference(m, x) for m in modules], LAYERS))
        times["kernel"].append(graph_us(lambda: [kernel.swiglu_product(m, x) for m in modules], LAYERS))
    ref, fused = min(times["reference"]), min(times["kernel"])
    row = {"geometry": name, "rows": rows, "reference_us": ref, "kernel_us": fused, "kernel_over_reference": fused / ref,
           "bits_equal": same, "tflops_kernel": 2 * rows * depth * 2 * width / fused / 1e6}
    print(f"{name} {rows:6d} rows: cuBLAS + SwiGLU kernel {ref:8.1f} us, one kernel {fused:8.1f} us "
          f"({fused / ref:.3f}x, {row['tflops_kernel']:.0f} TFLOP/s), bits equal: {same}", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results/micro_swiglu_product.json"))
    ap.add_argument("--rows", type=int, nargs="+", default=list(ROWS))
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": []}
    for name, (depth, width) in GEOMETRIES.items():
        modules = layers(depth, width)
        for m in modules:
            torch.nn.init.normal_(m.weight, std=depth ** -0.5)
        for rows in args.rows:
            results["rows"].append(measure(name, depth, width, rows, modules))
        del modules
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
