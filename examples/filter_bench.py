"""The learned unmasking filter (``learned_filter``, Learn2PD) against ``threshold`` and the reference decode.

    python examples/filter_bench.py --n 200 --code-n 64           the table of docs/learned-filter.md
    python examples/filter_bench.py sweep --n 50                  thresholds of both schedulers on the val split
    python examples/filter_bench.py ablation --data-dir DIR       filter variants trained on collected data

``bench`` (the default): on the synthetic tasks' held-out test split (``--n`` examples per family), the same
prompts and batches for every configuration, in one run: the reference decode (``low_confidence``, one token per
step), ``threshold`` 0.9 (Fast-dLLM's default), ``threshold`` at the value tuned on the val split, and
``learned_filter`` with the filter shipped for dlm-tiny (at its stored, tuned threshold, and with EoTP).
With ``--code-n N``, N held-out standard-library functions to complete (gen_length 64) are added; their
measure is agreement with the reference decode. Columns: exact-match accuracy (tasks), NFE per generated token
(forward passes / answer tokens up to and including the first stop token, as ``dlm bench`` counts them), NFE per
answer, the share of answers identical to the reference's, and wall seconds (informational).

``sweep``: both schedulers over a grid of thresholds on the val split, with agreement against the reference; the
tuned threshold of each is the one with the fewest forward passes whose answers differ from the reference's on
at most 1% of the prompts (the rule ``dlm train-filter`` tunes its threshold by).

``ablation``: trains filter variants (features x architecture) on data collected by ``dlm train-filter
--data-dir DIR`` (``DIR/train.safetensors``, ``DIR/val.safetensors``) and reports, on the val split, the
false-positive rate at the acceptance threshold (over every recorded masked position, and at the first step of
each block) and the end-to-end NFE / accuracy at the variant's tuned threshold.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

import dlm
from dlm.train import filter as F

FAMILY_ORDER = ("copy", "reverse", "sort", "add", "cumsum", "dedupe")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(lm, prompts, ids, scheduler, kwargs=None, references=None, batch_size=64, **fields):
    """Decode metrics (F.decode_metrics) plus per family: exact-match accuracy of the tasks, and for ``code`` the
    share of completions identical to the reference decode's (``references``; 1.0 for the reference itself)."""
    from dlm.data import exact_match

    t0 = time.perf_counter()
    tokens, texts, nfe = F.decode(lm, prompts, scheduler, kwargs, batch_size=batch_size, ids=ids, **fields)
    m = F.decode_metrics(prompts, tokens, texts, nfe, references)
    m["wall_s"] = time.perf_counter() - t0
    refs = references if references is not None else tokens
    fams: dict[str, list[int]] = {}
    for p, t, tok, ref in zip(prompts, texts, tokens, refs):
        f = fams.setdefault(p.family, [0, 0])
        f[0] += 1
        f[1] += exact_match(t, p.answer) if p.answer is not None else list(tok) == list(ref)
    m["families"] = {k: v[1] / v[0] for k, v in fams.items()}

    def per_token(code: bool) -> float:
        rows = [(t, n) for p, t, n in zip(prompts, tokens, nfe) if (p.family == "code") == code]
        return sum(n for _, n in rows) / max(1, sum(len(t) for t, _ in rows))

    if any(p.family == "code" for p in prompts):  # tasks and code apart (code answers are longer)
        m["tasks_nfe_per_token"], m["code_nfe_per_token"] = per_token(False), per_token(True)
    return m, tokens


def row(name, m, with_agreement=True):
    agree = f"{100 * m['agreement']:.1f}%" if with_agreement and "agreement" in m else "-"
    return (f"| {name} | {100 * m['accuracy']:.1f}% | {m['nfe_per_token']:.4f} | {m['nfe_per_answer']:.3f} | "
            f"{agree} | {m['wall_s']:.0f} |")


HEADER = ["| configuration | accuracy | NFE / token | NFE / answer | answers = reference | wall s |",
          "|---|---|---|---|---|---|"]


