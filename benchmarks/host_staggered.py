"""Host time of a step's layout building on the CPU: ``pack`` (the packed sequence, logits and candidates), the
padded attention's index tensors (``_Index.build``) and its per-kind layouts (``_Group.build``), per step, in the
steady state of staggered arrivals (llada-tiny geometry with random weights: the model is irrelevant here, only
the rows' layout; 32 rows, prompt 128, gen 256, one arrival per step), or with ``--static`` for a static batch of
32 in lockstep, its refresh steps and its in-block steps apart. ``_Group.build`` runs only for layouts the padded
attention's memo of recent layouts (``dlm.models.ragged.group_of``) does not hold, so its figure is what the
builds cost per step, the memo's hits counting zero.

    python benchmarks/host_staggered.py [--steps 10] [--static]

Runs on one CPU thread (``--threads``); each figure is the mean over ``--steps`` steps after 40 steps of ramp-up (``--static``:
over the second of two decodes).
"""

from __future__ import annotations

import argparse
import json

import torch
from engine_gpu import random_prompts, schedule_config
from step_profile import timed_into

import dlm
from dlm.bench.scale import random_lm
from dlm.engine import core
from dlm.models import ragged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--static", action="store_true", help="a static batch of 32: refresh and in-block steps apart")
    ap.add_argument("--threads", type=int, default=1, help="torch's CPU threads (0: torch's default, as the engine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = random_lm("llada-tiny", device="cpu", dtype=torch.float32)
    cfg = schedule_config(256, 4)
    todo = random_prompts(lm, 96, 128, seed=1)
    engine = dlm.Engine(lm, max_rows=32, max_tokens=32 * 384, attention="padded", batch_invariant=False)
    totals: dict[str, float] = {}
    saved = core.PackCache.pack, ragged._Index.__dict__["build"], ragged._Group.__dict__["build"]
    try:
        core.PackCache.pack = timed_into(totals, "pack", saved[0])
        ragged._Index.build = staticmethod(timed_into(totals, "index", saved[1].__func__))
        ragged._Group.build = classmethod(timed_into(totals, "groups", saved[2].__func__))
        if args.static:
            print(json.dumps(static_steps(engine, todo[:32], cfg, totals)))
            return
        for i in range(40 + args.steps):
            if i == 40:
                totals.clear()
            engine.submit(todo.pop(0), cfg)
            engine.step()
    finally:
        core.PackCache.pack, ragged._Index.build, ragged._Group.build = saved
    print(json.dumps({k: round(v / args.steps * 1e3, 3) for k, v in totals.items()}))  # ms per step


def static_steps(engine, prompts, cfg, totals: dict) -> dict:
    """ms per refresh step and per in-block step of the second of two static decodes of ``prompts``."""
    per_block = cfg.block_length * cfg.steps // cfg.gen_length
    out: dict[str, dict[str, float]] = {"refresh": {}, "in_block": {}}
    for decode in range(2):
        reqs = [engine.submit(p, cfg) for p in prompts]
        step = 0
        while not all(r.done for r in reqs):
            totals.clear()
            engine.step()
            if decode:
                kind = out["refresh" if step % per_block == 0 else "in_block"]
                for k, v in totals.items():
                    kind.setdefault(k, []).append(v * 1e3)
            step += 1
    return {kind: {k: round(sum(v) / len(v), 3) for k, v in d.items()} for kind, d in out.items()}


if __name__ == "__main__":
    main()
