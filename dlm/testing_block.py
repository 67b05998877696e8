"""Tiny random checkpoints in the exact LLaDA2.x (``llada2_moe``), SDAR (``sdar``, ``sdar_moe``) and LLaDA-MoE
(``llada_moe``: bidirectional, not block diffusion, but of LLaDA2's tokenizer family) formats.

Reached through :func:`dlm.testing.write_tiny_checkpoint`. Each is a genuine folder of its format: ``config.json``
with the format's keys (see :mod:`dlm.models.llada2`, :mod:`dlm.models.sdar`, :mod:`dlm.models.llada_moe`), one
safetensors tensor per expert under the published names, shards with ``model.safetensors.index.json``, and a small
byte-level tokenizer with the family's special tokens: Ling's ``<|endoftext|>`` (EOS = pad), ``<|mask|>``,
``<role>``/``</role>``/``<|role_end|>`` chat markup for LLaDA2 and LLaDA-MoE; Qwen3's ``<|endoftext|>``,
``<|im_start|>``/``<|im_end|>``, ``<think>``/``</think>`` and SDAR's ``<|MASK|>`` for SDAR (saved as a
``Qwen2Tokenizer`` with the remote-code ``auto_map`` the models ship, loaded without remote code). As in the
published tokenizers, neither declares its mask token: dlm finds it by its text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .models.base import MODELS, SpecialIds
from .models.llada2 import LLaDA2Config
from .models.loading import save_checkpoint
from .models.moe import MoEArchConfig
from .models.transformer import ArchConfig
from .testing import CHATML_TEMPLATE, _added, random_model, tokenizer_with

BLOCK_FORMATS = ("llada2_moe", "sdar", "sdar_moe")
FORMATS = (*BLOCK_FORMATS, "llada_moe")  # the formats written here

LING_TEMPLATE = (
    "{% set roles = {'system': 'SYSTEM', 'user': 'HUMAN', 'assistant': 'ASSISTANT'} %}"
    "{% for message in messages %}<role>{{ roles[message['role']] }}</role>{{ message['content'] }}<|role_end|>"
    "{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)
SPECIALS = {
    "llada2_moe": ["<|endoftext|>", "<|role_end|>", "<role>", "</role>", "<|mask|>"],
    "sdar": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|MASK|>"],
}
SPECIALS["sdar_moe"] = SPECIALS["sdar"]
SPECIALS["llada_moe"] = SPECIALS["llada2_moe"]
LING = ("llada2_moe", "llada_moe")  # the Ling tokenizer family


def write_block_tokenizer(folder: str | Path, model_type: str) -> dict[str, int]:
    """Write the family's tokenizer files into ``folder``; return the ids of its special tokens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = SPECIALS[model_type]
    tok, ids = tokenizer_with(specials)
    tok.save(str(folder / "tokenizer.json"))
    common = {"added_tokens_decoder": {str(ids[s]): _added(s) for s in specials}, "clean_up_tokenization_spaces": False}
    if model_type in LING:
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "chat_template": LING_TEMPLATE,
               "model_max_length": 16384, **common}
    else:
        tok.model.save(str(folder))  # vocab.json + merges.txt beside tokenizer.json, as Qwen3 ships them
        cfg = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
               "pad_token": "<|endoftext|>", "chat_template": CHATML_TEMPLATE, "model_max_length": 32768,
               "errors": "replace", "split_special_tokens": False,
               "auto_map": {"AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer",
                                              "tokenization_qwen2_fast.Qwen2TokenizerFast"]}, **common}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": cfg["eos_token"], "pad_token": cfg["pad_token"]}, indent=2))
    return ids


def tiny_block_arch(model_type: str, *, layers: int = 3, hidden: int = 64, heads: int = 4, kv_heads: int = 2,
                    experts: int = 8, top_k: int = 2, **overrides: Any) -> ArchConfig:
    """The geometry of a tiny model of the format (first layer dense for the MoE ones), sized to its tokenizer."""
    n_tokens = 256 + len(SPECIALS[model_type])
    common = dict(vocab_size=(n_tokens + 7) // 8 * 8, hidden_size=hidden, num_layers=layers, num_heads=heads,
                  num_kv_heads=kv_heads, intermediate_size=96, norm_eps=1e-6, max_position=512,
                  rope_full_precision=False)
    if model_type == "llada2_moe":
        fields = dict(common, head_dim=hidden // heads, rope_theta=600000.0, out_bias=False, num_experts=experts,
                      experts_per_token=top_k, expert_intermediate_size=32, shared_intermediate_size=32,
                      moe_layers=tuple(range(1, layers)), score_function="sigmoid", n_group=4, topk_group=2,
                      routed_scaling_factor=2.5, expert_bias=True, router_fp32=True, rotary_dim=hidden // heads // 2)
        return LLaDA2Config(**{**fields, **overrides})
    if model_type == "llada_moe":  # OLMoE layout: head size hidden / heads, untied head, a dense first layer
        fields = dict(common, head_dim=hidden // heads, norm_eps=1e-5, rope_theta=50000.0, num_experts=experts,
                      experts_per_token=top_k, expert_intermediate_size=32, moe_layers=tuple(range(1, layers)),
                      score_function="softmax", norm_topk_prob=False)
        return MoEArchConfig(**{**fields, **overrides})
    # Qwen3 layout: a head size of its own (24 * 4 heads != hidden 64), tied embeddings like SDAR-1.7B/4B
    fields = dict(common, head_dim=24, rope_theta=1000000.0, tie_embeddings=model_type == "sdar")
    if model_type == "sdar":
        return ArchConfig(**{**fields, **overrides})
    fields.update(num_experts=experts, experts_per_token=top_k, expert_intermediate_size=32,
                  moe_layers=tuple(range(1, layers)), score_function="softmax", norm_topk_prob=True)
    return MoEArchConfig(**{**fields, **overrides})


def special_ids(model_type: str, ids: dict[str, int]) -> SpecialIds:
    if model_type in LING:
        return SpecialIds(mask_id=ids["<|mask|>"], eos_id=ids["<|endoftext|>"], pad_id=ids["<|endoftext|>"])
    return SpecialIds(mask_id=ids["<|MASK|>"], eos_id=ids["<|im_end|>"], pad_id=ids["<|endoftext|>"],
                      bos_id=ids["<|endoftext|>"])


def write_block_checkpoint(folder: str | Path, model_type: str, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                           max_shard_bytes: int = 96 * 1024, std: float = 0.2, **arch_kwargs: Any) -> Path:
    """Write a tiny random checkpoint of one of :data:`FORMATS` into ``folder``; return it."""
    if model_type not in FORMATS:
        raise ValueError(f"unknown format {model_type!r}; known here: {', '.join(FORMATS)}")
    folder = Path(folder)
    ids = write_block_tokenizer(folder, model_type)
    arch_cls = MODELS.get(model_type)
    model = random_model(tiny_block_arch(model_type, **arch_kwargs), seed=seed, std=std,
                         model_class=arch_cls.model_class)
    save_checkpoint(model, arch_cls, special_ids(model_type, ids), folder, dtype=dtype,
                    max_shard_bytes=max_shard_bytes)
    return folder
