"""LLaDA-MoE (LLaDA-MoE-7B-A1B Base/Instruct, ``LLaDAMoEModelLM``): dlm's format name ``llada_moe``.

Its config.json says ``"model_type": "llada"``, LLaDA-8B's, so :meth:`LLaDAMoE.claims` picks this format by its
``architectures`` entry (``LLaDAMoEModelLM`` or ``LLaDAMoEModel``; also for ``"model_type": "lladamoe"``, which
some tools write instead). Format, read from the official modeling and configuration files as published in
ZHZisZZ/dllm (``dllm/pipelines/llada/models/modeling_lladamoe.py``, ``configuration_lladamoe.py``),
inclusionAI/dInfer (``tools/transfer.py`` and its LLaDA-MoE model) and llama.cpp (``src/models/llada-moe.cpp``):

- OLMoE layout, bidirectional attention (a masked-diffusion model like LLaDA-8B, not block diffusion): weights
  ``model.embed_tokens.weight``; per layer ``model.layers.N.self_attn.{q,k,v,o}_proj.weight`` (no biases),
  ``self_attn.q_norm.weight`` / ``self_attn.k_norm.weight`` [head_dim] (RMSNorm of each head before RoPE),
  ``input_layernorm.weight``, ``post_attention_layernorm.weight``, ``mlp.gate.weight`` [E, d] (the router) and one
  tensor per expert, ``mlp.experts.{e}.{gate,up,down}_proj.weight`` (width ``expert_intermediate_size``);
  ``model.norm.weight``; ``lm_head.weight`` (untied). A layer whose ``moe_layer_freq`` entry is 0 has a dense
  SwiGLU ``mlp.{gate,up,down}_proj`` of width ``dense_intermediate_size`` instead (LLaDA-MoE-7B has none).
- Head size ``hidden_size / num_attention_heads``; RoPE rotate-half over the whole head, cos/sin computed in
  float32 and rotated in the model dtype; RMSNorm in float32, cast back, times the weight (eps ``rms_norm_eps``).
- Routing: softmax over all experts (float32) of the router's product in the model dtype, top-k, NOT renormalised
  (the official block sets ``norm_topk_prob = False`` whatever config.json says); no shared expert. The official
  code rounds the routing weights to the model dtype and adds the experts' outputs in it; dlm adds them in float32,
  as for its other MoE formats (the same in float32, within rounding in bf16).
- ids: ``<|mask|>`` 156895 (not in config.json: found by its text, as dInfer and llama.cpp hard-code it),
  ``<|endoftext|>`` 156892 = EOS = pad, ``<|role_end|>`` ends a turn (the Ling chat template). Logits are not
  shifted: position i predicts token i.

Fields whose other values the official code does not implement either, or dlm does not: ``qk_layernorm`` must be
true, ``shared_expert_intermediate_size`` null, ``partial_rotary_factor`` 1, ``clip_qkv`` null, ``rope_scaling``
null, ``attention_bias`` false, ``hidden_act`` silu, ``moe_router_enable_expert_bias`` false or null.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .base import SpecialIds, register_model
from .fields import bool_field, float_field, int_field
from .layers import check_supported, make_config
from .moe import MoEArchConfig
from .sdar import SDARMoe

ARCHITECTURES = ("LLaDAMoEModelLM", "LLaDAMoEModel")


def _moe_layers(cfg: dict[str, Any], num_layers: int) -> tuple[int, ...]:
    """The layers with experts: ``moe_layer_freq`` is one 0/1 entry per layer (absent: every layer)."""
    freq = cfg.get("moe_layer_freq")
    if freq is None:
        return tuple(range(num_layers))
    if (not isinstance(freq, list) or len(freq) != num_layers
            or not all(isinstance(f, int) and not isinstance(f, bool) and f in (0, 1) for f in freq)):
        raise CheckpointError(f"config.json field 'moe_layer_freq' must be a list of {num_layers} entries 0 or 1 "
                              f"(one per layer; 1: the layer has experts), got {freq!r}")
    return tuple(i for i, f in enumerate(freq) if f)


@register_model("llada_moe")
class LLaDAMoE(SDARMoe):
    """The Qwen3-MoE / OLMoE layout of :class:`~dlm.models.sdar.SDARMoe` (its weight names, its QK-norm blocks with
    experts), with LLaDA-MoE's config fields, bidirectional attention and Ling's special tokens."""

    model_type = "llada_moe"
    architecture = ARCHITECTURES[0]
    mask_token = "<|mask|>"
    end_of_turn_tokens = ("<|role_end|>",)

    @classmethod
    def claims(cls, cfg: dict[str, Any]) -> bool:
        """``model_type`` ``"llada"`` or ``"lladamoe"`` with a LLaDA-MoE ``architectures`` entry, or
        ``"lladamoe"`` alone."""
        archs = cfg.get("architectures")
        moe = isinstance(archs, list) and any(a in ARCHITECTURES for a in archs)
        model_type = cfg.get("model_type")
        return (model_type == "llada" and moe) or model_type == "lladamoe"

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> MoEArchConfig:
        check_supported(cfg, cls.model_type, {"hidden_act": ("silu",), "rope_scaling": (None,),
                                              "qk_layernorm": (True,), "clip_qkv": (None,),
                                              "shared_expert_intermediate_size": (None,), "attention_bias": (False,)})
        if float_field(cfg, "partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError(f"config.json field 'partial_rotary_factor'={cfg['partial_rotary_factor']!r} of a "
                                  "'llada_moe' checkpoint is not supported (supported: 1)")
        if cfg.get("moe_router_enable_expert_bias") not in (None, False):  # (a bias added to the router's scores)
            raise CheckpointError("config.json field 'moe_router_enable_expert_bias'="
                                  f"{cfg['moe_router_enable_expert_bias']!r} of a 'llada_moe' checkpoint is not "
                                  "supported (supported: false, null)")
        d, heads = int_field(cfg, "hidden_size"), int_field(cfg, "num_attention_heads")
        if d % heads:
            raise CheckpointError(f"config.json: hidden_size ({d}) is not a multiple of num_attention_heads ({heads})")
        layers = int_field(cfg, "num_hidden_layers")
        experts, k = int_field(cfg, "num_experts"), int_field(cfg, "num_experts_per_tok")
        if k > experts:
            raise CheckpointError(f"config.json: 'num_experts_per_tok' ({k}) exceeds 'num_experts' ({experts})")
        expert_width = int_field(cfg, "expert_intermediate_size")
        moe_layers = _moe_layers(cfg, layers)
        if len(moe_layers) < layers:  # a dense layer's width: required where a layer is dense (LLaDA-MoE-7B: none)
            dense_width = int_field(cfg, "dense_intermediate_size")
        else:
            dense_width = int_field(cfg, "dense_intermediate_size", expert_width)
        return make_config(
            MoEArchConfig,
            vocab_size=int_field(cfg, "vocab_size"), hidden_size=d, num_layers=layers, num_heads=heads,
            num_kv_heads=int_field(cfg, "num_key_value_heads", heads), head_dim=d // heads,
            intermediate_size=dense_width,
            norm_eps=float_field(cfg, "rms_norm_eps", 1e-5), rope_theta=float_field(cfg, "rope_theta", 10000.0),
            max_position=cls.max_length(cfg), tie_embeddings=bool_field(cfg, "tie_word_embeddings", False),
            rope_full_precision=False, num_experts=experts, experts_per_token=k,
            expert_intermediate_size=expert_width, moe_layers=moe_layers, score_function="softmax",
            norm_topk_prob=False, router_fp32=False)

    @classmethod
    def max_length(cls, cfg: dict[str, Any]) -> int:
        return int_field(cfg, "max_position_embeddings", 4096)  # (LLaDAMoEConfig's default)

    @classmethod
    def block_size(cls, cfg: dict[str, Any]) -> None:
        return None  # a masked-diffusion model: bidirectional attention over the whole canvas

    @classmethod
    def build_config(cls, arch: MoEArchConfig, ids: SpecialIds, **extra: Any) -> dict[str, Any]:
        """config.json as LLaDA-MoE-7B ships it (``model_type`` ``"llada"``; its remote code named in ``auto_map``,
        which dlm never runs)."""
        cfg = {
            "architectures": [cls.architecture], "model_type": "llada",
            "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
                         "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM"},
            "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size, "num_hidden_layers": arch.num_layers,
            "num_attention_heads": arch.num_heads, "num_key_value_heads": arch.num_kv_heads,
            "dense_intermediate_size": arch.intermediate_size,
            "expert_intermediate_size": arch.expert_intermediate_size, "shared_expert_intermediate_size": None,
            "num_experts": arch.num_experts, "num_experts_per_tok": arch.experts_per_token,
            "moe_layer_freq": [int(i in arch.moe_layers) for i in range(arch.num_layers)],
            "norm_topk_prob": False, "qk_layernorm": True, "partial_rotary_factor": 1, "clip_qkv": None,
            "hidden_act": "silu", "rms_norm_eps": arch.norm_eps, "rope_theta": arch.rope_theta, "rope_scaling": None,
            "max_position_embeddings": arch.max_position, "attention_bias": False, "attention_dropout": 0.0,
            "tie_word_embeddings": arch.tie_embeddings, "routed_scaling_factor": 1,
            "router_aux_loss_coef": 0.01, "output_router_logits": False, "use_cache": False,
            "pad_token_id": ids.pad_id, "eos_token_id": ids.eos_id, "torch_dtype": "bfloat16",
            "transformers_version": "4.46.2",
        }
        cfg.update(extra)
        return cfg
