"""LLaDA-MoE (dlm.models.llada_moe): its tiny checkpoints in the exact format load as the ``llada_moe`` format
although their config.json says ``model_type: "llada"``; dlm's logits match the independent float64
re-implementation of tests/models/test_block_families.py under bidirectional attention (the first layer dense, the
others with experts routed without renormalisation, whatever config.json's ``norm_topk_prob`` says); the
unsupported fields are refused by name; and its decodes do not depend on the batch beside them."""

from __future__ import annotations

import json

import pytest
import torch

import dlm
from dlm.errors import CheckpointError
from dlm.testing import write_tiny_checkpoint

from ..conftest import random_prompts
from .test_block_families import canvas, dlm_logits, reference
from .test_logits_reference import read_weights

WHOLE = 10**6  # a "block" wider than any canvas: the block-causal mask becomes the key-padding mask


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_independent_reference(tmp_path, seed):
    folder = write_tiny_checkpoint(tmp_path / "m", "llada_moe", seed=seed)
    lm = dlm.load(folder, device="cpu", dtype="float32")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llada" and cfg["architectures"] == ["LLaDAMoEModelLM"]
    assert lm.arch_cls.model_type == "llada_moe" and lm.model.cfg.moe_layers == (1, 2)
    ids, pos, valid = canvas(lm, 3, seed, block=4)
    ours, allowed = dlm_logits(lm, ids, pos, valid, WHOLE)
    ref = reference(read_weights(folder), cfg, ids, pos, allowed)
    diff = (ours.double() - ref).abs()[valid].max().item()
    assert diff < 1e-4, f"max abs logit difference {diff}"
    # and the model's own forward (its key-padding mask, no explicit attention) gives the same logits
    torch.testing.assert_close(lm.model(ids, pos, key_mask=valid)[valid], ours[valid], rtol=0, atol=1e-5)


def test_routing_is_never_renormalised(tmp_path):
    """The official block sets norm_topk_prob = False whatever config.json says; so does dlm (and the reference,
    which renormalises for the Qwen3-MoE layout when asked: a renormalised dlm would miss it)."""
    plain = dlm.load(write_tiny_checkpoint(tmp_path / "a", "llada_moe", seed=2), device="cpu")
    folder = edit_config(write_tiny_checkpoint(tmp_path / "b", "llada_moe", seed=2), norm_topk_prob=True)
    told = dlm.load(folder, device="cpu", dtype="float32")
    ids, pos, valid = canvas(plain, 2, 5, block=4)
    a, _ = dlm_logits(plain, ids, pos, valid, WHOLE)
    b, allowed = dlm_logits(told, ids, pos, valid, WHOLE)
    assert torch.equal(a, b) and not told.model.cfg.norm_topk_prob
    cfg, weights = json.loads((folder / "config.json").read_text()), read_weights(folder)
    ref = reference(weights, cfg, ids, pos, allowed)
    assert (b.double() - ref).abs()[valid].max().item() < 1e-4
    renormalised = reference(weights, dict(cfg, architectures=["SDARMoeForCausalLM"]), ids, pos, allowed)
    assert (b.double() - renormalised).abs()[valid].max().item() > 1e-3  # the check can tell the two apart


def test_the_format_is_found_by_its_architecture(tmp_path):
    folder = write_tiny_checkpoint(tmp_path / "m", "llada_moe")
    assert dlm.load(edit_config(folder, model_type="lladamoe"), device="cpu").arch_cls.model_type == "llada_moe"
    edit_config(folder, model_type="llada", architectures=["LLaDAMoEModel"])
    assert dlm.load(folder, device="cpu").arch_cls.model_type == "llada_moe"
    # a dense LLaDA config.json (no LLaDA-MoE architecture) stays LLaDA-8B's format
    assert dlm.load(write_tiny_checkpoint(tmp_path / "d", "llada"), device="cpu").arch_cls.model_type == "llada"


@pytest.mark.parametrize("changes, match", [
    ({"shared_expert_intermediate_size": 512}, r"'shared_expert_intermediate_size'=512 .* not supported"),
    ({"qk_layernorm": False}, r"'qk_layernorm'=False .* not supported"),
    ({"partial_rotary_factor": 0.5}, r"'partial_rotary_factor'=0.5 .* not supported"),
    ({"clip_qkv": 8.0}, r"'clip_qkv'=8.0 .* not supported"),
    ({"moe_layer_freq": [1, 1]}, r"'moe_layer_freq' must be a list of 3 entries 0 or 1"),
    ({"num_experts_per_tok": 99}, r"'num_experts_per_tok' \(99\) exceeds 'num_experts'"),
    ({"hidden_size": 66}, r"hidden_size \(66\) is not a multiple of num_attention_heads"),
    ({"expert_intermediate_size": 0}, r"'expert_intermediate_size' must be >= 1"),
    ({"moe_router_enable_expert_bias": True}, r"'moe_router_enable_expert_bias'=True .* not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, r"'rope_scaling'=.* not supported"),
    ({"attention_bias": True}, r"'attention_bias'=True .* not supported"),
    ({"moe_layer_freq": [0, 1, 1], "dense_intermediate_size": None}, r"has no 'dense_intermediate_size'"),
])
def test_unsupported_fields_are_refused_by_name(tmp_path, changes, match):
    folder = edit_config(write_tiny_checkpoint(tmp_path / "m", "llada_moe"), **changes)
    with pytest.raises(CheckpointError, match=match):
        dlm.load(folder, device="cpu")


def test_special_ids_and_attention(tmp_path):
    lm = dlm.load(write_tiny_checkpoint(tmp_path / "m", "llada_moe"), device="cpu")
    tok = lm.tokenizer
    assert lm.ids.mask_id == tok.convert_tokens_to_ids("<|mask|>")
    assert lm.ids.eos_id == lm.ids.pad_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.convert_tokens_to_ids("<|role_end|>") in lm.ids.stop_ids
    assert lm.arch_cls.block_size(lm.hf_config) is None and lm.logits_shift == 0  # bidirectional, unshifted
    assert not lm.model.cfg.tie_embeddings and hasattr(lm.model, "head")


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_a_batch_decodes_as_each_request_alone(tmp_path, cache):
    lm = dlm.load(write_tiny_checkpoint(tmp_path / "m", "llada_moe", seed=1), device="cpu")
    prompts = random_prompts(lm, 4, seed=7, min_len=2, max_len=12)
    # (a gen_length and block_length no block-diffusion model would take: none is forced on LLaDA-MoE)
    cfg = dlm.GenerationConfig(gen_length=15, block_length=5, steps=6, cache=cache)
    batch = lm.generate(prompts, cfg)
    for i, p in enumerate(prompts):
        alone = lm.generate([p], cfg)
        assert alone.texts[0] == batch.texts[i]
        assert torch.equal(alone.sequences[0][-15:], batch.sequences[i][-15:])


def test_two_formats_claiming_one_checkpoint_is_an_error(tmp_path, monkeypatch):
    from dlm.models.llada import LLaDA

    monkeypatch.setattr(LLaDA, "claims", classmethod(lambda cls, cfg: True))
    with pytest.raises(CheckpointError, match="claimed by several registered formats"):
        dlm.load(write_tiny_checkpoint(tmp_path / "m", "llada_moe"), device="cpu")
