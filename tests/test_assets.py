"""Bundled models by name: ``resolve_model`` (what ``dlm generate --model NAME`` uses) and its errors."""

from __future__ import annotations

import pytest

import dlm.assets as assets
from dlm import cli
from dlm.errors import CheckpointError
from dlm.testing import write_tiny_checkpoint


def test_names_resolve_to_the_package_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "ASSETS", tmp_path / "assets")
    write_tiny_checkpoint(tmp_path / "assets" / "dlm-tiny-block", "sdar")
    monkeypatch.chdir(tmp_path)
    assert assets.resolve_model("dlm-tiny-block") == tmp_path / "assets" / "dlm-tiny-block"
    assert assets.resolve_model(None) is None  # the loader's default (dlm-tiny)
    assert assets.resolve_model("some/folder") == "some/folder"  # not a bundled name: the loader reports it
    (tmp_path / "dlm-tiny-block").mkdir()  # a folder of the user's with that name wins
    assert assets.resolve_model("dlm-tiny-block") == "dlm-tiny-block"


def test_missing_bundled_model_is_a_named_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(assets, "ASSETS", tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="the bundled dlm-tiny-block model is missing from"):
        assets.resolve_model("dlm-tiny-block")
    with pytest.raises(CheckpointError, match="bundled: dlm-tiny, dlm-tiny-block"):
        assets.bundled_model_path("dlm-tiny-ar")  # the causal verifier is not a diffusion model to generate with
    assert cli.main(["generate", "--model", "dlm-tiny-block", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dlm: error: the bundled dlm-tiny-block model is missing") and "\n" not in err


def test_generate_loads_the_bundled_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(assets, "ASSETS", tmp_path / "assets")
    monkeypatch.chdir(tmp_path)
    write_tiny_checkpoint(tmp_path / "assets" / "dlm-tiny-block", "sdar")
    loaded = []
    monkeypatch.setattr(cli, "_generate_into", lambda writer, args, config, rows: loaded.append(args.model) or [])
    assert cli.main(["generate", "--model", "dlm-tiny-block", "hi"]) == 0
    assert loaded == [tmp_path / "assets" / "dlm-tiny-block"]
