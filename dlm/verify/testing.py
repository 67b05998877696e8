"""Tiny causal verifiers for tests, examples and CPU benchmarks of ``verify="causal"`` (nothing downloaded).

:func:`write_tiny_causal` writes a random ``transformers`` Llama causal LM next to a copy of a tiny diffusion
checkpoint's tokenizer files, so the folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and shares the
diffusion model's vocabulary.

Two random models agree on a next token about once in |V| tries, so a verifier test on them would accept almost
no drafts and could not tell a correct acceptance rule from one that accepts nothing. :func:`prefer_token` gives a
model a shared, *context-dependent* preference: a constant direction is added to every token embedding and the
head row of one token (``prefer``) reads it. The token is then the argmax at most positions, yet the random
weights still win at some: drafts are accepted for a while and rejected somewhere, and the causal model's own
greedy text varies with the prompt. An ``eos`` preference, weaker, makes answers end at varying lengths.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


def _prefer(embed: torch.Tensor, head: torch.Tensor, outputs: list[torch.Tensor], prefs: dict[int, float],
            offset: float) -> None:
    with torch.no_grad():
        embed[:, 0] = offset  # a constant direction in every input...
        for w in outputs:
            w[0] = 0.0  # ...that no layer writes to, so it reaches the final norm unchanged (scaled by 1/rms)
        for token, strength in prefs.items():
            head[token] = 0.2 * head[token]
            head[token, 0] = strength


def prefer_token(lm, prefs: dict[int, float], offset: float = 1.0) -> None:
    """Give a loaded :class:`~dlm.models.DiffusionLM` (in memory) a preference for the tokens ``prefs``
    (token id -> strength of the head's read-out of the shared embedding direction)."""
    model = lm.model
    outputs = [w for layer in model.layers for w in (layer.o.weight, layer.down.weight)]
    _prefer(model.embed.weight, model.head_weight(), outputs, prefs, offset)


def tiny_causal_model(vocab_size: int, eos_id: int, bos_id: int | None = None, *, seed: int = 0, layers: int = 2,
                      hidden: int = 64, heads: int = 4, std: float = 0.2, prefs: dict[int, float] | None = None,
                      offset: float = 1.0, max_position: int = 512):
    """A tiny random ``transformers.LlamaForCausalLM`` (in memory) over ``vocab_size`` tokens; ``prefs``/``offset``:
    see :func:`prefer_token`. Its generation config stops at ``eos_id``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden + 32,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_position, rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=eos_id)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    if prefs:
        outputs = [w for layer in model.model.layers
                   for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight)]
        _prefer(model.model.embed_tokens.weight, model.lm_head.weight, outputs, prefs, offset)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = eos_id
    model.generation_config.bos_token_id = bos_id
    return model.eval()


def write_tiny_causal(folder: str | Path, tokenizer_from: str | Path, **kwargs) -> Path:
    """Write a tiny random ``LlamaForCausalLM`` (:func:`tiny_causal_model`, same keyword arguments) into ``folder``
    with a copy of the tokenizer files of the checkpoint ``tokenizer_from``, sized to that tokenizer and stopping
    at its EOS."""
    from transformers import AutoTokenizer

    folder, src = Path(folder), Path(tokenizer_from)
    folder.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    tok = AutoTokenizer.from_pretrained(str(folder))
    model = tiny_causal_model(len(tok), tok.eos_token_id, tok.bos_token_id, **kwargs)
    model.save_pretrained(str(folder))
    (folder / "dlm_tiny_causal.json").write_text(json.dumps({k: v for k, v in kwargs.items()}, default=str))
    return folder
