"""GPU figures of the continuous-batching engine in one run (LLaDA-8B geometry with random bf16 weights, and the
bundled dlm-tiny / dlm-tiny-ar for what needs trained models).

Parts (``--parts``; each writes its JSON to --out as soon as it is done, and a failing part is recorded, not
fatal):

static      a static batch of 32 (prompt 128, gen 256, dual cache or --cache, 4 tokens per step): tokens/s and the share of
            the schedule's compute ceiling (its matrix FLOPs over the bf16 matmul rate measured in the same run:
            at its start, again right after each timed run over 200 products, and over products back to back
            for as long as the timed run took: the rate a run of that length keeps, ``_sustained``);
            both attention backends (loop, padded); ``--without PART ...`` (sampling-kernel, attention-kernel,
            swiglu-kernel, kv-write-kernel, norm-kernel, lookahead; several joined by ``+``): each variant with
            fused kernels again without those parts of them (the same run's before and after)
staggered   96 requests arriving one per engine step into an engine of 32 rows vs static batches of 32 of the same
            requests: throughput ratio over the whole run (its 31 steps of ramp-up and ramp-down, with fewer
            than 32 rows, included), and the steady state's (the steps that ran 32 rows) against the same static
            throughput; the piecewise CUDA graphs captured before the timed steps (``--lazy-pieces``: in them)
            and, as ``--settings no-pieces``, without them
batch1      per-step latency at batch 1 (dual cache, gen 256 and 1024, eager and CUDA graphs) of this engine and of
            the previous one (``--old PATH``: a copy of the package before the redesign, run in a subprocess)
invariant   dlm-tiny in bf16: 64 task prompts alone vs in a batch of 64 without and with batch_invariant=True
            (agreement), and the cost of batch_invariant=True at 8B geometry (batch 32)
causal      verify="causal" (dlm-tiny drafting, dlm-tiny-ar verifying) at batch 64 vs the causal model's own
            batched greedy generate: time and identical outputs
profile     torch.profiler over a few steps of the static batch: the top kernels and host time
capture     Engine.capture_graphs (the piecewise CUDA graphs of every step size): time and GPU memory kept

    python benchmarks/engine_gpu.py --out results/engine_gpu.json --old .old
    python benchmarks/engine_gpu.py --device cpu --tiny --out /tmp/e.json        # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from parts import run_parts

import dlm
from dlm.api.lm import set_fast_path
from dlm.bench.methods import parse_component
from dlm.bench.scale import (
    copy_bandwidth,
    forward_flops,
    matmul_rate,
    random_lm,
    sustained_matmul_rate,
)
from dlm.engine.graphs import StepGraphs
from dlm.engine.pieces import pieces_of
from dlm.models.attention import use_cudnn_attention

RESULTS: dict = {}


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def save(out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=2, default=str))


def random_prompts(lm, n: int, length: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    vocab = min(lm.arch.valid_vocab or lm.arch.vocab_size, 100_000)
    p = torch.randint(0, vocab, (n, length), generator=g)
    p[p == lm.ids.mask_id] = 1
    return p.tolist()


def schedule_config(gen: int, tps: int, cache: str = "dual") -> dlm.GenerationConfig:
    """The fixed schedule of the parts: block 32, ``tps`` tokens a step, ``cache`` as NAME[:key=value,...]."""
    name, kwargs, _ = parse_component(cache, "cache")
    return dlm.GenerationConfig(gen_length=gen, block_length=32, steps=gen // tps, scheduler="low_confidence",
                                cache=name, cache_kwargs=kwargs, stop_at_eos=False)


def timed_generate(lm, prompts, cfg, device, **kw):
    sync(device)
    t0 = time.perf_counter()
    out = lm.generate(prompts, cfg, **kw)
    sync(device)
    return out, time.perf_counter() - t0


def timed_run(engine, prompts, cfg, device):
    """Submit ``prompts`` and run the engine until done, twice (the first run warms the allocator and kernels up);
    returns the second run's requests and wall seconds."""
    for _ in range(2):
        sync(device)
        t0 = time.perf_counter()
        reqs = [engine.submit(p, cfg) for p in prompts]
        engine.run()
        sync(device)
        wall = time.perf_counter() - t0
    return reqs, wall


