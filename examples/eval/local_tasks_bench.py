"""dlm's local lm-eval tasks through ``dlm eval`` (dlm.eval.evaluate): accuracy with NFE per token and tokens/s
for the reference decode and the parallel settings, on one device. Prints a table, writes JSON.

    python examples/eval/local_tasks_bench.py --device cpu --limit 20 --out results/eval-cpu.json
    python examples/eval/local_tasks_bench.py --device cuda --out results/eval-gpu.json      (all 600 + 120 items)

Configurations (every one on the same items, one after the other in this process):

* ``llada-reference``: low_confidence, one token per step, no cache (LLaDA's sampler);
* ``fast-dllm``: threshold 0.9 + dual cache (Fast-dLLM's setting);
* ``best``: dlm.bench.presets.BEST (learned_filter + dual cache + end-of-text prediction).

Tasks: ``dlm_synthetic`` (six families, generate_until, gen_length 32 from max_gen_toks) and, with
``--choice``, ``dlm_choice`` (loglikelihood, ``--mc-num`` samples; the decode settings do not apply to it, so it
runs once).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import dlm
from dlm.bench.presets import BEST
from dlm.eval import evaluate
from dlm.eval.run import accuracy_table

CONFIGS = {
    "llada-reference": {},
    "fast-dllm": {"scheduler": "threshold", "scheduler.threshold": 0.9, "cache": "dual"},
    "best": dict(BEST),
}


def run_one(lm, name: str, model_args: dict, args) -> dict:
    t0 = time.perf_counter()
    results = evaluate({**model_args, "batch_size": args.batch_size}, ["dlm_synthetic"], lm=lm, limit=args.limit,
                       bootstrap_iters=0)
    info = results["config"]["dlm"]
    acc = accuracy_table(results)
    return {"name": name, "model_args": model_args, "accuracy": acc["dlm_synthetic"]["exact_match,none"],
            "per_task": {t: m.get("exact_match,none") for t, m in acc.items() if t != "dlm_synthetic"},
            "speed": info["speed"]["generate_until"], "generation_config": info["generation_config"],
            "seconds": time.perf_counter() - t0}


def run_choice(lm, args) -> dict:
    results = evaluate({"mc_num": args.mc_num, "mc_batch_size": min(32, args.mc_num)}, ["dlm_choice"], lm=lm,
                       limit=args.choice_limit, bootstrap_iters=0)
    return {"accuracy": results["results"]["dlm_choice"]["acc,none"], "n": results["n-samples"]["dlm_choice"],
            "speed": results["config"]["dlm"]["speed"]["loglikelihood"], "mc_num": args.mc_num}


def table(rows: list[dict]) -> str:
    ref = rows[0]["speed"]
    lines = ["| configuration | accuracy | NFE / token | fewer NFE | tokens/s | wall s |", "|---|---|---|---|---|---|"]
    for r in rows:
        s = r["speed"]
        lines.append(f"| {r['name']} | {r['accuracy']:.3f} | {s['nfe_per_token']:.3f} | "
                     f"{ref['nfe_per_token'] / s['nfe_per_token']:.1f}x | {s['tokens_per_s']:.1f} "
                     f"({s['tokens_per_s'] / ref['tokens_per_s']:.2f}x) | {s['wall_s']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled dlm-tiny)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--limit", type=int, default=None, help="items per family (default: all 100)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--choice", action="store_true", help="also dlm_choice (loglikelihood)")
    p.add_argument("--choice-limit", type=int, default=None)
    p.add_argument("--mc-num", type=int, default=32)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = dlm.load(args.model, device=args.device, dtype=args.dtype)
    # one untimed pass over a few items so that the first configuration does not pay for warming up
    evaluate({"batch_size": args.batch_size}, ["dlm_add"], lm=lm, limit=2, bootstrap_iters=0)
    rows = [run_one(lm, name, cfg, args) for name, cfg in CONFIGS.items()]
    out = {"rows": rows, "device": str(lm.device), "dtype": str(lm.dtype), "limit_per_family": args.limit,
           "batch_size": args.batch_size, "torch": torch.__version__, "python": platform.python_version(),
           "threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
           "gpu": torch.cuda.get_device_name(lm.device) if lm.device.type == "cuda" else None,
           "date": time.strftime("%Y-%m-%d")}
    if args.choice:
        out["choice"] = run_choice(lm, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table(rows))
    if args.choice:
        c = out["choice"]
        print(f"dlm_choice: accuracy {c['accuracy']:.3f} on {c['n']['effective']} items, mc_num {c['mc_num']}, "
              f"{c['speed']['forwards']} forward passes, {c['speed']['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
