"""LLaDA2.0 / LLaDA2.1 (``model_type: "llada2_moe"``, ``LLaDA2MoeModelLM``): block diffusion on a Ling-style MoE.

Format, read from the official modeling and configuration files (the Hugging Face ``modeling_llada2_moe.py`` as
copied in ZHZisZZ/dllm ``dllm/pipelines/llada2/models/`` and ``llada21/models/``; inclusionAI/dFactory
``models/llada2_moe/`` and ``configs/model_configs/llada2_{mini,flash}/config.json``; inclusionAI/dInfer
``python/dinfer/model/``; sgl-project/sglang ``python/sglang/srt/models/llada2.py``):

- weights: ``model.word_embeddings.weight``; per layer ``model.layers.N.input_layernorm.weight``,
  ``attention.query_key_value.weight`` (fused [(H + 2 Hkv) * D, d], q rows then k then v; ``.bias`` when
  ``use_qkv_bias``), ``attention.query_layernorm.weight`` / ``attention.key_layernorm.weight`` [D] (QK-norm),
  ``attention.dense.weight`` (``.bias`` when ``use_bias``, whose default is true), ``post_attention_layernorm.weight``;
  the first ``first_k_dense_replace`` layers have a dense ``mlp.{gate,up,down}_proj.weight`` of width
  ``intermediate_size``; the others ``mlp.gate.weight`` [E, d] (router), ``mlp.gate.expert_bias`` [E],
  ``mlp.experts.{e}.{gate,up,down}_proj.weight`` (width ``moe_intermediate_size``) and
  ``mlp.shared_experts.{gate,up,down}_proj.weight`` (width ``moe_intermediate_size * num_shared_experts``);
  ``model.norm.weight``, ``lm_head.weight``. No bias in any MLP.
- attention: GQA, head_dim from ``head_dim``; RMSNorm of each head of q and k, then RoPE on the first
  ``int(head_dim * partial_rotary_factor)`` dims only (rotate-half inside that slice, frequencies of that width,
  cos/sin cast to the model dtype), the rest passes through. Block-causal mask (the official ``generate`` builds it).
- router: float32 sigmoid, group-limited by (``n_group``, ``topk_group``) with ``expert_bias``, weights normalised
  and scaled by ``routed_scaling_factor`` (see :mod:`dlm.models.moe`). ``score_function`` must be sigmoid: the
  official modeling ignores the field and always uses sigmoid.
- LLaDA2.0-mini: hidden 2048, 20 layers (1 dense), 16 heads, 4 KV heads, head_dim 128, partial rotary 0.5 (64 dims),
  rope_theta 600000, 256 experts, top 8 in 4 of 8 groups, expert width 512, 1 shared expert, dense width 5120,
  routed_scaling_factor 2.5, rms_norm_eps 1e-6, vocab 157184. Flash: hidden 4096, 32 layers, 32 heads, expert width
  1024, dense 9216.
- ids: mask ``<|mask|>`` 156895, EOS = pad ``<|endoftext|>`` 156892 (config.json has ``pad_token_id`` only; the mask
  is found in the tokenizer); end of turn ``<|role_end|>``. Logits are not shifted.
- blocks of 32 (the official ``generate`` default and SGLang's fixed value; config.json has no block field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError
from . import elementwise as ew
from .base import Architecture, SpecialIds, register_model
from .fields import REQUIRED, bool_field, float_field, int_field
from .layers import QKNormBlock, check_supported, embedding_names, make_config
from .moe import MoEArchConfig, MoEBlockMixin, expert_names, moe_fields
from .transformer import Transformer, rope_cos_sin

OFFICIAL_BLOCK_SIZE = 32


@dataclass(frozen=True)
class LLaDA2Config(MoEArchConfig):
    rotary_dim: int = 0  # RoPE on the first rotary_dim dims of each head


class LLaDA2Block(MoEBlockMixin, QKNormBlock):
    """Fused QKV projection, QK-norm, partial RoPE, and a dense or MoE feed-forward."""

    cfg: LLaDA2Config

    def init_qkv(self, cfg: LLaDA2Config) -> None:
        self.qkv = nn.Linear(cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim,
                             bias=cfg.qkv_bias)

    def project_qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The fused projection's heads are q heads, then k heads, then v heads."""
        B, Q, _ = h.shape
        qkv = self.qkv(h).view(B, Q, -1, self.cfg.head_dim)
        n = qkv.shape[2]
        kv = n * self.cfg.num_kv_heads // (self.cfg.num_heads + 2 * self.cfg.num_kv_heads)
        q, k, v = qkv.split([n - 2 * kv, kv, kv], dim=2)
        return q, k, v

    def rotate(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               ops: ew.Ops) -> tuple[torch.Tensor, torch.Tensor]:
        rd = cos.shape[-1]
        q_rot, k_rot = ops.rope(q[..., :rd], k[..., :rd], cos, sin, self.cfg.rope_full_precision)
        return torch.cat((q_rot, q[..., rd:]), dim=-1), torch.cat((k_rot, k[..., rd:]), dim=-1)


