"""``dlm eval`` and ``dlm eval-data``.

    dlm eval --tasks dlm_synthetic --limit 20                 the bundled dlm-tiny on the local tasks
    dlm eval --model PATH --tasks gsm8k --num-fewshot 5 --gen-length 256 --scheduler threshold
             --scheduler-arg threshold=0.9 --cache dual --output results/gsm8k   (one command line)
    dlm eval --model PATH --tasks mmlu --num-fewshot 5 --mc-num 1 --mc-batch-size 1
    dlm eval --config results/.../generation_config_<date>.json --tasks ...   rerun with a saved config
    dlm eval-data DIR [--n 100]                              write the local tasks' JSONL files
    dlm eval-data --task-dir                                 print the folder to give lm_eval as --include_path

Every GenerationConfig field is an option (as in ``dlm generate``); ``--model-arg KEY=VALUE`` passes any other
model_arg of the lm-eval model ``dlm`` (docs/eval.md lists them).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError

HELP = "evaluate on lm-evaluation-harness tasks (accuracy with NFE per token and tokens/s)"


def _limit(text: str) -> int | float:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    p.add_argument("--tasks", nargs="+", required=True, help="lm-eval task or group names (dlm's local tasks: "
                   "dlm_synthetic, dlm_<family>, dlm_choice)")
    p.add_argument("--output", type=Path, default=None, help="results folder (lm-eval's layout + dlm's report)")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--limit", type=_limit, default=None, help="examples per task (a fraction when < 1)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (default 16)")
    p.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument("--data-parallel", metavar="N", default=None,
                   help="generate on N replicas, one per GPU ('auto': every visible GPU; with --device cpu, N "
                        "processes); likelihoods stay in this process")
    p.add_argument("--dtype", default=None, help="auto (default), float32, bfloat16, float16")
    p.add_argument("--mc-num", type=int, default=None, help="Monte Carlo samples per likelihood (default 128)")
    p.add_argument("--mc-batch-size", type=int, default=None, help="samples per forward pass (default 32)")
    p.add_argument("--check-greedy", action="store_true", help="compute lm-eval's is_greedy (one decode per request)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", default=[],
                   help="any other model_arg of the lm-eval model dlm (repeatable)")
    p.add_argument("--apply-chat-template", action="store_true", help="lm-eval's chat rendering of the prompts")
    p.add_argument("--include-path", action="append", type=Path, default=[], help="more lm-eval task folders")
    p.add_argument("--data-dir", type=Path, default=None, help="JSONL files for dlm's local tasks (dlm eval-data)")
    p.add_argument("--log-samples", action="store_true", help="also save every prompt and answer")
    p.add_argument("--confirm-run-unsafe-code", action="store_true", help="needed by code tasks (HumanEval, MBPP)")
    p.add_argument("--bootstrap-iters", type=int, default=100_000, help="lm-eval's bootstrap for stderr")
    generation_options(p)


def generation_options(p: argparse.ArgumentParser) -> None:
    """One option per GenerationConfig field, read as text and cast by :func:`dlm.eval.args.parse_model_args`
    (the same casting and checks as lm-eval's model_args); parameter mappings as ``--scheduler-arg KEY=VALUE``
    (a dotted model_arg ``scheduler.KEY``)."""
    from ..config import GenerationConfig
    from .args import DOTTED

    g = p.add_argument_group("generation settings (GenerationConfig fields; see its docstring)")
    g.add_argument("--config", type=Path, help="a JSON file of GenerationConfig fields (options below override it)")
    mappings = {field: prefix for prefix, field in DOTTED.items()}
    for f in dataclasses.fields(GenerationConfig):
        if f.name in mappings:
            g.add_argument(f"--{mappings[f.name]}-arg", dest=f.name, action="append", metavar="KEY=VALUE",
                           help=f"a parameter of the {mappings[f.name]} (repeatable)")
        elif isinstance(f.default, bool):
            g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, action=argparse.BooleanOptionalAction)
        else:
            g.add_argument("--" + f.name.replace("_", "-"), dest=f.name, metavar="VALUE")


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The GenerationConfig fields the user set, as model_args: the ``--config`` file's, then the options'."""
    from ..config import GenerationConfig
    from ..kvargs import parse_kv
    from .args import DOTTED

    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read --config {args.config}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"--config {args.config} must hold a JSON object of GenerationConfig fields")
    prefixes = {field: prefix for prefix, field in DOTTED.items()}
    for f in dataclasses.fields(GenerationConfig):
        value = getattr(args, f.name, None)
        if f.name in prefixes:
            what = f"{prefixes[f.name]}-arg"
            data.update({f"{prefixes[f.name]}.{k}": v for k, v in parse_kv(value, what).items()})
        elif value is not None:
            data[f.name] = value
    return data


