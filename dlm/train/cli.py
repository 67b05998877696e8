"""Command line of ``dlm.train``: ``dlm train recipe|evaluate|corpus`` (or ``python -m dlm.train ...``).

    dlm train recipe --out /tmp/dlm-run --pack-dir $OUT        the GPU run (every RecipeConfig field is an option)
    dlm train recipe --preset smoke --out /tmp/dlm-smoke       a CPU run in seconds
    dlm train recipe --only dlm-tiny-block --out /tmp/run      one model of the recipe (block diffusion, SDAR format)
    dlm train evaluate --dlm PATH --ar PATH --block PATH       re-evaluate exported models
    dlm train corpus --manifest corpus_manifest.json           list the corpus split (with SHA-256)
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from ..errors import DlmError
from .recipe import PRESETS, RecipeConfig

_HELP = {
    "out": "output folder (models, tokenizer, logs, eval)",
    "only": "comma-separated models to train, of dlm-tiny, dlm-tiny-ar, dlm-tiny-block (none: all, in that order)",
    "device": "auto (cuda when available), cuda, cpu",
    "deadline_minutes": "wall-clock bound of the whole run from its first log line (imports take ~10 s more); "
                        "training budgets shrink to fit (none: no bound)",
    "eval_reserve_minutes": "time kept for each model's evaluation and export",
    "resume": "continue the trainings from the states saved in OUT/logs (see --state-every-minutes, --keep-state)",
    "state_every_minutes": "write the resumable training state this often (0: only at the end of each training)",
    "export_every_minutes": "export the model folder (and its tar parts) this often while training",
    "pack_dir": "after every export, write tar parts (< 15 MiB) of each model folder and of the logs here",
    "keep_state": "keep the resumable training states (model + AdamW moments, float32) in OUT/logs",
    "workers": "processes for data preparation (0: one per CPU core, at most 16)",
    "cpu_threads": "torch intra-op threads for the run (0: torch's default; the smoke preset uses 1)",
    "families": "comma-separated synthetic task families",
    "tokenizer_from": "reuse the tokenizer.json of this folder (e.g. dlm/assets/dlm-tiny) instead of training one, "
                      "so a retrained model keeps the vocabulary the other bundled models share",
    "heldout_fraction": "share of stdlib files held out (dlm bench assumes the default when it picks its code set)",
    "code_fn_fraction": "share of the code rows (after task pairs) made of function-completion pairs (the rest: "
                        "plain code windows)",
    "code_task_fraction": "share of the code batch made of task pairs in code-length rows (long canvases)",
    "long_task_pairs": "training task pairs kept for the code-length rows",
    "family_weights": "sampling weights of task families in the task batch, e.g. add=3,cumsum=3 (others 1)",
    "stress_families": "new stress task families added to the task mix (dlm.data.stress: pick, count, brackets, "
                       "wordrev, add-long; default none, as the bundled dlm-tiny was trained)",
    "code_body_tokens": "longest held-out reference body (tokens); the code generation length is this + 1 rounded "
                        "up to a multiple of 32",
    "init_from": "start dlm-tiny from the weights of this LLaDA checkpoint folder (fine-tuning, e.g. "
                 "dlm/assets/dlm-tiny with --tokenizer-from the same folder) instead of random ones; the model size "
                 "options must match it",
    "minutes_diffusion": "training budget of dlm-tiny in minutes (none: steps only)",
    "minutes_ar": "training budget of dlm-tiny-ar in minutes (none: steps only)",
    "minutes_block": "training budget of dlm-tiny-block in minutes (none: steps only)",
    "block_size": "dlm-tiny-block's attention block (tokens; SDAR's own models use 4)",
    "compile_diffusion": "torch.compile dlm-tiny's transformer body (about 2x faster steps on a GPU after ~35 s)",
    "compile_ar": "torch.compile dlm-tiny-ar's body (little gain for its ~40 s of compilation)",
    "compile_block": "torch.compile dlm-tiny-block's transformer body",
    "eval_gen_length": "generation length of the synthetic tasks",
}


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


_NONE = object()  # "none" given on the command line (argparse's None means "not given")


def _optional(base: type):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return _NONE
        return base(text)

    parse.__name__ = base.__name__
    return parse


def add_recipe_options(p: argparse.ArgumentParser) -> None:
    """One option per :class:`RecipeConfig` field (defaults come from the preset, so they are left as None)."""
    hints = typing.get_type_hints(RecipeConfig)
    p.add_argument("--preset", choices=sorted(PRESETS), default="gpu",
                   help="starting settings: gpu (the defaults below) or smoke (tiny CPU run); options override it")
    for f in dataclasses.fields(RecipeConfig):
        hint = hints[f.name]
        opt = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = _HELP.get(f.name, f.name.replace("_", " ")) + f" (gpu default: {default})"
        if hint is bool:
            p.add_argument(opt, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            base = _base_type(hint)
            nullable = type(None) in typing.get_args(hint)
            p.add_argument(opt, dest=f.name, type=_optional(base) if nullable else base, default=None,
                           metavar=base.__name__.upper(), help=help_text)


def recipe_config_from_args(args: argparse.Namespace) -> RecipeConfig:
    """The preset named by ``--preset`` with every option given on the command line applied."""
    from .recipe import preset

    given = {}
    for f in dataclasses.fields(RecipeConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = None if value is _NONE else value
    return preset(args.preset, **given)


def _command_line(args: argparse.Namespace) -> str:
    """The command that started this run, for the model cards (``python -m dlm.train`` or ``dlm``)."""
    if getattr(args, "command_line", None):
        return args.command_line
    return "dlm " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def cmd_recipe(args: argparse.Namespace) -> int:
    from .recipe import run_recipe

    cfg = recipe_config_from_args(args)
    run_recipe(cfg, command=_command_line(args))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from ..data import make_splits, stdlib_code_completion
    from .evaluate import evaluate_causal, evaluate_diffusion, format_table, load_causal, write_results

    families = [f for f in args.families.split(",") if f]
    examples = make_splits(families, 0, 0, args.test_per_task, args.seed)["test"] if families else []
    code = []
    if args.code_n > 0:
        tok_path = args.dlm or args.ar or args.block
        from .tokenizer import load_fast

        tok = load_fast(tok_path) if tok_path else None
        count = (lambda s: len(tok.encode(s, add_special_tokens=False).ids)) if tok is not None else None
        code = stdlib_code_completion("heldout", n=args.code_n, seed=args.seed, count_tokens=count,
                                      max_prompt_tokens=args.code_prompt_tokens,
                                      max_body_tokens=args.code_gen_length - 1)
    results = {}
    if args.dlm:
        from ..api import load

        lm = load(args.dlm, device=args.device)
        results["dlm-tiny"] = evaluate_diffusion(lm, examples, code, args.gen_length, args.code_gen_length,
                                                 args.batch_size)
    if args.ar:
        model, tok = load_causal(args.ar, device=args.device)
        results["dlm-tiny-ar"] = evaluate_causal(model, tok, examples, code, args.gen_length, args.code_gen_length,
                                                 args.batch_size)
    if args.block:
        from ..api import load
        from .block_decode import evaluate_block

        results["dlm-tiny-block"] = evaluate_block(load(args.block, device=args.device), examples, code,
                                                   args.gen_length, args.code_gen_length, args.batch_size)
    if not results:
        raise SystemExit("give --dlm PATH, --ar PATH and/or --block PATH")
    print(format_table(results))
    if args.output:
        write_results(results, args.output)
    elif args.json:
        print(json.dumps(results, indent=1))
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from ..data import stdlib_corpus

    corpus = stdlib_corpus(heldout_fraction=args.heldout_fraction)
    m = corpus.manifest()["counts"]
    print(f"{m['train_files']} training files ({m['train_bytes'] / 1e6:.1f} MB), {m['heldout_files']} held-out files "
          f"({m['heldout_bytes'] / 1e6:.1f} MB) under {corpus.root}")
    if args.manifest:
        print(f"manifest: {corpus.write_manifest(args.manifest)}")
    return 0


def _add_commands(p: argparse.ArgumentParser) -> None:
    """The ``recipe``, ``evaluate`` and ``corpus`` subcommands under ``p``."""
    from ..data import FAMILIES

    sub = p.add_subparsers(dest="train_command", required=True)
    r = sub.add_parser("recipe", help="build tokenizer + corpus, train the models, evaluate, write model cards")
    add_recipe_options(r)
    r.set_defaults(func=cmd_recipe)

    e = sub.add_parser("evaluate", help="evaluate exported models on the held-out tasks")
    e.add_argument("--dlm", type=Path, help="a dlm-tiny folder (LLaDA format)")
    e.add_argument("--ar", type=Path, help="a dlm-tiny-ar folder (transformers format)")
    e.add_argument("--block", type=Path, help="a dlm-tiny-block folder (SDAR format)")
    e.add_argument("--families", default=",".join(FAMILIES), help="comma-separated task families ('' for none)")
    e.add_argument("--test-per-task", type=int, default=500)
    e.add_argument("--code-n", type=int, default=300, help="held-out functions to complete (0: none)")
    e.add_argument("--code-prompt-tokens", type=int, default=96)
    e.add_argument("--gen-length", type=int, default=32)
    e.add_argument("--code-gen-length", type=int, default=64)
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default=None)
    e.add_argument("--output", type=Path, help="write eval.json and eval.md into this folder")
    e.add_argument("--json", action="store_true", help="also print the results as JSON")
    e.set_defaults(func=cmd_evaluate)

    c = sub.add_parser("corpus", help="show the corpus split and optionally write its manifest")
    c.add_argument("--heldout-fraction", type=float, default=0.08)
    c.add_argument("--manifest", type=Path, help="write the manifest JSON here")
    c.set_defaults(func=cmd_corpus)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train`` (with ``recipe``, ``evaluate``, ``corpus``) to the ``dlm`` command's subparsers."""
    p = subparsers.add_parser("train", help="train and evaluate the project's models (dlm-tiny, dlm-tiny-ar, "
                              "dlm-tiny-block)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_commands(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dlm.train recipe|evaluate|corpus ...``."""
    parser = argparse.ArgumentParser(prog="python -m dlm.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_commands(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = "PYTHONPATH=. python3 -m dlm.train " + " ".join(shlex.quote(a) for a in argv)
    try:
        return int(args.func(args) or 0)
    except DlmError as exc:
        print(f"python -m dlm.train: error: {exc}", file=sys.stderr)
        return 2
