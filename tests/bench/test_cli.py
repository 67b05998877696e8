"""``dlm bench``: how options resolve into a suite, ``dlm bench scale``, a run end to end."""

from __future__ import annotations

import json

from dlm.bench import cli as bench_cli
from dlm.bench import presets
from dlm.bench.methods import REFERENCE


def test_cli_resolution():
    parse = bench_cli.build_parser().parse_args
    s = bench_cli.suite_from_args(parse([]))
    assert [m.name for m in s.methods] == [m.name for m in presets.SUITES["quick"].methods]
    s = bench_cli.suite_from_args(parse(["--configs", "best", "--gen-length", "32", "64", "--block-length", "auto"]))
    assert [m.name for m in s.methods] == ["best"] and s.gen_length == (32, 64) and s.block_length == (None,)
    s = bench_cli.suite_from_args(parse(["--schedulers", "low_confidence", "threshold:threshold=0.8",
                                         "--caches", "none", "dual", "--set", "eotp=true"]))
    assert len(s.methods) == 4 and all(m.fields["eotp"] is True for m in s.methods)
    s = bench_cli.suite_from_args(parse(["--preset", "full", "--n", "3"]))
    assert s.n == 3 and len(s.methods) == len(presets.SUITES["full"].methods)


def test_configuration_named_like_a_preset_overrides_it(tmp_path):
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"preset": "quick", "configs": [
        {"name": "learn2pd", "scheduler": "learned_filter", "scheduler_kwargs": {"path": "filter.pt"}, "eotp": True}]}))
    s = bench_cli.suite_from_args(bench_cli.build_parser().parse_args(["--grid", str(path)]))
    names = [m.name for m in s.methods]
    assert names == [m.name for m in presets.SUITES["quick"].methods]  # same order, no duplicate
    assert s.methods[names.index("learn2pd")].fields["scheduler_kwargs"] == {"path": "filter.pt"}


def test_scale_is_forwarded(monkeypatch):
    import dlm.bench.scale as scale
    from dlm.cli import build_parser

    seen = []
    monkeypatch.setattr(scale, "main", lambda argv=None: seen.append(argv))
    args = build_parser().parse_args(["bench", "scale", "--arch", "llada-tiny", "--device", "cpu", "-h"])
    assert args.func(args) == 0
    assert seen == [["--arch", "llada-tiny", "--device", "cpu", "-h"]]


def test_cli_end_to_end(llada_path, tmp_path, capsys):
    out = tmp_path / "res"
    rc = bench_cli.main(["--model", str(llada_path), "--device", "cpu", "--tasks", "copy", "--n", "1",
                         "--gen-length", "8", "--block-length", "8", "--batch-size", "1", "--configs", "fast-dllm",
                         "--repeats", "1", "--warmup", "0", "--no-plots", "--threads", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in data["rows"]] == [REFERENCE, "fast-dllm"]
    assert data["environment"]["command"]
    assert "| fast-dllm |" in capsys.readouterr().out
