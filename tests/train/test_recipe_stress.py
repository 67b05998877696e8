"""The recipe's --stress-families (default off): the new stress families join the task mix, the evaluation and the
model card; the CPU smoke run trains them end to end."""

from __future__ import annotations

import json

import pytest
import torch

from dlm.data import FAMILIES, NEW_FAMILIES
from dlm.errors import ConfigError
from dlm.train.cli import main
from dlm.train.recipe import RecipeConfig


def test_off_by_default_and_validated():
    assert RecipeConfig().stress_families == "" and RecipeConfig().family_list == list(FAMILIES)
    cfg = RecipeConfig(stress_families="pick, count,pick", family_weights="add=3,pick=2")
    assert cfg.family_list == [*FAMILIES, "pick", "count"] and cfg.family_weight["pick"] == 2.0
    with pytest.raises(ConfigError, match="unknown task families \\['juggle'\\]"):
        RecipeConfig(stress_families="juggle")
    with pytest.raises(ConfigError, match="unknown task families \\['copy-long'\\]"):
        RecipeConfig(stress_families="copy-long")  # a variant is its trained family's prompts: not trained in
    with pytest.raises(ConfigError, match="family_weights"):
        RecipeConfig(family_weights="wordrev=-1")


@pytest.mark.slow
def test_smoke_run_trains_the_stress_families(tmp_path):
    out = tmp_path / "run"
    rc = main(["recipe", "--preset", "smoke", "--out", str(out), "--stress-families", ",".join(NEW_FAMILIES),
               "--steps-diffusion", "4", "--steps-ar", "4", "--deadline-minutes", "none"])
    assert rc == 0
    evals = json.loads((out / "eval.json").read_text())
    for r in evals.values():
        assert set(NEW_FAMILIES) <= set(r["tasks"]) and set(FAMILIES) <= set(r["tasks"])
        assert all(r["tasks"][f]["n"] == 6 for f in NEW_FAMILIES)
    card = (out / "dlm-tiny" / "MODEL_CARD.md").read_text()
    assert all(f in card for f in NEW_FAMILIES)
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["config"]["stress_families"] == ",".join(NEW_FAMILIES)


@pytest.mark.slow
def test_smoke_run_reuses_a_tokenizer(tmp_path):
    from dlm.assets import default_model_path

    bundled = default_model_path()
    out = tmp_path / "run"
    rc = main(["recipe", "--preset", "smoke", "--out", str(out), "--only", "dlm-tiny", "--tokenizer-from",
               str(bundled), "--stress-families", "pick", "--steps-diffusion", "2", "--deadline-minutes", "none",
               "--skip-eval"])
    assert rc == 0
    vocab = lambda folder: json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]  # noqa: E731
    assert vocab(out / "dlm-tiny") == vocab(bundled)
    assert f"The byte-level BPE tokenizer of `{bundled}`" in (out / "dlm-tiny" / "MODEL_CARD.md").read_text()


def test_a_folder_without_a_tokenizer_is_named(tmp_path):
    from dlm.train.recipe.prepare import reused_tokenizer

    with pytest.raises(ConfigError, match="tokenizer_from=.*no tokenizer.json there"):
        reused_tokenizer(str(tmp_path))


@pytest.mark.slow
def test_init_from_fine_tunes_the_bundled_model(tmp_path):
    """--init-from starts dlm-tiny from a checkpoint's weights: with a learning rate of 1e-12 the (bf16) export is that model."""
    import dlm
    from dlm.assets import default_model_path

    bundled = default_model_path()
    out = tmp_path / "run"
    rc = main(["recipe", "--out", str(out), "--only", "dlm-tiny", "--tokenizer-from", str(bundled), "--init-from",
               str(bundled), "--steps-diffusion", "1", "--minutes-diffusion", "none", "--lr-diffusion", "1e-12",
               "--deadline-minutes", "none", "--skip-eval", "--device", "cpu", "--task-batch", "2", "--code-batch",
               "1", "--train-per-task", "50", "--val-per-task", "4", "--test-per-task", "4", "--val-batches", "1",
               "--no-compile-diffusion", "--max-files", "24", "--heldout-fraction", "0.25", "--code-eval-n", "4",
               "--long-task-pairs", "10", "--no-progress", "--workers", "1"])
    assert rc == 0
    a = dlm.load(bundled, device="cpu", dtype="float32", tokenizer=False).model.state_dict()
    b = dlm.load(out / "dlm-tiny", device="cpu", dtype="float32", tokenizer=False).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (out / "dlm-tiny" / "MODEL_CARD.md").read_text()
    assert f"started from the weights of `{bundled}`" in card and f"Fine-tuned from the weights of `{bundled}`" in card


def test_init_from_a_different_size_is_named(tmp_path):
    from dlm.assets import default_model_path
    from dlm.train.builders import build_diffusion, load_initial
    from dlm.train.recipe import RecipeConfig

    size = RecipeConfig(d_model=64, n_layers=2, n_heads=2, mlp_hidden=128).size
    with pytest.raises(ConfigError, match="does not match the model the size options build"):
        load_initial(build_diffusion(size, 8192), default_model_path())
    with pytest.raises(ConfigError, match="init_from="):
        load_initial(build_diffusion(size, 8192), tmp_path)
