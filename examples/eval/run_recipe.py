"""Run an evaluation recipe (an lm-eval run config with ``model: dlm``) through ``dlm.eval.evaluate``, with the
checkpoint given on the command line, and print the equivalent ``dlm eval`` command.

    python examples/eval/run_recipe.py examples/eval/gsm8k-llada-base.yaml --model /path/to/LLaDA-8B-Base
    python examples/eval/run_recipe.py examples/eval/local-dlm-tiny.yaml --limit 20 --device cpu

The same files work with lm-eval's own command once ``pretrained`` is edited in:
``python -m dlm.eval run --config RECIPE.yaml`` (or ``lm_eval run --config RECIPE.yaml`` with an lm-eval that
loads plugins; docs/eval.md).
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

import yaml

from dlm.errors import ConfigError

# keys of lm-eval's run config that a recipe may use, and the evaluate() argument each becomes
RUN_KEYS = {"tasks": "tasks", "num_fewshot": "num_fewshot", "limit": "limit", "output_path": "output",
            "log_samples": "log_samples", "apply_chat_template": "apply_chat_template",
            "confirm_run_unsafe_code": "confirm_run_unsafe_code", "include_path": "include_path"}


def read_recipe(path: Path) -> tuple[dict, dict]:
    """(model_args, evaluate() keyword arguments) of a recipe file."""
    recipe = yaml.safe_load(path.read_text())
    if not isinstance(recipe, dict) or recipe.get("model") != "dlm":
        raise ConfigError(f"{path}: a recipe is an lm-eval run config with 'model: dlm'")
    unknown = sorted(set(recipe) - set(RUN_KEYS) - {"model", "model_args", "batch_size"})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: model, model_args, batch_size, "
                          f"{', '.join(RUN_KEYS)}")
    model_args = dict(recipe.get("model_args") or {})
    if "batch_size" in recipe:
        model_args["batch_size"] = recipe["batch_size"]
    kwargs = {RUN_KEYS[k]: v for k, v in recipe.items() if k in RUN_KEYS}
    if isinstance(kwargs.get("tasks"), str):
        kwargs["tasks"] = kwargs["tasks"].split(",")
    if isinstance(kwargs.get("include_path"), str):
        kwargs["include_path"] = [kwargs["include_path"]]
    return model_args, kwargs


# model_args that are options of dlm eval besides the GenerationConfig fields (the rest go through --model-arg)
EVAL_OPTIONS = {"device", "dtype", "batch_size", "mc_num", "mc_batch_size"}


def dlm_eval_command(model_args: dict, kwargs: dict) -> str:
    """The ``dlm eval`` command line of the same evaluation."""
    import dataclasses

    from dlm.config import GenerationConfig

    options = EVAL_OPTIONS | {f.name for f in dataclasses.fields(GenerationConfig)}
    words = ["dlm", "eval", "--tasks", *kwargs["tasks"]]
    if model_args.get("pretrained") is not None:
        words += ["--model", str(model_args["pretrained"])]
    for key, value in model_args.items():
        if key == "pretrained":
            continue
        if key not in options:
            words += ["--model-arg", f"{key}={json.dumps(value)}"]
        elif isinstance(value, dict):
            prefix = key.removesuffix("_kwargs")
            for k, v in value.items():
                words += [f"--{prefix}-arg", f"{k}={json.dumps(v)}"]
        elif isinstance(value, bool):
            words.append(f"--{key.replace('_', '-')}" if value else f"--no-{key.replace('_', '-')}")
        else:
            words += [f"--{key.replace('_', '-')}", str(value)]
    for key in ("num_fewshot", "limit", "output"):
        if kwargs.get(key) is not None:
            words += [f"--{key.replace('_', '-')}", str(kwargs[key])]
    for key in ("log_samples", "apply_chat_template", "confirm_run_unsafe_code"):
        if kwargs.get(key):
            words.append(f"--{key.replace('_', '-')}")
    return shlex.join(words)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", type=Path)
    p.add_argument("--model", default=None, help="checkpoint folder (replaces the recipe's pretrained)")
    p.add_argument("--device", default=None)
    p.add_argument("--limit", type=float, default=None, help="examples per task (for a quick check)")
    p.add_argument("--output", default=None, help="results folder (replaces the recipe's output_path)")
    p.add_argument("--print-only", action="store_true", help="print the dlm eval command and stop")
    args = p.parse_args()
    model_args, kwargs = read_recipe(args.recipe)
    if args.model is not None:
        model_args["pretrained"] = args.model
    if args.device is not None:
        model_args["device"] = args.device
    if args.limit is not None:
        kwargs["limit"] = int(args.limit) if args.limit >= 1 else args.limit
    if args.output is not None:
        kwargs["output"] = args.output
    print(dlm_eval_command(model_args, kwargs))
    if args.print_only:
        return
    from dlm.eval import evaluate
    from dlm.eval.cli import print_summary

    print_summary(evaluate(model_args, **kwargs))


if __name__ == "__main__":
    main()
