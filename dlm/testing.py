"""Tiny random checkpoints in the exact LLaDA and Dream formats, for tests, examples and CPU benchmarks.

Nothing here downloads anything. A tiny checkpoint is a genuine folder of its format: ``config.json`` with the
format's field names, weights under the format's names in several safetensors shards with
``model.safetensors.index.json``, and a small byte-level tokenizer: ``tokenizer.json`` + ``tokenizer_config.json``
with a Llama-3 style chat template for LLaDA; ``vocab.json`` + ``merges.txt`` + a ``tokenizer_config.json`` naming
the remote-code ``DreamTokenizer`` with a ChatML template for Dream (loaded without remote code, see
:mod:`dlm.models.dream`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .models.base import MODELS, SpecialIds
from .models.loading import save_checkpoint
from .models.transformer import ArchConfig, Transformer, init_weights

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIALS = {
    "llada": ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|mdm_mask|>"],
    "Dream": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"],
}


def _byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: ord(c)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def tokenizer_with(specials: list[str]):
    """The byte-level tokenizer with ``specials`` added as special tokens, and their ids."""
    from tokenizers import AddedToken

    tok = _byte_level_bpe()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tok, {s: tok.token_to_id(s) for s in specials}


def write_tokenizer(folder: str | Path, model_type: str = "llada") -> dict[str, int]:
    """Write a byte-level tokenizer in the format's layout; return the ids of its special tokens."""
    from tokenizers import processors

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = SPECIALS[model_type]
    tok, ids = tokenizer_with(specials)
    if model_type == "llada":
        bos = "<|startoftext|>"
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                           special_tokens=[(bos, ids[bos])])
        tok.save(str(folder / "tokenizer.json"))
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": bos, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "chat_template": LLAMA3_TEMPLATE, "model_max_length": 4096, "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {str(ids[s]): _added(s) for s in specials},
        }
    else:
        tok.model.save(str(folder))  # vocab.json + merges.txt, the files Dream ships
        cfg = {
            "tokenizer_class": "DreamTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
            "bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "mask_token": "<|mask|>", "chat_template": CHATML_TEMPLATE, "model_max_length": 2048,
            "errors": "replace", "split_special_tokens": False, "clean_up_tokenization_spaces": False,
            "added_tokens_decoder": {str(ids[s]): _added(s) for s in specials},
        }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"eos_token": cfg["eos_token"], "pad_token": cfg["pad_token"]}, indent=2))
    return ids


def _added(content: str) -> dict[str, Any]:
    return {"content": content, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
            "special": True}


def tiny_arch(model_type: str = "llada", *, layers: int = 2, hidden: int = 64, heads: int = 4,
              kv_heads: int | None = None, mlp: int = 160, max_position: int = 512) -> ArchConfig:
    """The ArchConfig of a tiny model of the format, sized to its tiny tokenizer's vocabulary."""
    n_tokens = 256 + len(SPECIALS[model_type])
    if model_type == "llada":
        return ArchConfig(vocab_size=(n_tokens + 7) // 8 * 8, valid_vocab=n_tokens, hidden_size=hidden,
                          num_layers=layers, num_heads=heads, num_kv_heads=kv_heads or heads, head_dim=hidden // heads,
                          intermediate_size=mlp, norm_eps=1e-5, rope_theta=500000.0, max_position=max_position)
    return ArchConfig(vocab_size=n_tokens, hidden_size=hidden, num_layers=layers, num_heads=heads,
                      num_kv_heads=kv_heads or max(1, heads // 2), head_dim=hidden // heads, intermediate_size=mlp,
                      norm_eps=1e-6, rope_theta=1000000.0, max_position=max_position, qkv_bias=True,
                      rope_full_precision=False)


def random_model(arch: ArchConfig, seed: int = 0, std: float = 0.2,
                 model_class: type[Transformer] = Transformer) -> Transformer:
    """A Transformer with random weights (biases and norm weights random too, so nothing is trivially 0/1)."""
    model = model_class(arch)
    g = torch.Generator().manual_seed(seed)
    init_weights(model, std=std, generator=g)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def write_tiny_checkpoint(folder: str | Path, model_type: str = "llada", *, seed: int = 0,
                          dtype: torch.dtype = torch.float32, max_shard_bytes: int = 96 * 1024,
                          std: float = 0.2, **arch_kwargs: Any) -> Path:
    """Write a tiny random checkpoint of ``model_type`` into ``folder``; return it. "llada" and "Dream" here;
    the block-diffusion formats "llada2_moe", "sdar" and "sdar_moe" and the MoE format "llada_moe" in
    :mod:`dlm.testing_block`."""
    from .testing_block import FORMATS, write_block_checkpoint

    if model_type in FORMATS:
        return write_block_checkpoint(folder, model_type, seed=seed, dtype=dtype, max_shard_bytes=max_shard_bytes,
                                      std=std, **arch_kwargs)
    folder = Path(folder)
    ids = write_tokenizer(folder, model_type)
    arch = tiny_arch(model_type, **arch_kwargs)
    model = random_model(arch, seed=seed, std=std)
    if model_type == "llada":
        special = SpecialIds(mask_id=ids["<|mdm_mask|>"], eos_id=ids["<|endoftext|>"], pad_id=ids["<|endoftext|>"],
                             bos_id=ids["<|startoftext|>"])
    else:
        special = SpecialIds(mask_id=ids["<|mask|>"], eos_id=ids["<|endoftext|>"], pad_id=ids["<|endoftext|>"],
                             bos_id=ids["<|endoftext|>"])
    save_checkpoint(model, MODELS.get(model_type), special, folder, dtype=dtype, max_shard_bytes=max_shard_bytes,
                    extra_config={"max_sequence_length": arch.max_position} if model_type == "llada" else None)
    return folder
