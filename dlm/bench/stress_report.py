"""The stress sections of ``results.md`` (suites with ``breakdown``): accuracy per stress family with the families
the model cannot do named, accuracy / agreement / NFE by answer length and by dependency bucket, where each rule
starts to fail, and the learned filter against the threshold rule at equal NFE."""

from __future__ import annotations

from typing import Any, Sequence

from .breakdown import CANNOT_DO, bucket_order, capable_families, pooled

#: a method "fails" in a bucket when its accuracy there is more than this many points below the reference's
FAIL_POINTS = 1.0


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _ok(results: dict[str, Any], group: str) -> list[dict[str, Any]]:
    return [r for r in results["rows"] if r["group"] == group and r["status"] == "ok" and "breakdown" in r]


def nfe_per_token(row: dict[str, Any], families: Sequence[str]) -> float | None:
    """Forward passes per generated token over the examples of ``families`` only."""
    cells = pooled(row, "length", families).values()
    tokens = sum(c["generated_tokens"] for c in cells)
    return sum(c["nfe"] for c in cells) / tokens if tokens else None


def fewer_nfe(row: dict[str, Any], ref: dict[str, Any], families: Sequence[str]) -> float | None:
    """The reference's NFE per token over this row's, on the families the model can do (a family it cannot do
    decodes garbage at the model's pace, which says nothing about the rule)."""
    mine, theirs = nfe_per_token(row, families), nfe_per_token(ref, families)
    return theirs / mine if mine and theirs else None


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}x"


def family_table(rows: list[dict[str, Any]], families: Sequence[str], cannot: dict[str, float]) -> list[str]:
    cols = list(families) + list(cannot)
    lines = ["| configuration | fewer NFE | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        f = r["families"]
        cells = [_pct(f.get(c, {}).get("accuracy")) for c in cols]
        lines.append(f"| {_md(r['name'])} | {_x(fewer_nfe(r, rows[0], families))} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += ["fewer NFE: the reference's forward passes per generated token over this row's, on the families the "
              "model can do.", ""]
    if cannot:
        lines += ["Families the model **cannot do with the reference decode** (reference accuracy below "
                  f"{100 * CANNOT_DO:.0f}% in this run; left out of the bucket tables and of the `best` rule): "
                  + ", ".join(f"`{k}` ({_pct(v)}%)" for k, v in cannot.items()) + ".", ""]
    return lines


def bucket_table(rows: list[dict[str, Any]], axis: str, families: Sequence[str]) -> list[str]:
    """Accuracy (%), answers identical to the reference's (%) and NFE per token per bucket, one row per method."""
    cells = {r["name"]: pooled(r, axis, families) for r in rows}
    ref_cells = cells[rows[0]["name"]]
    buckets = [b for b in bucket_order(axis) if b in ref_cells]
    head = " | ".join(f"{b} (n={ref_cells[b]['n']})" for b in buckets)
    lines = ["accuracy % / answers = reference % / NFE per token, per bucket:", "",
             f"| configuration | {head} |", "|---|" + "---|" * len(buckets)]
    for r in rows:
        c = cells[r["name"]]
        row = [f"{_pct(c[b]['accuracy'])} / {_pct(c[b]['exact_match_vs_reference'])} / "
               f"{c[b]['nfe_per_token']:.3f}" if b in c and c[b]["nfe_per_token"] is not None else "-"
               for b in buckets]
        lines.append(f"| {_md(r['name'])} | " + " | ".join(row) + " |")
    return lines + [""]


def first_failure(row: dict[str, Any], ref: dict[str, Any], axis: str, families: Sequence[str]) -> str:
    """The first bucket (in order) where ``row`` is more than :data:`FAIL_POINTS` below the reference."""
    mine, theirs = pooled(row, axis, families), pooled(ref, axis, families)
    for b in bucket_order(axis):
        if b in mine and b in theirs and mine[b]["accuracy"] is not None:
            drop = 100 * (theirs[b]["accuracy"] - mine[b]["accuracy"])
            if drop > FAIL_POINTS:
                return f"{b} (-{drop:.1f})"
    return "never"


def failure_table(rows: list[dict[str, Any]], families: Sequence[str]) -> list[str]:
    ref = rows[0]
    lines = [f"First bucket where a configuration's accuracy is more than {FAIL_POINTS:g} point below the "
             "reference's (points lost there):", "",
             "| configuration | fewer NFE | fails from length | fails from dependency |", "|---|---|---|---|"]
    for r in rows[1:]:
        lines.append(f"| {_md(r['name'])} | {_x(fewer_nfe(r, ref, families))} | "
                     f"{first_failure(r, ref, 'length', families)} | "
                     f"{first_failure(r, ref, 'dependency', families)} |")
    return lines + [""]


def _interpolate(points: list[tuple[float, float]], x: float) -> tuple[float, bool]:
    """The y of a piecewise-linear curve through ``points`` at ``x`` (clamped: flag True when outside)."""
    pts = sorted(points)
    if x <= pts[0][0]:
        return pts[0][1], x < pts[0][0]
    if x >= pts[-1][0]:
        return pts[-1][1], x > pts[-1][0]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return (y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)), False
    return pts[-1][1], True


def _same_setting(a: dict[str, Any], b: dict[str, Any]) -> bool:
    fa, fb = a["method"]["fields"], b["method"]["fields"]
    return all(fa.get(k) == fb.get(k) for k in ("cache", "cache_kwargs", "eotp", "verify"))


