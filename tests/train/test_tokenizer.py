"""The project's tokenizer: exact round trips, special tokens, digits, loading with AutoTokenizer."""

from __future__ import annotations

import pytest

from dlm.train.tokenizer import BOS, EOS, EOT, MASK, load_fast, load_tokenizer, token_ids, train_tokenizer

TEXTS = [
    "def f(x):\n\treturn x  # tab, two spaces\n",
    "naïve café — 世界 😀 \\n\r\n trailing   ",
    "add: 4821+975 = 5796",
    "",
]


def test_round_trip_and_specials(small_tokenizer):
    tok = load_tokenizer(small_tokenizer)
    assert type(tok).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    ids = token_ids(tok)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, EOS)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (ids.bos, ids.eos, ids.eos)
    assert tok.convert_tokens_to_ids(MASK) == ids.mask and tok.convert_tokens_to_ids(EOT) == ids.eot
    assert len({ids.bos, ids.eos, ids.eot, ids.mask}) == 4
    for text in TEXTS:
        enc = tok(text)["input_ids"]
        assert enc[0] == ids.bos  # BOS in front, as the engine's prompts get it
        assert tok.decode(enc, skip_special_tokens=True) == text
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # special tokens inside text are single tokens and survive decoding
    text = f"a{MASK}b{EOT}{EOS}"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.mask in enc and ids.eot in enc and enc[-1] == ids.eos
    assert tok.decode(enc) == text
    assert tok.decode(enc, skip_special_tokens=True) == "ab"


def test_digits_are_single_tokens(small_tokenizer):
    fast = load_fast(small_tokenizer)
    enc = fast.encode("add: 4821+975 =", add_special_tokens=False)
    digits = [t for t in enc.tokens if any(c.isdigit() for c in t)]
    assert digits == list("4821975")


def test_vocab_size_is_checked():
    with pytest.raises(ValueError, match="vocab_size must be an integer in"):
        train_tokenizer(["x"], vocab_size=100)
