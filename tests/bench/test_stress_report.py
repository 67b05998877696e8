"""The stress sections of the report and the stress plot, on synthetic results; the stress suite through the runner
on the tiny random checkpoint."""

from __future__ import annotations

import matplotlib.image
import pytest

from dlm.bench.methods import Method
from dlm.bench.plots import stress_buckets
from dlm.bench.presets import NAMED, SUITES, Suite
from dlm.bench.report import environment, markdown, model_info, write_report
from dlm.bench.runner import Bench
from dlm.bench.stress_report import _interpolate, stress_markdown
from dlm.data import STRESS_FAMILIES

from .stress_helpers import results, stress_items

TH = lambda t: {"scheduler": "threshold", "scheduler_kwargs": {"threshold": t}, "cache": "dual", "eotp": True}  # noqa: E731
LF = {"scheduler": "learned_filter", "cache": "dual", "eotp": True}


@pytest.fixture(scope="module")
def synthetic():
    # copy-long 0-5, cumsum-long 6-11 (all answers of 6-8 units), pick 12-17 (the reference gets pick wrong)
    return results(stress_items(), [("threshold-0.7", TH(0.7), 1, [6, 7]), ("threshold-0.9", TH(0.9), 3, []),
                                    ("filter", LF, 2, [])], ref_wrong=range(12, 18))


def test_sections(synthetic):
    md = "\n".join(stress_markdown(synthetic))
    for part in ("## Stress: gen32-block32-batch64", "### By answer length (units)", "### By dependency",
                 "### Where each rule starts to fail", "### Learned filter vs threshold rule at equal NFE",
                 "**cannot do with the reference decode**", "`pick` (0.0%)"):
        assert part in md, part
    table = md.split("### Where each rule starts to fail")[1].splitlines()
    fail = next(line for line in table if line.startswith("| threshold-0.7 | 32.0x |"))
    assert "| 5-8 (-16.7) |" in fail  # 10 of 12 right in the only length bucket, against 12 of 12
    assert next(line for line in table if line.startswith("| threshold-0.9 | 10.7x |")).endswith("| never | never |")


def test_filter_against_the_rule_at_equal_nfe(synthetic):
    md = stress_markdown(synthetic)
    line = next(x for x in md if x.startswith("| filter | length 5-8 |"))
    # filter: 1.0 NFE/token, 12/12; the rule at 1.0 lies halfway between 0.5 (10/12) and 1.5 (12/12): 11/12
    assert "| 1.000 | 100.0 | 91.7 | +8.3 |" in line
    assert any(x.startswith("| filter | `pick` (held out) |") for x in md)
    assert _interpolate([(1, 0.0), (3, 1.0)], 2) == (0.5, False) and _interpolate([(1, 0.0), (3, 1.0)], 4)[1]


def test_plot(synthetic, tmp_path):
    path = stress_buckets(synthetic, tmp_path / "stress.png")
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 300


def test_stress_preset():
    s = SUITES["stress"]
    assert s.tasks == STRESS_FAMILIES and s.breakdown and s.split == "test"
    names = [m.name for m in s.methods]
    assert set(NAMED) <= set(names) and {"threshold-0.95", "factor-1.0", "4-per-step"} <= set(names)
    assert len(names) == len(set(names))
    # a candidate equal to a named method runs once, under that name; best (chosen by choose-best among the
    # candidates and named methods) may repeat one of them, under its own name
    fields = [dict(m.fields) for m in s.methods if m.name != "best"]
    assert all(fields.count(f) == 1 for f in fields)
    assert dict(NAMED["best"].fields) in fields
    filter_99 = {"scheduler": "learned_filter", "scheduler_kwargs": {"threshold": 0.99}, "cache": "dual", "eotp": True}
    assert filter_99 in fields
    with pytest.raises(ValueError, match="split"):
        Suite(split="train")


def test_runner_fills_the_breakdown(llada, tmp_path):
    suite = Suite(tasks=("copy-long", "pick"), n=1, gen_length=(8,), block_length=(8,), batch_size=(2,),
                  split="val", breakdown=True, methods=(NAMED["fast-dllm"], Method("t", TH(0.9))))
    res = Bench(llada, suite, log=lambda s: None).run()
    res = {"environment": environment(llada.device, "dlm bench --test"), "model": model_info(llada), **res}
    for r in res["rows"]:
        assert r["status"] == "ok"
        assert {"length", "dependency", "family_length", "family_dependency"} == set(r["breakdown"])
        assert sum(c["n"] for c in r["breakdown"]["length"].values()) == 2
    files = write_report(res, tmp_path)
    md = files["markdown"].read_text()
    assert md == markdown(res) and "## Stress: gen8-block8-batch2" in md
    assert "## Accuracy per task family" not in md  # the stress table holds the families


def test_command_line_options():
    from dlm.bench import cli

    parse = cli.build_parser().parse_args
    s = cli.suite_from_args(parse(["--preset", "stress", "--split", "val", "--no-verifiers", "--n", "3"]))
    assert s.split == "val" and s.n == 3 and s.breakdown and s.tasks == STRESS_FAMILIES
    assert s.methods and not any(m.fields.get("verify") for m in s.methods)
    s = cli.suite_from_args(parse(["--breakdown", "--tasks", "copy", "cumsum-long"]))
    assert s.breakdown and s.split == "test" and s.tasks == ("copy", "cumsum-long")
    assert not cli.suite_from_args(parse([])).breakdown


def test_best_against_the_reference():
    items = stress_items()
    good = "\n".join(stress_markdown(results(items, [("best", LF, 1, [])], ref_wrong=[0, *range(12, 18)])))
    assert "| copy-long | 83.3 | 100.0 | +16.7 |" in good
    assert "32.0x fewer forward passes" in good and "**met**" in good
    bad = "\n".join(stress_markdown(results(items, [("best", LF, 2, [6])], ref_wrong=range(12, 18))))
    assert "| cumsum-long | 100.0 | 83.3 | -16.7 |" in bad and "worst family `cumsum-long`" in bad
    assert "**NOT met**" in bad
