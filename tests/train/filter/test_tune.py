"""Tuning the threshold: the disagreement budget is counted in prompts."""

from __future__ import annotations

from dlm.train.filter.tune import within_disagreement


def test_disagreement_rule_counts_prompts():
    # 3 of 300 answers differ: exactly 1%, within a 1% budget although 1 - 0.99 > 0.01 in floating point
    assert within_disagreement({"prompts": 300, "agreement": 297 / 300}, 0.01)
    assert not within_disagreement({"prompts": 300, "agreement": 296 / 300}, 0.01)
    assert within_disagreement({"prompts": 10, "agreement": 1.0}, 0.0)
    assert not within_disagreement({"prompts": 10, "agreement": 0.9}, 0.0)