def setting_name(attention: str, fused: bool, graphs: bool) -> str:
    """A static variant's name for ``--settings``: its options, or ``loop`` for the loop attention."""
    if attention == "loop":
        return "loop"
    return "+".join([n for n, on in (("graphs", graphs), ("fused", fused)) if on]) or "eager"


# ------------------------------------------------------------------------------------------------ parts
WITHOUT = ("sampling-kernel", "attention-kernel", "swiglu-kernel", "kv-write-kernel", "norm-kernel", "lookahead",
           "skinny-products")


def without_parts(text: str) -> str:
    """argparse type of ``--without``: names of :data:`WITHOUT`, several joined by ``+``."""
    bad = [name for name in text.split("+") if name not in WITHOUT]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown part {bad[0]!r}; allowed: {', '.join(WITHOUT)} (joined by +)")
    return text


@contextlib.contextmanager
def without(lm, part: str | None):
    """The fused kernels without some of their parts (names joined by ``+``), for a before/after in the same run:
    ``sampling-kernel`` (the engine's temperature-0 candidates by the reference dlm.sampling.compute_candidates
    instead of dlm.sampling_kernel), ``attention-kernel`` (the pooled rows' attention by torch's SDPA instead of
    dlm.models.attention_kernel), ``swiglu-kernel`` (SwiGLU by the compiled function instead of
    dlm.models.swiglu_kernel), ``kv-write-kernel`` (the key/value pool's writes by its index copies instead of
    dlm.models.kv_write_kernel), ``norm-kernel`` (the residual add and RMSNorm by the compiled function instead
    of dlm.models.norm_kernel), ``skinny-products`` (the attention output and down projections of few rows by
    cuBLAS's gemm instead of cuBLASLt, dlm.models.skinny); and ``lookahead``: engines built inside the block run
    without the engine's lookahead (dlm.engine.lookahead), the reference loop."""
    from dlm import sampling_kernel
    from dlm.engine.core import EngineCore
    from dlm.models import (
        attention_kernel,
        kv_write_kernel,
        norm_kernel,
        skinny,
        swiglu_kernel,
    )

    modules = {"sampling-kernel": sampling_kernel, "attention-kernel": attention_kernel,
               "swiglu-kernel": swiglu_kernel, "kv-write-kernel": kv_write_kernel, "norm-kernel": norm_kernel,
               "skinny-products": skinny}
    names = part.split("+") if part else []
    chosen = [modules[name] for name in names if name in modules]
    saved = [m.applies for m in chosen]
    build = EngineCore.__dict__["build"]
    for m in chosen:
        m.applies = lambda *a: False
    if "lookahead" in names:
        EngineCore.build = classmethod(lambda cls, *a, **k: build.__func__(cls, *a, **{**k, "lookahead": False}))
    try:
        yield
    finally:
        for m, applies in zip(chosen, saved):
            m.applies = applies
        EngineCore.build = build