def model_args_from(args: argparse.Namespace) -> dict[str, Any]:
    from ..kvargs import parse_kv

    out: dict[str, Any] = {"pretrained": args.model, "device": args.device, "dtype": args.dtype,
                           "batch_size": args.batch_size, "mc_num": args.mc_num, "mc_batch_size": args.mc_batch_size,
                           "data_parallel": args.data_parallel}
    out = {k: v for k, v in out.items() if v is not None}
    if args.check_greedy:
        out["check_greedy"] = True
    out.update(given_fields(args))
    out.update(parse_kv(args.model_arg, "model-arg"))
    return out


def print_summary(results: dict[str, Any]) -> None:
    from .run import accuracy_table

    info = results["config"]["dlm"]
    for task, metrics in accuracy_table(results).items():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
        print(f"{task}: {shown}")
    g = info["speed"].get("generate_until")
    if g:
        print(f"generate_until: {g['requests']} answers, {g['generated_tokens']} tokens, NFE/token "
              f"{g['nfe_per_token']:.3g}, {g['tokens_per_s']:.1f} tokens/s, {g['wall_s']:.2f} s")
    ll = info["speed"].get("loglikelihood")
    if ll:
        print(f"loglikelihood: {ll['forwards']} forward passes ({ll['rows']} rows), {ll['wall_s']:.2f} s")
    for path in results.get("dlm_files", []):
        print(f"wrote {path}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    from .run import evaluate

    results = evaluate(model_args_from(args), args.tasks, output=args.output, num_fewshot=args.num_fewshot,
                       limit=args.limit, include_path=args.include_path, data_dir=args.data_dir,
                       apply_chat_template=args.apply_chat_template, log_samples=args.log_samples,
                       confirm_run_unsafe_code=args.confirm_run_unsafe_code, bootstrap_iters=args.bootstrap_iters)
    if results:
        print_summary(results)
    return 0


def cmd_eval_data(args: argparse.Namespace) -> int:
    from .tasks import TASK_DIR

    if args.task_dir:
        print(TASK_DIR)
        return 0
    if args.out is None:
        raise ConfigError("give the folder to write (dlm eval-data DIR) or --task-dir")
    from .tasks.data import write_data

    for path in write_data(args.out, n=args.n, choice_n=args.choice_n, seed=args.seed):
        print(path)
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Called by :mod:`dlm.cli` to add ``dlm eval`` and ``dlm eval-data``."""
    from .tasks.data import DEFAULT_CHOICE_N, DEFAULT_N

    p = subparsers.add_parser("eval", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    p.set_defaults(func=cmd_eval)
    d = subparsers.add_parser("eval-data", help="write the JSONL files of dlm's local lm-eval tasks")
    d.add_argument("out", nargs="?", type=Path, default=None, help="folder to write")
    d.add_argument("--n", type=int, default=DEFAULT_N, help=f"test items per family (default {DEFAULT_N})")
    d.add_argument("--choice-n", type=int, default=DEFAULT_CHOICE_N,
                   help=f"multiple-choice items per family (default {DEFAULT_CHOICE_N})")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--task-dir", action="store_true", help="print the folder of the task YAMLs and exit")
    d.set_defaults(func=cmd_eval_data)
    return p


__all__ = ["add_parser", "cmd_eval", "cmd_eval_data", "given_fields", "model_args_from"]
