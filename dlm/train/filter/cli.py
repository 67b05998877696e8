"""``dlm train-filter``: train the learned unmasking filter of the ``learned_filter`` scheduler (Learn2PD).

    dlm train-filter --out filter.safetensors                    tasks' train split on the bundled dlm-tiny
    dlm train-filter --model PATH --prompts prompts.jsonl --out FILE.safetensors
    dlm train-filter --model PATH --out FILE.safetensors --code-prompts 128 --threshold 0.96

Writes ``FILE.safetensors`` (the network) and ``FILE.json`` (its config, the tuned threshold and training
figures). Use it with ``dlm generate --scheduler learned_filter --scheduler-arg path=FILE.safetensors``.
See :mod:`dlm.train.filter` for what each stage does.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Sequence

from ...errors import ConfigError, DlmError

HELP = "train the learned unmasking filter (Learn2PD) of the learned_filter scheduler for a model"


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


def configure(p: argparse.ArgumentParser) -> None:
    from ...filter import ARCHS, FEATURES
    from .fit import TrainSettings

    d = TrainSettings()
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    p.add_argument("--out", type=Path, required=True, help="the filter file to write (.safetensors; the .json "
                   "config goes beside it)")
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", type=Path, default=None,
                   help="JSONL prompts as for `dlm generate --input` (strings, {'prompt': ...} or {'prompt_ids': "
                   "[...]}, optionally with 'gen_length'); default: the synthetic tasks' train split")
    g.add_argument("--val-prompts", type=Path, default=None,
                   help="JSONL validation prompts (default: the tasks' val split, or 10%% of --prompts)")
    g.add_argument("--n-per-family", type=int, default=150, help="train-split examples per task family (default)")
    g.add_argument("--val-per-family", type=int, default=50, help="val-split examples per task family (default)")
    g.add_argument("--families", type=_names, default=None,
                   help="task families of the default prompts (comma-separated; default: the six trained families; "
                   "the stress families such as pick, count, brackets, wordrev, add-long are allowed)")
    g.add_argument("--code-prompts", type=int, default=0,
                   help="also this many function-completion prompts from the standard library's training files")
    g.add_argument("--code-gen-length", type=int, default=64, help="generation length of the code prompts")
    g.add_argument("--gen-length", type=int, default=32, help="generation length of prompts that give none")
    g.add_argument("--block-length", type=int, default=32, help="block length of the recording decode")
    g.add_argument("--seed", type=int, default=0, help="seed of the task examples and of training")
    f = p.add_argument_group("filter")
    f.add_argument("--features", type=_names, default=["confidence", "masked"],
                   help="input features (comma-separated): " + ", ".join(FEATURES) + " (default: confidence,masked)")
    f.add_argument("--arch", choices=ARCHS, default="local",
                   help="local (default): one MLP shared by all positions over a window of neighbours; mlp: "
                   "Learn2PD's MLP over the whole block")
    f.add_argument("--context", type=int, default=4, help="local: neighbours seen on each side (default 4)")
    f.add_argument("--width", type=int, default=32, help="mlp: positions seen at once (default 32)")
    f.add_argument("--hidden", type=_ints, default=None,
                   help="hidden layer sizes (default: 32,32 for local; 32 for mlp, Learn2PD's 2-layer MLP)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=d.epochs)
    t.add_argument("--lr", type=float, default=d.lr)
    t.add_argument("--weight-decay", type=float, default=d.weight_decay)
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="windows per optimisation step")
    t.add_argument("--max-minutes", type=float, default=None, help="stop training after this many minutes")
    u = p.add_argument_group("threshold")
    u.add_argument("--threshold", type=float, default=None,
                   help="store this threshold instead of tuning one on the validation prompts")
    u.add_argument("--grid", type=_floats, default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.96, 0.98, 0.99],
                   help="thresholds tried when tuning")
    u.add_argument("--max-disagreement", type=float, default=0.01,
                   help="largest share of validation answers allowed to differ from the reference decode's")
    r = p.add_argument_group("running")
    r.add_argument("--decode-batch-size", type=int, default=64, help="prompts per batch when decoding")
    r.add_argument("--data-dir", type=Path, default=None, help="save the collected data here (and reuse it)")
    r.add_argument("--device", default="cpu", help="device of the model (default cpu)")
    r.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    r.add_argument("--workers", type=int, default=1,
                   help="processes decoding prompts in parallel while collecting (one CPU thread each)")


def _split(prompts: list, fraction: float, seed: int) -> tuple[list, list]:
    idx = list(range(len(prompts)))
    random.Random(f"dlm.train.filter/{seed}").shuffle(idx)
    k = max(1, round(fraction * len(prompts)))
    if k >= len(prompts):
        raise ConfigError(f"--prompts holds {len(prompts)} prompt(s): too few to keep {k} for validation; give "
                          "--val-prompts")
    val = set(idx[:k])
    return [p for i, p in enumerate(prompts) if i not in val], [p for i, p in enumerate(prompts) if i in val]


def _families(names: list[str] | None) -> list[str] | None:
    """``--families`` checked against the known task families (a ConfigError names the unknown one)."""
    from ...data import get_task

    for name in names or ():
        try:
            get_task(name)
        except ValueError as e:
            raise ConfigError(f"--families: {e}") from None
    return names


def prompt_sets(args: argparse.Namespace, lm) -> tuple[list, list]:
    """(training, validation) prompts the options name: a JSONL file (10% held out unless --val-prompts) or the
    tasks' train / val splits, plus --code-prompts functions of the standard library's training files."""
    from .prompts import code_prompts, read_prompts, task_prompts

    if args.prompts is not None:
        train = read_prompts(args.prompts, args.gen_length)
        if args.val_prompts is not None:
            val = read_prompts(args.val_prompts, args.gen_length)
        else:
            train, val = _split(train, 0.1, args.seed)
    else:
        families = _families(args.families)
        train = task_prompts("train", args.n_per_family, args.seed, families, args.gen_length)
        val = (read_prompts(args.val_prompts, args.gen_length) if args.val_prompts is not None
               else task_prompts("val", args.val_per_family, args.seed, families, args.gen_length))
    if args.code_prompts:
        train = train + code_prompts(args.code_prompts, args.seed, args.code_gen_length, lm.tokenizer)
    return train, val


def cmd_train_filter(args: argparse.Namespace) -> int:
    import torch

    from ...api import load
    from .fit import TrainSettings
    from .pipeline import run

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.out.suffix != ".safetensors":
        raise ConfigError(f"--out must name a .safetensors file, got {args.out}")
    log = lambda s: print(f"[train-filter] {s}", file=sys.stderr, flush=True)  # noqa: E731
    lm = load(args.model, device=args.device)
    train, val = prompt_sets(args, lm)
    settings = TrainSettings(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                               batch_size=args.batch_size, seed=args.seed, max_minutes=args.max_minutes)
    hidden = args.hidden if args.hidden is not None else ([32, 32] if args.arch == "local" else [32])
    summary = run(lm, train, val, args.out, features=args.features, hidden=hidden, width=args.width,
                    block_length=args.block_length, settings=settings, threshold=args.threshold, grid=args.grid,
                    max_disagreement=args.max_disagreement, batch_size=args.decode_batch_size,
                    data_dir=args.data_dir, model_name=str(args.model or "dlm-tiny (bundled)"),
                    workers=args.workers, model_path=args.model, arch=args.arch, context=args.context, log=log)
    m = summary["val_metrics"]
    print(f"{summary['path']}: {summary['parameters']} parameters, threshold {summary['threshold']}, "
          f"validation false-positive rate {m['false_positive_rate']:.4f}, false-discovery rate "
          f"{m['false_discovery_rate']:.4f}, acceptance {m['acceptance']:.3f}")
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``train-filter`` to the ``dlm`` command's subparsers."""
    p = subparsers.add_parser("train-filter", help=HELP, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    p.set_defaults(func=cmd_train_filter)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlm train-filter", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    args = p.parse_args(argv)
    try:
        return cmd_train_filter(args)
    except DlmError as exc:
        print(f"dlm train-filter: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
