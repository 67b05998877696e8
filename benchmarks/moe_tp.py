"""Tensor + expert parallel step latency of an MoE model at batch 1 (issue 18): LLaDA2.0-mini geometry (fused QKV,
256 experts, a shared expert), random bf16 weights, one GPU against 2 GPUs in the ``local`` mode (each GPU holds
half of every layer's heads and of its experts, see docs/parallel.md), eager and with CUDA graphs.

    python benchmarks/moe_tp.py --out results/moe_tp.json            # 2 GPUs (re-launches itself under torchrun)
    python benchmarks/moe_tp.py --tiny --out /tmp/moe_tp.json        # CPU smoke run: tiny geometry, gloo

Each rank prints a time-stamped line as a case starts; rank 0 rewrites --out after each case, and the job is
killed after --timeout seconds with what it measured kept (a hung collective cannot stall the run). Batch 1,
prompt 128 + 128 given answer tokens, the timed blocks in the answer's second half (dlm.bench.scale.time_config),
4 tokens per step, block 32, caches ``dual`` and ``none``. Random weights route close to uniformly. Timing only:
the TP2 model's random weights are drawn per rank, so its answers are not the one-GPU model's (the gloo tests of
tests/parallel/test_tensor_moe.py check that on real checkpoints).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from moe_step import MINI, TINY  # noqa: E402
from multi_gpu import materialize, progress, torchrun  # noqa: E402

from dlm.api import from_model  # noqa: E402
from dlm.bench.scale import time_config  # noqa: E402
from dlm.models.base import SpecialIds  # noqa: E402
from dlm.models.llada2 import LLaDA2, LLaDA2Model  # noqa: E402
from dlm.models.loading import build_model  # noqa: E402
from dlm.parallel import TensorParallel  # noqa: E402

IDS = SpecialIds(mask_id=156895, eos_id=156892, pad_id=156892)
TINY_IDS = SpecialIds(mask_id=1000, eos_id=1001, pad_id=1001)


def random_moe(cfg: dict, ids: SpecialIds, device, dtype, tp: TensorParallel | None = None):
    """A LLaDA2 DiffusionLM with random weights (std 0.02), whole on ``device`` or this rank's part of it."""
    model = build_model(LLaDA2.parse_config(cfg), device="meta", model_class=LLaDA2Model)
    if tp is not None:
        tp.parallelize(model)
        materialize(model, tp.place(model), tp.device, dtype)
        tp.finish(model)
    else:
        materialize(model, lambda name, t, dt: t.to(dtype), torch.device(device), dtype)
    lm = from_model(model.eval(), LLaDA2, ids)
    lm.max_length = 4096
    return lm


def time_cases(lm, label: dict, graphs_modes, caches, gen: int, res: dict, save) -> None:
    for graphs in graphs_modes:
        for cache in caches:
            progress(f"timing {label} cache={cache} graphs={graphs}")
            lm.cuda_graphs = graphs
            try:
                ms = time_config(lm, cache=cache, batch=1, gen_length=gen, tokens_per_step=4).ms_per_step
                res["rows"].append({**label, "cache": cache, "graphs": graphs, "ms_per_step": ms})
            except Exception as exc:  # noqa: BLE001 - recorded, the other cases go on
                res["errors"][f"{label}/{cache}/graphs={graphs}"] = f"{type(exc).__name__}: {exc}"[:1000]
            save()


def worker(out: Path, tiny: bool) -> None:
    """One rank of ``torchrun --nproc-per-node 2``: one GPU on rank 0 first (rank 1 waits), then TP2."""
    import torch.distributed as dist

    cuda = not tiny
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    tp = TensorParallel.init(2, None if cuda else "cpu")
    cfg, ids = (TINY, TINY_IDS) if tiny else (MINI, IDS)
    dtype, gen = (torch.float32, 256) if tiny else (torch.bfloat16, 256)
    graphs_modes = (False, True) if cuda else (False,)
    res: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                 "geometry": "tiny" if tiny else "LLaDA2.0-mini", "rows": [], "errors": {}}
    save = (lambda: out.write_text(json.dumps(res, indent=1))) if tp.rank == 0 else (lambda: None)
    if tp.rank == 0:
        one = random_moe(cfg, ids, tp.device, dtype)
        time_cases(one, {"gpus": 1}, graphs_modes, ("dual", "none"), gen, res, save)
        del one
    dist.barrier()
    if cuda:
        torch.cuda.empty_cache()
    progress("building the TP2 model")
    lm = random_moe(cfg, ids, tp.device, dtype, tp)
    time_cases(lm, {"gpus": 2}, graphs_modes, ("dual", "none"), gen, res, save)
    progress("done")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="results (JSON); required except in a worker")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run (tiny geometry, gloo)")
    ap.add_argument("--timeout", type=float, default=300.0, help="kill the job after this many seconds")
    ap.add_argument("--worker-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker_out is not None:
        return worker(args.worker_out, args.tiny)
    if args.out is None:
        ap.error("--out is required")
    if not args.tiny and torch.cuda.device_count() < 2:
        raise SystemExit("needs 2 GPUs (or --tiny for a CPU smoke run)")
    res = torchrun(__file__, ["--tiny"] if args.tiny else [], args.timeout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    one = {(r["cache"], r["graphs"]): r["ms_per_step"] for r in res["rows"] if r["gpus"] == 1}
    print("| GPUs | graphs | cache | ms / step | vs one GPU |\n|---|---|---|---|---|")
    for r in res["rows"]:
        base = one.get((r["cache"], r["graphs"]))
        ratio = f"{base / r['ms_per_step']:.2f}x" if base else "-"
        print(f"| {r['gpus']} | {'yes' if r['graphs'] else 'no'} | {r['cache']} | {r['ms_per_step']:.2f} | {ratio} |")
    for k, v in res["errors"].items():
        print(f"error {k}: {v}")


if __name__ == "__main__":
    main()
