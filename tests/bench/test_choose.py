"""The rule that chooses the best preset, on synthetic results where the answer is known; the file it writes."""

from __future__ import annotations

import json

import pytest

from dlm.bench import choose as C
from dlm.bench.best import BEST_FILE, best_fields, read_best, write_best
from dlm.bench.cli import main as bench_main
from dlm.bench.presets import BEST
from dlm.errors import ConfigError

from .stress_helpers import results, stress_items

ITEMS = stress_items()  # copy-long 0-5, cumsum-long 6-11, pick 12-17 (val split)
PICK = range(12, 18)
TH = lambda t: {"scheduler": "threshold", "scheduler_kwargs": {"threshold": t}, "cache": "dual", "eotp": True}  # noqa: E731


def _run(specs, **kw):
    # the reference gets every pick wrong: pick is a family the model cannot do, left out of the rule
    return results(ITEMS, specs, ref_wrong=PICK, **kw)


def test_fewest_forwards_within_tolerance_on_every_cell():
    res = _run([("fast", TH(0.7), 1, [6]),           # loses one cumsum-long answer: 16.7 points in its cell
                ("verified", {"scheduler": "low_confidence", "verify": "stepwise"}, 1, []),  # not a candidate
                ("mid-b", TH(0.8), 2, [12, 13]),      # right on what the model can do, but fewer pick answers
                ("mid", TH(0.9), 2, []),
                ("slow", TH(0.99), 4, [])])
    choice = C.choose(res)
    assert choice["method"] == {"name": "mid", "fields": TH(0.9)} and choice["within_tolerance"]
    by = {a["name"]: a for a in choice["candidates"]}
    assert "verified" not in by and set(by) == {"fast", "mid-b", "mid", "slow"}
    assert not by["fast"]["eligible"] and by["fast"]["worst_drop_points"] == pytest.approx(100 / 6, rel=1e-9)
    assert "cumsum-long" in by["fast"]["worst_cell"]
    assert by["mid"]["eligible"] and by["slow"]["eligible"] and by["mid-b"]["eligible"]
    assert [a["name"] for a in choice["candidates"]][0] == "fast"  # sorted by forwards


def test_tolerance_and_the_fallback_when_none_qualifies():
    res = _run([("a", TH(0.7), 1, [6, 7]), ("b", TH(0.9), 3, [8])])  # two / one answer lost in one cell of six
    choice = C.choose(res)
    assert not choice["within_tolerance"] and choice["method"]["name"] == "b"  # the smaller worst loss
    assert C.choose(res, tolerance=40.0)["method"]["name"] == "a"  # both within 40 points: the fewest forwards


def test_a_method_better_than_the_reference_qualifies():
    res = results(ITEMS, [("m", TH(0.9), 2, [])], ref_wrong=[0, *PICK])
    assert C.choose(res)["within_tolerance"]


def test_refuses_the_test_split_and_empty_runs():
    with pytest.raises(ConfigError, match="val split"):
        C.choose(_run([("mid", TH(0.9), 2, [])], split="test"))
    with pytest.raises(ConfigError, match="no candidate"):
        C.choose(_run([]))
    with pytest.raises(ConfigError, match="nothing to hold"):
        C.choose(results(ITEMS, [("m", TH(0.9), 2, [])], ref_wrong=range(18)))


def test_command_writes_the_file_the_preset_reads(tmp_path, capsys):
    res = _run([("fast", TH(0.7), 1, [6]), ("mid", TH(0.9), 2, [])])
    src = tmp_path / "results.json"
    src.write_text(json.dumps(res))
    out = tmp_path / "best.json"
    assert bench_main(["choose-best", "--results", str(src), "--out", str(out)]) == 0
    assert "best: mid (within 0.5 points in every cell)" in capsys.readouterr().out
    data = read_best(out)
    assert best_fields(out) == TH(0.9) and data["within_tolerance"] is True
    assert data["chosen_on"]["suite"]["split"] == "val" and "0.5 points" in data["rule"]
    assert {c["name"] for c in data["candidates"]} == {"fast", "mid"}
    assert C.main(["--results", str(src), "--out", str(tmp_path / "x.json"), "--dry-run"]) == 0
    assert not (tmp_path / "x.json").exists()
    assert C.main(["--results", str(tmp_path / "missing.json")]) == 2
    assert C.main(["--results", str(src), "--tolerance", "-1"]) == 2


def test_the_shipped_file_is_what_best_runs(tmp_path):
    assert best_fields() == BEST and read_best(BEST_FILE)["method"]["name"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(ConfigError, match="choose-best"):
        read_best(bad)
    with pytest.raises(ConfigError, match="'method'"):
        write_best({"method": {"name": "x"}}, tmp_path / "b.json")
