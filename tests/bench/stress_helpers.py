"""Synthetic results of a stress run: rows built by the real scoring and breakdown code from hand-chosen answers
and forward counts, so the rule of ``best`` and the stress report can be checked exactly without a model."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from dlm.bench.breakdown import breakdown
from dlm.bench.items import Item
from dlm.bench.scoring import Decoded, compute_ratios, score
from dlm.data import get_task


def stress_items(families: Iterable[str] = ("copy-long", "cumsum-long", "pick"), n: int = 6,
                 split: str = "val") -> list[Item]:
    return [Item(e.family, e.prompt, e.answer) for f in families for e in get_task(f).generate(split, n, 0)]


def _decoded(item: Item, wrong: bool, nfe: int) -> Decoded:
    text = "x" if wrong else item.answer
    tokens = [hash(text) % 1000, 0]  # a stand-in token sequence: equal answers, equal tokens
    return Decoded(tokens, text, nfe, 2, True)


def row(name: str, items: list[Item], fields: Mapping[str, Any], nfe: int, wrong: Iterable[int] = (),
        ref: list[Decoded] | None = None, group: str = "gen32-block32-batch64") -> tuple[dict[str, Any], list]:
    """A measured row: ``nfe`` forwards per example, the examples at indices ``wrong`` answered wrongly."""
    bad = set(wrong)
    dec = [_decoded(it, i in bad, nfe) for i, it in enumerate(items)]
    is_ref = ref is None
    scored = score(items, dec, dec if is_ref else ref)
    gen = sum(d.n_gen for d in dec)
    r = {"name": name, "group": group, "is_reference": is_ref, "status": "ok", "note": "", "label": name,
         "method": {"name": name, "fields": dict(fields), "description": "", "source": "preset"},
         "metrics": {"accuracy": scored["accuracy"], "nfe_per_token": sum(d.nfe for d in dec) / gen,
                     "exact_match_vs_reference": scored["exact_match_vs_reference"]},
         "families": scored["families"], "breakdown": breakdown(items, dec, dec if is_ref else ref),
         "deterministic": True}
    return r, dec


def results(items: list[Item], specs: list[tuple[str, Mapping[str, Any], int, Iterable[int]]],
            split: str = "val", ref_wrong: Iterable[int] = ()) -> dict[str, Any]:
    """A results mapping: the reference (32 forwards per example, ``ref_wrong`` wrong) then one row per
    (name, fields, nfe, wrong) spec."""
    ref_row, ref = row("llada-reference", items, {"scheduler": "low_confidence", "cache": "none"}, 32, ref_wrong)
    rows = [ref_row] + [row(n, items, f, nfe, w, ref)[0] for n, f, nfe, w in specs]
    compute_ratios(rows)
    return {"suite": {"split": split, "breakdown": True, "tasks": sorted({it.family for it in items}), "n": 6,
                      "seed": 0, "gen_length": [32], "block_length": [32], "batch_size": [64], "repeats": 1,
                      "warmup": 1},
            "rows": rows, "environment": {"date": "2026-11-27", "command": "dlm bench --test", "device": "cpu",
                                          "cpu": "test", "torch": "x", "dlm": "x", "python": "x",
                                          "torch_threads": 1},
            "model": {"path": "tiny"}, "examples": {"per_family": {}}}