def part_static(lm, args, rate):
    rows = []
    prompts = random_prompts(lm, args.batch, args.prompt)
    variants = [("padded", False, False), ("loop", False, False), ("padded", True, False)]
    if args.device == "cuda":  # CUDA graphs: a static batch in lockstep repeats its step layouts
        variants += [("padded", False, True), ("padded", True, True)]
    if args.settings is not None:
        variants = [v for v in variants if setting_name(*v) in args.settings]
    # each variant with fused kernels again without each part named by --without; --repeat: the whole list again
    variants = [(*v, None) for v in variants] + [(*v, part) for part in args.without for v in variants if v[1]]
    variants = [(*v, cache) for cache in args.cache for v in variants] * args.repeat
    for attention, fused, graphs, off, cache in variants:
        cfg = schedule_config(args.gen, args.tps, cache)
        set_fast_path(lm, graphs, fused)
        with without(lm, off):
            engine = dlm.Engine(lm, max_rows=args.batch, max_tokens=args.batch * (args.prompt + args.gen),
                                attention=attention)
            reqs, wall = timed_run(engine, prompts, cfg, args.device)
        # the rate again, right after the run and for longer (200 products, about 0.3 s on an H200): the
        # start-of-run figure (13 products) moves by a few percent from run to run on one machine
        rate_after = matmul_rate(args.device, 8192, 200) if args.device == "cuda" else rate
        sustained = sustained_matmul_rate(args.device, wall) if args.device == "cuda" else rate
        fed = sum(r.output.stats["fed_positions"] for r in reqs)
        forwards = sum(r.output.stats["forwards"] for r in reqs)
        flops = forward_flops(lm.arch, fed, args.prompt + args.gen, forwards * 32)
        rows.append({"attention": attention, "fused": fused, "graphs": graphs, "without": off, "cache": cache,
                     "batch": args.batch, "gen": args.gen, "wall_s": wall, "lookahead": engine.core.lookahead,
                     "lookahead_used": engine.core.lookahead_used,
                     "tokens_per_s": args.batch * args.gen / wall, "engine_steps": engine.core.steps,
                     "ceiling_s": flops / rate, "share_of_ceiling": flops / rate / wall,
                     "matmul_tflops_after": rate_after / 1e12, "share_of_ceiling_after": flops / rate_after / wall,
                     "matmul_tflops_sustained": sustained / 1e12,
                     "share_of_ceiling_sustained": flops / sustained / wall})
        print(f"static {attention} fused={fused} graphs={graphs} without={off} cache={cache}: "
              f"{rows[-1]['tokens_per_s']:.0f} tok/s ({1e3 * wall / reqs[0].output.steps:.2f} ms a step), "
              f"{100 * rows[-1]['share_of_ceiling']:.1f}% of the compute ceiling "
              f"({100 * rows[-1]['share_of_ceiling_sustained']:.1f}% at the rate kept over as long, "
              f"{sustained / 1e12:.0f} TFLOP/s; "
              f"{100 * rows[-1]['share_of_ceiling_after']:.1f}% at the rate measured after the run, "
              f"{rate_after / 1e12:.0f} TFLOP/s)", flush=True)
    set_fast_path(lm, False, False)
    return rows


def part_staggered(lm, args):
    """Eager, and on a GPU with CUDA graphs and with graphs + fused kernels (dlm.load's default there), both
    sides of the ratio alike; ``no-pieces``: graphs + fused kernels without the piecewise graphs
    (dlm.engine.pieces) on the staggered side, which otherwise captures them before its timed steps
    (``--lazy-pieces``: in them). Repeats run the option sets in turn (A, B, A, B, ...); the model's piecewise
    graphs persist from one run to the next while the options stay."""

    out = {}
    settings = [("eager", False, False, False)]
    if args.device == "cuda":
        settings += [("graphs", True, False, True), ("graphs+fused", True, True, True),
                     ("no-pieces", True, True, False)]
    settings = [s for s in settings if args.settings is None or s[0] in args.settings]
    runs: dict[str, list] = {name: [] for name, *_ in settings}
    current = None
    for _ in range(args.repeat):
        for name, graphs, fused, pieces in settings:
            if current != (graphs, fused):  # (a switch drops the model's piecewise graphs)
                set_fast_path(lm, graphs, fused)
                current = (graphs, fused)
            runs[name].append(staggered_run(lm, args, pieces))
    for name, rs in runs.items():
        out[name] = rs[0] if args.repeat == 1 else {"runs": rs, "ratios": [r["ratio"] for r in rs],
                                                    "steady_ratios": [r["steady_ratio"] for r in rs]}
    set_fast_path(lm, False, False)
    return out


