"""The native LLaDA2.x and SDAR implementations against an independent, straightforward re-implementation.

The reference below is written from the format descriptions alone (dlm/models/llada2.py, sdar.py docstrings; also
used for LLaDA-MoE by tests/models/test_llada_moe.py): it reads the checkpoint's tensors by their published names
with safetensors and computes the forward in float64 with explicit loops: a hand-written softmax attention under a
block-causal mask, rotate-half RoPE on the first rotary dims, and the mixture of experts token by token, expert by
expert (no sorting, no stacking). dlm's float32 logits must match it to 1e-4 on a padded batch of sequences spanning
several blocks.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import dlm
from dlm.models.layers import block_causal_mask
from dlm.models.transformer import DenseAttention
from dlm.testing import write_tiny_checkpoint

from ..conftest import random_prompts
from .test_logits_reference import read_weights, rms


def rope(x, pos, theta, rd):
    """Rotate-half RoPE of the first rd dims of x (B, H, L, D); frequencies of width rd."""
    inv = 1.0 / theta ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd)
    ang = pos.double()[:, None, :, None] * inv
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2, rest = x[..., : rd // 2], x[..., rd // 2: rd], x[..., rd:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


def attention(q, k, v, allowed):
    """q (B, H, L, D), k/v (B, Hkv, L, D), allowed (B, L, L) bool."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~allowed[:, None], float("-inf")), dim=-1) @ v


def swiglu(h, W, prefix):
    gate = h @ W[prefix + "gate_proj.weight"].T
    return (gate * torch.sigmoid(gate) * (h @ W[prefix + "up_proj.weight"].T)) @ W[prefix + "down_proj.weight"].T


