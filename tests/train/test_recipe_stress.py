"""The recipe's --stress-families (default off): the new stress families join the task mix, the evaluation and the
model card; the CPU smoke run trains them end to end."""

from __future__ import annotations

import json

import pytest

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
