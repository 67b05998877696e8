"""The whole recipe, end to end, in the CPU smoke configuration; and its command line."""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch

import dlm
from dlm.data import FAMILIES
from dlm.train.cli import main
from dlm.train.recipe import PRESETS, RecipeConfig, preset


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe")
    pack = out / "pack"
    rc = main(["recipe", "--preset", "smoke", "--out", str(out / "run"), "--pack-dir", str(pack),
               "--steps-diffusion", "12", "--steps-ar", "12", "--steps-block", "12", "--deadline-minutes", "none",
               "--keep-state"])
    assert rc == 0
    return out / "run", pack


def test_outputs(run):
    out, _ = run
    for name in ("recipe.json", "corpus_manifest.json", "eval.json", "eval.md", "summary.json",
                 "tokenizer/tokenizer.json", "logs/recipe.log", "logs/dlm-tiny_metrics.jsonl",
                 "logs/dlm-tiny-ar_loss.png", "logs/dlm-tiny_state/optimizer.safetensors"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "corpus_manifest.json").read_text())
    assert manifest["counts"]["train_files"] > 0 and manifest["counts"]["heldout_files"] > 0
    assert all(len(f["sha256"]) == 64 and f["split"] in ("train", "heldout") for f in manifest["files"])
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["config"]["steps_diffusion"] == 12 and recipe["config"]["deadline_minutes"] is None
    assert "--steps-diffusion 12" in recipe["command"]


def test_models_load_and_cards(run):
    from transformers import AutoModelForCausalLM

    out, _ = run
    lm = dlm.load(out / "dlm-tiny", device="cpu")
    assert lm.model_type == "llada" and lm.tokenizer is not None
    res = lm.generate(["copy: a b ="], gen_length=16, steps=16)
    assert len(res.texts) == 1
    ar = AutoModelForCausalLM.from_pretrained(str(out / "dlm-tiny-ar"), dtype=torch.float32)
    assert ar.config.model_type == "llama"
    block = dlm.load(out / "dlm-tiny-block", device="cpu")
    assert (block.model_type, block.block_size, block.ids.mask_id) == ("sdar", 4, lm.ids.mask_id)
    assert "blocks of 4" in (out / "dlm-tiny-block" / "MODEL_CARD.md").read_text()
    for kind in ("dlm-tiny", "dlm-tiny-ar", "dlm-tiny-block"):
        card = (out / kind / "MODEL_CARD.md").read_text()
        for section in ("## Model", "## Tokenizer", "## Data", "## Training", "## Evaluation", "## Reproduce",
                        "loss_curve.png", "12 steps", "| copy (exact match) |"):
            assert section in card, (kind, section)
        assert (out / kind / "loss_curve.png").is_file() and (out / kind / "tokenizer.json").is_file()


def test_eval_results(run):
    out, _ = run
    evals = json.loads((out / "eval.json").read_text())
    assert set(evals) == {"dlm-tiny", "dlm-tiny-ar", "dlm-tiny-block"}
    for r in evals.values():
        assert set(r["tasks"]) == set(FAMILIES)
        assert all(0 <= v["accuracy"] <= 1 and v["n"] == 6 for v in r["tasks"].values())
        assert r["code"]["n"] >= 1 and 0 <= r["code"]["parse_rate"] <= 1
    assert "| code completion (body parses) |" in (out / "eval.md").read_text()


def test_packed_parts_rebuild_the_folders(run):
    out, pack = run
    for name in ("dlm-tiny", "dlm-tiny-ar", "dlm-tiny-block", "report"):
        parts = sorted(pack.glob(f"{name}.tar.part*"))
        assert parts and all(p.stat().st_size <= 15 * 2**20 for p in parts)
        with tarfile.open(fileobj=io.BytesIO(b"".join(p.read_bytes() for p in parts))) as tar:
            names = tar.getnames()
        assert f"{name}/" + ("config.json" if name != "report" else "eval.json") in names
    assert (pack / "eval.md").is_file() and (pack / "recipe.log").is_file()


def test_config_validation():
    assert preset("smoke").d_model == 64 and preset("gpu") == RecipeConfig()
    assert set(PRESETS) == {"gpu", "smoke"}
    with pytest.raises(ValueError, match="unknown task families \\['mul'\\]"):
        RecipeConfig(families="copy,mul")
    with pytest.raises(ValueError, match="family_weights"):
        RecipeConfig(family_weights="add=-1")
    with pytest.raises(ValueError, match="minutes-diffusion or --steps-diffusion"):
        RecipeConfig(minutes_diffusion=None)
    assert RecipeConfig(family_weights="add=2").family_weight["add"] == 2.0
    assert RecipeConfig(code_body_tokens=63).eval_code_gen_length == 64


def test_only_selects_phases():
    from dlm.errors import ConfigError
    from dlm.train.recipe.run import selected_phases

    assert [p.name for p in selected_phases(RecipeConfig())] == ["dlm-tiny", "dlm-tiny-ar", "dlm-tiny-block"]
    picked = selected_phases(RecipeConfig(only="dlm-tiny-block, dlm-tiny"))
    assert [p.name for p in picked] == ["dlm-tiny", "dlm-tiny-block"]  # the recipe's order
    for bad in ("dlm-tiny-blok", ","):
        with pytest.raises(ConfigError, match="known: dlm-tiny, dlm-tiny-ar, dlm-tiny-block"):
            selected_phases(RecipeConfig(only=bad))


@pytest.mark.slow
def test_only_block_writes_what_the_lead_copies(tmp_path):
    """``--only dlm-tiny-block`` trains, evaluates and packs that model alone: few files, each < 15 MiB."""
    pack = tmp_path / "pack"
    rc = main(["recipe", "--preset", "smoke", "--only", "dlm-tiny-block", "--out", str(tmp_path / "run"),
               "--pack-dir", str(pack), "--steps-block", "4", "--code-eval-n", "2", "--test-per-task", "2"])
    assert rc == 0
    assert sorted(p.name for p in pack.iterdir()) == ["dlm-tiny-block.tar.part00", "eval.md", "recipe.log",
                                                      "report.tar.part00"]
    assert set(json.loads((tmp_path / "run" / "eval.json").read_text())) == {"dlm-tiny-block"}
    assert not (tmp_path / "run" / "dlm-tiny").exists()
