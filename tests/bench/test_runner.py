"""The run: rows, the reference first, ratios against the reference of the same run, the trajectory, the
causal verifier filled in."""

from __future__ import annotations

import math

from dlm.bench.methods import REFERENCE, Method
from dlm.bench.presets import NAMED, Suite
from dlm.bench.runner import Bench
from dlm.bench.scoring import RATIO_METRICS

from .helpers import tiny_items


def test_rows_metrics_and_reference_first(run):
    results, *_ = run
    rows = results["rows"]
    assert rows[0]["name"] == REFERENCE and rows[0]["is_reference"]
    status = {r["name"]: r["status"] for r in rows}
    assert status[REFERENCE] == status["fast-dllm"] == status["best"] == "ok"
    assert status["broken"] == "skipped"
    assert status["lossless-causal"] == "skipped"  # no verifier sharing the tiny tokenizer
    assert status["learn2pd"] in ("ok", "skipped")
    for r in rows:
        if r["status"] != "ok":
            assert r["note"] and r["metrics"] == {} and r["ratios"] == {}
            continue
        assert set(RATIO_METRICS) <= set(r["metrics"])
        c = r["counts"]
        # generated tokens: at least one per example, at most gen_length (8) each
        assert c["examples"] <= c["generated_tokens"] <= 8 * c["examples"]
        assert math.isclose(r["metrics"]["nfe_per_token"], c["nfe"] / c["generated_tokens"])
        assert math.isclose(r["metrics"]["tokens_per_s"], c["generated_tokens"] / r["metrics"]["wall_s"])
        assert len(r["timings"]["wall_s_repeats"]) == 2
        assert r["deterministic"] is True
        assert set(r["families"]) == {"copy", "add", "code"}
        assert r["families"]["code"]["accuracy"] is None and r["families"]["copy"]["accuracy"] is not None
    assert "no_such_scheduler" in next(r for r in rows if r["name"] == "broken")["note"]
    ref = rows[0]["metrics"]
    assert ref["token_agreement"] == ref["exact_match_vs_reference"] == ref["code_exact_vs_reference"] == 1.0


def test_every_ratio_is_against_the_reference_of_the_same_run(run):
    results, *_ = run
    rows = [r for r in results["rows"] if r["status"] == "ok"]
    ref = rows[0]
    for key in RATIO_METRICS:
        if ref["metrics"][key] is not None:
            assert ref["ratios"][key] == 1.0
    for r in rows:
        assert r["reference"] == REFERENCE
        for key in RATIO_METRICS:
            v, rv = r["metrics"][key], ref["metrics"][key]
            if v is None or rv is None or rv == 0:
                continue
            assert math.isclose(r["ratios"][key], v / rv, rel_tol=1e-12)


def test_trajectory_holds_reference_and_fast_config(run):
    results, *_ = run
    trajs = results["trajectories"]
    assert [t["name"] for t in trajs] == [REFERENCE, "best"]
    for t in trajs:
        assert len(t["commit_step"]) == len(t["tokens"]) == len(t["token_strs"]) == 8
        assert max(t["commit_step"]) < t["steps"] or t["steps"] == 0
    assert trajs[0]["family"] == "add"  # a family whose answer tokens depend on each other


def test_causal_verifier_path_is_filled_in(llada):
    bench = Bench(llada, Suite(methods=()), items=tiny_items()[:1], verifier="/some/causal-lm")
    method, why = bench.resolve(NAMED["lossless-causal"])
    assert why is None and method.fields["verify_kwargs"]["verifier"] == "/some/causal-lm"
    explicit = Method("mine", {"verify": "causal", "verify_kwargs": {"verifier": "/other"}})
    assert bench.resolve(explicit)[0].fields["verify_kwargs"]["verifier"] == "/other"