def part_capture(lm, args):
    """Engine.capture_graphs at the default fast path: buckets, seconds, and the GPU memory they keep (the static
    buffers and the graphs' private pool: reserved and allocated bytes after against before). CUDA only."""
    if args.device != "cuda":
        return {"skipped": "CUDA graphs need a CUDA device"}
    set_fast_path(lm, True, True)
    engine = dlm.Engine(lm, max_rows=args.batch, max_tokens=args.batch * (args.prompt + args.gen))
    sync(args.device)
    before = torch.cuda.memory_reserved(), torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    n = engine.capture_graphs()
    sync(args.device)
    res = {"buckets": n, "seconds": time.perf_counter() - t0,
           "reserved_gb": (torch.cuda.memory_reserved() - before[0]) / 2**30,
           "allocated_gb": (torch.cuda.memory_allocated() - before[1]) / 2**30}
    print(f"capture: {n} buckets in {res['seconds']:.1f} s; GPU memory kept: {res['allocated_gb']:.2f} GB allocated, "
          f"{res['reserved_gb']:.2f} GB reserved", flush=True)
    set_fast_path(lm, False, False)
    return res


def staggered_run(lm, args, pieces: bool = True):
    n = 3 * args.batch
    prompts = random_prompts(lm, n, args.prompt, seed=1)
    cfg = schedule_config(args.gen, args.tps)
    graphs = None if pieces or not lm.cuda_graphs else StepGraphs(pieces=False)
    engine = dlm.Engine(lm, max_rows=args.batch, max_tokens=args.batch * (args.prompt + args.gen), graphs=graphs)
    shared = pieces_of(lm.model)
    t0 = time.perf_counter()
    captured = engine.capture_graphs() if pieces and not args.lazy_pieces else 0  # (a server's start-up)
    capture_s = time.perf_counter() - t0
    before = (shared.captures, shared.replays)
    reqs = [engine.submit(p, cfg) for p in prompts[: args.batch]]  # warm-up
    engine.run()
    sync(args.device)
    t0 = time.perf_counter()
    todo, reqs = list(prompts), []
    full_s, full_steps, last = 0.0, 0, t0
    while todo or engine.pending:
        if todo:  # one arrival per engine step
            reqs.append(engine.submit(todo.pop(0), cfg))
        rows = len(engine.step())  # (a step ends with its one synchronisation: its wall time is its own)
        now = time.perf_counter()
        if rows == args.batch:
            full_s, full_steps = full_s + now - last, full_steps + 1
        last = now
    sync(args.device)
    stream_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, n, args.batch):
        lm.generate(prompts[i : i + args.batch], cfg)
    sync(args.device)
    static_s = time.perf_counter() - t0
    res = {"requests": n, "max_rows": args.batch, "staggered_tokens_per_s": n * args.gen / stream_s,
           "static_tokens_per_s": n * args.gen / static_s, "ratio": static_s / stream_s}
    # the steps that ran a full batch (32 requests at once): the ramp-up and ramp-down left out, each of those
    # steps committing tps tokens per request (the fixed schedule)
    res["full_batch_steps"] = full_steps
    res["piece_captures"], res["piece_replays"] = shared.captures - before[0], shared.replays - before[1]
    res["captured_up_front"], res["capture_s"] = captured, capture_s
    res["steady_tokens_per_s"] = full_steps * args.batch * args.tps / full_s if full_s else None
    res["steady_ratio"] = res["steady_tokens_per_s"] / res["static_tokens_per_s"] if full_s else None
    print(f"staggered (pieces {'on' if pieces else 'off'}): {res['staggered_tokens_per_s']:.0f} vs static "
          f"{res['static_tokens_per_s']:.0f} tok/s ({100 * res['ratio']:.1f}%); steady state (full-batch steps) "
          f"{res['steady_tokens_per_s'] or 0:.0f} tok/s; pieces captured {res['piece_captures']}, "
          f"replayed {res['piece_replays']}; up front {captured} in {capture_s:.1f} s", flush=True)
    return res


