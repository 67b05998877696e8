"""Dream (``model_type: "Dream"``): Qwen2 geometry and weight names (q/k/v biases, GQA), shifted logits.

The logit at position i-1 predicts token i (Dream was adapted from the autoregressive Qwen2.5), so the engine
reads the logits of a masked position p from the hidden state at p-1. Ids of Dream-7B: mask 151666,
EOS = pad ``<|endoftext|>`` 151643, end of turn ``<|im_end|>`` 151645. Dream's tokenizer ships as remote code
(``DreamTokenizer``), a copy of Qwen2's BPE tokenizer: dlm loads its vocab.json/merges.txt with transformers'
``Qwen2Tokenizer`` instead, so no remote code runs.
"""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError
from .base import Architecture, SpecialIds, make_arch, register_model
from .fields import bool_field, check_token_ids, float_field, int_field, sampling_defaults
from .transformer import ArchConfig

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "q.weight",
    "self_attn.q_proj.bias": "q.bias",
    "self_attn.k_proj.weight": "k.weight",
    "self_attn.k_proj.bias": "k.bias",
    "self_attn.v_proj.weight": "v.weight",
    "self_attn.v_proj.bias": "v.bias",
    "self_attn.o_proj.weight": "o.weight",
    "post_attention_layernorm.weight": "mlp_norm.weight",
    "mlp.gate_proj.weight": "gate.weight",
    "mlp.up_proj.weight": "up.weight",
    "mlp.down_proj.weight": "down.weight",
}


@register_model("Dream")
class Dream(Architecture):
    model_type = "Dream"
    logits_shift = 1
    tokenizer_fallbacks = {"DreamTokenizer": "Qwen2Tokenizer"}
    end_of_turn_tokens = ("<|im_end|>",)
    mask_token = "<|mask|>"

    @classmethod
    def parse_config(cls, cfg: dict[str, Any]) -> ArchConfig:
        d, heads = int_field(cfg, "hidden_size"), int_field(cfg, "num_attention_heads")
        if cfg.get("rope_scaling") not in (None, {}):
            raise CheckpointError(f"Dream config rope_scaling={cfg['rope_scaling']!r} is not supported (only none)")
        if cfg.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"Dream config hidden_act={cfg['hidden_act']!r} is not supported (only 'silu')")
        if bool_field(cfg, "use_sliding_window", False):
            raise CheckpointError("Dream config use_sliding_window=true is not supported")
        if d % heads:
            raise CheckpointError(f"config.json: hidden_size ({d}) is not a multiple of num_attention_heads ({heads})")
        vocab = int_field(cfg, "vocab_size")
        check_token_ids(cfg, vocab)
        return make_arch(
            vocab_size=vocab,
            hidden_size=d,
            num_layers=int_field(cfg, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=int_field(cfg, "num_key_value_heads", heads),
            head_dim=d // heads,
            intermediate_size=int_field(cfg, "intermediate_size"),
            norm_eps=float_field(cfg, "rms_norm_eps", 1e-6),
            rope_theta=float_field(cfg, "rope_theta", 10000.0),
            max_position=cls.max_length(cfg),
            qkv_bias=True,
            tie_embeddings=bool_field(cfg, "tie_word_embeddings", False),
            rope_full_precision=False,
        )

    @classmethod
    def generation_defaults(cls, cfg: dict[str, Any]) -> dict[str, Any]:
        """Dream's ``diffusion_generate`` builds its settings with ``DreamGenerationConfig.from_model_config``;
        under the transformers versions Dream pins (4.46-4.49) every model config carries the old generation
        defaults top_k=50 and top_p=1.0 (unless config.json sets them), so the official sampler renormalises
        over the top 50 logits even at temperature 0."""
        return {"top_k": 50, "top_p": 1.0, **sampling_defaults(cfg, "config.json")}

    @classmethod
    def name_map(cls, arch: ArchConfig, cfg: dict[str, Any]) -> dict[str, str]:
        names = {"model.embed_tokens.weight": "embed.weight", "model.norm.weight": "norm.weight"}
        if not arch.tie_embeddings:
            names["lm_head.weight"] = "head.weight"
        for i in range(arch.num_layers):
            for ckpt, internal in _LAYER_NAMES.items():
                names[f"model.layers.{i}.{ckpt}"] = f"layers.{i}.{internal}"
        return names

    @classmethod
    def max_length(cls, cfg: dict[str, Any]) -> int:
        return int_field(cfg, "max_position_embeddings", 32768)

    @classmethod
    def build_config(cls, arch: ArchConfig, ids: SpecialIds, **extra: Any) -> dict[str, Any]:
        cfg = {
            "architectures": ["DreamModel"],
            "model_type": "Dream",
            "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
            "hidden_size": arch.hidden_size,
            "intermediate_size": arch.intermediate_size,
            "num_hidden_layers": arch.num_layers,
            "num_attention_heads": arch.num_heads,
            "num_key_value_heads": arch.num_kv_heads,
            "hidden_act": "silu",
            "rms_norm_eps": arch.norm_eps,
            "rope_theta": arch.rope_theta,
            "rope_scaling": None,
            "max_position_embeddings": arch.max_position,
            "vocab_size": arch.vocab_size,
            "tie_word_embeddings": arch.tie_embeddings,
            "use_sliding_window": False,
            "sliding_window": None,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "mask_token_id": ids.mask_id,
            "pad_token_id": ids.pad_id,
            "bos_token_id": ids.bos_id if ids.bos_id is not None else ids.eos_id,
            "eos_token_id": ids.eos_id,
            "use_cache": False,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.46.2",
        }
        cfg.update(extra)
        return cfg
