"""The ``dlm`` command keeps a subcommand whose module fails to import, and says why when it is used, instead of
dropping it silently."""

from __future__ import annotations

import sys

from dlm.cli import build_parser, main


def test_a_subcommand_that_cannot_import_reports_the_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dlm.bench.cli", None)  # makes `import dlm.bench.cli` raise ImportError
    assert "unavailable: dlm.bench.cli cannot be imported" in build_parser().format_help()
    assert main(["bench", "--preset", "quick"]) == 2
    err = capsys.readouterr().err
    assert "'dlm bench' is unavailable: dlm.bench.cli cannot be imported (ModuleNotFoundError" in err


def test_subcommands_that_import_are_registered():
    text = build_parser().format_help()
    for name in ("train", "train-filter", "bench"):
        assert name in text
    assert "unavailable" not in text