def cmd_bench(args, lm):
    prompts = F.task_prompts(args.split, args.n, args.seed)
    if args.code_n:
        prompts += F.code_prompts(args.code_n, args.seed, 64, lm.tokenizer, split="heldout")
    ids = F.encode_prompts(lm, prompts)
    stored = dlm.filter.read_config(args.filter).threshold
    fkw = {} if args.filter is None else {"path": args.filter}
    configs = [
        ("reference: low_confidence, 1 token/step", "low_confidence", {}, {}),
        ("threshold 0.9 (Fast-dLLM default)", "threshold", {"threshold": 0.9}, {}),
        (f"threshold {args.tuned_threshold} (tuned on val)", "threshold", {"threshold": args.tuned_threshold}, {}),
        (f"learned_filter (threshold {stored}, tuned on val)", "learned_filter", fkw, {}),
        ("learned_filter + EoTP", "learned_filter", fkw, {"eotp": True}),
    ]
    for t in args.filter_thresholds:
        configs.insert(-1, (f"learned_filter threshold {t}", "learned_filter", {**fkw, "threshold": t}, {}))
    results = {}
    ref_tokens = None
    for name, sched, kw, fields in configs:
        log(f"{name} ...")
        m, tokens = measure(lm, prompts, ids, sched, kw, ref_tokens, args.batch_size, **fields)
        if ref_tokens is None:
            ref_tokens = tokens
            m["agreement"] = 1.0
        results[name] = m
        log(f"  {json.dumps({k: v for k, v in m.items() if k != 'families'})}")
    fams = FAMILY_ORDER + (("code",) if args.code_n else ())
    lines = [f"dlm-tiny, synthetic tasks, {args.split} split, {args.n} per family (gen_length 32)"
             + (f" + {args.code_n} held-out stdlib functions (gen_length 64)" if args.code_n else "")
             + f": {len(prompts)} prompts, block 32, greedy, batch {args.batch_size}, {lm.device}", ""] + HEADER
    lines += [row(name, m) for name, m in results.items()]
    lines += ["", "Per family: exact-match accuracy (%)" + ("; code: completions identical to the reference's (%)"
                                                            if args.code_n else ""), "",
              "| configuration | " + " | ".join(fams) + (" | NFE / token, tasks | NFE / token, code |"
                                                         if args.code_n else " |"),
              "|---|" + "---|" * (len(fams) + (2 if args.code_n else 0))]
    for name, m in results.items():
        cells = [f"{100 * m['families'].get(f, float('nan')):.1f}" for f in fams]
        if args.code_n:
            cells += [f"{m['tasks_nfe_per_token']:.4f}", f"{m['code_nfe_per_token']:.4f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def cmd_sweep(args, lm):
    prompts = F.task_prompts(args.split, args.n, args.seed)
    ids = F.encode_prompts(lm, prompts)
    ref, ref_tokens = measure(lm, prompts, ids, "low_confidence", {}, None, args.batch_size)
    ref["agreement"] = 1.0
    lines = [f"{args.split} split, {args.n} per family", ""] + HEADER + [row("reference", ref)]
    fkw = {} if args.filter is None else {"path": args.filter}
    for sched, kw in (("threshold", {}), ("learned_filter", fkw)):
        rows = []
        for t in args.grid:
            m, _ = measure(lm, prompts, ids, sched, {**kw, "threshold": t}, ref_tokens, args.batch_size)
            rows.append((t, m))
            lines.append(row(f"{sched} {t}", m))
            log(lines[-1])
        ok = [(t, m) for t, m in rows if F.within_disagreement(m, 0.01)]
        if ok:
            t, m = min(ok, key=lambda r: (r[1]["nfe_per_answer"], -r[0]))
            lines.append(f"| **{sched} tuned: {t}** | | | | | |")
    print("\n".join(lines))


CM = ("confidence", "masked")
LOCAL = dict(arch="local", context=4, hidden=(32, 32))
# name: (FilterConfig fields, TrainSettings fields, task families left out of the training data)
VARIANTS = {
    "mlp: confidence (Learn2PD)": (dict(features=("confidence",), arch="mlp", hidden=(32,)), {}, ()),
    "mlp: confidence, masked": (dict(features=CM, arch="mlp", hidden=(32,)), {}, ()),
    "mlp: + margin, entropy": (dict(features=CM + ("margin", "entropy"), arch="mlp", hidden=(32,)), {}, ()),
    "local: confidence, masked": (dict(features=CM, **LOCAL), {}, ()),
    "local: confidence": (dict(features=("confidence",), **LOCAL), {}, ()),
    "local: + margin, entropy": (dict(features=CM + ("margin", "entropy"), **LOCAL), {}, ()),
    "local: + position, progress, block context": (dict(
        features=CM + ("position", "progress", "left_masked", "left_min_confidence", "mean_confidence"), **LOCAL),
        {}, ()),
    "local: confidence, masked; wrong x5": (dict(features=CM, **LOCAL), {"wrong_weight": 5.0}, ()),
    "local: confidence, masked; tasks only (no code)": (dict(features=CM, **LOCAL), {}, ("code",)),
}


def cmd_ablation(args, lm):
    from dlm.filter import FilterConfig, save_filter

    train = F.FilterData.load(Path(args.data_dir) / "train.safetensors")
    val = F.FilterData.load(Path(args.data_dir) / "val.safetensors")
    val0 = val.select(val.step == 0)
    prompts = F.task_prompts("val", args.n, args.seed)
    if len(prompts) != len(val.references):
        raise SystemExit(f"--n {args.n} gives {len(prompts)} val prompts but the data holds {len(val.references)}")
    out = Path(args.out_dir)
    lines = ["| variant | params | val loss | FPR @ t | FPR @ t, first step | accepted | threshold t | "
             "accuracy | NFE / answer | answers = reference |", "|---" * 10 + "|"]
    for name, (kw, settings, drop) in VARIANTS.items():
        if args.only and not any(s in name for s in args.only):
            continue
        config = FilterConfig(**kw)
        data = train.without_families(drop) if drop else train
        net, hist = F.train(data, config, val, F.TrainSettings(epochs=args.epochs, seed=args.seed, **settings))
        path = out / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".safetensors")
        save_filter(net, path, config)
        t, tuning = F.tune_threshold(lm, path, prompts, val.references, grid=args.grid, batch_size=args.batch_size)
        best = next(r for r in tuning if r["threshold"] == t)
        m = F.filter_metrics(F.accept_probabilities(net, val), val, t)
        m0 = F.filter_metrics(F.accept_probabilities(net, val0), val0, t)
        lines.append(f"| {name} | {net.num_parameters} | {min(h['val_loss'] for h in hist):.4f} | "
                     f"{m['false_positive_rate']:.3f} | {m0['false_positive_rate']:.3f} | {m['acceptance']:.4f} | "
                     f"{t} | {100 * best['accuracy']:.1f}% | {best['nfe_per_answer']:.3f} | "
                     f"{100 * best['agreement']:.1f}% |")
        log(lines[-1])
    for t in (0.9, 0.95):
        m, m0 = F.confidence_metrics(val, t), F.confidence_metrics(val0, t)
        lines.append(f"| confidence >= {t} (the threshold rule) | 0 | - | {m['false_positive_rate']:.3f} | "
                     f"{m0['false_positive_rate']:.3f} | {m['acceptance']:.4f} | {t} | | | |")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="bench", choices=("bench", "sweep", "ablation"))
    p.add_argument("--model", default=None, help="checkpoint folder (default: the bundled dlm-tiny)")
    p.add_argument("--filter", default=None, help="filter file (default: the one shipped for dlm-tiny)")
    p.add_argument("--split", default=None, help="task split (bench: test, sweep: val)")
    p.add_argument("--n", type=int, default=None, help="examples per family (bench 200, sweep/ablation 50)")
    p.add_argument("--code-n", type=int, default=0,
                   help="bench: also this many held-out standard-library functions to complete (gen_length 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tuned-threshold", type=float, default=0.95, help="the threshold scheduler's tuned value")
    p.add_argument("--filter-thresholds", type=float, nargs="*", default=[], help="extra learned_filter rows")
    p.add_argument("--grid", type=float, nargs="+", default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.96, 0.98, 0.99])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="cpu", help="device of the model (default cpu)")
    p.add_argument("--json", default=None, help="bench: also write the results as JSON here")
    p.add_argument("--data-dir", default=None, help="ablation: the --data-dir of dlm train-filter")
    p.add_argument("--out-dir", default="/tmp/filter-ablation", help="ablation: where the variants are written")
    p.add_argument("--epochs", type=int, default=40, help="ablation: training epochs")
    p.add_argument("--only", nargs="*", default=None, help="ablation: variants whose name contains one of these")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.split = args.split or ("test" if args.mode == "bench" else "val")
    args.n = args.n or (200 if args.mode == "bench" else 50)
    lm = dlm.load(args.model, device=args.device)
    {"bench": cmd_bench, "sweep": cmd_sweep, "ablation": cmd_ablation}[args.mode](args, lm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
