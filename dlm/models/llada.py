"""LLaDA (``model_type: "llada"``): OLMo-style config fields, ``model.transformer.*`` weight names.

Logits are not shifted: the logit at position i predicts token i. Ids of LLaDA-8B: mask ``<|mdm_mask|>``
126336, EOS = pad ``<|endoftext|>`` 126081, BOS 126080, end of turn ``<|eot_id|>`` 126348.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import CheckpointError
from .base import Architecture, SpecialIds, register_model, require
from .transformer import ArchConfig

_LAYER_NAMES = {
    "attn_norm.weight": "attn_norm.weight",
    "q_proj.weight": "q.weight",
    "k_proj.weight": "k.weight",
    "v_proj.weight": "v.weight",
    "attn_out.weight": "o.weight",
    "ff_norm.weight": "mlp_norm.weight",
    "ff_proj.weight": "gate.weight",
    "up_proj.weight": "up.weight",
    "ff_out.weight": "down.weight",
}


@register_model("llada")
class LLaDA(Architecture):
    model_type = "llada"
    logits_shift = 0
    end_of_turn_tokens = ("<|eot_id|>",)
    mask_token = "<|mdm_mask|>"

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> ArchConfig:
        t = cls.model_type
        d = require(cfg, "d_model", t)
        n_heads = require(cfg, "n_heads", t)
        n_layers = require(cfg, "n_layers", t)
        n_kv = cfg.get("n_kv_heads") or (1 if cfg.get("multi_query_attention") else n_heads)
        mlp = cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * d
        vocab = require(cfg, "vocab_size", t)
        emb = cfg.get("embedding_size") or vocab
        unsupported = {
            "block_type": (cfg.get("block_type", "llama"), {"llama"}),
            "activation_type": (cfg.get("activation_type", "silu"), {"silu", "swiglu"}),
            "layer_norm_type": (cfg.get("layer_norm_type", "rms"), {"rms"}),
            "rope": (cfg.get("rope", True), {True}),
            "alibi": (cfg.get("alibi", False), {False}),
            "attention_layer_norm": (cfg.get("attention_layer_norm", False), {False}),
            "include_bias": (cfg.get("include_bias", False), {False}),
            "block_group_size": (cfg.get("block_group_size", 1), {1}),
        }
        for key, (value, allowed) in unsupported.items():
            if value not in allowed:
                raise CheckpointError(
                    f"LLaDA config field {key}={value!r} is not supported (supported: {sorted(map(str, allowed))}); "
                    "dlm implements the LLaDA-8B architecture (Llama-style blocks, RMSNorm, RoPE)"
                )
        if d % n_heads:
            raise CheckpointError(f"d_model ({d}) is not a multiple of n_heads ({n_heads})")
        if emb < vocab:
            raise CheckpointError(f"embedding_size ({emb}) is smaller than vocab_size ({vocab})")
        return ArchConfig(
            vocab_size=emb,
            valid_vocab=vocab,
            hidden_size=d,
            num_layers=n_layers,
            num_heads=n_heads,
            num_kv_heads=n_kv,
            head_dim=d // n_heads,
            intermediate_size=mlp,
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            max_position=int(cfg.get("max_sequence_length", 4096)),
            qkv_bias=bool(cfg.get("include_qkv_bias", False)),
            tie_embeddings=bool(cfg.get("weight_tying", False)),
            logit_scale=1.0 / math.sqrt(d) if cfg.get("scale_logits", False) else None,
            embed_scale=math.sqrt(d) if cfg.get("input_emb_norm", False) else None,
            rope_full_precision=bool(cfg.get("rope_full_precision", True)),
        )

    @classmethod
    def name_map(cls, arch: ArchConfig, cfg: dict[str, Any]) -> dict[str, str]:
        names = {"model.transformer.wte.weight": "embed.weight", "model.transformer.ln_f.weight": "norm.weight"}
        if not arch.tie_embeddings:
            names["model.transformer.ff_out.weight"] = "head.weight"
        for i in range(arch.num_layers):
            pre = f"model.transformer.blocks.{i}."
            for ckpt, internal in _LAYER_NAMES.items():
                names[pre + ckpt] = f"layers.{i}.{internal}"
            if arch.qkv_bias:
                for p in "qkv":
                    names[pre + f"{p}_proj.bias"] = f"layers.{i}.{p}.bias"
        return names

    @classmethod
    def max_length(cls, cfg: dict[str, Any]) -> int:
        return int(cfg.get("max_sequence_length", 4096))

    @classmethod
    def build_config(cls, arch: ArchConfig, ids: SpecialIds, **extra: Any) -> dict[str, Any]:
        cfg = {
            "architectures": ["LLaDAModelLM"],
            "model_type": "llada",
            "d_model": arch.hidden_size,
            "n_heads": arch.num_heads,
            "n_kv_heads": arch.num_kv_heads,
            "n_layers": arch.num_layers,
            "mlp_ratio": max(1, arch.intermediate_size // arch.hidden_size),
            "mlp_hidden_size": arch.intermediate_size,
            "activation_type": "silu",
            "block_type": "llama",
            "block_group_size": 1,
            "layer_norm_type": "rms",
            "rms_norm_eps": arch.norm_eps,
            "layer_norm_with_affine": True,
            "attention_layer_norm": False,
            "include_bias": False,
            "include_qkv_bias": arch.qkv_bias,
            "bias_for_layer_norm": False,
            "rope": True,
            "rope_theta": arch.rope_theta,
            "rope_full_precision": True,
            "alibi": False,
            "flash_attention": False,
            "max_sequence_length": arch.max_position,
            "vocab_size": arch.valid_vocab or arch.vocab_size,
            "embedding_size": arch.vocab_size,
            "weight_tying": arch.tie_embeddings,
            "scale_logits": False,
            "input_emb_norm": False,
            "attention_dropout": 0.0,
            "residual_dropout": 0.0,
            "embedding_dropout": 0.0,
            "init_fn": "mitchell",
            "init_std": 0.02,
            "mask_token_id": ids.mask_id,
            "eos_token_id": ids.eos_id,
            "pad_token_id": ids.pad_id,
            "use_cache": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.46.3",
        }
        if ids.bos_id is not None:
            cfg["bos_token_id"] = ids.bos_id
        cfg.update(extra)
        return cfg
