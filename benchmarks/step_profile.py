"""Where a cached decode step's time goes (LLaDA-8B geometry, random bf16 weights, one GPU): batch 1, and a batch
of 32 in lockstep or arriving staggered.

    python benchmarks/step_profile.py --out results/step_profile.json [--parts steps kernels projections]

Parts (each recorded on its own; a failing part does not stop the others):

``steps``
    the time of every step of two mid-answer blocks (prompt 128, gen 1024, block 32, 4 tokens per step) with the
    default options (CUDA graphs + fused kernels), for ``dual``, ``dual`` with ``refresh_from="last_block"``
    and with ``refresh_to="block"`` as well, and for ``dual`` with the joined projections split again, after a
    warm-up run in the same engine: the block's refresh step against its in-block steps.
``steps_cudnn``
    ``dual`` as ``steps`` with SDPA's cuDNN attention off (dlm's default) and on
    (``dlm.models.attention.use_cudnn_attention``), alternating twice in one process.
``kernels``, ``kernels_graphs``, ``kernels_b32``
    the CUDA kernels of two blocks of the same decode under ``torch.profiler``, summed per kernel name: graphs
    off (fused kernels on), the default options (graphs + fused kernels; the profiler sees the kernels of
    replayed graphs), and a static batch of 32 at gen 256 with the default options (as
    ``benchmarks/engine_gpu.py --parts static``).
``kernels_refresh_b32``
    the kernels of one refresh step of the static batch of 32 (gen 256, default options) under
    ``torch.profiler``, its wall time, the GPU's idle gaps between its kernels (the largest with the kernels
    around them and the host operator that launched the next one), and each engine phase's host span against
    the first kernel (``--trace DIR``: the profile as a Chrome trace too).
``host``, ``host_b32``
    the host time of each phase of the engine's step (batch 1 as ``steps``; a static batch of 32 at gen 256):
    what the GPU waits for between the step's synchronisation and the next forward.
``staggered_steps``
    staggered arrivals as ``benchmarks/engine_gpu.py --parts staggered`` (batch 32, gen 256, default options),
    step by step: each step's time, fed positions and rows, and whether it replayed a CUDA graph, captured one
    or ran eagerly.
``kernels_mixed``
    the kernels of eight steady-state staggered steps (32 rows at different blocks; fused kernels, no graphs)
    and the same steps' unprofiled time.
``kernels_ramp``
    the first eight steps of the same staggered arrivals (default options) under ``torch.profiler``: each
    step's wall time, the kernels summed per name and the host's busiest operators.
``launch``
    the host time of a replayed batch-1 step's launch (the engine's forward, the graph runner's, the replay
    call), median per call, after a warm-up decode.
``gaps``, ``gaps_b32``, ``gaps_short``
    the GPU's busy time per step (refresh and in-block steps) and its idle time between steps, from CUDA events,
    at batch 1 (gen 1024) and for a static batch of 32 (gen 256), after every bucket's CUDA graphs are captured;
    ``gaps_short``: batch 1 with ``dual``'s cheapest refresh (``refresh_from="last_block"``,
    ``refresh_to="block"``).
``candidates``
    the temperature-0 candidates pass (token and confidence of each position) over bf16 logits of LLaDA's
    vocabulary, at 32 and 1,024 rows: the reference (dlm.sampling.compute_candidates) against the fused kernel
    (dlm.sampling_kernel), each from a CUDA graph, with their agreement.
``ops``
    the tensor operations each engine phase runs per step (every dispatched operator but views, counted with a
    ``TorchDispatchMode``; on a GPU each is about one kernel or copy), one request (prompt 128 + 64 pre-filled,
    gen 128, ``dual``, 4 tokens per step) with ``stop_at_eos`` off (the benchmarks' setting) and on; runs on
    a CPU with LLaDA-tiny geometry (the counts do not depend on the model's size or device).
``projections``
    the matrix products of the 32 layers at 32 / 64 / 256 rows, as the model runs them (q, k, v, o, gate, up,
    down: seven products) and with q/k/v and gate/up as one product each (four), each in a CUDA graph, against
    the weight-read floor (weight bytes over the measured copy bandwidth).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_gpu import random_prompts, schedule_config, sync, without, without_parts
from parts import run_parts

import dlm
from dlm.api.lm import set_fast_path
from dlm.bench.methods import parse_component
from dlm.bench.scale import copy_bandwidth, random_lm
from dlm.models.attention import use_cudnn_attention

PROMPT, GEN, BLOCK, PER_STEP = 128, 1024, 32, 4
CHEAPEST = "dual:refresh_from=last_block,refresh_to=block"  # dual's cheapest refresh


def _config(cache_kwargs: dict, batch: int = 1, gen: int = GEN, prefill: bool = True
            ) -> tuple[list[list[int]], dlm.GenerationConfig]:
    """``batch`` random prompts of PROMPT tokens, with half the answer pre-filled when ``prefill`` (as
    dlm.bench.scale does), and the rest's decode settings (``dual`` cache, 4 tokens per step)."""
    g = torch.Generator().manual_seed(0)
    half = gen // 2 if prefill else 0
    prompts = torch.randint(0, 100000, (batch, PROMPT + half), generator=g).tolist()
    rest = gen - half
    cfg = dlm.GenerationConfig(gen_length=rest, block_length=BLOCK, steps=rest // PER_STEP, cache="dual",
                               cache_kwargs=cache_kwargs, stop_at_eos=False)
    return prompts, cfg