def batch1_rows(arch: str, device: str, gens, pythonpath: str | None, out: Path) -> list[dict]:
    """The scale runner (per-step latency, mid-answer blocks) in a subprocess (old or new package)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, "-m", "dlm.bench.scale", "--arch", arch, "--batch", "1", "--gen", *map(str, gens),
           "--cache", "dual", "--graphs", "both" if device == "cuda" else "off", "--device", device, "--out", str(out),
           "--fused", "both" if device == "cuda" else "off"]
    subprocess.run(cmd, env=env, check=True, timeout=400)
    return json.loads(out.read_text())


def part_batch1(args):
    arch = "llada-tiny" if args.tiny else "llada-8b"
    gens = [256] if args.tiny else [256, 1024]
    res = {"new": batch1_rows(arch, args.device, gens, None, args.out.with_suffix(".b1new.json"))}
    if args.old:
        res["old"] = batch1_rows(arch, args.device, gens, str(Path(args.old).resolve()),
                                 args.out.with_suffix(".b1old.json"))
    for key in ("new", "old"):
        for r in res.get(key, {}).get("rows", []):
            print(f"batch1 {key} gen {r['gen_length']} graphs {r['graphs']} fused {r['fused']}: "
                  f"{r['ms_per_step']:.2f} ms/step", flush=True)
    return res


def task_prompts(n: int, seed: int = 7) -> list[str]:
    from dlm.data import FAMILIES, get_task

    per = -(-n // len(FAMILIES))
    items = [e.prompt for fam in FAMILIES for e in get_task(fam).generate("test", per, seed)]
    return items[:n]


def part_invariant(lm8b, args):
    tiny = dlm.load(device=args.device, dtype="bfloat16" if args.device == "cuda" else "float32", fast=False)
    prompts = task_prompts(64)
    cfg = dlm.GenerationConfig(gen_length=32, scheduler="threshold", cache="dual")
    res = {}
    for invariant in (False, True):
        batch = dlm.Engine(tiny, max_rows=64, batch_invariant=invariant)
        reqs = [batch.submit(p, cfg) for p in prompts]
        batch.run()
        alone = dlm.Engine(tiny, max_rows=1, batch_invariant=invariant)
        same = 0
        for p, r in zip(prompts, reqs):
            a = alone.submit(p, cfg)
            alone.run()
            same += torch.equal(a.output.sequences, r.output.sequences)
        res[f"agreement_invariant_{invariant}"] = same / len(prompts)
    prompts8 = random_prompts(lm8b, args.batch, args.prompt, seed=3)
    cfg8 = schedule_config(64, args.tps)
    for invariant in (False, True):
        engine = dlm.Engine(lm8b, max_rows=args.batch, max_tokens=args.batch * (args.prompt + 64),
                            batch_invariant=invariant)
        _, wall = timed_run(engine, prompts8, cfg8, args.device)
        res[f"tokens_per_s_invariant_{invariant}"] = args.batch * 64 / wall
    res["cost"] = res["tokens_per_s_invariant_False"] / res["tokens_per_s_invariant_True"]
    print(f"invariant: agreement {res['agreement_invariant_False']:.3f} -> {res['agreement_invariant_True']:.3f}, "
          f"cost {res['cost']:.2f}x", flush=True)
    return res


def part_causal(args):
    """verify="causal" against the verifier's own batched greedy generate: ``--causal-repeats`` timings of each,
    alternating (dlm, generate, dlm, ...) in one process, compared by their medians (a single timing of either
    swings by half between processes: both are bound by host work)."""
    from statistics import median

    dev = args.device
    drafter = dlm.load(device=dev, dtype="float32", fast=False)
    ids = drafter.encode(task_prompts(64, seed=11))
    G = 32
    cfg = dlm.GenerationConfig(gen_length=G, verify="causal", verify_kwargs={"dtype": "float32", "draft_length": 8})
    drafter.generate(ids[:4], cfg)  # warm-up (loads the verifier)
    hf = _HfGenerate(ids, G, dev)
    hf.run(4)  # warm-up
    times: dict[str, list[float]] = {"dlm": [], "hf": [], "dlm_graphs": [], "hf_graphs": []}
    for _ in range(args.causal_repeats):
        out, t = timed_generate(drafter, ids, cfg, dev)
        times["dlm"].append(t)
        times["hf"].append(hf.run())
    same = sum(out.sequences[r, : len(ref)].tolist() == ref for r, ref in enumerate(hf.answers()))
    res = {"batch": len(ids), "gen": G, "repeats": args.causal_repeats, "times_s": times,
           "dlm_causal_s": median(times["dlm"]), "hf_generate_s": median(times["hf"]),
           "identical_rows": same / len(ids), "block_efficiency": out.stats.get("block_efficiency")}
    res["speedup"] = res["hf_generate_s"] / res["dlm_causal_s"]
    if dev == "cuda":  # the drafter's steps replayed as CUDA graphs (the verifier runs as before)
        drafter.cuda_graphs = True
        drafter.generate(ids[:4], cfg)
        for _ in range(args.causal_repeats):
            out_g, t = timed_generate(drafter, ids, cfg, dev)
            times["dlm_graphs"].append(t)
            times["hf_graphs"].append(hf.run())
        res.update({"dlm_causal_graphs_s": median(times["dlm_graphs"]), "hf_generate_graphs_s": median(times["hf_graphs"]),
                    "graphs_identical_to_eager": bool(torch.equal(out_g.sequences, out.sequences))})
        res["speedup_graphs"] = res["hf_generate_graphs_s"] / res["dlm_causal_graphs_s"]
    print(f"causal: median {res['dlm_causal_s']:.3f}s vs HF generate {res['hf_generate_s']:.3f}s "
          f"({res['speedup']:.2f}x; graphs {res.get('speedup_graphs', 0):.2f}x), identical {same}/{len(ids)}",
          flush=True)
    return res


class _HfGenerate:
    """The verifier (dlm-tiny-ar) through transformers' batched greedy ``generate``, prompts left-padded."""

    def __init__(self, ids, G: int, dev: str):
        from transformers import AutoModelForCausalLM

        from dlm.assets import default_verifier_path

        self.model = AutoModelForCausalLM.from_pretrained(str(default_verifier_path()), dtype=torch.float32).to(dev).eval()
        self.eos, self.G, self.dev = self.model.generation_config.eos_token_id, G, dev
        self.P = max(len(p) for p in ids)
        self.batch = torch.full((len(ids), self.P), self.eos)
        self.mask = torch.zeros((len(ids), self.P), dtype=torch.long)
        for i, p in enumerate(ids):
            self.batch[i, self.P - len(p):] = torch.tensor(p)
            self.mask[i, self.P - len(p):] = 1
        self.out = None

    def run(self, rows: int | None = None) -> float:
        """Seconds of one batched generate (of the first ``rows`` prompts: a warm-up)."""
        with torch.no_grad():
            sync(self.dev)
            t0 = time.perf_counter()
            self.out = self.model.generate(self.batch[:rows].to(self.dev), attention_mask=self.mask[:rows].to(self.dev),
                                           do_sample=False, max_new_tokens=self.G, pad_token_id=self.eos)
            sync(self.dev)
            return time.perf_counter() - t0

    def answers(self) -> list[list[int]]:
        """Each row's answer up to and with its first EOS."""
        out = []
        for r in range(self.out.shape[0]):
            ref = self.out[r, self.P:].tolist()
            out.append(ref[: next((i for i, t in enumerate(ref) if t == self.eos), len(ref) - 1) + 1])
        return out


