"""LLaDA (``model_type: "llada"``): OLMo-style config fields, ``model.transformer.*`` weight names.

Logits are not shifted: the logit at position i predicts token i. Ids of LLaDA-8B: mask ``<|mdm_mask|>``
126336, EOS = pad ``<|endoftext|>`` 126081, BOS 126080, end of turn ``<|eot_id|>`` 126348.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import CheckpointError
from .base import Architecture, SpecialIds, make_arch, register_model
from .fields import bool_field, check_token_ids, float_field, int_field
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


# OLMo options dlm does not implement, with the values it does (LLaDA-8B's)
_SUPPORTED = {
    "block_type": ("llama", {"llama"}),
    "activation_type": ("silu", {"silu", "swiglu"}),
    "layer_norm_type": ("rms", {"rms"}),
    "rope": (True, {True}),
    "alibi": (False, {False}),
    "attention_layer_norm": (False, {False}),
    "include_bias": (False, {False}),
    "block_group_size": (1, {1}),
}


def _check_supported(cfg: dict[str, Any]) -> None:
    for key, (default, allowed) in _SUPPORTED.items():
        value = cfg.get(key, default)
        same_kind = isinstance(value, (str, int)) and isinstance(value, bool) == isinstance(default, bool)
        if not same_kind or value not in allowed:
            raise CheckpointError(
                f"LLaDA config field {key}={value!r} is not supported (supported: {sorted(map(str, allowed))}); "
                "dlm implements the LLaDA-8B architecture (Llama-style blocks, RMSNorm, RoPE)"
            )


@register_model("llada")
class LLaDA(Architecture):
    model_type = "llada"
    logits_shift = 0
    end_of_turn_tokens = ("<|eot_id|>",)
    mask_token = "<|mdm_mask|>"

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> ArchConfig:
        _check_supported(cfg)
        d, n_heads = int_field(cfg, "d_model"), int_field(cfg, "n_heads")
        n_kv = int_field(cfg, "n_kv_heads", 1 if bool_field(cfg, "multi_query_attention", False) else n_heads)
        vocab = int_field(cfg, "vocab_size")
        emb = int_field(cfg, "embedding_size", vocab)
        if d % n_heads:
            raise CheckpointError(f"config.json: d_model ({d}) is not a multiple of n_heads ({n_heads})")
        if emb < vocab:
            raise CheckpointError(f"config.json: embedding_size ({emb}) is smaller than vocab_size ({vocab})")
        check_token_ids(cfg, emb)
        return make_arch(
            vocab_size=emb,
            valid_vocab=vocab,
            hidden_size=d,
            num_layers=int_field(cfg, "n_layers"),
            num_heads=n_heads,
            num_kv_heads=n_kv,
            head_dim=d // n_heads,
            intermediate_size=cls._mlp_size(cfg, d),
            norm_eps=float_field(cfg, "rms_norm_eps", 1e-5),
            rope_theta=float_field(cfg, "rope_theta", 10000.0),
            max_position=cls.max_length(cfg),
            qkv_bias=bool_field(cfg, "include_qkv_bias", False),
            tie_embeddings=bool_field(cfg, "weight_tying", False),
            logit_scale=1.0 / math.sqrt(d) if bool_field(cfg, "scale_logits", False) else None,
            embed_scale=math.sqrt(d) if bool_field(cfg, "input_emb_norm", False) else None,
            rope_full_precision=bool_field(cfg, "rope_full_precision", True),
        )

    @staticmethod
    def _mlp_size(cfg: dict[str, Any], d: int) -> int:
        if cfg.get("mlp_hidden_size") is not None:  # OLMo ignores mlp_ratio when this is set
            return int_field(cfg, "mlp_hidden_size")
        return int_field(cfg, "mlp_ratio", 4) * d

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
        return int_field(cfg, "max_sequence_length", 4096)

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
