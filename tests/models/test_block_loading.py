"""Bad checkpoints of the block-diffusion formats fail at load time with a CheckpointError naming the file and the
field (or the weight and its shard), never later inside torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import dlm
from dlm.errors import CheckpointError
from dlm.testing import write_tiny_checkpoint


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("block-good")
    return {t: write_tiny_checkpoint(root / t, t, seed=7) for t in ("llada2_moe", "sdar", "sdar_moe")}


def edited(good: Path, tmp_path: Path, **changes) -> Path:
    """A copy of the checkpoint with config.json fields changed (None deletes the field)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for f in good.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def load(folder: Path):
    return dlm.load(folder, device="cpu")


@pytest.mark.parametrize("changes, message", [
    ({"n_group": 3}, r"config.json: 'num_experts' \(8\) is not a multiple of 'n_group' \(3\)"),
    ({"topk_group": 5}, r"config.json: 'topk_group' \(5\) exceeds 'n_group' \(4\)"),
    ({"n_group": 8, "topk_group": 2}, r"'n_group' \(8\) leaves fewer than 2 experts per group"),
    ({"num_experts_per_tok": 9}, r"'num_experts_per_tok' \(9\) exceeds 'num_experts' \(8\)"),
    ({"num_experts_per_tok": 5}, r"'num_experts_per_tok' \(5\) exceeds the 4 experts of 'topk_group' \(2\) groups"),
    ({"score_function": "softmax"}, r"config.json field 'score_function'='softmax' of a 'llada2_moe' checkpoint"),
    ({"norm_topk_prob": False}, r"config.json field 'norm_topk_prob'=False"),
    ({"use_qk_norm": False}, r"config.json field 'use_qk_norm'=False"),
    ({"partial_rotary_factor": 0.1}, r"config.json field 'partial_rotary_factor' gives 1 rotary dims"),
    ({"first_k_dense_replace": 9}, r"'first_k_dense_replace' \(9\) exceeds 'num_hidden_layers' \(3\)"),
    ({"num_experts": "8"}, r"config.json field 'num_experts' must be an integer"),
    ({"moe_intermediate_size": None}, r"config.json has no 'moe_intermediate_size' field"),
    ({"num_attention_heads": 3}, r"config.json describes a model that cannot be built"),
])
def test_llada2_config_errors(good, tmp_path, changes, message):
    with pytest.raises(CheckpointError, match=message):
        load(edited(good["llada2_moe"], tmp_path, **changes))


def test_more_experts_in_config_than_in_the_weights(good, tmp_path):
    with pytest.raises(CheckpointError, match=r"missing 24 weight\(s\): model.layers.1.mlp.experts.10.down_proj.weight"):
        load(edited(good["llada2_moe"], tmp_path, num_experts=12, n_group=4, topk_group=2))


def test_fewer_experts_in_config_than_in_the_weights(good, tmp_path):
    with pytest.raises(CheckpointError, match=r"unexpected 24 weight\(s\): model.layers.1.mlp.experts.4.down_proj"):
        load(edited(good["llada2_moe"], tmp_path, num_experts=4, n_group=2, topk_group=1))


def test_wrong_expert_width_names_the_weight_and_shard(good, tmp_path):
    with pytest.raises(CheckpointError, match=r"weight 'model.layers.\d.mlp.experts.0.down_proj.weight' in "
                                              r"model-\d+-of-\d+.safetensors has shape \[64, 32\] but config.json "
                                              r"implies \[64, 16\]"):
        load(edited(good["llada2_moe"], tmp_path, moe_intermediate_size=16))


def test_missing_expert_tensor(good, tmp_path):
    folder = edited(good["llada2_moe"], tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    victim = "model.layers.2.mlp.experts.5.up_proj.weight"
    shard = folder / index["weight_map"].pop(victim)
    tensors = load_file(str(shard))
    del tensors[victim]
    save_file(tensors, str(shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"missing 1 weight\(s\): {victim}"):
        load(folder)


def test_missing_expert_bias_and_disabled_bias(good, tmp_path):
    """``moe_router_enable_expert_bias: false`` expects no ``mlp.gate.expert_bias`` tensors."""
    with pytest.raises(CheckpointError, match=r"unexpected 2 weight\(s\): model.layers.1.mlp.gate.expert_bias"):
        load(edited(good["llada2_moe"], tmp_path, moe_router_enable_expert_bias=False))


@pytest.mark.parametrize("model_type, changes, message", [
    ("sdar", {"use_sliding_window": True}, r"config.json field 'use_sliding_window'=True of a 'sdar' checkpoint"),
    ("sdar", {"rope_scaling": {"type": "yarn", "factor": 4.0}}, r"config.json field 'rope_scaling'="),
    ("sdar", {"hidden_act": "gelu"}, r"config.json field 'hidden_act'='gelu'"),
    ("sdar", {"attention_bias": True}, r"missing 12 weight\(s\): model.layers.0.self_attn.k_proj.bias"),
    ("sdar", {"head_dim": 16}, (r"weight 'model.layers.0.self_attn.k_norm.weight' in model-\d+-of-\d+.safetensors "
                                r"has shape \[24\] but config.json implies \[16\]")),
    ("sdar", {"tie_word_embeddings": False}, r"missing 1 weight\(s\): lm_head.weight"),
    ("sdar_moe", {"mlp_only_layers": "0"}, r"config.json field 'mlp_only_layers' must be a list of layer numbers"),
    ("sdar_moe", {"mlp_only_layers": []}, (r"missing 25 weight\(s\): model.layers.0.mlp.experts.0.down_proj.weight.*; "
                                           r"unexpected 3 weight\(s\): model.layers.0.mlp.down_proj.weight")),
    ("sdar_moe", {"num_experts": 6}, r"unexpected 12 weight\(s\): model.layers.1.mlp.experts.6.down_proj.weight"),
])
def test_sdar_config_errors(good, tmp_path, model_type, changes, message):
    with pytest.raises(CheckpointError, match=message):
        load(edited(good[model_type], tmp_path, **changes))


def test_saved_checkpoint_round_trips(good, tmp_path):
    """dlm writes what it reads: one tensor per expert, the same logits after a save/load cycle."""
    from dlm.models.loading import save_checkpoint

    lm = load(good["llada2_moe"])
    save_checkpoint(lm.model, "llada2_moe", lm.ids, tmp_path / "again", tokenizer=lm.tokenizer)
    again = load(tmp_path / "again")
    ids = torch.randint(0, 256, (1, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(lm.model(ids), again.model(ids))
