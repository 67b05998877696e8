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


@pytest.mark.skipif(not (assets.ASSETS / "dlm-tiny-block" / "config.json").is_file(),
                    reason="dlm-tiny-block is not bundled in this checkout")
def test_bundled_block_model_decodes_as_the_training_reference():
    """The engine's one-token-per-step greedy decode of the shipped dlm-tiny-block gives token for token what the
    reference block decoder of dlm.train (full recomputation under the block-causal mask) gives, on held-out task
    prompts and a code prompt; and it answers the tasks."""
    import dlm
    from dlm.data.tasks import make_splits
    from dlm.train.block_decode import block_decode

    lm = dlm.load(assets.bundled_model_path("dlm-tiny-block"), device="cpu")
    tests = make_splits(n_train=0, n_val=0, n_test=3)["test"]
    prompts = [ex.prompt for ex in tests] + ["def add(a, b):"]
    ids = lm.encode(prompts)
    ref, _ = block_decode(lm.model, ids, 16, lm.block_size, lm.ids.mask_id, lm.ids.pad_id, stop_ids=[])
    out = lm.generate(prompts, dlm.GenerationConfig(gen_length=16, steps=16, stop_at_eos=False))
    assert out.sequences.tolist() == ref
    texts = lm.generate([ex.prompt for ex in tests], dlm.GenerationConfig(gen_length=16)).texts
    assert sum(t.strip() == ex.answer for t, ex in zip(texts, tests)) >= len(tests) - 1
