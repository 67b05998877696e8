"""Scores: generated lengths, agreement with the reference, ratios against the reference of each group."""

from __future__ import annotations

from dlm.bench.methods import REFERENCE
from dlm.bench.scoring import RATIO_METRICS, Decoded, agreement, compute_ratios, generated_length


def _row(name, group, is_ref, **metrics):
    m = {k: None for k in RATIO_METRICS}
    m.update(metrics)
    return {"name": name, "group": group, "is_reference": is_ref, "status": "ok", "metrics": m}


def test_compute_ratios_injected_values():
    rows = [
        _row(REFERENCE, "g1", True, wall_s=2.0, nfe_per_token=1.0, tokens_per_s=100.0, accuracy=0.5, peak_mem_mb=0.0),
        _row("fast", "g1", False, wall_s=0.5, nfe_per_token=0.25, tokens_per_s=400.0, accuracy=0.25, peak_mem_mb=3.0),
        _row(REFERENCE, "g2", True, wall_s=10.0, nfe_per_token=2.0, tokens_per_s=50.0, accuracy=0.0),
        _row("fast", "g2", False, wall_s=1.0, nfe_per_token=0.5, tokens_per_s=500.0, accuracy=0.0),
        {"name": "skipped", "group": "g1", "is_reference": False, "status": "skipped", "metrics": {}},
    ]
    compute_ratios(rows)
    assert rows[0]["ratios"]["wall_s"] == 1.0 and rows[0]["ratios"]["tokens_per_s"] == 1.0
    assert rows[1]["ratios"]["wall_s"] == 0.25
    assert rows[1]["ratios"]["nfe_per_token"] == 0.25
    assert rows[1]["ratios"]["tokens_per_s"] == 4.0
    assert rows[1]["ratios"]["accuracy"] == 0.5
    assert rows[1]["ratios"]["peak_mem_mb"] is None  # reference 0, row not: no finite ratio
    assert rows[1]["ratios"]["token_agreement"] is None  # missing values
    # the second group's rows are measured against the second group's reference only
    assert rows[3]["ratios"]["wall_s"] == 0.1 and rows[3]["ratios"]["tokens_per_s"] == 10.0
    assert rows[3]["ratios"]["accuracy"] == 1.0  # 0 / 0: equal
    assert rows[4]["ratios"] == {}


def test_generated_length_and_agreement():
    stops = {9}
    assert generated_length([1, 2, 9, 9], stops) == 3
    assert generated_length([1, 2, 3, 4], stops) == 4
    ref = Decoded([1, 2, 9, 9], "", 3, 3, True)
    same = Decoded([1, 2, 9, 9], "", 2, 3, True)
    longer = Decoded([1, 5, 3, 9], "", 2, 4, True)
    assert agreement(same, ref) == (3, 3, True)
    assert agreement(longer, ref) == (2, 4, False)  # compared up to the longer answer
