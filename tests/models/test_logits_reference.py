"""The native LLaDA and Dream implementations against an independent, straightforward re-implementation.

The reference below is written from REFERENCES.md alone: it reads the checkpoint's tensors by their format's
names with safetensors, and computes the forward in float64 with explicit loops over layers, a hand-written
softmax attention with a key-padding bias and rotate-half RoPE on padding-aware positions. dlm's float32 logits
must match it to 1e-4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import dlm
from dlm.testing import write_tiny_checkpoint

from ..conftest import random_prompts


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index.values())):
        out.update(load_file(str(folder / shard)))
    return {k: v.double() for k, v in out.items()}


def rms(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def rope(x, pos, theta):
    # x: (B, H, L, D); rotate-half convention: pairs are (i, i + D/2)
    D = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = pos.double()[:, None, :, None] * inv  # (B, 1, L, D/2)
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2 = x[..., : D // 2], x[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def attention(q, k, v, key_mask):
    # q: (B, H, L, D), k/v: (B, Hkv, L, D); full bidirectional attention over valid keys
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)
    v = v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def reference_llada(W, cfg, ids, key_mask):
    d, H = cfg["d_model"], cfg["n_heads"]
    Hkv = cfg.get("n_kv_heads") or H
    hd = d // H
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)
    x = W["model.transformer.wte.weight"][ids]
    B, L, _ = x.shape
    for i in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{i}."
        h = rms(x, W[p + "attn_norm.weight"], eps)
        q = (h @ W[p + "q_proj.weight"].T).view(B, L, H, hd).transpose(1, 2)
        k = (h @ W[p + "k_proj.weight"].T).view(B, L, Hkv, hd).transpose(1, 2)
        v = (h @ W[p + "v_proj.weight"].T).view(B, L, Hkv, hd).transpose(1, 2)
        a = attention(rope(q, pos, theta), rope(k, pos, theta), v, key_mask)
        x = x + a.transpose(1, 2).reshape(B, L, d) @ W[p + "attn_out.weight"].T
        h = rms(x, W[p + "ff_norm.weight"], eps)
        gate = h @ W[p + "ff_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ W[p + "up_proj.weight"].T)) @ W[p + "ff_out.weight"].T
    x = rms(x, W["model.transformer.ln_f.weight"], eps)
    logits = x @ W["model.transformer.ff_out.weight"].T
    logits[..., cfg["vocab_size"] :] = float("-inf")  # rows of the embedding beyond the vocabulary
    return logits


def reference_dream(W, cfg, ids, key_mask):
    d, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // H
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    pos = (key_mask.long().cumsum(1) - 1).clamp(min=0)
    x = W["model.embed_tokens.weight"][ids]
    B, L, _ = x.shape
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        q = (h @ W[p + "self_attn.q_proj.weight"].T + W[p + "self_attn.q_proj.bias"]).view(B, L, H, hd).transpose(1, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T + W[p + "self_attn.k_proj.bias"]).view(B, L, Hkv, hd).transpose(1, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T + W[p + "self_attn.v_proj.bias"]).view(B, L, Hkv, hd).transpose(1, 2)
        a = attention(rope(q, pos, theta), rope(k, pos, theta), v, key_mask)
        x = x + a.transpose(1, 2).reshape(B, L, d) @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        gate = h @ W[p + "mlp.gate_proj.weight"].T
        x = x + (gate * torch.sigmoid(gate) * (h @ W[p + "mlp.up_proj.weight"].T)) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"], eps)
    return x @ W["lm_head.weight"].T


REFERENCES = {"llada": reference_llada, "Dream": reference_dream}


def padded_batch(prompts, pad_id):
    L = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), L), pad_id)
    mask = torch.zeros((len(prompts), L), dtype=torch.bool)
    for r, p in enumerate(prompts):
        ids[r, L - len(p) :] = torch.tensor(p)
        mask[r, L - len(p) :] = True
    return ids, mask


@pytest.mark.parametrize("model_type", ["llada", "Dream"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_match_independent_reference(tmp_path, model_type, seed):
    kwargs = {"layers": 3, "hidden": 64, "heads": 4}
    if model_type == "Dream":
        kwargs["kv_heads"] = 2  # GQA
    folder = write_tiny_checkpoint(tmp_path / model_type, model_type, seed=seed, **kwargs)
    lm = dlm.load(folder, device="cpu", dtype="float32")
    cfg = json.loads((folder / "config.json").read_text())
    W = read_weights(folder)
    prompts = random_prompts(lm, 4, seed=seed, min_len=3, max_len=20)
    ids, mask = padded_batch(prompts, lm.ids.pad_id)
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    ours = lm.model(ids, pos, key_mask=mask).double()
    ref = REFERENCES[model_type](W, cfg, ids, mask)
    real = mask.unsqueeze(-1).expand_as(ref) & torch.isfinite(ref)
    diff = (ours - ref).abs()[real].max().item()
    assert diff < 1e-4, f"max abs logit difference {diff}"
    # ids beyond the vocabulary (embedding padding) are never predicted
    assert torch.isinf(ours[..., cfg.get("vocab_size", 10**9) :]).all()


def test_subset_forward_matches_full(llada, dream):
    """Logits computed for a subset of positions equal those of the full forward."""
    for lm in (llada, dream):
        prompts = random_prompts(lm, 3, seed=5, min_len=10, max_len=16)
        ids, mask = padded_batch(prompts, lm.ids.pad_id)
        pos = (mask.long().cumsum(1) - 1).clamp(min=0)
        full = lm.model(ids, pos, key_mask=mask)
        sl = lm.model(ids, pos, key_mask=mask, logits_index=slice(2, 9))
        idx = torch.tensor([[0, 5, 7], [1, 2, 3], [9, 9, 4]])
        gathered = lm.model(ids, pos, key_mask=mask, logits_index=idx)
        torch.testing.assert_close(sl, full[:, 2:9], rtol=0, atol=1e-5)
        torch.testing.assert_close(gathered, full.gather(1, idx.unsqueeze(-1).expand(-1, -1, full.shape[-1])),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_close_to_fp32(llada_path, dtype):
    ref = dlm.load(llada_path, device="cpu", dtype="float32")
    low = dlm.load(llada_path, device="cpu", dtype=dtype)
    assert low.dtype == getattr(torch, dtype)
    ids = torch.tensor([random_prompts(ref, 1, seed=3, min_len=12, max_len=12)[0]])
    a = ref.model(ids)
    b = low.model(ids).float()
    finite = torch.isfinite(a)
    rel = ((a - b)[finite].norm() / a[finite].norm()).item()
    assert rel < 5e-2, rel
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