def _step_times(lm, cache_kwargs: dict, blocks: int = 4, batch: int = 1, gen: int = GEN,
                prefill: bool = True) -> list[float]:
    """ms of each of the first ``blocks`` blocks' steps (synchronised at every step). An engine built here runs
    without its lookahead: waiting for the device at each step's event would charge each step the next step's
    forward, launched before the event."""
    prompts, cfg = _config(cache_kwargs, batch, gen, prefill)
    n = blocks * BLOCK // PER_STEP
    marks: list[float] = []

    def stream(ev):  # every request takes the same steps: time request 0, stop them all
        if ev.tag == 0:
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
        if ev.step >= n:
            ev.stop()

    torch.cuda.synchronize()
    marks.append(time.perf_counter())
    with without(lm, "lookahead"):
        lm.generate(prompts, cfg, stream=stream)
    return [(b - a) * 1e3 for a, b in zip(marks, marks[1:])][:n]


def _block_split(ms: list[float]) -> dict:
    """Mean ms of whole blocks' steps: each block's first step (its refresh), the others, all of them."""
    per = BLOCK // PER_STEP
    refresh = ms[::per]
    inblock = [t for i, t in enumerate(ms) if i % per]
    return {"refresh_ms": sum(refresh) / len(refresh), "in_block_ms": sum(inblock) / len(inblock),
            "average_ms": sum(ms) / len(ms)}


