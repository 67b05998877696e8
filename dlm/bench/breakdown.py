"""Accuracy and forward passes broken down by answer length and by the dependency measure (the stress preset).

Every synthetic example gets two numbers from :mod:`dlm.data.stress`: its answer length in units (non-space
characters of the task's answer; one token each for the trained families) and its dependency measure (answer
units that change together, 1.0 = independent). Each falls in a bucket (:data:`LENGTH_BUCKETS`,
:data:`DEPENDENCY_BUCKETS`); per row of the report and per bucket, :func:`breakdown` counts the examples, the
right answers (:func:`dlm.data.check_answer`), the answers identical to the reference's, the forward passes and
the generated tokens, overall and per family.

Families the model cannot do with the reference decode (reference accuracy below :data:`CANNOT_DO` in the same
run) say nothing about the decoding rule: :func:`capable_families` leaves them out of the bucket tables and the
``best`` rule, and the report names them.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ..data import CODE, answer_length, check_answer, dependency
from .items import Item
from .scoring import Decoded, agreement

#: (label, lowest, highest) answer units of each length bucket (inclusive; None: no upper end)
LENGTH_BUCKETS: tuple[tuple[str, int, int | None], ...] = (
    ("1-4", 1, 4), ("5-8", 5, 8), ("9-12", 9, 12), ("13-16", 13, 16), ("17+", 17, None))
#: (label, above, at most) of each dependency bucket: 1 = every answer unit rests on one prompt item of its own
DEPENDENCY_BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("1", 0.0, 1.0), ("1-2", 1.0, 2.0), ("2-3", 2.0, 3.0), ("3-5", 3.0, 5.0), (">5", 5.0, math.inf))
#: reference accuracy on a family below which the model "cannot do it" and the family is left out of the buckets
CANNOT_DO = 0.5


def length_bucket(units: int) -> str:
    """The label of the length bucket holding ``units`` answer units (an empty answer counts as the first)."""
    units = max(units, 1)
    return next(label for label, lo, hi in LENGTH_BUCKETS if lo <= units and (hi is None or units <= hi))


def dependency_bucket(value: float) -> str:
    """The label of the dependency bucket holding ``value`` (the first bucket also holds values below 1)."""
    return next(label for label, lo, hi in DEPENDENCY_BUCKETS if value <= hi and (value > lo or lo == 0.0))


def measures(items: Sequence[Item]) -> list[dict[str, Any] | None]:
    """Per example: ``{"length", "dependency", "length_bucket", "dependency_bucket"}`` (None for code)."""
    out: list[dict[str, Any] | None] = []
    for it in items:
        dep = dependency(it.family, it.prompt) if it.answer is not None else None
        if dep is None:
            out.append(None)
            continue
        n = answer_length(it.answer)
        out.append({"length": n, "dependency": dep, "length_bucket": length_bucket(n),
                    "dependency_bucket": dependency_bucket(dep)})
    return out


def _cell() -> dict[str, Any]:
    return {"n": 0, "correct": 0, "same_as_reference": 0, "nfe": 0, "generated_tokens": 0}


def _add(cell: dict[str, Any], ok: bool, exact: bool | None, d: Decoded) -> None:
    cell["n"] += 1
    cell["correct"] += ok
    cell["same_as_reference"] += bool(exact)
    cell["nfe"] += d.nfe
    cell["generated_tokens"] += d.n_gen


def _finish(cell: dict[str, Any], with_ref: bool) -> dict[str, Any]:
    n = cell["n"]
    cell["accuracy"] = cell["correct"] / n if n else None
    cell["exact_match_vs_reference"] = cell["same_as_reference"] / n if n and with_ref else None
    cell["nfe_per_token"] = cell["nfe"] / cell["generated_tokens"] if cell["generated_tokens"] else None
    return cell


def breakdown(items: Sequence[Item], decoded: Sequence[Decoded], ref: Sequence[Decoded] | None,
              per_item: Sequence[dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Counts per bucket: ``{"length": {bucket: cell}, "dependency": {...}, "family_length": {family: {bucket:
    cell}}, "family_dependency": {...}}``; a cell holds n, correct, same_as_reference, nfe, generated_tokens and
    accuracy, exact_match_vs_reference, nfe_per_token. Code examples are not bucketed."""
    per_item = measures(items) if per_item is None else per_item
    out: dict[str, dict[str, Any]] = {"length": {}, "dependency": {}, "family_length": {}, "family_dependency": {}}
    for i, (it, d, m) in enumerate(zip(items, decoded, per_item)):
        if m is None or it.family == CODE:
            continue
        ok = check_answer(it.family, it.prompt, d.text, it.answer)
        exact = agreement(d, ref[i])[2] if ref is not None else None
        for axis in ("length", "dependency"):
            b = m[f"{axis}_bucket"]
            _add(out[axis].setdefault(b, _cell()), ok, exact, d)
            _add(out[f"family_{axis}"].setdefault(it.family, {}).setdefault(b, _cell()), ok, exact, d)
    for key, cells in out.items():
        for v in cells.values():
            for c in (v.values() if key.startswith("family_") else [v]):
                _finish(c, ref is not None)
    return out


def capable_families(reference_row: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    """(families the model can do, {family it cannot do: reference accuracy}) from the reference row."""
    can, cannot = [], {}
    for fam, f in (reference_row.get("families") or {}).items():
        acc = f.get("accuracy")
        if fam == CODE or acc is None:
            continue
        if acc >= CANNOT_DO:
            can.append(fam)
        else:
            cannot[fam] = acc
    return can, cannot


def pooled(row: dict[str, Any], axis: str, families: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The row's cells along ``axis`` ("length" or "dependency") pooled over ``families`` only."""
    cells: dict[str, dict[str, Any]] = {}
    for fam in families:
        for b, c in (row.get("breakdown", {}).get(f"family_{axis}", {}).get(fam) or {}).items():
            acc = cells.setdefault(b, _cell())
            for k in ("n", "correct", "same_as_reference", "nfe", "generated_tokens"):
                acc[k] += c[k]
    with_ref = any(c.get("exact_match_vs_reference") is not None
                   for f in row.get("breakdown", {}).get(f"family_{axis}", {}).values() for c in f.values())
    return {b: _finish(c, with_ref) for b, c in cells.items()}


def bucket_order(axis: str) -> list[str]:
    return [b[0] for b in (LENGTH_BUCKETS if axis == "length" else DEPENDENCY_BUCKETS)]
