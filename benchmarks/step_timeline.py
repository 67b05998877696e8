"""The timeline of two blocks of ``dual`` steps under the profiler: per step, its span, the GPU's busy and idle
time, the host time of each engine phase, and the kernels summed per name (LLaDA-8B geometry, random bf16
weights, default options, one GPU).

    python benchmarks/step_timeline.py --batch 32 --out results/step_timeline_b32.json [--trace trace.json.gz]

Batch 32 decodes a static batch from a 128-token prompt at gen 256 (as ``benchmarks/engine_gpu.py --parts
static``); batch 1 likewise; ``--staggered`` profiles eight steps of staggered arrivals instead, after
``--warm`` steps (48: the steady state; 0: the ramp-up). Each phase of ``EngineCore.step`` (see
``dlm/engine/core.py``) is wrapped in a ``record_function`` range; a step runs from one ``_take_ahead`` (the first
phase of every step) to the next. Idle is the time inside a step's span
with no kernel, copy or memset running (``lead``: before the step's first kernel; ``tail``: after its last); the
step times without the profiler come first, for comparison.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
import step_profile as sp

from dlm.api.lm import set_fast_path
from dlm.bench.scale import random_lm
from dlm.engine import core

PHASES = (*sp.HOST_PHASES, "pack", "apply_stops")


def _ranged(name: str, fn):
    def wrapper(*args, **kwargs):
        with record_function("PH:" + name):
            return fn(*args, **kwargs)
    return wrapper


def trace_events(lm, batch: int, gen: int, trace: Path | None, steps=None) -> list[dict]:
    """The chrome-trace events of two blocks of steps (or of ``steps()``), the engine's phases as ``PH:``
    ranges."""
    saved = {n: getattr(core.EngineCore, n) for n in sp.HOST_PHASES}
    saved_pack, saved_stops = core.PackCache.pack, core.apply_stops
    try:
        for n in sp.HOST_PHASES:
            setattr(core.EngineCore, n, _ranged(n, saved[n]))
        core.PackCache.pack, core.apply_stops = _ranged("pack", saved_pack), _ranged("apply_stops", saved_stops)
        run = steps or (lambda: sp._step_times(lm, {}, 2, batch, gen, False))
        if steps is None:
            sp._step_times(lm, {}, 1, batch, gen, False)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            run()
            torch.cuda.synchronize()
    finally:
        for n in sp.HOST_PHASES:
            setattr(core.EngineCore, n, saved[n])
        core.PackCache.pack, core.apply_stops = saved_pack, saved_stops
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        if trace is not None:
            with open(path, "rb") as f, gzip.open(trace, "wb") as g:
                shutil.copyfileobj(f, g)
        return json.loads(path.read_text())["traceEvents"]


def staggered_steps(lm, batch: int, gen: int, warm: int = 48, steps: int = 8):
    """Staggered arrivals brought to the steady state (``warm`` steps), the unprofiled times of ``steps`` more,
    and a function running ``steps`` more (the profiled ones)."""
    engine, prompts, cfg = sp._staggered_engine(lm, batch, 128, gen)
    run = sp._arrivals(lm, engine, prompts, cfg)
    run(warm)
    return run(steps), lambda: run(steps)


def timeline(events: list[dict]) -> list[dict]:
    """Per step: span, busy and idle ms, host ms per phase, kernels per name."""
    gpu = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                 key=lambda e: e["ts"])
    ranges = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") == "user_annotation"
                     and str(e.get("name", "")).startswith("PH:")), key=lambda e: e["ts"])
    starts = [e["ts"] for e in ranges if e["name"] == "PH:_take_ahead"]
    steps = []
    for a, b in zip(starts, starts[1:] + [max(e["ts"] + e["dur"] for e in gpu) + 1]):
        kernels = [e for e in gpu if a <= e["ts"] < b]
        if not kernels:
            continue
        end, idle = a, 0.0
        for e in kernels:
            idle += max(0.0, e["ts"] - end)
            end = max(end, e["ts"] + e["dur"])
        host = collections.Counter()
        for e in ranges:
            if a <= e["ts"] < b:
                host[e["name"][3:]] += e["dur"] / 1e3
        per_name = collections.Counter()
        for e in kernels:
            per_name[e["name"][:110]] += e["dur"] / 1e3
        steps.append({"span_ms": (b - a) / 1e3, "busy_ms": sum(e["dur"] for e in kernels) / 1e3,
                      "idle_ms": (idle + max(0.0, b - end)) / 1e3, "lead_idle_ms": (kernels[0]["ts"] - a) / 1e3,
                      "tail_idle_ms": max(0.0, b - end) / 1e3, "host_ms": dict(host),
                      "kernels_ms": dict(per_name.most_common(30))})
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trace", type=Path, default=None, help="also keep the chrome trace (gzipped)")
    ap.add_argument("--staggered", action="store_true",
                    help="eight steady-state steps of staggered arrivals instead (as step_profile.py's "
                         "staggered_steps: 32 rows at different blocks, one arrival per step)")
    ap.add_argument("--warm", type=int, default=48, help="--staggered: steps before the profiled ones")
    args = ap.parse_args()
    lm = random_lm("llada-8b")
    set_fast_path(lm, True, True)
    if args.staggered:
        plain, run = staggered_steps(lm, args.batch, args.gen, args.warm)
    else:
        sp._step_times(lm, {}, 2, args.batch, args.gen, False)  # warm-up: compiled kernels, graphs
        plain = [sp._step_times(lm, {}, 2, args.batch, args.gen, False) for _ in range(2)]
        run = None
    steps = timeline(trace_events(lm, args.batch, args.gen, args.trace, run))
    for i, st in enumerate(steps):
        print(f"step {i}: span {st['span_ms']:.2f} ms, busy {st['busy_ms']:.2f}, idle {st['idle_ms']:.2f} (lead "
              f"{st['lead_idle_ms']:.2f}, tail {st['tail_idle_ms']:.2f}); host "
              + " ".join(f"{k}={v:.2f}" for k, v in st["host_ms"].items()), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "batch": args.batch, "gen": args.gen,
                                    "unprofiled_step_ms": plain, "steps": steps}, indent=1))


if __name__ == "__main__":
    main()