def part_steps(lm) -> dict:
    """Default options; ``dual``, its ``last_block`` refresh and its ``last_block`` + ``block`` refresh with the
    joined projections, and ``dual`` with the projections split again (same run, a fresh engine each: the kept
    engine's graphs hold their weights)."""
    from dlm.models.joined import join_projections, split_projections

    out = {}
    for name, kw, joined in (("dual", {}, True), ("dual:refresh_from=last_block", {"refresh_from": "last_block"}, True),
                             (CHEAPEST, parse_component(CHEAPEST, "cache")[1], True),
                             ("dual, projections split", {}, False)):
        set_fast_path(lm, True, True)
        if not joined:
            split_projections(lm.model)
        lm._engine = None
        _step_times(lm, kw)  # warm-up: shapes, compiled kernels and graphs carry over in the kept engine
        ms = _step_times(lm, kw)[2 * BLOCK // PER_STEP:]  # the last two blocks
        out[name] = {"ms": ms, **_block_split(ms)}
        print(name, json.dumps({k: v for k, v in out[name].items() if k != "ms"}), flush=True)
    join_projections(lm.model)
    lm._engine = None
    return out


def part_steps_cudnn(lm, rounds: int = 2) -> dict:
    """``dual`` at batch 1 (default options, as ``steps``) with SDPA's cuDNN attention off (the default) and on,
    alternating ``rounds`` times in one process, a fresh engine each (graphs captured with that choice)."""
    out: dict = {"off": [], "on": []}
    set_fast_path(lm, True, True)
    for _ in range(rounds):
        for name in ("off", "on"):
            use_cudnn_attention(name == "on")
            lm._engine = None
            _step_times(lm, {})  # warm-up: plans, graphs
            out[name].append(_block_split(_step_times(lm, {})[2 * BLOCK // PER_STEP:]))
            print("cudnn", name, json.dumps(out[name][-1]), flush=True)
    use_cudnn_attention(False)
    lm._engine = None
    for name in ("off", "on"):
        out[name + "_average_ms"] = sum(r["average_ms"] for r in out[name]) / rounds
    out["on_over_off"] = out["on_average_ms"] / out["off_average_ms"]
    return out


def part_kernels(lm, batch: int = 1, gen: int = GEN, graphs: bool = False) -> dict:
    """The kernels of two blocks of ``dual`` steps, fused kernels on, CUDA graphs as asked (the profiler sees
    the kernels a replayed graph runs too). Batch 1 pre-fills half the answer (as the scale runs); a batch
    decodes from the prompt (as benchmarks/engine_gpu.py's static batch)."""
    from torch.profiler import ProfilerActivity, profile

    set_fast_path(lm, graphs, True)
    prefill = batch == 1
    _step_times(lm, {}, 2, batch, gen, prefill)  # warm-up: shapes, compiled kernels, graphs
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        times = _step_times(lm, {}, 2, batch, gen, prefill)
        torch.cuda.synchronize()
    steps = len(times)
    rows, total, mm = _kernel_rows(prof)
    print(f"kernels batch {batch} gen {gen} graphs {graphs}: {steps} steps, wall {sum(times):.1f} ms, "
          f"kernels {total:.1f} ms (matrix products {mm:.1f} ms)", flush=True)
    gaps = _timeline_gaps(prof)
    print(f"  first to last kernel {gaps['span_ms']:.1f} ms, idle between kernels {gaps['idle_ms']:.1f} ms "
          f"({gaps['gaps_over_threshold']} gaps over 5 us)", flush=True)
    _print_kernels(rows, steps)
    return {"batch": batch, "gen": gen, "graphs": graphs, "steps": steps, "wall_ms": sum(times),
            "kernel_ms": total, "matmul_ms": mm, "gaps": gaps, "top": rows[:60]}


def part_kernels_refresh(lm, batch: int = 32, gen: int = 256, trace: Path | None = None) -> dict:
    """The kernels of one refresh step (the second block's first step) of a static batch, default options: the
    profiler runs from the end of the first block's last step to the end of the refresh, with the engine's
    phases marked (``record_function``)."""
    from torch.profiler import ProfilerActivity, profile, record_function

    set_fast_path(lm, True, True)
    _step_times(lm, {}, 2, batch, gen, False)  # warm-up
    prompts, cfg = _config({}, batch, gen, False)
    per = BLOCK // PER_STEP
    prof = profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU])
    marks: list[float] = []

    def stream(ev):
        if ev.tag != 0:
            return
        if ev.step in (per, per + 1):  # ``step`` counts the forwards done: the (per + 1)-th refreshes
            torch.cuda.synchronize()
            marks.append(time.perf_counter())
            prof.start() if ev.step == per else prof.stop()
        if ev.step > per:
            ev.stop()

    def marked(name, fn):
        def wrapper(*args, **kwargs):
            with record_function("phase:" + name):
                return fn(*args, **kwargs)
        return wrapper

    with wrapped_phases(marked):
        lm.generate(prompts, cfg, stream=stream)
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace / "refresh_b32_trace.json"))
    phases = _phase_spans(prof)
    for ph in phases:
        print(f"  {ph['name']:<16} host {ph['start_ms']:8.2f} .. {ph['end_ms']:8.2f} ms (first kernel at 0)", flush=True)
    rows, total, mm = _kernel_rows(prof)
    wall = (marks[1] - marks[0]) * 1e3
    gaps = _timeline_gaps(prof)
    print(f"kernels of a refresh step, batch {batch} gen {gen}: wall {wall:.1f} ms (profiled), kernels "
          f"{total:.1f} ms (matrix products {mm:.1f} ms); first to last kernel {gaps['span_ms']:.1f} ms, "
          f"idle between kernels {gaps['idle_ms']:.1f} ms", flush=True)
    for g in gaps["largest"][:12]:
        print(f"  gap {g['us']:9.1f} us after {g['before'][:50]} before {g['after'][:50]} (host: {g['host']})",
              flush=True)
    _print_kernels(rows, 1)
    return {"batch": batch, "gen": gen, "wall_ms": wall, "kernel_ms": total, "matmul_ms": mm, "gaps": gaps,
            "phases": phases, "top": rows[:60]}


def _is_kernel(e) -> bool:
    """Whether a profile event is GPU work (a kernel, copy or set), not a marked phase's GPU annotation."""
    return str(e.device_type).endswith("CUDA") and not e.name.startswith("phase:")


def _phase_spans(prof) -> list[dict]:
    """The host spans of the marked phases (``phase:...``), in ms from the first kernel's start, in order."""
    events = list(prof.events())
    kernels = [e.time_range.start for e in events if _is_kernel(e)]
    t0 = min(kernels) if kernels else 0.0
    spans = [{"name": e.name[len("phase:"):], "start_ms": (e.time_range.start - t0) / 1e3,
              "end_ms": (e.time_range.end - t0) / 1e3} for e in events if e.name.startswith("phase:")
             and str(e.device_type).endswith("CPU")]
    return sorted(spans, key=lambda ph: ph["start_ms"])