class LLaDA2Model(Transformer):
    block_class = LLaDA2Block
    cfg: LLaDA2Config

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(position_ids, self.cfg.rotary_dim, self.cfg.rope_theta)


_ATTN = {
    "input_layernorm.weight": "attn_norm.weight",
    "attention.query_key_value.weight": "qkv.weight",
    "attention.query_layernorm.weight": "q_norm.weight",
    "attention.key_layernorm.weight": "k_norm.weight",
    "attention.dense.weight": "o.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}
_PROJ = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


@register_model("llada2_moe")
class LLaDA2(Architecture):
    model_type = "llada2_moe"
    logits_shift = 0
    mask_token = "<|mask|>"
    end_of_turn_tokens = ("<|role_end|>",)
    model_class = LLaDA2Model

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> LLaDA2Config:
        check_supported(cfg, cls.model_type, {
            "hidden_act": ("silu",), "rope_scaling": (None,), "use_sliding_window": (False,), "norm_head": (False,),
            "use_qk_norm": (True,), "score_function": ("sigmoid",), "norm_topk_prob": (True,)})
        d, heads = int_field(cfg, "hidden_size"), int_field(cfg, "num_attention_heads")
        layers, hd = int_field(cfg, "num_hidden_layers"), int_field(cfg, "head_dim", d // heads)
        dense = int_field(cfg, "first_k_dense_replace", 0, minimum=0)
        if dense > layers:
            raise CheckpointError(f"config.json field 'first_k_dense_replace' ({dense}) exceeds "
                                  f"'num_hidden_layers' ({layers})")
        moe = moe_fields(cfg, default_groups=(8, 4))
        rotary = int(hd * float_field(cfg, "partial_rotary_factor", 0.5))
        if rotary < 2 or rotary % 2 or rotary > hd:
            raise CheckpointError(f"config.json field 'partial_rotary_factor' gives {rotary} rotary dims of a head "
                                  f"of {hd}; it must give an even number in 2..{hd}")
        return make_config(
            LLaDA2Config,
            vocab_size=int_field(cfg, "vocab_size"), hidden_size=d, num_layers=layers, num_heads=heads,
            num_kv_heads=int_field(cfg, "num_key_value_heads", 0, minimum=0) or heads, head_dim=hd,
            intermediate_size=int_field(cfg, "intermediate_size", 0 if dense == 0 else REQUIRED, minimum=0),
            norm_eps=float_field(cfg, "rms_norm_eps", 1e-5), rope_theta=float_field(cfg, "rope_theta", 10000.0),
            max_position=cls.max_length(cfg), qkv_bias=bool_field(cfg, "use_qkv_bias", False),
            out_bias=bool_field(cfg, "use_bias", True), tie_embeddings=bool_field(cfg, "tie_word_embeddings", False),
            rope_full_precision=False, moe_layers=tuple(range(dense, layers)), score_function="sigmoid",
            shared_intermediate_size=int_field(cfg, "num_shared_experts", 0, minimum=0)
            * moe["expert_intermediate_size"],
            routed_scaling_factor=float_field(cfg, "routed_scaling_factor", 2.5),
            expert_bias=bool_field(cfg, "moe_router_enable_expert_bias", True), router_fp32=True,
            rotary_dim=rotary, **moe,
        )

    @classmethod
    def name_map(cls, arch: LLaDA2Config, cfg: dict[str, Any]) -> dict[str, Any]:
        names: dict[str, Any] = embedding_names("model.word_embeddings.weight", arch)
        for i in range(arch.num_layers):
            ck, me = f"model.layers.{i}.", f"layers.{i}."
            names.update({ck + a: me + b for a, b in _ATTN.items()})
            if arch.qkv_bias:
                names[ck + "attention.query_key_value.bias"] = me + "qkv.bias"
            if arch.out_bias:
                names[ck + "attention.dense.bias"] = me + "o.bias"
            if i not in arch.moe_layers:
                names.update({f"{ck}mlp.{a}.weight": f"{me}{b}.weight" for a, b in _PROJ.items()})
                continue
            names[ck + "mlp.gate.weight"] = me + "moe.router.weight"
            if arch.expert_bias:
                names[ck + "mlp.gate.expert_bias"] = me + "moe.router.expert_bias"
            names.update(expert_names(ck + "mlp.", me + "moe.", arch.num_experts))
            if arch.shared_intermediate_size:
                names.update({f"{ck}mlp.shared_experts.{a}.weight": f"{me}moe.shared.{b}.weight"
                              for a, b in _PROJ.items()})
        return names

    @classmethod
    def max_length(cls, cfg: dict[str, Any]) -> int:
        return int_field(cfg, "max_position_embeddings", 16384)

    @classmethod
    def block_size(cls, cfg: dict[str, Any]) -> int:
        return OFFICIAL_BLOCK_SIZE

    @classmethod
    def build_config(cls, arch: LLaDA2Config, ids: SpecialIds, **extra: Any) -> dict[str, Any]:
        dense = min(arch.moe_layers) if arch.moe_layers else arch.num_layers
        cfg = {
            "architectures": ["LLaDA2MoeModelLM"],
            "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                         "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                         "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
            "model_type": "llada2_moe", "num_hidden_layers": arch.num_layers, "hidden_size": arch.hidden_size,
            "intermediate_size": arch.intermediate_size, "first_k_dense_replace": dense, "hidden_act": "silu",
            "max_position_embeddings": arch.max_position, "moe_intermediate_size": arch.expert_intermediate_size,
            "norm_topk_prob": True, "num_experts_per_tok": arch.experts_per_token, "norm_head": False,
            "num_attention_heads": arch.num_heads, "num_experts": arch.num_experts,
            "num_key_value_heads": arch.num_kv_heads, "rope_theta": arch.rope_theta, "rope_scaling": None,
            "tie_word_embeddings": arch.tie_embeddings, "torch_dtype": "bfloat16", "transformers_version": "4.52.3",
            "use_bias": arch.out_bias, "use_rmsnorm": True, "rms_norm_eps": arch.norm_eps, "head_dim": arch.head_dim,
            "num_shared_experts": arch.shared_intermediate_size // arch.expert_intermediate_size, "use_cache": False,
            "use_qkv_bias": arch.qkv_bias, "use_qk_norm": True, "embedding_dropout": 0.0, "attention_dropout": 0.0,
            "output_dropout": 0.0, "vocab_size": arch.vocab_size, "rotary_dim": arch.rotary_dim,
            "router_dtype": "fp32", "moe_router_enable_expert_bias": arch.expert_bias,
            "routed_scaling_factor": arch.routed_scaling_factor, "n_group": arch.n_group,
            "topk_group": arch.topk_group, "score_function": "sigmoid", "initializer_range": 0.02,
            "max_window_layers": 28, "output_router_logits": False, "pad_token_id": ids.pad_id,
            "partial_rotary_factor": arch.rotary_dim / arch.head_dim, "use_sliding_window": False,
        }
        cfg.update(extra)
        return cfg
