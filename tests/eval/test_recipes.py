"""The evaluation recipes of examples/eval: every file is a valid lm-eval run config for the model ``dlm`` whose
model_args pass dlm's checks, and the ``dlm eval`` command printed for it means the same settings."""

from __future__ import annotations

import dataclasses
import importlib.util
import shlex
from pathlib import Path

import pytest

from dlm.eval.args import parse_model_args

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "eval"
RECIPES = sorted(EXAMPLES.glob("*.yaml"))


def _run_recipe():
    spec = importlib.util.spec_from_file_location("run_recipe", EXAMPLES / "run_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_there_are_recipes_for_the_four_benchmarks():
    names = " ".join(p.stem for p in RECIPES)
    for bench in ("gsm8k", "humaneval", "mbpp", "mmlu"):
        assert bench in names


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_valid_and_its_dlm_eval_command_means_the_same(path):
    from dlm.cli import build_parser
    from dlm.eval.cli import model_args_from

    rr = _run_recipe()
    model_args, kwargs = rr.read_recipe(path)
    settings = parse_model_args(model_args)  # names, types and ranges; nothing is loaded
    args = build_parser().parse_args(shlex.split(rr.dlm_eval_command(model_args, kwargs))[1:])
    assert args.tasks == kwargs["tasks"]
    again = parse_model_args(model_args_from(args))
    if "batch_size" not in model_args:  # dlm eval has a default of its own
        again = dataclasses.replace(again, batch_size=settings.batch_size)
    assert again == settings
