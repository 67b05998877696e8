"""The ``dlm`` command.

    dlm generate [--model PATH] "prompt" ...          generate (every GenerationConfig field is an option)
    dlm generate --input prompts.jsonl --output out.jsonl
    dlm schedulers | dlm caches | dlm verifiers       list what is registered, with parameters
    dlm train ... | dlm train-filter ... | dlm bench ...   (see their own --help)
    dlm serve ... | dlm bench serve ...               the OpenAI-compatible server and its load test (docs/serving.md)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from .config import GenerationConfig
from .data.prompts import read_prompt_lines  # noqa: F401 (also the reader of train-filter's prompt files)
from .errors import ConfigError, DlmError
from .kvargs import parse_kv

BUILT_IN = ("generate", "schedulers", "caches", "verifiers")

# fields with a hand-written option (the rest are generated from GenerationConfig)
_MAPPING_FIELDS = {"scheduler_kwargs": "scheduler-arg", "cache_kwargs": "cache-arg", "verify_kwargs": "verify-arg"}


def _add_config_options(p: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(GenerationConfig)
    g = p.add_argument_group("generation settings (GenerationConfig fields; see its docstring)")
    g.add_argument("--config", type=Path, help="a JSON file of GenerationConfig fields (options below override it)")
    for f in dataclasses.fields(GenerationConfig):
        opt = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if f.name in _MAPPING_FIELDS:
            g.add_argument("--" + _MAPPING_FIELDS[f.name], dest=f.name, action="append", metavar="KEY=VALUE",
                           help=f"a parameter of the {f.name.split('_')[0]} (repeatable)")
        elif hint is bool:
            g.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        elif f.name == "stop_token_ids":
            g.add_argument(opt, dest=f.name, type=int, nargs="+", default=None)
        else:
            args = typing.get_args(hint)
            base = next((a for a in args if a is not type(None)), hint) if args else hint
            g.add_argument(opt, dest=f.name, type=base if base in (int, float, str) else str, default=None)


def config_from_args(args: argparse.Namespace) -> GenerationConfig:
    data: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            data = json.loads(Path(args.config).read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read --config {args.config}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"--config {args.config} must hold a JSON object of GenerationConfig fields, "
                              f"got a {type(data).__name__}")
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f.name, None)
        if f.name in _MAPPING_FIELDS:
            if value:
                data[f.name] = {**data.get(f.name, {}), **parse_kv(value, _MAPPING_FIELDS[f.name])}
        elif value is not None:
            data[f.name] = value
    return GenerationConfig.from_dict(data)


def cmd_generate(args: argparse.Namespace) -> int:
    """Answers are written batch by batch (see :mod:`dlm.answers`): an interrupt keeps every finished one."""
    from .answers import AnswerWriter, summary
    from .assets import resolve_model

    args.model = resolve_model(args.model)
    config = config_from_args(args)
    rows = _prompt_rows(args)
    if args.stream and (len(rows) != 1 or args.json):
        raise ConfigError("--stream prints one answer as it is decoded: give exactly one prompt and no --json "
                          f"(got {len(rows)} prompt(s){' and --json' if args.json else ''})")
    writer = AnswerWriter(args.output, as_json=args.json, quiet=args.stream and args.output is None)
    try:
        outs = _generate_into(writer, args, config, rows)
    except KeyboardInterrupt:
        writer.close()
        print(f"dlm: interrupted; {writer.written} of {len(rows)} answers saved to {writer.where}", file=sys.stderr)
        return 130
    except DlmError as exc:
        writer.close()
        if args.output is None or not writer.written:
            raise
        raise type(exc)(f"{exc} ({writer.written} of {len(rows)} answers saved to {writer.where})") from exc
    writer.close()
    if args.output is not None:
        print(summary(writer, len(rows), outs), file=sys.stderr)
    return 0


def _prompt_rows(args: argparse.Namespace) -> list[tuple[str | list[int], dict[str, Any]]]:
    """(prompt, the input line's object or {}) for each prompt of --input or the command line."""
    if args.input is not None:
        rows = [(prompt, item) for _, prompt, item in read_prompt_lines(args.input)]
    else:
        rows = [(p, {}) for p in args.prompts]
    if not rows:
        raise ConfigError("give a prompt (dlm generate \"text\") or --input FILE.jsonl")
    return rows


def _generate_into(writer, args: argparse.Namespace, config: GenerationConfig, rows: list) -> list:
    """Generate every prompt of ``rows``, feeding each finished batch of records to ``writer``."""
    from .answers import answer_records

    if args.data_parallel is not None:
        from .parallel.data import generate_data_parallel, replica_devices

        if args.stream:
            raise ConfigError("--stream prints one answer as it is decoded; it does not combine with --data-parallel")
        prompts = [p for p, _ in rows]
        out = generate_data_parallel(args.model, prompts, config, replica_devices(args.data_parallel, args.device),
                                     batch_size=args.batch_size, dtype=args.dtype, quantize=args.quantize)
        writer.write(answer_records([e for _, e in rows], prompts, out))
        return [out]
    model = _load_model(args)
    stream = _TextStream(model, config) if args.stream else None
    outs = []
    for chunk in _chunks(rows, args.batch_size):
        prompts = [p for p, _ in chunk]
        out = model.generate(prompts, config, stream=stream)
        writer.write(answer_records([e for _, e in chunk], prompts, out))
        outs.append(out)
    if stream is not None:
        stream.close()
    return outs


def _chunks(rows: list, batch_size: int | None):
    """Batches of ``batch_size`` rows (all at once by default), with a progress bar when there are several."""
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    size = batch_size or len(rows)
    chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
    if len(chunks) == 1:
        return chunks
    from tqdm.auto import tqdm

    return tqdm(chunks, desc="generate", unit="batch")


def add_speed_options(group) -> None:
    """``--no-fast``, ``--cuda-graphs / --no-cuda-graphs``, ``--fused-kernels / --no-fused-kernels`` (see
    :func:`speed_kwargs`); shared by generate, serve, bench and bench serve."""
    group.add_argument("--no-fast", dest="fast", action="store_false",
                       help="the eager reference path: on CUDA, no CUDA graphs and no fused kernels unless asked "
                       "below (by default both are on with one GPU; docs/gpu.md)")
    group.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                       help="replay repeated steps as CUDA graphs (default: on with one GPU unless --no-fast)")
    group.add_argument("--fused-kernels", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile'd elementwise kernels (default: on with one GPU and Triton unless "
                       "--no-fast)")


