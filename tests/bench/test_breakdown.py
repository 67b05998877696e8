"""Buckets of answer length and dependency, the per-bucket counts of a row, the families a model cannot do."""

from __future__ import annotations

import pytest

from dlm.bench.breakdown import (CANNOT_DO, bucket_order, capable_families, dependency_bucket, length_bucket,
                                 measures, pooled)
from dlm.bench.items import Item

from .stress_helpers import results, stress_items


def test_buckets():
    assert [length_bucket(n) for n in (0, 1, 4, 5, 8, 9, 16, 17, 40)] == \
        ["1-4", "1-4", "1-4", "5-8", "5-8", "9-12", "13-16", "17+", "17+"]
    assert [dependency_bucket(v) for v in (0.5, 1.0, 1.01, 2.0, 2.5, 3.0, 5.0, 5.01)] == \
        ["1", "1", "1-2", "1-2", "2-3", "2-3", "3-5", ">5"]
    assert bucket_order("length")[0] == "1-4" and bucket_order("dependency")[-1] == ">5"


def test_measures_of_examples():
    items = [Item("cumsum", "cumsum: 3914 =", "3237"), Item("code", "def f():\n", None),
             Item("copy-long", "copy: a b c d e f =", "a b c d e f")]
    m = measures(items)
    assert m[0] == {"length": 4, "dependency": pytest.approx(2.5), "length_bucket": "1-4", "dependency_bucket": "2-3"}
    assert m[1] is None and m[2]["dependency_bucket"] == "1" and m[2]["length_bucket"] == "5-8"


def test_row_counts_per_bucket_and_family():
    items = stress_items()
    res = results(items, [("m", {"scheduler": "threshold"}, 2, [0, 6])], ref_wrong=range(12, 18))
    ref, m = res["rows"]
    bd = m["breakdown"]
    assert sum(c["n"] for c in bd["length"].values()) == len(items) == sum(c["n"] for c in bd["dependency"].values())
    assert bd["family_length"]["copy-long"]["5-8"]["correct"] == 5
    assert bd["family_dependency"]["copy-long"]["1"]["n"] == 6  # copying: every unit independent
    assert ref["breakdown"]["family_length"]["pick"]
    for cell in bd["length"].values():
        assert cell["nfe_per_token"] == pytest.approx(cell["nfe"] / cell["generated_tokens"])
    assert capable_families(ref) == (["copy-long", "cumsum-long"], {"pick": 0.0})
    cells = pooled(m, "length", ["copy-long", "cumsum-long"])
    assert cells["5-8"]["n"] == 12 and cells["5-8"]["accuracy"] == pytest.approx(10 / 12)
    assert cells["5-8"]["exact_match_vs_reference"] == pytest.approx(10 / 12)
    assert 0 < CANNOT_DO < 1