def _timeline_gaps(prof, threshold_us: float = 5.0) -> dict:
    """The GPU's idle time between the profile's first and last kernel: the gaps between one kernel's end and
    the next one's start (over ``threshold_us``), the largest first, each with the kernels around it and the host
    operator that launched the next kernel (the profiler's correlation)."""
    events = list(prof.events())
    kernels = sorted((e for e in events if _is_kernel(e) and e.time_range.elapsed_us() > 0),
                     key=lambda e: e.time_range.start)
    host = {e.id: e.name for e in events if str(e.device_type).endswith("CPU")}
    out, idle, end, before = [], 0.0, None, ""
    for k in kernels:
        if end is not None and k.time_range.start - end > threshold_us:
            gap = k.time_range.start - end
            idle += gap
            link = getattr(k, "linked_correlation_id", 0)  # 0: none (a replayed graph's kernels)
            out.append({"us": gap, "before": before, "after": k.name, "host": host.get(link, "") if link else ""})
        end = k.time_range.end if end is None else max(end, k.time_range.end)
        before = k.name
    out.sort(key=lambda g: -g["us"])
    span = (end - kernels[0].time_range.start) if kernels else 0.0
    return {"span_ms": span / 1e3, "idle_ms": idle / 1e3, "gaps_over_threshold": len(out), "largest": out[:40]}


def _kernel_rows(prof) -> tuple[list[dict], float, float]:
    """The profile's kernels summed per name (largest first), their total ms and the matrix products' ms."""
    rows = []
    for e in prof.key_averages():
        if not str(e.device_type).endswith("CUDA") or e.key.startswith("phase:"):  # kernels only: an operator's
            continue  # row repeats its kernels' time, and a marked phase's GPU annotation spans its kernels
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0)
        if dev > 0:
            rows.append({"name": e.key[:120], "count": e.count, "device_ms": dev / 1e3})
    rows.sort(key=lambda r: -r["device_ms"])
    total = sum(r["device_ms"] for r in rows)
    mm = sum(r["device_ms"] for r in rows if r["name"].startswith(("nvjet", "sm90_xmma", "cutlass", "gemm")))
    return rows, total, mm


def _print_kernels(rows: list[dict], steps: int) -> None:
    for r in rows[:25]:
        print(f"  {r['device_ms'] / steps:8.3f} ms/step  x{r['count'] / steps:<6.1f} {r['name']}", flush=True)


def _staggered_engine(lm, batch: int, prompt: int, gen: int):
    """An engine warmed up with one static batch, the staggered benchmark's prompts and config (as
    ``benchmarks/engine_gpu.py --parts staggered``)."""
    prompts = random_prompts(lm, 3 * batch, prompt, seed=1)
    cfg = schedule_config(gen, PER_STEP)
    engine = dlm.Engine(lm, max_rows=batch, max_tokens=batch * (prompt + gen))
    for p in prompts[:batch]:
        engine.submit(p, cfg)
    engine.run()
    return engine, prompts, cfg


def _arrivals(lm, engine, prompts: list, cfg):
    """``run(n)``: n steps of ``engine``, each after one arrival (the next of ``prompts``), synchronised after
    each; returns their wall ms."""
    todo = list(prompts)

    def run(n: int) -> list[float]:
        walls = []
        for _ in range(n):
            t0 = time.perf_counter()
            engine.submit(todo.pop(0), cfg)
            engine.step()
            sync(lm.device)
            walls.append((time.perf_counter() - t0) * 1e3)
        return walls

    return run


def part_staggered_steps(lm, batch: int = 32, prompt: int = 128, gen: int = 256) -> dict:
    """Staggered arrivals (one per step, 3 x ``batch`` requests; the default options) step by step: each step's
    wall time (synchronised after it), fed positions, rows, and whether its forward replayed a CUDA graph,
    captured one or ran eagerly."""
    set_fast_path(lm, True, True)
    engine, prompts, cfg = _staggered_engine(lm, batch, prompt, gen)
    graphs = engine.core.graphs  # None off a GPU: every step is eager
    sync(lm.device)
    todo, steps = list(prompts), []
    t_all = time.perf_counter()
    while todo or engine.pending:
        if todo:
            engine.submit(todo.pop(0), cfg)
        before = (graphs.captures, graphs.replays) if graphs else (0, 0)
        t0 = time.perf_counter()
        engine.step()
        sync(lm.device)
        ms = (time.perf_counter() - t0) * 1e3
        rows = engine.core.packs._packed.rows
        after = (graphs.captures, graphs.replays) if graphs else (0, 0)
        kind = "capture" if after[0] > before[0] else "replay" if after[1] > before[1] else "eager"
        steps.append({"ms": ms, "fed": rows.total, "rows": len(rows.q_len), "kind": kind})
    wall = time.perf_counter() - t_all
    kinds = {}
    for k in ("eager", "capture", "replay"):
        sel = [st for st in steps if st["kind"] == k]
        if sel:
            kinds[k] = {"steps": len(sel), "mean_ms": sum(st["ms"] for st in sel) / len(sel),
                        "mean_fed": sum(st["fed"] for st in sel) / len(sel)}
    full = [st["ms"] for st in steps if st["rows"] == batch]
    out = {"batch": batch, "requests": len(prompts), "engine_steps": len(steps),
           "static_engine_steps": len(prompts) // batch * (gen // PER_STEP), "wall_s": wall,
           "tokens_per_s": len(prompts) * gen / wall, "kinds": kinds, "full_batch_steps": len(full),
           "full_batch_mean_ms": sum(full) / max(1, len(full)), "steps": steps}
    print("staggered steps", json.dumps({k: v for k, v in out.items() if k != "steps"}), flush=True)
    return out