def chosen_experts(logits, bias, cfg):
    """Expert ids and weights of one token (E,) under the format's router."""
    k = cfg["num_experts_per_tok"]
    if cfg["model_type"] != "llada2_moe":  # Qwen3-MoE / OLMoE: softmax, top-k, renormalised if asked
        p = torch.softmax(logits, -1)
        ids = sorted(range(len(p)), key=lambda e: -p[e])[:k]
        renorm = cfg.get("norm_topk_prob") and "LLaDAMoEModelLM" not in cfg["architectures"]  # (LLaDA-MoE: never)
        w = [p[e] / sum(p[j] for j in ids) for e in ids] if renorm else [p[e] for e in ids]
        return ids, w
    s = torch.sigmoid(logits)
    c = s + bias
    size = len(c) // cfg["n_group"]
    groups = [sorted(c[g * size:(g + 1) * size].tolist(), reverse=True) for g in range(cfg["n_group"])]
    kept = sorted(range(cfg["n_group"]), key=lambda g: -(groups[g][0] + groups[g][1]))[: cfg["topk_group"]]
    allowed = [e for e in range(len(c)) if e // size in kept]
    ids = sorted(allowed, key=lambda e: -c[e])[:k]
    total = sum(s[e] for e in ids)
    return ids, [s[e] / total * cfg["routed_scaling_factor"] for e in ids]


def moe(h, W, p, cfg):
    """h (B, L, d): routed experts token by token, plus the shared expert."""
    out = torch.zeros_like(h)
    bias = W.get(p + "gate.expert_bias")
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            ids, w = chosen_experts(W[p + "gate.weight"] @ h[b, t], bias, cfg)
            for e, we in zip(ids, w):
                out[b, t] += we * swiglu(h[b, t], W, f"{p}experts.{e}.")
    if cfg.get("num_shared_experts"):
        out = out + swiglu(h, W, p + "shared_experts.")
    return out


def reference(W, cfg, ids, pos, allowed):
    """Logits (B, L, V) of either format. ids/pos (B, L), allowed (B, L, L)."""
    llada2 = cfg["model_type"] == "llada2_moe"
    H, Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", cfg["hidden_size"] // H)  # (LLaDA-MoE: hidden / heads)
    rd = int(hd * cfg["partial_rotary_factor"]) if llada2 else hd
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    x = W["model.word_embeddings.weight" if llada2 else "model.embed_tokens.weight"][ids]
    B, L, _ = x.shape
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        if llada2:
            qkv = (h @ W[p + "attention.query_key_value.weight"].T).view(B, L, H + 2 * Hkv, hd)
            q, k, v = qkv[:, :, :H], qkv[:, :, H:H + Hkv], qkv[:, :, H + Hkv:]
            qn, kn, o = W[p + "attention.query_layernorm.weight"], W[p + "attention.key_layernorm.weight"], \
                W[p + "attention.dense.weight"]
        else:
            q, k, v = (h @ W[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
            q, k, v = q.view(B, L, H, hd), k.view(B, L, Hkv, hd), v.view(B, L, Hkv, hd)
            qn, kn, o = W[p + "self_attn.q_norm.weight"], W[p + "self_attn.k_norm.weight"], W[p + "self_attn.o_proj.weight"]
        q = rope(rms(q, qn, eps).transpose(1, 2), pos, theta, rd)
        k = rope(rms(k, kn, eps).transpose(1, 2), pos, theta, rd)
        a = attention(q, k, v.transpose(1, 2), allowed)
        x = x + a.transpose(1, 2).reshape(B, L, H * hd) @ o.T
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        x = x + (moe(h, W, p + "mlp.", cfg) if p + "mlp.gate.weight" in W else swiglu(h, W, p + "mlp."))
    x = rms(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W.get("model.embed_tokens.weight"))
    return x @ head.T


def canvas(lm, n_rows: int, seed: int, block: int):
    """A left-padded batch of prompts followed by masks up to several blocks; ids, position ids, key mask (B, L)."""
    prompts = random_prompts(lm, n_rows, seed=seed, min_len=2, max_len=9)
    rows = [p + [lm.ids.mask_id] * (3 * block - len(p) % block + r) for r, p in enumerate(prompts)]
    L = max(len(r) for r in rows)
    ids = torch.full((n_rows, L), lm.ids.pad_id)
    valid = torch.zeros((n_rows, L), dtype=torch.bool)
    for r, row in enumerate(rows):
        ids[r, L - len(row):] = torch.tensor(row)
        valid[r, L - len(row):] = True
    pos = (valid.long().cumsum(1) - 1).clamp(min=0)
    return ids, pos, valid


def dlm_logits(lm, ids, pos, valid, block):
    allowed = block_causal_mask(pos, pos, valid, block)
    return lm.model(ids, pos, attention=DenseAttention(None, allowed)), allowed


@pytest.mark.parametrize("model_type", ["llada2_moe", "sdar", "sdar_moe"])
@pytest.mark.parametrize("seed", [0, 1])
def test_logits_match_independent_reference(tmp_path, model_type, seed):
    folder = write_tiny_checkpoint(tmp_path / model_type, model_type, seed=seed)
    lm = dlm.load(folder, device="cpu", dtype="float32")
    cfg = json.loads((folder / "config.json").read_text())
    block = 4
    ids, pos, valid = canvas(lm, 3, seed, block)
    ours, allowed = dlm_logits(lm, ids, pos, valid, block)
    ref = reference(read_weights(folder), cfg, ids, pos, allowed)
    diff = (ours.double() - ref).abs()[valid].max().item()
    assert diff < 1e-4, f"max abs logit difference {diff}"


@pytest.mark.parametrize("model_type", ["llada2_moe", "sdar_moe"])
def test_padding_and_batch_invariance(tmp_path, model_type):
    """A row's logits do not depend on its left padding or on the rows beside it."""
    lm = dlm.load(write_tiny_checkpoint(tmp_path / model_type, model_type, seed=3), device="cpu")
    ids, pos, valid = canvas(lm, 3, seed=4, block=4)
    batch, _ = dlm_logits(lm, ids, pos, valid, 4)
    for r in range(3):
        n = int(valid[r].sum())
        alone, _ = dlm_logits(lm, ids[r:r + 1, -n:], pos[r:r + 1, -n:], valid[r:r + 1, -n:], 4)
        torch.testing.assert_close(batch[r, -n:], alone[0], rtol=0, atol=1e-5)


def test_block_causal_mask_follows_position_ids():
    pos = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]])
    valid = torch.tensor([[False, False, True, True, True, True, True], [True] * 7])
    m = block_causal_mask(pos, pos, valid, 2)
    assert m[0, 2].tolist() == [False, False, True, True, False, False, False]  # block 0: itself and position 1
    assert m[0, 6].tolist() == [False, False, True, True, True, True, True]
    assert m[1, 1].tolist() == [True, True, False, False, False, False, False]
    assert m[1, 2].tolist() == [True, True, True, True, False, False, False]


def test_block_sizes_and_special_ids(tmp_path):
    llada2 = dlm.load(write_tiny_checkpoint(tmp_path / "a", "llada2_moe"), device="cpu")
    sdar = dlm.load(write_tiny_checkpoint(tmp_path / "b", "sdar"), device="cpu")
    assert llada2.arch_cls.block_size(llada2.hf_config) == 32 and sdar.arch_cls.block_size(sdar.hf_config) == 4
    tok = llada2.tokenizer
    assert llada2.ids.mask_id == tok.convert_tokens_to_ids("<|mask|>")
    assert llada2.ids.eos_id == tok.convert_tokens_to_ids("<|endoftext|>") == llada2.ids.pad_id
    assert tok.convert_tokens_to_ids("<|role_end|>") in llada2.ids.stop_ids
    tok = sdar.tokenizer
    assert sdar.ids.mask_id == tok.convert_tokens_to_ids("<|MASK|>")
    assert set(sdar.ids.stop_ids) == {tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
    assert sdar.model.cfg.tie_embeddings and not hasattr(sdar.model, "head")
