"""The project's tokenizer: byte-level BPE trained with the ``tokenizers`` library.

Pre-tokenisation splits every digit into its own piece (so numbers are read digit by digit, which arithmetic
needs) and then applies GPT-2's byte-level regex, so any text, code included, round-trips exactly. The special
tokens come first in the vocabulary: ``<|endoftext|>`` (EOS, also padding), ``<|startoftext|>`` (BOS, added in
front of every encoded text by the post-processor, as LLaDA's tokenizer does), ``<|eot_id|>`` (end of turn, a stop
token) and ``<|mdm_mask|>`` (the diffusion mask). The folder written by :func:`save_tokenizer` holds
``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` and loads with transformers'
``AutoTokenizer`` (a ``PreTrainedTokenizerFast``) without remote code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

BOS, EOS, EOT, MASK = "<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"
SPECIAL_TOKENS = (EOS, BOS, EOT, MASK)
MIN_VOCAB, MAX_VOCAB = 300, 65536


@dataclass(frozen=True)
class TokenIds:
    """Ids of the special tokens of a trained tokenizer."""

    bos: int
    eos: int
    eot: int
    mask: int

    @property
    def pad(self) -> int:
        return self.eos


def _pipeline():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` of ``vocab_size`` tokens (specials included) on ``texts``."""
    from tokenizers import AddedToken, processors, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise ValueError(f"vocab_size must be an integer in [{MIN_VOCAB}, {MAX_VOCAB}] (8192-16384 for the shipped "
                         f"models), got {vocab_size!r}")
    tok = _pipeline()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=[AddedToken(s, special=True, normalized=False) for s in SPECIAL_TOKENS],
        initial_alphabet=ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, bos)])
    return tok


def token_ids(tok: Any) -> TokenIds:
    """Special-token ids of a ``tokenizers.Tokenizer`` or a transformers tokenizer."""
    get = tok.token_to_id if hasattr(tok, "token_to_id") else tok.convert_tokens_to_ids
    ids = {s: get(s) for s in SPECIAL_TOKENS}
    missing = [s for s, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"the tokenizer lacks the special token(s) {missing}")
    return TokenIds(bos=ids[BOS], eos=ids[EOS], eot=ids[EOT], mask=ids[MASK])


def save_tokenizer(tok: Any, folder: str | os.PathLike, model_max_length: int = 1024) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    ids = token_ids(tok)
    added = {str(getattr(ids, k)): {"content": s, "lstrip": False, "rstrip": False, "normalized": False,
                                    "single_word": False, "special": True}
             for k, s in (("eos", EOS), ("bos", BOS), ("eot", EOT), ("mask", MASK))}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "mask_token": MASK,
        "model_max_length": model_max_length, "clean_up_tokenization_spaces": False, "padding_side": "right",
        "add_bos_token": True, "added_tokens_decoder": added,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "mask_token": MASK}, indent=2))
    return folder


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_tokenizer(folder: str | os.PathLike):
    """The tokenizer of ``folder`` as transformers loads it (``AutoTokenizer``, no remote code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)


def load_fast(folder: str | os.PathLike):
    """The raw ``tokenizers.Tokenizer`` of ``folder`` (fast batch encoding for data preparation)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
