"""Grid files: JSON and YAML, command-line options over the file, errors naming the bad key."""

from __future__ import annotations

import json

import pytest

from dlm.bench import cli as bench_cli
from dlm.bench import gridfile, methods
from dlm.bench.methods import REFERENCE
from dlm.bench.presets import Suite
from dlm.errors import ConfigError


GRID = {
    "tasks": ["copy", "code"], "n": 3, "code_n": 2, "gen_length": [16, 32], "batch_size": [4], "repeats": 2,
    "configs": ["fast-dllm", {"name": "mine", "scheduler": "factor", "scheduler_kwargs": {"factor": 1.5},
                              "eotp": True}],
    "grid": [{"scheduler": ["low_confidence", "threshold:threshold=0.8"], "cache": ["none", "dual"]},
             {"scheduler": [{"name": "low_confidence", "tokens_per_step": 2}], "cache": "prefix",
              "set": {"eotp": True}}],
}


def _check_grid_suite(s: Suite) -> None:
    assert s.tasks == ("copy", "code") and s.n == 3 and s.gen_length == (16, 32) and s.repeats == 2
    names = [m.name for m in s.methods]
    assert names[:2] == ["fast-dllm", "mine"]
    assert len(names) == 2 + 4 + 1
    grid = s.methods[2:6]
    assert {(m.fields["scheduler"], m.fields["cache"]) for m in grid} == {
        ("low_confidence", "none"), ("low_confidence", "dual"), ("threshold", "none"), ("threshold", "dual")}
    last = s.methods[-1]
    assert dict(last.fields) == {"scheduler": "low_confidence", "cache": "prefix", "tokens_per_step": 2, "eotp": True}
    assert [m.name for m in s.with_reference()][0] == REFERENCE
    assert len(s.shapes) == 2


def test_grid_file_json(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(GRID))
    args = bench_cli.build_parser().parse_args(["--grid", str(path)])
    _check_grid_suite(bench_cli.suite_from_args(args))
    # command-line options override the file
    args = bench_cli.build_parser().parse_args(["--grid", str(path), "--n", "5", "--configs", "best"])
    s = bench_cli.suite_from_args(args)
    assert s.n == 5 and s.methods[-1].name == "best"


def test_grid_file_yaml(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(GRID))
    _check_grid_suite(gridfile.suite_from_mapping(gridfile.read_grid_file(path)))


def test_grid_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gen_lenght": [32]}))
    with pytest.raises(ConfigError, match="gen_lenght"):
        gridfile.suite_from_mapping(gridfile.read_grid_file(bad))
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="JSON"):
        gridfile.read_grid_file(bad)
    with pytest.raises(ConfigError, match="shape axes"):
        methods.grid_methods({"scheduler": "threshold", "gen_length": [32]})
