"""``dlm bench choose-best``: choose the ``best`` preset by a fixed rule on held-out tuning data, and write it where
the preset reads it (``dlm/bench/best.json``, :mod:`dlm.bench.best`).

    dlm bench choose-best                                       tune on the stress families' val split, then write
    dlm bench choose-best --n 64 --device cuda --run-out results/stress-val
    dlm bench choose-best --results results/stress-val/results.json     choose from an existing tuning run

The rule (:func:`choose`), applied to a ``dlm bench`` run of the stress preset on the **val** split (seeds and
lengths disjoint from the test split the stress figures are reported on; a test-split run is refused):

1. Cells: every (family, answer-length bucket) of the families the model can do with the reference decode
   (reference accuracy >= 50% in the run; :func:`dlm.bench.breakdown.capable_families`), in every shape group.
2. Candidates: every measured configuration but the reference and those with a verifier (a verifier's forwards
   are of draft rows or of another model, so its NFE does not count the same work).
3. A candidate qualifies when, in every cell, its accuracy is at most ``tolerance`` points (default 0.5) below
   the reference's.
4. ``best`` is the qualifying candidate with the fewest forward passes per generated token (mean over the shape
   groups); ties go to the higher accuracy, then the name. When none qualifies, the candidate with the smallest
   worst-cell loss (then the fewest forwards) is written, marked ``within_tolerance: false``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, DlmError
from .best import BEST_FILE, write_best
from .breakdown import capable_families

TOLERANCE_POINTS = 0.5


def _groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["group"], []).append(r)
    return out


def cells(row: dict[str, Any], families: Sequence[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """The row's (family, length bucket) cells of ``families``."""
    per = row.get("breakdown", {}).get("family_length", {})
    return {(f, b): c for f in families for b, c in (per.get(f) or {}).items()}


def is_candidate(row: dict[str, Any]) -> bool:
    fields = row["method"]["fields"]
    return row["status"] == "ok" and not row["is_reference"] and not fields.get("verify") and "breakdown" in row


