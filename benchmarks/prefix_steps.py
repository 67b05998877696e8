"""Per-step times of the ``prefix`` cache at batch 1 (LLaDA-8B geometry, random bf16 weights), CUDA graphs with
and without the fused kernels, twice each in one process: what a block's first steps cost when its shapes are new
(the first two generations) against when they were seen before (the last two).

    python benchmarks/prefix_steps.py        (one GPU; prints one line per generation)
"""

from __future__ import annotations

import time

import torch

import dlm
from dlm.api.lm import set_fast_path
from dlm.bench.scale import random_lm


def main() -> None:
    lm = random_lm("llada-8b", device="cuda")
    prompt = torch.randint(0, 100000, (256,), generator=torch.Generator().manual_seed(0)).tolist()
    cfg = dlm.GenerationConfig(gen_length=128, block_length=32, steps=32, cache="prefix", stop_at_eos=False)
    for name, fused in (("graphs", False), ("graphs+fused", True), ("graphs", False), ("graphs+fused", True)):
        set_fast_path(lm, True, fused)
        times, last = [], [0.0]

        def stream(ev):
            if ev.tag == 0:
                torch.cuda.synchronize()
                t = time.perf_counter()
                times.append((t - last[0]) * 1e3)
                last[0] = t

        torch.cuda.synchronize()
        last[0] = time.perf_counter()
        lm.generate([prompt], cfg, stream=stream)
        graphs = lm._engine.core.graphs
        print(name, "ms per step:", " ".join(f"{t:.0f}" for t in times), f"| captures {graphs.captures}, "
              f"replays {graphs.replays}", flush=True)


if __name__ == "__main__":
    main()
