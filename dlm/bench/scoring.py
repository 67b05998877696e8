"""Scores of one configuration: accuracy against the tasks' answers, agreement with the reference decode, code
parse rate, and each metric's ratio against the reference row of its group (the metrics are listed in
:mod:`dlm.bench.runner`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from ..data import CODE, check_answer, completion_parses
from .items import Item

#: metrics that get a ratio against the reference row of their group
RATIO_METRICS = ("accuracy", "nfe_per_token", "tokens_per_s", "wall_s", "ms_per_step", "peak_mem_mb",
                 "token_agreement", "exact_match_vs_reference", "code_exact_vs_reference", "code_token_agreement",
                 "code_parse_rate")


def generated_length(row: Sequence[int], stop_ids: set[int]) -> int:
    """Generated tokens of one answer: up to and including its first stop token, else all of it."""
    return next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))


@dataclass
class Decoded:
    """One example's output: answer ``tokens`` (gen_length), ``text``, ``nfe``, generated length ``n_gen``,
    and whether a stop token ended it (``finished``)."""

    tokens: list[int]
    text: str
    nfe: int
    n_gen: int
    finished: bool


def agreement(a: Decoded, ref: Decoded) -> tuple[int, int, bool]:
    """(matching positions, compared positions, exact) of an answer against the reference's."""
    n = max(a.n_gen, ref.n_gen)
    same = sum(x == y for x, y in zip(a.tokens[:n], ref.tokens[:n]))
    exact = a.n_gen == ref.n_gen and a.tokens[: a.n_gen] == ref.tokens[: ref.n_gen]
    return same, n, exact


def _ratio(value: Any, ref: Any) -> float | None:
    if value is None or ref is None:
        return None
    try:
        if ref == 0:
            return 1.0 if value == 0 else None
        return float(value) / float(ref)
    except (TypeError, ValueError):
        return None


def compute_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``row["ratios"]`` of every measured row to its metrics over those of the reference row of the same
    group (``row["group"]``); the reference row's ratios are 1.0 (``None`` where a value is missing or the
    reference's is 0 and the row's is not). Rows of a group without a measured reference get no ratios."""
    refs = {r["group"]: r for r in rows if r.get("is_reference") and r.get("status") == "ok"}
    for r in rows:
        ref = refs.get(r["group"])
        if r.get("status") != "ok" or ref is None:
            r["ratios"] = {}
            continue
        r["ratios"] = {k: _ratio(r["metrics"].get(k), ref["metrics"].get(k)) for k in RATIO_METRICS}
        r["reference"] = ref["name"]


def score(items: Sequence[Item], decoded: Sequence[Decoded], ref: Sequence[Decoded] | None) -> dict[str, Any]:
    """Accuracy, agreement with ``ref`` and code parse rate, overall and per family."""
    fams: dict[str, dict[str, Any]] = {}
    tot = {"correct": 0, "n_task": 0, "same": 0, "compared": 0, "exact": 0, "n": 0}
    code = {"same": 0, "compared": 0, "exact": 0, "n": 0, "parses": 0}
    for i, (it, d) in enumerate(zip(items, decoded)):
        f = fams.setdefault(it.family, {"n": 0, "correct": 0 if it.answer is not None else None,
                                        "same": 0, "compared": 0, "exact": 0})
        f["n"] += 1
        if it.answer is not None:
            ok = check_answer(it.family, it.prompt, d.text, it.answer)
            f["correct"] += ok
            tot["correct"] += ok
            tot["n_task"] += 1
        if ref is not None:
            same, n, exact = agreement(d, ref[i])
            for acc in (f, tot) + ((code,) if it.kind == CODE else ()):
                acc["same"] += same
                acc["compared"] += n
                acc["exact"] += exact
        tot["n"] += 1
        if it.kind == CODE:
            code["n"] += 1
            code["parses"] += completion_parses(it.prompt, d.text, d.finished)
    per_family = {}
    for name, f in fams.items():
        per_family[name] = {
            "n": f["n"], "correct": f["correct"],
            "accuracy": None if f["correct"] is None else f["correct"] / f["n"],
            "token_agreement": f["same"] / f["compared"] if ref is not None and f["compared"] else None,
            "exact_match_vs_reference": f["exact"] / f["n"] if ref is not None else None,
        }
    if code["n"]:
        per_family[CODE]["parse_rate"] = code["parses"] / code["n"]
    return {
        "accuracy": tot["correct"] / tot["n_task"] if tot["n_task"] else None,
        "token_agreement": tot["same"] / tot["compared"] if ref is not None and tot["compared"] else None,
        "exact_match_vs_reference": tot["exact"] / tot["n"] if ref is not None else None,
        "code_exact_vs_reference": code["exact"] / code["n"] if ref is not None and code["n"] else None,
        "code_token_agreement": code["same"] / code["compared"] if ref is not None and code["compared"] else None,
        "code_parse_rate": code["parses"] / code["n"] if code["n"] else None,
        "families": per_family,
    }