def part_kernels_mixed(lm, batch: int = 32, prompt: int = 128, gen: int = 256, warm_steps: int = 48,
                       steps: int = 8) -> dict:
    """The kernels of steady-state staggered steps (``batch`` rows at different blocks: each step some rows
    refresh, the others take in-block steps) with fused kernels and no CUDA graphs, and the same number of such
    steps unprofiled before them."""
    from torch.profiler import ProfilerActivity, profile

    set_fast_path(lm, False, True)
    engine, prompts, cfg = _staggered_engine(lm, batch, prompt, gen)
    run = _arrivals(lm, engine, prompts, cfg)
    run(warm_steps)
    step_ms = sum(run(steps)) / steps
    fed = engine.core.packs._packed.rows.total
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        run(steps)
    rows, total, mm = _kernel_rows(prof)
    print(f"kernels of mixed steps: {step_ms:.1f} ms per step unprofiled ({fed} positions fed), kernels "
          f"{total / steps:.1f} ms per step (matrix products {mm / steps:.1f} ms)", flush=True)
    _print_kernels(rows, steps)
    set_fast_path(lm, True, True)
    return {"batch": batch, "steps": steps, "step_ms": step_ms, "fed": fed, "kernel_ms": total, "matmul_ms": mm,
            "top": rows[:60]}

def part_kernels_ramp(lm, batch: int = 32, prompt: int = 128, gen: int = 256, steps: int = 8) -> dict:
    """The first ``steps`` steps of staggered arrivals (default options) under the profiler: per step its wall
    time, and the kernels summed over them (the ramp-up, where each step adds a row: new shapes at every step)."""
    from torch.profiler import ProfilerActivity, profile

    set_fast_path(lm, True, True)
    engine, prompts, cfg = _staggered_engine(lm, batch, prompt, gen)
    run = _arrivals(lm, engine, prompts, cfg)
    sync(lm.device)
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        walls = run(steps)
    rows, total, mm = _kernel_rows(prof)
    print(f"ramp-up steps under the profiler: {[round(w, 1) for w in walls]} ms; kernels {total / steps:.1f} ms "
          f"per step (matrix products {mm / steps:.1f} ms)", flush=True)
    _print_kernels(rows, steps)
    cpu = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:25]
    host = [{"name": e.key, "count": e.count, "self_cpu_ms": e.self_cpu_time_total / 1e3} for e in cpu]
    print("host (self CPU):", ", ".join(f"{h['name']} {h['self_cpu_ms']:.1f}" for h in host[:12]), flush=True)
    return {"batch": batch, "steps": steps, "wall_ms": walls, "kernel_ms": total, "matmul_ms": mm,
            "top": rows[:40], "host": host}


