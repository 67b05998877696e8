"""The ``dlm`` command.

    dlm generate [--model PATH] "prompt" ...          generate (every GenerationConfig field is an option)
    dlm generate --input prompts.jsonl --output out.jsonl
    dlm schedulers | dlm caches | dlm verifiers       list what is registered, with parameters
    dlm train ... | dlm train-filter ... | dlm bench ...   (see their own --help)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from .config import GenerationConfig
from .data.prompts import read_prompt_lines  # noqa: F401 (also the reader of train-filter's prompt files)
from .errors import ConfigError, DlmError
from .kvargs import parse_kv

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
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read --config {args.config}: {exc}") from exc
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f.name, None)
        if f.name in _MAPPING_FIELDS:
            if value:
                data[f.name] = {**data.get(f.name, {}), **parse_kv(value, _MAPPING_FIELDS[f.name])}
        elif value is not None:
            data[f.name] = value
    return GenerationConfig.from_dict(data)


def cmd_generate(args: argparse.Namespace) -> int:
    from .api import load

    config = config_from_args(args)
    if args.input is not None:
        prompts = [prompt for _, prompt, _ in read_prompt_lines(args.input)]
    else:
        prompts = list(args.prompts)
    if not prompts:
        raise ConfigError("give a prompt (dlm generate \"text\") or --input FILE.jsonl")
    model = load(args.model, dtype=args.dtype, device=args.device)
    stream = None
    if args.stream and len(prompts) == 1 and model.tokenizer is not None:
        stream = _TextStream(model, config)
    out = model.generate(prompts, config, batch_size=args.batch_size, stream=stream)
    if stream is not None:
        stream.close()
    records = []
    for i, p in enumerate(prompts):
        rec = {"prompt": p if isinstance(p, str) else None, "prompt_ids": out.prompt_ids[i],
               "text": out.texts[i] if out.texts is not None else None, "tokens": out.sequences[i].tolist(),
               "nfe": int(out.nfe[i])}
        if out.trace is not None:
            rec["commit_step"] = out.trace.commit_step[i].tolist()
        records.append(rec)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with open(args.output, "w") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
        print(f"wrote {len(records)} answers to {args.output} ({out.timings['total']:.2f} s, "
              f"{float(out.nfe.float().mean()):.1f} forward passes per answer)", file=sys.stderr)
    elif args.json:
        for rec in records:
            print(json.dumps(rec))
    elif stream is None:
        for rec in records:
            print(rec["text"] if rec["text"] is not None else rec["tokens"])
    return 0


class _TextStream:
    """Prints the answer of a single prompt as its prefix becomes final."""

    def __init__(self, model, config: GenerationConfig):
        self.model, self.mask = model, model.ids.mask_id
        self.stops = set(config.stop_token_ids or model.ids.stop_ids)
        self.printed = 0

    def __call__(self, event) -> None:
        row = event.tokens[0].tolist()
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlm", description="Generation for masked-diffusion language models.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate answers for prompts")
    g.add_argument("prompts", nargs="*", help="prompt text(s)")
    g.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    g.add_argument("--input", type=Path, help="JSONL file of prompts (strings or {'prompt': ...} / {'prompt_ids': [...]})")
    g.add_argument("--output", type=Path, help="write answers as JSONL here")
    g.add_argument("--json", action="store_true", help="print one JSON record per answer")
    g.add_argument("--stream", action="store_true", help="print a single prompt's answer as it is decoded")
    g.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    g.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    g.add_argument("--batch-size", type=int, default=None, help="prompts per batch (default: all at once)")
    _add_config_options(g)
    g.set_defaults(func=cmd_generate)
    for kind in ("schedulers", "caches", "verifiers"):
        sp = sub.add_parser(kind, help=f"list the registered {kind} and their parameters")
        sp.set_defaults(func=lambda a, k=kind: cmd_list(k))
    subcommands = (("train", "dlm.train.cli"), ("train-filter", "dlm.train.filter.cli"), ("bench", "dlm.bench.cli"))
    for name, module in subcommands:
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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DlmError as exc:
        print(f"dlm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
