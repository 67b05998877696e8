"""Unset sampling fields: explicit config > the checkpoint's generation_config.json > the format's official
defaults (Dream: top_k=50, top_p=1.0), resolved once per request; stop tokens checked against the model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.api.defaults import effective_config
from dlm.errors import CheckpointError, ConfigError

from ..conftest import random_prompts
from ..test_official_samplers import dream_official


def test_format_defaults(llada, dream):
    c = GenerationConfig()
    assert c.top_k is None and c.top_p is None  # unset
    d = effective_config(dream, c)
    assert (d.top_k, d.top_p) == (50, 1.0)  # Dream's diffusion_generate defaults
    lc = effective_config(llada, c)
    assert (lc.top_k, lc.top_p) == (None, None)  # LLaDA's generate.py has no filters


def test_explicit_values_win_and_zero_switches_top_k_off(dream):
    assert effective_config(dream, GenerationConfig(top_k=7, top_p=0.9)).top_k == 7
    off = effective_config(dream, GenerationConfig(top_k=0))
    assert off.top_k is None and off.top_p == 1.0  # None in a resolved config: no filter


def test_generation_config_json_overrides_the_format(dream_path, tmp_path):
    folder = shutil.copytree(dream_path, tmp_path / "d")
    (folder / "generation_config.json").write_text(json.dumps({"top_k": 20, "top_p": 0.95, "eos_token_id": 1}))
    lm = dlm.load(folder, device="cpu")
    c = effective_config(lm, GenerationConfig())
    assert (c.top_k, c.top_p) == (20, 0.95)
    assert effective_config(lm, GenerationConfig(top_k=3)).top_k == 3
    cfg = json.loads((folder / "config.json").read_text())  # what from_model_config reads: config.json's own
    (folder / "generation_config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**cfg, "top_k": 10}))
    assert effective_config(dlm.load(folder, device="cpu"), GenerationConfig()).top_k == 10


@pytest.mark.parametrize("content, match", [
    ({"top_k": "50"}, r"generation_config.json field 'top_k' must be an integer"),
    ({"top_k": -1}, r"'top_k' must be >= 0"),
    ({"top_p": 1.5}, r"'top_p' must be a number in \(0, 1\]"),
    ([1, 2], r"must hold a JSON object"),
])
def test_broken_generation_config_fails_at_load(dream_path, tmp_path, content, match):
    folder = shutil.copytree(dream_path, tmp_path / "d")
    (folder / "generation_config.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=match):
        dlm.load(folder, device="cpu")


def test_dream_defaults_match_the_official_sampler(dream):
    """With nothing set, dlm and the official sampler both renormalise over the top 50 logits; with both filters
    off explicitly they agree too (on tiny random checkpoints the two settings give different answers)."""
    prompts = random_prompts(dream, 5, seed=3, min_len=3, max_len=9)
    for alg in ("maskgit_plus", "topk_margin", "entropy"):
        cfg = GenerationConfig(gen_length=16, block_length=16, steps=8, scheduler=alg, stop_at_eos=False)
        ref = dream_official(dream, prompts, steps=8, gen_length=16, alg=alg)
        assert torch.equal(dream.generate(prompts, cfg).sequences, ref), alg
        ref_off = dream_official(dream, prompts, steps=8, gen_length=16, alg=alg, top_k=None, top_p=None)
        assert torch.equal(dream.generate(prompts, cfg, top_k=0, top_p=1.0).sequences, ref_off), alg


def test_stop_tokens_outside_the_vocabulary(llada):
    vocab = llada.arch.valid_vocab or llada.arch.vocab_size
    with pytest.raises(ConfigError, match=rf"stop_token_ids \[{vocab}\] are outside the model's vocabulary"):
        llada.generate([[1, 2]], gen_length=8, stop_token_ids=[llada.ids.eos_id, vocab])
