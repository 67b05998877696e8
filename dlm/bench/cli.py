"""``dlm bench`` (also ``python -m dlm.bench``): the benchmark suite from the command line.

    dlm bench                                         the quick preset on the bundled dlm-tiny
    dlm bench --preset full --out results/full        the full grid (meant for a GPU)
    dlm bench --configs fast-dllm best --n 20          named configurations (the reference is always added)
    dlm bench --schedulers low_confidence threshold:threshold=0.8 --caches none dual --gen-length 32 64
    dlm bench --grid grid.yaml                        a grid file (JSON, or YAML when PyYAML is installed)
    dlm bench --list                                  the named configurations and grid presets
    dlm bench --preset stress                         stress families, accuracy by answer length and dependency
    dlm bench choose-best                             re-choose the best preset by its rule (dlm.bench.choose)
    dlm bench scale --arch llada-8b --batch 1 8       scale runs on a GPU (dlm.bench.scale; see its --help)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..cli import add_speed_options, speed_kwargs
from ..errors import DlmError

HELP = "benchmark schedulers, caches and verifiers against the one-token-per-step reference"


def _block(text: str) -> int | None:
    if text.lower() in ("auto", "none", "default"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"block length must be an integer or 'auto', got {text!r}") from None


def configure(p: argparse.ArgumentParser) -> None:
    """Add the options of ``dlm bench`` to ``p`` (and its ``scale`` and ``choose-best`` subcommands)."""
    _what_to_run(p)
    _tasks_and_shapes(p)
    _model_and_output(p)
    _subcommands(p)
    p.set_defaults(func=cmd_bench)


def _what_to_run(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("what to run")
    w.add_argument("--preset", default=None, help="grid preset: quick (default), full or stress")
    w.add_argument("--grid", type=Path, default=None, help="grid file (JSON, or YAML with PyYAML): suite settings, "
                   "configs, grid; see docs/benchmarks.md")
    w.add_argument("--configs", nargs="+", default=None, metavar="NAME",
                   help="named configurations (dlm bench --list): llada-reference, fast-dllm, dkv, prophet, learn2pd, "
                   "lossless-stepwise, lossless-causal, best")
    w.add_argument("--schedulers", nargs="+", default=None, metavar="SPEC",
                   help="grid axis: NAME, NAME:key=value,... or NAME:{json}")
    w.add_argument("--caches", nargs="+", default=None, metavar="SPEC", help="grid axis: NAME[:key=value,...]")
    w.add_argument("--verifiers", nargs="+", default=None, metavar="SPEC",
                   help="grid axis: none, stepwise, causal[:verifier=PATH]")
    w.add_argument("--no-verifiers", action="store_true",
                   help="leave out the configurations with a verifier (as choose-best's tuning run does)")
    w.add_argument("--set", nargs="+", default=None, metavar="KEY=VALUE", dest="set_fields",
                   help="GenerationConfig fields for every grid configuration (e.g. eotp=true tokens_per_step=2)")


def _tasks_and_shapes(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("tasks and shapes (override the preset)")
    s.add_argument("--tasks", nargs="+", default=None, help="synthetic families and/or 'code'")
    s.add_argument("--n", type=int, default=None, help="test examples per synthetic family")
    s.add_argument("--code-n", type=int, default=None, help="held-out standard-library functions to complete")
    s.add_argument("--gen-length", type=int, nargs="+", default=None, help="generation lengths of the tasks (axis)")
    s.add_argument("--code-gen-length", type=int, default=None, help="generation length of code completion")
    s.add_argument("--block-length", type=_block, nargs="+", default=None, help="block lengths (axis; 'auto')")
    s.add_argument("--batch-size", type=int, nargs="+", default=None, help="batch sizes (axis)")
    s.add_argument("--repeats", type=int, default=None, help="timed repeats (median reported)")
    s.add_argument("--warmup", type=int, default=None, help="untimed warm-up passes over the first batch")
    s.add_argument("--warmup-rows", type=int, default=None,
                   help="rows of the warm-up batch (default: the preset's; a full batch for full)")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--split", choices=("test", "val"), default=None,
                   help="split of the synthetic examples: test (default; evaluation) or val (tuning, as choose-best)")
    s.add_argument("--breakdown", action="store_true", default=None,
                   help="report accuracy and NFE by answer length and dependency (on in the stress preset)")


def _model_and_output(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("model and output")
    m.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    m.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    m.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16")
    add_speed_options(m)  # with fused kernels, keep the full-batch warm-up: compilation treats batch 1 apart
    m.add_argument("--quantize", choices=("fp8",), default=None,
                   help="store every linear layer as float8 with per-channel scales (docs/gpu.md#fp8-weights)")
    m.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a machine shared with other jobs, 1 thread gives "
                   "steadier timings: spinning OpenMP threads on oversubscribed cores slow every step down")
    m.add_argument("--verifier", default=None,
                   help="causal verifier folder for verify=causal (default: the bundled dlm-tiny-ar if present)")
    m.add_argument("--out", type=Path, default=None, help="results folder (default: results/bench-<date>-<time>)")
    m.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    m.add_argument("--list", action="store_true", help="list named configurations and grid presets, then exit")


def _subcommands(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench_command", required=False, metavar="{scale,choose-best}")
    # every argument after "scale" goes to dlm.bench.scale unparsed (no prefix char, so nothing is an option here)
    sc = sub.add_parser("scale", add_help=False, prefix_chars="\x00",
                        help="GPU scale runs of LLaDA-8B / Dream-7B geometries (dlm bench scale --help)")
    sc.add_argument("scale_args", nargs="*")
    cb = sub.add_parser("choose-best", add_help=False, prefix_chars="\x00",
                        help="choose the best preset by its rule on the val split (dlm bench choose-best --help)")
    cb.add_argument("choose_args", nargs="*")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Called by :mod:`dlm.cli` to add ``dlm bench``."""
    p = subparsers.add_parser("bench", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dlm.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return p


# ------------------------------------------------------------------------------------------------ resolution
def suite_from_args(args: argparse.Namespace):
    """The suite the options describe (see docs/benchmarks.md for the precedence rules)."""
    from ..kvargs import parse_kv
    from .gridfile import dedupe, read_grid_file, suite_from_mapping
    from .methods import grid_methods
    from .presets import SUITES, named, suite_preset

    data: dict[str, Any] = read_grid_file(args.grid) if args.grid is not None else {}
    preset = args.preset or data.get("preset")
    base = suite_preset(preset or "quick")
    methods = list(base.methods) if preset else []
    suite = suite_from_mapping({k: v for k, v in data.items() if k != "preset"}, base=base.replace(methods=()))
    methods += suite.methods
    for name in args.configs or []:
        methods.append(named(name))
    if any(x is not None for x in (args.schedulers, args.caches, args.verifiers, args.set_fields)):
        grid: dict[str, Any] = {}
        for key, value in (("scheduler", args.schedulers), ("cache", args.caches), ("verify", args.verifiers)):
            if value is not None:
                grid[key] = value
        if args.set_fields:
            grid["set"] = parse_kv(args.set_fields, "set")
        methods += grid_methods(grid)
    if not methods:
        methods = list(SUITES["quick"].methods)
    if getattr(args, "no_verifiers", False):
        methods = [m for m in methods if not m.fields.get("verify")]
    changes: dict[str, Any] = {}
    for key in ("tasks", "n", "code_n", "gen_length", "code_gen_length", "block_length", "batch_size", "repeats",
                "warmup", "warmup_rows", "seed", "split", "breakdown"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = value
    return suite.replace(methods=tuple(dedupe(methods)), **changes)


def list_presets() -> str:
    from .presets import NAMED, SUITES

    lines = ["named configurations:"]
    for m in NAMED.values():
        lines.append(f"  {m.name:18s} {m.label()}\n  {'':18s} {m.description}")
    lines.append("grid presets:")
    for name, s in SUITES.items():
        lines.append(f"  {name:18s} tasks {', '.join(s.tasks)}; n {s.n}/family, code {s.code_n}; gen_length "
                     f"{list(s.gen_length)}, block {list(s.block_length)}, batch {list(s.batch_size)}; "
                     f"{len(s.methods)} configurations; repeats {s.repeats}")
    return "\n".join(lines)


def _warn_cpu_contention(device) -> None:
    """Warn when CPU timings will be noise: more runnable work than cores with several torch threads."""
    import os

    import torch

    if device.type != "cpu" or torch.get_num_threads() <= 1:
        return
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return
    cores = os.cpu_count() or 1
    if load + torch.get_num_threads() > cores:
        print(f"dlm bench: warning: load average {load:.1f} on {cores} cores with {torch.get_num_threads()} torch "
              "threads; spinning threads on busy cores make CPU timings erratic. Pass --threads 1 for steadier "
              "ratios.", file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    if getattr(args, "bench_command", None) == "scale":
        from .scale import main as scale_main

        scale_main(list(args.scale_args))
        return 0
    if getattr(args, "bench_command", None) == "choose-best":
        from .choose import main as choose_main

        return choose_main(list(args.choose_args), bench_main=main)
    if args.list:
        print(list_presets())
        return 0
    suite = suite_from_args(args)
    import dlm

    from .report import command_line, environment, markdown, model_info, write_report
    from .runner import Bench

    out = args.out or Path("results") / time.strftime("bench-%Y%m%d-%H%M%S")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise DlmError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    lm = dlm.load(args.model, device=args.device, dtype=args.dtype, quantize=args.quantize, **speed_kwargs(args))
    print(f"dlm bench: {lm!r}; {len(suite.with_reference())} configurations x {len(suite.shapes)} shape(s); "
          f"results -> {out}", file=sys.stderr, flush=True)
    _warn_cpu_contention(lm.device)
    bench = Bench(lm, suite, verifier=args.verifier)
    results = bench.run()
    results = {"environment": environment(lm.device, command_line()), "model": model_info(lm), **results}
    files = write_report(results, out, plots=not args.no_plots)
    print(markdown(results))
    print("wrote " + ", ".join(str(p) for p in files.values()), file=sys.stderr)
    failed = [r["name"] for r in results["rows"] if r["status"] == "error"]
    if failed:
        print(f"dlm bench: {len(failed)} configuration(s) failed: {', '.join(failed)} (see {out}/results.md)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DlmError as exc:
        print(f"dlm bench: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["add_parser", "build_parser", "cmd_bench", "main", "suite_from_args"]