def timed_into(totals: dict, name: str, fn):
    """``fn`` adding its host seconds to ``totals[name]`` at every call."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t0
    return wrapper


HOST_PHASES = ("_take_ahead", "_admit", "_plan", "_forward", "_sample", "_select", "_flags", "_queue_transfer",
               "_launch_ahead", "_read_transfer", "_emit", "_transfer")  # (_transfer: the engine before 2026-11-28's lookahead)


@contextlib.contextmanager
def wrapped_phases(wrap):
    """Inside the block, each engine phase (EngineCore's :data:`HOST_PHASES`, ``PackCache.pack`` and
    ``apply_stops``) is ``wrap(name, fn)`` of itself; restored after."""
    import dlm.engine.core as core

    saved = [(owner, name, getattr(owner, name)) for owner, name in  # (phases an older engine lacks: skipped)
             [(core.EngineCore, n) for n in HOST_PHASES] + [(core.PackCache, "pack"), (core, "apply_stops")]
             if hasattr(owner, name)]
    try:
        for owner, name, fn in saved:
            setattr(owner, name, wrap(name, fn))
        yield
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


def part_host(lm, batch: int = 1, gen: int = GEN) -> dict:
    """Host time of each phase of the engine's step (default options, ``dual``), by wrapping EngineCore's
    methods with timers: without the engine's lookahead the GPU waits for the host between the step's one
    synchronisation (in ``_read_transfer``) and the next forward's launch (``_emit``, ``_admit``, ``_plan``,
    ``pack`` and the start of ``_forward``); with it, a step whose next forward is certain launches it
    (``_launch_ahead``) before that synchronisation."""
    set_fast_path(lm, True, True)
    prefill = batch == 1
    totals: dict[str, float] = {}

    def timed(name, fn):
        return timed_into(totals, name, fn)

    _step_times(lm, {}, 2, batch, gen, prefill)  # warm-up
    with wrapped_phases(timed):
        t0 = time.perf_counter()
        times = _step_times(lm, {}, 2, batch, gen, prefill)
        wall = time.perf_counter() - t0
    steps = len(times)
    per = {k: v / steps * 1e3 for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
    print(f"host batch {batch} gen {gen}: {sum(times) / steps:.2f} ms per step (wall {wall * 1e3 / steps:.2f}); "
          + ", ".join(f"{k} {v:.3f}" for k, v in per.items()), flush=True)
    return {"batch": batch, "gen": gen, "ms_per_step": sum(times) / steps, "phase_ms_per_step": per}


def part_launch(lm, runs: int = 2) -> dict:
    """Host time of a replayed step's launch at batch 1 (``dual``, gen 1024, default options), median per call:
    the engine's ``_forward`` (input ids, then the graph runner), the graph runner's ``forward`` (its layout
    lookup and the three input copies, then the replay) and the replay call itself; the GPU starts the step's
    forward only once the replay is submitted. Timed after a warm-up decode has captured the step graphs."""
    set_fast_path(lm, True, True)
    prompts, cfg = _config({}, 1, GEN, True)
    engine = dlm.Engine(lm, max_rows=1, max_tokens=PROMPT + GEN)
    core = engine.core
    engine.submit(prompts[0], cfg)
    engine.run()  # warm-up: captures the in-block and refresh layouts
    calls: dict[str, list[float]] = {"engine_forward": [], "graphs_forward": [], "replay": []}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            calls[name].append(time.perf_counter() - t0)
            return out
        return wrapper

    core._forward = timed("engine_forward", core._forward)
    core.graphs.forward = timed("graphs_forward", core.graphs.forward)
    for entry in core.graphs.entries.values():
        entry.replay = timed("replay", entry.replay)
    for _ in range(runs):
        engine.submit(prompts[0], cfg)
        engine.run()
    med = {f"{k}_us": sorted(v)[len(v) // 2] * 1e6 for k, v in calls.items() if v}
    print("launch batch 1 (median us per call): " + ", ".join(f"{k} {v:.1f}" for k, v in med.items()), flush=True)
    return {**med, "calls": {k: len(v) for k, v in calls.items()}, "graphs": len(core.graphs.entries)}


def part_gaps(lm, batch: int, gen: int, cache: str = "dual") -> dict:
    """The GPU's time per step and its idle time between steps, from CUDA events: one recorded when a step's
    work is queued (at the start of ``_queue_transfer``, before its synchronisation), one when the next step's
    forward starts and one when its forward is queued (the forward's part of the busy time); the GPU is idle
    between a step's queued work and the next forward, as the host plans, packs and launches. A whole decode of
    ``batch`` requests (prompt 128, ``gen``, ``cache``, default options, every bucket captured first) after an
    untimed one in the same engine; the requests step in lockstep, so every eighth step is a block's first (its
    refresh), and the decode's first step, the only one that feeds the whole canvas for the cheaper refreshes,
    is reported apart. The busy time bounds what host work can gain."""
    import dlm.engine.core as core

    set_fast_path(lm, True, True)
    prompts = random_prompts(lm, batch, PROMPT, seed=1)
    cfg = schedule_config(gen, PER_STEP, cache)
    engine = dlm.Engine(lm, max_rows=batch, max_tokens=batch * (PROMPT + gen))
    engine.capture_graphs()
    queued, started, forwarded, fed = [], [], [], []
    saved = core.EngineCore._queue_transfer, core.EngineCore._forward

    def transfer(self, *args, **kwargs):
        queued.append(torch.cuda.Event(enable_timing=True))
        queued[-1].record()
        return saved[0](self, *args, **kwargs)

    def forward(self, p):
        started.append(torch.cuda.Event(enable_timing=True))
        started[-1].record()
        fed.append(int(p.position.numel()))
        try:
            return saved[1](self, p)
        finally:
            forwarded.append(torch.cuda.Event(enable_timing=True))
            forwarded[-1].record()

    for timed in (False, True):
        if timed:
            core.EngineCore._queue_transfer, core.EngineCore._forward = transfer, forward
        try:
            for prompt in prompts:
                engine.submit(prompt, cfg)
            t0 = time.perf_counter()
            engine.run()
            torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        finally:
            core.EngineCore._queue_transfer, core.EngineCore._forward = saved
    busy = [a.elapsed_time(b) for a, b in zip(started, queued)]
    forward_ms = [a.elapsed_time(b) for a, b in zip(started, forwarded)]  # the forward, with its host lead
    idle = [a.elapsed_time(b) for a, b in zip(queued, started[1:])]
    per = BLOCK // PER_STEP
    kind = ["first"] + ["refresh" if i % per == 0 else "in_block" for i in range(1, len(fed))]

    def mean(xs, k, skip=0):
        xs = [x for x, kk in zip(xs, kind[skip:]) if kk == k]
        return sum(xs) / len(xs) if xs else None

    res = {"batch": batch, "gen": gen, "cache": cache, "steps": len(fed), "wall_ms_per_step": wall * 1e3 / len(fed),
           "busy_ms_first": busy[0], "busy_ms_in_block": mean(busy, "in_block"),
           "busy_ms_refresh": mean(busy, "refresh"),
           "forward_ms_in_block": mean(forward_ms, "in_block"), "forward_ms_refresh": mean(forward_ms, "refresh"),
           "idle_ms_before_in_block": mean(idle, "in_block", 1), "idle_ms_before_refresh": mean(idle, "refresh", 1),
           "idle_share": sum(idle) / (sum(busy) + sum(idle))}
    print(f"gaps batch {batch} gen {gen} {cache}: " + ", ".join(f"{k} {v:.3f}" for k, v in res.items()
                                                                if isinstance(v, float)), flush=True)
    return res


VIEWS = frozenset({"view", "unsqueeze", "select", "slice", "expand", "alias", "t", "transpose", "unbind", "squeeze",
                   "detach", "lift_fresh", "_unsafe_view", "split", "permute", "as_strided"})


def part_ops() -> dict:
    """See the module doc: tensor operations per step and phase, stop_at_eos off and on."""
    import dataclasses

    from torch.utils._python_dispatch import TorchDispatchMode

    lm = random_lm("llada-tiny", device="cpu", dtype=torch.float32)
    phase: list[str] = []
    counts: dict[str, int] = {}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if phase and func.__name__.split(".")[0] not in VIEWS:
                counts[phase[-1]] = counts.get(phase[-1], 0) + 1
            return func(*args, **(kwargs or {}))

    def entered(name, fn):
        def wrapper(*args, **kwargs):
            phase.append(name)
            try:
                return fn(*args, **kwargs)
            finally:
                phase.pop()
        return wrapper

    prompts, cfg = _config({}, 1, 256, True)
    out = {}
    for stop in (False, True):
        cfg = dataclasses.replace(cfg, stop_at_eos=stop)
        lm.generate(prompts, cfg)  # warm-up
        counts.clear()
        with wrapped_phases(entered), Count():
            steps = lm.generate(prompts, cfg).steps
        per = {k: v / steps for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}
        after = sum(v for k, v in per.items() if k in ("_sample", "_select", "apply_stops", "_flags",
                                                        "_queue_transfer", "_read_transfer", "_transfer"))
        out[f"stop_at_eos={stop}"] = {"per_step": per, "after_forward": after, "steps": steps}
        print(f"ops stop_at_eos={stop}: {after:.1f} a step between the forward and the transfer; "
              + ", ".join(f"{k} {v:.1f}" for k, v in per.items()), flush=True)
    return out


def part_projections() -> dict:
    d, m, layers = 4096, 12288, 32
    bw = copy_bandwidth("cuda")
    dev, dt = "cuda", torch.bfloat16
    sep = [[torch.randn(n, d, device=dev, dtype=dt) * 0.02 for n in (d, d, d)] + [torch.randn(d, d, device=dev, dtype=dt)]
           + [torch.randn(m, d, device=dev, dtype=dt), torch.randn(m, d, device=dev, dtype=dt),
              torch.randn(d, m, device=dev, dtype=dt)] for _ in range(layers)]
    fused = [[torch.cat(w[:3]), w[3], torch.cat(w[4:6]), w[6]] for w in sep]
    nbytes = sum(w.numel() * w.element_size() for ws in sep for w in ws)
    out = {"copy_bandwidth_TBps": bw / 1e12, "floor_ms": nbytes / bw * 1e3}

    def separate(x):
        for q, k, v, o, g, u, dn in sep:
            torch.nn.functional.linear(x, q), torch.nn.functional.linear(x, k), torch.nn.functional.linear(x, v)
            torch.nn.functional.linear(x, o)
            h = torch.nn.functional.linear(x, g) * torch.nn.functional.linear(x, u)
            torch.nn.functional.linear(h, dn)

    def joined(x):
        for qkv, o, gu, dn in fused:
            torch.nn.functional.linear(x, qkv)
            torch.nn.functional.linear(x, o)
            h = torch.nn.functional.linear(x, gu)
            torch.nn.functional.linear(h[..., :m] * h[..., m:], dn)

    for rows in (32, 64, 256):
        x = torch.randn(rows, d, device=dev, dtype=dt)
        for name, fn in (("separate", separate), ("joined", joined)):
            fn(x)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn(x)
            ms = _replay_ms(graph, 13, 3)
            out[f"{name}_{rows}"] = ms
            print(f"projections {name} rows {rows}: {ms:.3f} ms ({ms / out['floor_ms']:.2f}x the floor "
                  f"{out['floor_ms']:.3f} ms)", flush=True)
    return out


def _replay_ms(graph, replays: int, warm: int) -> float:
    """The median ms of ``replays`` synchronised replays of ``graph``, the first ``warm`` left out."""
    times = []
    for _ in range(replays):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times[warm:])[(replays - warm) // 2]


def part_candidates(vocab: int = 126464, mask_id: int = 126336) -> dict:
    """The temperature-0 candidates pass over bf16 logits of LLaDA's vocabulary: the reference (gather the rows,
    float32 copy, softmax, argmax, gather: dlm.sampling.compute_candidates) against the fused kernel
    (dlm.sampling_kernel), each replayed from a CUDA graph, at batch 1's 32 rows and a static batch's 1,024."""
    from dlm.sampling import candidates_of_rows

    bw = copy_bandwidth("cuda")
    out: dict = {"copy_bandwidth_TBps": bw / 1e12}
    for rows in (32, 1024):
        logits = torch.randn(rows + 8, vocab, device="cuda", dtype=torch.bfloat16) * 3
        index = torch.arange(4, rows + 4, device="cuda")  # a gather, as the engine's candidate rows
        kw = dict(mode="gumbel", never_ids=(mask_id,))
        ref = candidates_of_rows(logits, index, fused=False, **kw)
        got = candidates_of_rows(logits, index, fused=True, **kw)
        rel = ((got.confidence - ref.confidence).abs() / ref.confidence).max().item()
        res = {"tokens_equal": bool(torch.equal(got.tokens, ref.tokens)), "confidence_max_rel": rel,
               "floor_us": rows * vocab * 2 / bw * 1e6}
        for name, fused in (("reference", False), ("kernel", True)):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(10):
                    candidates_of_rows(logits, index, fused=fused, **kw)
            res[f"{name}_us"] = _replay_ms(graph, 8, 2) * 100  # us per call (10 calls a replay)
        res["speedup"] = res["reference_us"] / res["kernel_us"]
        out[f"rows_{rows}"] = res
        print(f"candidates rows {rows}: reference {res['reference_us']:.1f} us, kernel {res['kernel_us']:.1f} us "
              f"({res['speedup']:.1f}x; one read of the logits {res['floor_us']:.1f} us), tokens equal "
              f"{res['tokens_equal']}, confidence max rel {rel:.2e}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["projections", "steps", "kernels"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trace", type=Path, default=None, help="kernels_refresh_b32: write the profile as a Chrome trace here")
    ap.add_argument("--cudnn-attention", action="store_true",
                    help="let SDPA use cuDNN's attention (dlm.models.attention.use_cudnn_attention; off by default)")
    ap.add_argument("--without", default=None, type=without_parts,
                    help="run the parts without this part of the fused kernels (engine_gpu.py's --without)")
    args = ap.parse_args()
    use_cudnn_attention(args.cudnn_attention)
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                     "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d"), "cudnn_attention": args.cudnn_attention}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    lm = None

    def model():
        nonlocal lm
        if lm is None:
            lm = random_lm("llada-8b")
        return lm

    jobs = {"steps": lambda: part_steps(model()), "kernels": lambda: part_kernels(model()),
            "kernels_graphs": lambda: part_kernels(model(), graphs=True),
            "kernels_b32": lambda: part_kernels(model(), batch=32, gen=256, graphs=True),
            "kernels_refresh_b32": lambda: part_kernels_refresh(model(), trace=args.trace),
            "host": lambda: part_host(model()), "host_b32": lambda: part_host(model(), batch=32, gen=256),
            "projections": part_projections, "staggered_steps": lambda: part_staggered_steps(model()),
            "kernels_mixed": lambda: part_kernels_mixed(model()), "steps_cudnn": lambda: part_steps_cudnn(model()), "kernels_ramp": lambda: part_kernels_ramp(model()),
            "candidates": part_candidates, "gaps": lambda: part_gaps(model(), 1, GEN), "gaps_b32": lambda: part_gaps(model(), 32, 256),
            "gaps_short": lambda: part_gaps(model(), 1, GEN, CHEAPEST),
            "launch": lambda: part_launch(model()), "ops": part_ops}
    results["without"] = args.without
    if args.without is not None:  # (every part builds its engines inside the context)
        jobs = {name: (lambda job=job: _without_part(job)) for name, job in jobs.items()}

    def _without_part(job):
        with without(model(), args.without):
            return job()

    run_parts(args.parts, jobs, results, lambda: args.out.write_text(json.dumps(results, indent=1)))


if __name__ == "__main__":
    main()