def speed_kwargs(args: argparse.Namespace) -> dict:
    """``dlm.load``'s fast / cuda_graphs / fused_kernels from :func:`add_speed_options`' flags."""
    return {"fast": args.fast, "cuda_graphs": args.cuda_graphs, "fused_kernels": args.fused_kernels}


def speed_flags(args: argparse.Namespace) -> list[str]:
    """The flags of :func:`add_speed_options` that reproduce ``args`` (for a command started by another)."""
    flags = [] if args.fast else ["--no-fast"]
    for name in ("cuda_graphs", "fused_kernels"):
        value = getattr(args, name)
        if value is not None:
            flags.append(f"--{'' if value else 'no-'}{name.replace('_', '-')}")
    return flags


def _load_model(args: argparse.Namespace):
    import torch

    from .api import load

    device = _device(args.device)
    if (device or torch.device("cuda" if torch.cuda.is_available() else "cpu")).type == "cpu":
        torch.set_num_threads(args.threads or default_threads())
    model = load(args.model, dtype=args.dtype, device=device, quantize=args.quantize, **speed_kwargs(args))
    if args.stream and model.tokenizer is None:
        raise ConfigError("--stream prints text, but this model has no tokenizer")
    return model


def _device(name: str | None):
    """--device as a torch.device, checked: ConfigError for a name torch does not know or a CUDA device this
    machine does not have, before anything is loaded."""
    import torch

    if name is None:
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"--device {name!r} is not a device (e.g. cpu, cuda, cuda:1): {exc}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} but CUDA is not available here (no GPU, or a CPU-only build of "
                              "PyTorch); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def default_threads() -> int:
    """CPU threads when --threads is not given: the cores this process may run on minus those other processes
    keep busy (the 1-minute load average), at least 1. Threads beyond the free cores make torch's pool spin:
    on 2 busy cores one bundled generation took 9-44 s with 2 threads and 5 s with 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    return max(1, cores - busy)


class _TextStream:
    """Prints the answer of a single prompt as its prefix becomes final."""

    def __init__(self, model, config: GenerationConfig):
        self.model, self.mask = model, model.ids.mask_id
        self.stops = set(config.stop_token_ids or model.ids.stop_ids)
        self.printed = 0

    def __call__(self, event) -> None:
        row = event.tokens.tolist()
        end = next((i for i, t in enumerate(row) if t == self.mask or t in self.stops), len(row))
        if end > self.printed:
            text = self.model.tokenizer.decode(row[:end], skip_special_tokens=True)
            prev = self.model.tokenizer.decode(row[: self.printed], skip_special_tokens=True)
            sys.stdout.write(text[len(prev):])
            sys.stdout.flush()
            self.printed = end

    def close(self) -> None:
        sys.stdout.write("\n")


def _describe(cls) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    return doc[0] if doc else ""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def cmd_list(kind: str) -> int:
    from . import cache, schedulers, verify

    registry = {"schedulers": schedulers.SCHEDULERS, "caches": cache.CACHES, "verifiers": verify.VERIFIERS}[kind]
    for entry in registry.entries():
        try:
            cls = registry.get(entry.name)
        except DlmError as exc:
            print(f"{entry.name:20s} [{entry.source}] BROKEN: {exc}")
            continue
        params = getattr(cls, "Params", None)
        fields = dataclasses.fields(params) if params is not None and dataclasses.is_dataclass(params) else ()
        args = ", ".join(f"{f.name}={_default(f)!r}" for f in fields) or "-"
        if entry.source == "dlm":
            src = "built-in"
        elif getattr(entry, "plugin", False):
            src = f"plugin from {entry.source}"
        else:
            src = f"registered by {entry.source}"
        print(f"{entry.name:20s} {args:50s} [{src}] {_describe(cls)}")
    return 0


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The ``dlm`` parser. ``only`` (the command about to run): the other commands' modules (training,
    benchmarks, eval, and what they import) are not imported, which keeps ``dlm generate``'s start-up short."""
    p = argparse.ArgumentParser(prog="dlm", description="Generation for masked-diffusion language models.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate answers for prompts")
    g.add_argument("prompts", nargs="*", help="prompt text(s)")
    g.add_argument("--model", default=None, help="checkpoint folder, or the name of a bundled model: dlm-tiny "
                   "(the default), dlm-tiny-block")
    g.add_argument("--input", type=Path, help="JSONL file of prompts (strings or {'prompt': ...} / {'prompt_ids': [...]})")
    g.add_argument("--output", type=Path, help="write answers as JSONL here")
    g.add_argument("--json", action="store_true", help="print one JSON record per answer")
    g.add_argument("--stream", action="store_true", help="print a single prompt's answer as it is decoded")
    g.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    g.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    g.add_argument("--quantize", choices=("fp8",), default=None, help="store every linear layer as float8 with per-channel scales (docs/gpu.md#fp8-weights)")
    add_speed_options(g)
    g.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: all at once); "
                   "with --output, each finished batch is written at once")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores not busy with other "
                   "processes, see docs/cli.md)")
    g.add_argument("--data-parallel", metavar="N", default=None,
                   help="one replica per GPU on N GPUs ('auto': all visible), prompts split between them; "
                        "with --device cpu, N CPU processes (docs/parallel.md)")
    _add_config_options(g)
    g.set_defaults(func=cmd_generate)
    for kind in ("schedulers", "caches", "verifiers"):
        sp = sub.add_parser(kind, help=f"list the registered {kind} and their parameters")
        sp.set_defaults(func=lambda a, k=kind: cmd_list(k))
    subcommands = (("train", "dlm.train.cli"), ("train-filter", "dlm.train.filter.cli"), ("bench", "dlm.bench.cli"),
                   ("eval", "dlm.eval.cli"), ("serve", "dlm.serve.cli"), ("bench-serve", "dlm.serve.bench"))
    for name, module in subcommands:
        if only in BUILT_IN + tuple(n for n, _ in subcommands) and only != name:
            continue
        try:
            mod = __import__(module, fromlist=["add_parser"])
        except ImportError as exc:  # an optional dependency is missing: say so instead of hiding the command
            _unavailable(sub, name, module, exc)
            continue
        mod.add_parser(sub)
    return p


def _unavailable(sub, name: str, module: str, exc: ImportError) -> None:
    """Register ``name`` as a command that reports why it cannot run (its module failed to import)."""
    why = f"{module} cannot be imported ({type(exc).__name__}: {exc})"
    p = sub.add_parser(name, help=f"unavailable: {why}", add_help=False, prefix_chars="\x00")
    p.add_argument("rest", nargs="*")

    def fail(args: argparse.Namespace) -> int:
        raise DlmError(f"'dlm {name}' is unavailable: {why}")

    p.set_defaults(func=fail)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["bench", "serve"]:  # the serving benchmark lives with the server (dlm.serve.bench)
        argv = ["bench-serve", *argv[2:]]
    parser = build_parser(only=next((a for a in argv if not a.startswith("-")), None))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DlmError as exc:
        print(f"dlm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