def assess(rows: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """A candidate's worst loss against the reference over every cell of every group, and its NFE per token."""
    worst, where, nfes, accs = float("-inf"), None, [], []
    for group, grows in _groups(rows).items():
        ref = next((r for r in grows if r["is_reference"] and r["status"] == "ok"), None)
        row = next((r for r in grows if r["name"] == name), None)
        if ref is None or row is None or not is_candidate(row) or row["metrics"].get("nfe_per_token") is None:
            return None
        families, _ = capable_families(ref)
        mine, theirs = cells(row, families), cells(ref, families)
        for key, c in theirs.items():
            drop = 100 * (c["accuracy"] - (mine[key]["accuracy"] if key in mine else 0.0))
            if drop > worst:
                worst, where = drop, f"{group}: {key[0]}, length {key[1]}"
        nfes.append(row["metrics"]["nfe_per_token"])
        accs.append(row["metrics"]["accuracy"] or 0.0)
    if not nfes:
        return None
    return {"name": name, "fields": dict(row["method"]["fields"]), "nfe_per_token": statistics.mean(nfes),
            "accuracy": statistics.mean(accs), "worst_drop_points": max(worst, 0.0) if where else 0.0,
            "worst_cell": where}


def choose(results: dict[str, Any], tolerance: float = TOLERANCE_POINTS) -> dict[str, Any]:
    """The choice of the rule (module docstring) on one run's results: ``{"method": {"name", "fields"},
    "within_tolerance", "candidates": [...]}``."""
    if results.get("suite", {}).get("split") != "val":
        raise ConfigError("choose-best tunes on held-out tuning data: give it a run on the val split (dlm bench "
                          "--preset stress --split val); the test split is kept for the evaluation")
    rows = results["rows"]
    names = list(dict.fromkeys(r["name"] for r in rows if is_candidate(r)))
    assessed = [a for a in (assess(rows, n) for n in names) if a is not None]
    if not assessed:
        raise ConfigError("the run has no candidate to choose from (no measured configuration with the breakdown "
                          "besides the reference)")
    if all(a["worst_cell"] is None for a in assessed):
        raise ConfigError("the reference decode gets no stress family right in this run (every family below "
                          "50%): there is nothing to hold the candidates to; use a model that can do them")
    for a in assessed:
        a["eligible"] = a["worst_drop_points"] <= tolerance + 1e-9
    ok = [a for a in assessed if a["eligible"]]
    if ok:
        pick = min(ok, key=lambda a: (a["nfe_per_token"], -a["accuracy"], a["name"]))
    else:
        pick = min(assessed, key=lambda a: (a["worst_drop_points"], a["nfe_per_token"], a["name"]))
    return {"method": {"name": pick["name"], "fields": pick["fields"]}, "within_tolerance": bool(ok),
            "candidates": sorted(assessed, key=lambda a: a["nfe_per_token"])}


RULE = ("the fewest forward passes per generated token among the configurations (no verifier) whose accuracy is "
        "at most {tol} points below the reference decode's in every (family, answer-length bucket) cell of the "
        "families the model can do, on the stress families' val split (dlm.bench.choose)")


def best_record(results: dict[str, Any], choice: dict[str, Any], tolerance: float, source: str) -> dict[str, Any]:
    """What ``best.json`` holds: the choice, the rule, the tuning run it was made on and every candidate."""
    env, suite = results.get("environment", {}), results.get("suite", {})
    return {"method": choice["method"], "within_tolerance": choice["within_tolerance"],
            "rule": RULE.format(tol=tolerance), "tolerance_points": tolerance,
            "chosen_on": {"results": source, "command": env.get("command"), "date": env.get("date"),
                          "device": env.get("device"), "git": env.get("git"),
                          "model": results.get("model", {}).get("path"),
                          "suite": {k: suite.get(k) for k in ("tasks", "n", "split", "seed", "gen_length",
                                                              "block_length", "batch_size")}},
            "candidates": choice["candidates"]}


def _tuning_run(args: argparse.Namespace, bench_main: Callable[[list[str]], int] | None) -> Path:
    """Run the stress preset on the val split with ``bench_main`` (``dlm bench``'s main) and return its
    results.json."""
    if bench_main is None:
        raise ConfigError("choose-best runs its tuning run through `dlm bench choose-best`; here, pass --results")
    argv = ["--preset", "stress", "--split", "val", "--n", str(args.n), "--out", str(args.run_out), "--no-verifiers"]
    for flag, value in (("--device", args.device), ("--model", args.model), ("--threads", args.threads)):
        if value is not None:
            argv += [flag, str(value)]
    if args.tasks:
        argv += ["--tasks", *args.tasks]
    rc = bench_main(argv)
    if rc not in (0, 1):  # 1: some configuration failed; the others are still candidates
        raise DlmError(f"the tuning run failed (dlm bench {' '.join(argv)} exited with {rc})")
    return Path(args.run_out) / "results.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlm bench choose-best", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=None, help="results.json of a val-split stress run (default: "
                   "run one now)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE_POINTS, help="points of accuracy a candidate may "
                   "lose against the reference in any cell (default 0.5)")
    p.add_argument("--out", type=Path, default=BEST_FILE, help=f"the file to write (default {BEST_FILE})")
    p.add_argument("--dry-run", action="store_true", help="print the choice, write nothing")
    t = p.add_argument_group("the tuning run (without --results)")
    t.add_argument("--n", type=int, default=32, help="val examples per stress family (default 32)")
    t.add_argument("--run-out", type=Path, default=Path("results/stress-val"), help="its results folder")
    t.add_argument("--device", default=None)
    t.add_argument("--model", default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--tasks", nargs="+", default=None, help="stress families (default: all of them)")
    return p


def main(argv: Sequence[str] | None = None, bench_main: Callable[[list[str]], int] | None = None) -> int:
    """``dlm bench choose-best``; ``bench_main`` is ``dlm bench``'s main, which runs the tuning run (``dlm.bench.cli``
    passes it: this module does not import the command line, which imports it)."""
    args = build_parser().parse_args(argv)
    try:
        if args.tolerance < 0:
            raise ConfigError(f"--tolerance must be >= 0 points, got {args.tolerance}")
        source = args.results or _tuning_run(args, bench_main)
        try:
            results = json.loads(Path(source).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read the results file {source}: {exc}") from exc
        choice = choose(results, args.tolerance)
    except DlmError as exc:
        print(f"dlm bench choose-best: error: {exc}", file=sys.stderr)
        return 2
    for a in choice["candidates"]:
        print(f"{'*' if a['eligible'] else ' '} {a['name']}: NFE/token {a['nfe_per_token']:.4f}, accuracy "
              f"{a['accuracy']:.3f}, worst loss {a['worst_drop_points']:.1f} points ({a['worst_cell']})")
    if choice["within_tolerance"]:
        print(f"best: {choice['method']['name']} (within {args.tolerance:g} points in every cell)")
    else:
        print(f"best: {choice['method']['name']} (none is within {args.tolerance:g} points in every cell: the one "
              "with the smallest worst loss)")
    if not args.dry_run:
        path = write_best(best_record(results, choice, args.tolerance, str(source)), args.out)
        print(f"wrote {path}", file=sys.stderr)
    return 0
