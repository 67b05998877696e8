"""Which steps of the staggered benchmark a CUDA-graph capture policy replays, captures or runs eagerly, and what
that costs at the step costs measured on a GPU.

    python benchmarks/graph_policy.py --costs benchmarks/gpu-2026-11-28/third-session/step_profile_staggered.json

The layouts of the staggered benchmark (``benchmarks/engine_gpu.py --parts staggered``: a static warm-up batch of
32, then 96 requests arriving one per step, gen 256, block 32, 4 tokens per step, ``dual``) depend only on the
schedule, not on the model: they are recorded here on the CPU with a tiny checkpoint. Each policy
(:class:`dlm.engine.graphs.StepGraphs` with its defaults, and with ``repeat_tokens`` switched off, the policy
before it existed) then decides every step as the engine would, and the decisions are priced with the mean step
times per kind that ``benchmarks/step_profile.py --parts staggered_steps`` measured on the GPU (full-batch eager,
replayed and capturing steps; steps of a partial batch at the eager mean of such steps). The recorded pattern of
the old policy is checked against the GPU run's own (they must be equal for the pricing to mean anything).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

import dlm
from dlm.engine.graphs import StepGraphs
from dlm.testing import write_tiny_checkpoint

BATCH, PROMPT, GEN, PER_STEP = 32, 128, 256, 4


def record_layouts() -> list[tuple[str, tuple, int, int]]:
    """(phase, layout key, fed positions, rows) of every step: the warm-up batch, then the staggered arrivals."""
    with tempfile.TemporaryDirectory() as tmp:
        lm = dlm.load(write_tiny_checkpoint(Path(tmp) / "ckpt", "llada", seed=1), device="cpu")
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, 250, (3 * BATCH, PROMPT), generator=g).tolist()
    cfg = dlm.GenerationConfig(gen_length=GEN, block_length=32, steps=GEN // PER_STEP, cache="dual",
                               stop_at_eos=False)
    engine = dlm.Engine(lm, max_rows=BATCH, max_tokens=BATCH * (PROMPT + GEN), batch_invariant=False)
    steps = []

    def step(phase):
        engine.step()
        p = engine.core.packs._packed
        steps.append((phase, (p.rows.signature(), p.logits_index.shape[0]), p.rows.total, len(p.rows.q_len)))

    for p in prompts[:BATCH]:
        engine.submit(p, cfg)
    while engine.pending:
        step("warm-up")
    todo = list(prompts)
    while todo or engine.pending:
        if todo:
            engine.submit(todo.pop(0), cfg)
        step("staggered")
    return steps


def decide(graphs: StepGraphs, steps) -> list[tuple[str, str, int]]:
    """(phase, kind, rows) per step: the policy's decisions (no forward runs; a capture stores a placeholder)."""
    out = []
    for phase, key, tokens, rows in steps:
        kind = graphs.decide(key, tokens)
        if kind == "capture":
            graphs.entries[key] = None
        out.append((phase, kind, rows))
    return out


def step_costs(measured: dict) -> dict:
    """Mean ms of full-batch steps per kind, and of partial-batch eager steps, from a staggered_steps part."""
    costs = {}
    for full in (True, False):
        for kind in ("eager", "capture", "replay"):
            ms = [s["ms"] for s in measured["steps"] if s["kind"] == kind and (s["rows"] == measured["batch"]) == full]
            if ms:
                costs[(kind, full)] = sum(ms) / len(ms)
    return costs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--costs", type=Path, required=True, help="a step_profile.py output with staggered_steps")
    args = ap.parse_args()
    measured = json.loads(args.costs.read_text())["staggered_steps"]
    costs = step_costs(measured)
    steps = record_layouts()
    gpu_pattern = "".join(s["kind"][0] for s in measured["steps"])
    for name, graphs in (("without repeat_tokens", StepGraphs(repeat_tokens=10**9)), ("default", StepGraphs())):
        kinds = [(k, rows) for phase, k, rows in decide(graphs, steps) if phase == "staggered"]
        pattern = "".join(k[0] for k, _ in kinds)
        seconds = sum(costs.get((k, rows == BATCH), costs[("eager", rows == BATCH)]) for k, rows in kinds) / 1e3
        counts = {k: sum(1 for kk, _ in kinds if kk == k) for k in ("eager", "capture", "replay")}
        same = " (the GPU run's pattern)" if pattern == gpu_pattern else ""
        print(f"{name}: {counts}, {seconds:.2f} s priced{same}\n  {pattern}")
    print(f"measured on the GPU: {measured['wall_s']:.2f} s, {gpu_pattern.count('c')} captures")


if __name__ == "__main__":
    main()