def part_profile(lm, args):
    from torch.profiler import ProfilerActivity, profile

    prompts = random_prompts(lm, args.batch, args.prompt, seed=5)
    cfg = schedule_config(args.gen, args.tps)
    engine = dlm.Engine(lm, max_rows=args.batch, max_tokens=args.batch * (args.prompt + args.gen))
    reqs = [engine.submit(p, cfg) for p in prompts]
    for _ in range(10):  # past the first refresh
        engine.step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(6):
            engine.step()
        sync(args.device)
    engine.run()
    key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=25)
    (args.out.parent / "engine_profile.txt").write_text(table + "\n\n" + prof.key_averages().table(
        sort_by="self_cpu_time_total", row_limit=25))
    print(table[-3000:], flush=True)
    return {"steps_profiled": 6, "requests": len(reqs)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--parts", nargs="+", default=["static", "staggered", "batch1", "invariant", "causal", "profile"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny geometry (CPU smoke run)")
    ap.add_argument("--old", default=None, help="folder holding the previous dlm package (for the batch-1 baseline)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--tps", type=int, default=4, help="tokens committed per step (fixed schedule)")
    ap.add_argument("--cache", nargs="+", default=["dual"],
                    help="static part: cache policies, NAME[:key=value,...] each (e.g. dual:refresh_to=block)")
    ap.add_argument("--settings", nargs="+", default=None, choices=["eager", "graphs", "graphs+fused", "fused", "loop", "no-pieces"],
                    help="only these option sets in the static and staggered parts (default: all)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per option set of the static and staggered parts (in turn: A, B, A, B, ...)")
    ap.add_argument("--without", nargs="+", default=[], type=without_parts,
                    help="static part: each variant with fused kernels again without these parts of them (see without())")
    ap.add_argument("--causal-repeats", type=int, default=7, help="causal part: timings of each side")
    ap.add_argument("--lazy-pieces", action="store_true",
                    help="staggered part: capture the piecewise graphs in the timed steps that first need them "
                         "instead of before (Engine.capture_graphs, as dlm serve does at start-up)")
    ap.add_argument("--cudnn-attention", action="store_true",
                    help="let SDPA use cuDNN's attention (dlm.models.attention.use_cudnn_attention; off by default)")
    args = ap.parse_args(argv)
    use_cudnn_attention(args.cudnn_attention)
    RESULTS["cudnn_attention"] = args.cudnn_attention
    if args.tiny:
        args.batch, args.prompt, args.gen = 4, 16, 64
    RESULTS["device"] = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rate = matmul_rate(args.device, 8192 if args.device == "cuda" else 256, 10 if args.device == "cuda" else 2)
    RESULTS["matmul_tflops"] = rate / 1e12
    RESULTS["copy_tb_s"] = copy_bandwidth(args.device, 2**31 if args.device == "cuda" else 2**24, 5) / 1e12
    lm = random_lm("llada-tiny" if args.tiny else "llada-8b", device=args.device,
                   dtype=torch.bfloat16 if args.device == "cuda" else torch.float32)
    jobs = {"static": lambda: part_static(lm, args, rate), "staggered": lambda: part_staggered(lm, args),
            "batch1": lambda: part_batch1(args), "invariant": lambda: part_invariant(lm, args),
            "causal": lambda: part_causal(args), "profile": lambda: part_profile(lm, args),
            "capture": lambda: part_capture(lm, args)}
    run_parts(args.parts, jobs, RESULTS, lambda: save(args.out))
    print(json.dumps({k: v for k, v in RESULTS.items() if k not in ("profile",)}, indent=1, default=str)[-4000:])


if __name__ == "__main__":
    main()