def filter_vs_threshold(rows: list[dict[str, Any]], families: Sequence[str],
                        cannot: dict[str, float]) -> list[str]:
    """Each learned-filter row against the threshold rule with the same cache and EoTP, per length bucket of the
    families the model can do (accuracy) and per family it cannot do (agreement with the reference): the threshold
    rule's value interpolated at the filter's NFE per token (linear between the thresholds measured)."""
    filters = [r for r in rows if r["method"]["fields"].get("scheduler") == "learned_filter"]
    lines: list[str] = []
    for f in filters:
        rule = [r for r in rows if r["method"]["fields"].get("scheduler") == "threshold" and _same_setting(r, f)]
        if len(rule) < 2:
            continue
        if not lines:
            lines = ["Learned filter against the threshold rule (same cache and EoTP) at the filter's NFE per token: "
                     "the rule's value is interpolated between the thresholds measured (* = outside their NFE "
                     "range, the nearest one taken). Buckets: accuracy on the families the model can do; "
                     "families it cannot do: answers identical to the reference's.", "",
                     "| filter | where | filter NFE / token | filter % | threshold rule % at equal NFE | "
                     "filter - rule (points) |", "|---|---|---|---|---|---|"]
        cases = [(f"length {b}", "length", families, "accuracy", b) for b in bucket_order("length")]
        cases += [(f"`{fam}` (held out)", "length", [fam], "exact_match_vs_reference", None) for fam in cannot]
        for where, axis, fams, key, bucket in cases:
            lines += _vs_line(f, rule, where, axis, fams, key, bucket)
    return lines + ([""] if lines else [])


def _vs_line(f, rule, where, axis, fams, key, bucket) -> list[str]:
    def value(row):
        cells = pooled(row, axis, fams)
        if bucket is not None:
            return cells.get(bucket)
        tot = {k: sum(c[k] for c in cells.values()) for k in ("n", "same_as_reference", "correct", "nfe",
                                                               "generated_tokens")}
        if not tot["n"]:
            return None
        return {"accuracy": tot["correct"] / tot["n"], "exact_match_vs_reference": tot["same_as_reference"] / tot["n"],
                "nfe_per_token": tot["nfe"] / max(1, tot["generated_tokens"])}

    mine = value(f)
    pts = [(c["nfe_per_token"], c[key]) for c in map(value, rule) if c and c.get(key) is not None]
    if not mine or mine.get(key) is None or len(pts) < 2:
        return []
    y, outside = _interpolate(pts, mine["nfe_per_token"])
    return [f"| {_md(f['name'])} | {where} | {mine['nfe_per_token']:.3f} | {_pct(mine[key])} | "
            f"{_pct(y)}{'*' if outside else ''} | {100 * (mine[key] - y):+.1f} |"]


#: the stress issue's target for ``best``: within this many points of the reference on every family it can do ...
TARGET_POINTS = 1.0
#: ... with at least this many times fewer forward passes per generated token
TARGET_FEWER = 20.0


def best_check(rows: list[dict[str, Any]], families: Sequence[str]) -> list[str]:
    """``best`` against the reference per family the model can do, and the verdict against the targets."""
    best = next((r for r in rows if r["name"] == "best"), None)
    if best is None or not families:
        return []
    ref = rows[0]
    lines = ["| family | reference % | best % | best - reference (points) |", "|---|---|---|---|"]
    drops = {}
    for fam in families:
        a, b = ref["families"][fam]["accuracy"], best["families"].get(fam, {}).get("accuracy")
        if a is None or b is None:
            continue
        drops[fam] = 100 * (b - a)
        lines.append(f"| {fam} | {_pct(a)} | {_pct(b)} | {drops[fam]:+.1f} |")
    x = fewer_nfe(best, ref, families)
    worst = min(drops, key=drops.get) if drops else None
    within = worst is not None and drops[worst] >= -TARGET_POINTS - 1e-9
    fast = x is not None and x >= TARGET_FEWER
    verdict = "met" if within and fast else "NOT met"
    lines += ["", f"`best` ({best['label']}): {_x(x)} fewer forward passes per token than the reference on the "
              f"families the model can do; worst family `{worst}` at {drops[worst]:+.1f} points. Target (within "
              f"{TARGET_POINTS:g} point on every family, >= {TARGET_FEWER:g}x fewer): **{verdict}**.", ""]
    return lines


def stress_markdown(results: dict[str, Any]) -> list[str]:
    """The stress sections, one set per shape group."""
    lines: list[str] = []
    for group in dict.fromkeys(r["group"] for r in results["rows"]):
        rows = _ok(results, group)
        if not rows or not rows[0].get("is_reference"):
            continue
        families, cannot = capable_families(rows[0])
        lines += [f"## Stress: {group}", "", "Accuracy % per family:", ""]
        lines += family_table(rows, families, cannot)
        check = best_check(rows, families)
        if check:
            lines += ["### `best` against the reference", ""] + check
        if families:
            lines += ["### By answer length (units)", ""] + bucket_table(rows, "length", families)
            lines += ["### By dependency (answer units that change together)", ""]
            lines += bucket_table(rows, "dependency", families)
            lines += ["### Where each rule starts to fail", ""] + failure_table(rows, families)
        vs = filter_vs_threshold(rows, families, cannot)
        if vs:
            lines += ["### Learned filter vs threshold rule at equal NFE", ""] + vs
    return lines
