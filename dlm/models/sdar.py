"""SDAR and TraDo (``model_type: "sdar"``, ``SDARForCausalLM``; MoE: ``"sdar_moe"``, ``SDARMoeForCausalLM``).

Format, read from the official modeling and configuration files (Gen-Verse/dLLM-RL ``models/sdar/`` (the
``modeling_sdar.py`` / ``configuration_sdar.py`` shipped with JetLM/SDAR-*-Chat and Gen-Verse/TraDo-*), JetAstra/SDAR
``training/model/SDAR-4B-Chat/modeling_sdar.py`` and ``generate.py``, Labman42/JetEngine ``jetengine/models/sdar.py``,
``sdar_moe.py``, ``config.py``; sgl-project/sglang ``python/sglang/srt/models/sdar.py``, ``srt/dllm/config.py``;
InternLM/lmdeploy ``lmdeploy/pytorch/models/sdar_moe.py``):

- SDAR is Qwen3 with block-causal attention: weights ``model.embed_tokens.weight``; per layer
  ``model.layers.N.self_attn.{q,k,v,o}_proj.weight`` (``.bias`` when ``attention_bias``),
  ``self_attn.q_norm.weight`` / ``self_attn.k_norm.weight`` [head_dim] (RMSNorm of each head before RoPE),
  ``input_layernorm.weight``, ``post_attention_layernorm.weight``, ``mlp.{gate,up,down}_proj.weight``;
  ``model.norm.weight``; ``lm_head.weight`` unless ``tie_word_embeddings`` (tied in the 1.7B and 4B models).
  ``head_dim`` is its own field (128; default 128), RoPE on the whole head with cos/sin in the model dtype.
- SDAR-30B-A3B (``sdar_moe``, Qwen3-MoE layout): layer N has experts when N is not in ``mlp_only_layers`` and
  (N + 1) % ``decoder_sparse_step`` == 0: ``mlp.gate.weight`` [E, d] (router, in the model dtype) and
  ``mlp.experts.{e}.{gate,up,down}_proj.weight`` (width ``moe_intermediate_size``); softmax top-k routing, renormalised
  when ``norm_topk_prob``; no shared expert. (JetEngine picks its MoE model when model_type contains "sdar" and "moe".)
- ids: Qwen3 tokenizer plus ``<|MASK|>`` 151669 (not declared as the tokenizer's mask token; found by its text);
  EOS from config.json (``<|im_end|>`` 151645 for the chat models; may be a list), ``<|endoftext|>`` 151643 = pad.
  Logits are not shifted (the official sampler reads the logit of position i for token i).
- blocks of 4: the official ``generate.py`` (``--block_length`` default 4), JetEngine (``block_length=4``) and SGLang
  (fixed 4). Checkpoints trained with other blocks (names ending -b8 ... -b64) state it only in their name; a
  config.json ``block_size`` field, when present, is honoured.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .base import Architecture, SpecialIds, register_model
from .fields import bool_field, float_field, int_field
from .layers import QKNormBlock, check_supported, embedding_names, make_config
from .moe import MoEArchConfig, MoEBlockMixin, expert_names, moe_fields
from .transformer import ArchConfig, Transformer

OFFICIAL_BLOCK_SIZE = 4

LAYER_NAMES = {  # (Qwen3 / OLMoE layout; LLaDA-MoE's too)
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q.weight",
    "self_attn.k_proj.weight": "k.weight",
    "self_attn.v_proj.weight": "v.weight",
    "self_attn.o_proj.weight": "o.weight",
    "self_attn.q_norm.weight": "q_norm.weight",
    "self_attn.k_norm.weight": "k_norm.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
}
MLP_NAMES = {"gate_proj": "gate", "up_proj": "up", "down_proj": "down"}


class SDARModel(Transformer):
    block_class = QKNormBlock


class SDARMoeBlock(MoEBlockMixin, QKNormBlock):
    pass


class SDARMoeModel(Transformer):
    block_class = SDARMoeBlock


def _qwen3_fields(cfg: dict[str, Any], model_type: str) -> dict[str, Any]:
    """ArchConfig keyword arguments of a Qwen3-layout config.json (SDARConfig defaults where a field is absent)."""
    check_supported(cfg, model_type, {"hidden_act": ("silu",), "rope_scaling": (None,),
                                      "use_sliding_window": (False,)})
    bias = bool_field(cfg, "attention_bias", False)
    heads = int_field(cfg, "num_attention_heads")
    return dict(
        vocab_size=int_field(cfg, "vocab_size"), hidden_size=int_field(cfg, "hidden_size"),
        num_layers=int_field(cfg, "num_hidden_layers"), num_heads=heads,
        num_kv_heads=int_field(cfg, "num_key_value_heads", heads), head_dim=int_field(cfg, "head_dim", 128),
        intermediate_size=int_field(cfg, "intermediate_size"), norm_eps=float_field(cfg, "rms_norm_eps", 1e-6),
        rope_theta=float_field(cfg, "rope_theta", 10000.0), max_position=int_field(cfg, "max_position_embeddings", 32768),
        qkv_bias=bias, out_bias=bias, tie_embeddings=bool_field(cfg, "tie_word_embeddings", False),
        rope_full_precision=False,
    )


def _qwen3_config(arch: ArchConfig, ids: SpecialIds, architecture: str, model_type: str) -> dict[str, Any]:
    return {
        "architectures": [architecture], "model_type": model_type,
        "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                     "AutoModelForCausalLM": f"modeling_sdar.{architecture}"},
        "vocab_size": arch.vocab_size, "hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_layers, "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads, "head_dim": arch.head_dim, "hidden_act": "silu",
        "max_position_embeddings": arch.max_position, "initializer_range": 0.02, "rms_norm_eps": arch.norm_eps,
        "use_cache": True, "tie_word_embeddings": arch.tie_embeddings, "rope_theta": arch.rope_theta,
        "rope_scaling": None, "attention_bias": arch.qkv_bias, "use_sliding_window": False, "sliding_window": None,
        "max_window_layers": arch.num_layers, "attention_dropout": 0.0, "bos_token_id": ids.bos_id,
        "eos_token_id": ids.eos_id, "torch_dtype": "bfloat16", "transformers_version": "4.52.4",
        "fuse_cross_entropy": True,
    }


@register_model("sdar")
class SDAR(Architecture):
    model_type = "sdar"
    logits_shift = 0
    mask_token = "<|MASK|>"
    end_of_turn_tokens = ("<|im_end|>", "<|endoftext|>")
    model_class: type[Transformer] = SDARModel
    architecture = "SDARForCausalLM"

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> ArchConfig:
        return make_config(ArchConfig, **_qwen3_fields(cfg, cls.model_type))

    @classmethod
    def name_map(cls, arch: ArchConfig, cfg: dict[str, Any]) -> dict[str, Any]:
        names: dict[str, Any] = embedding_names("model.embed_tokens.weight", arch)
        for i in range(arch.num_layers):
            ck, me = f"model.layers.{i}.", f"layers.{i}."
            names.update({ck + a: me + b for a, b in LAYER_NAMES.items()})
            if arch.qkv_bias:
                names.update({f"{ck}self_attn.{p}_proj.bias": f"{me}{p}.bias" for p in "qkvo"})
            names.update(cls.mlp_names(arch, i))
        return names

    @classmethod
    def mlp_names(cls, arch: ArchConfig, i: int) -> dict[str, Any]:
        return {f"model.layers.{i}.mlp.{a}.weight": f"layers.{i}.{b}.weight" for a, b in MLP_NAMES.items()}

    @classmethod
    def max_length(cls, cfg: dict[str, Any]) -> int:
        return int_field(cfg, "max_position_embeddings", 32768)

    @classmethod
    def block_size(cls, cfg: dict[str, Any]) -> int:
        return int_field(cfg, "block_size", OFFICIAL_BLOCK_SIZE)

    @classmethod
    def build_config(cls, arch: ArchConfig, ids: SpecialIds, **extra: Any) -> dict[str, Any]:
        cfg = _qwen3_config(arch, ids, cls.architecture, cls.model_type)
        cfg.update(extra)
        return cfg


@register_model("sdar_moe")
class SDARMoe(SDAR):
    model_type = "sdar_moe"
    model_class = SDARMoeModel
    architecture = "SDARMoeForCausalLM"

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> MoEArchConfig:
        fields = _qwen3_fields(cfg, cls.model_type)
        step = int_field(cfg, "decoder_sparse_step", 1)
        dense = cfg.get("mlp_only_layers") or []
        if not isinstance(dense, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in dense):
            raise CheckpointError(f"config.json field 'mlp_only_layers' must be a list of layer numbers, got {dense!r}")
        moe = [i for i in range(fields["num_layers"]) if i not in dense and (i + 1) % step == 0]
        return make_config(MoEArchConfig, **fields, **moe_fields(cfg), moe_layers=tuple(moe), score_function="softmax",
                           norm_topk_prob=bool_field(cfg, "norm_topk_prob", False))

    @classmethod
    def mlp_names(cls, arch: MoEArchConfig, i: int) -> dict[str, Any]:
        if i not in arch.moe_layers:
            return super().mlp_names(arch, i)
        ck, me = f"model.layers.{i}.mlp.", f"layers.{i}.moe."
        return {ck + "gate.weight": me + "router.weight", **expert_names(ck, me, arch.num_experts)}

    @classmethod
    def build_config(cls, arch: MoEArchConfig, ids: SpecialIds, **extra: Any) -> dict[str, Any]:
        cfg = _qwen3_config(arch, ids, cls.architecture, cls.model_type)
        cfg.update({"num_experts": arch.num_experts, "num_experts_per_tok": arch.experts_per_token,
                    "moe_intermediate_size": arch.expert_intermediate_size, "norm_topk_prob": arch.norm_topk_prob,
                    "decoder_sparse_step": 1, "output_router_logits": False, "router_aux_loss_coef": 0.001,
                    "mlp_only_layers": [i for i in range(arch.num_layers) if i not in arch.moe_layers]})
        cfg.update(extra)
        return cfg
