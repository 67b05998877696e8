"""What generate accepts as prompts, and the ConfigError (naming the type) for everything else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dlm.errors import ConfigError
from dlm.prompts import normalize


def test_accepted_forms_give_the_same_ids(llada):
    text = llada.encode("add: 1+2 =")
    assert text == llada.encode(["add: 1+2 ="]) == llada.encode(("add: 1+2 =",))
    ids = text[0]
    assert llada.encode([ids]) == llada.encode(ids) == llada.encode([tuple(ids)]) == [ids]
    assert llada.encode(torch.tensor(ids)) == llada.encode(torch.tensor([ids])) == [ids]
    assert llada.encode(torch.tensor([ids], dtype=torch.int32)) == [ids]
    assert llada.encode([[np.int64(t) for t in ids]]) == [ids]
    two = llada.encode(["a", "bc"])
    assert len(two) == 2 and two[0] != two[1]
    assert llada.encode([ids, "bc", [5]]) == [ids, two[1], [5]]  # strings and id lists may be mixed


@pytest.mark.parametrize(
    "prompts, message",
    [
        (b"add: 1+2 =", r"got bytes; decode bytes to str"),
        ([b"add: 1+2 ="], r"prompt 0 must be a string or a list of token ids; got bytes"),
        ({"prompt": "x"}, r"got dict; pass the text itself"),
        ([{"prompt": "x"}], r"prompt 0 .* got dict"),
        ([[1.9, 568.7]], r"prompt 0 must be a list of integer token ids; it holds float 1.9"),
        ([[1, 2.0]], r"it holds float 2.0"),
        ([[True, 3]], r"it holds bool True"),
        (torch.tensor([[1.9, 568.7]]), r"integer token ids; got dtype torch.float32; floats are never rounded"),
        (torch.tensor([[True]]), r"got dtype torch.bool"),
        (torch.ones(1, 2, 3, dtype=torch.long), r"1-D \(one prompt\) or 2-D .* got 3-D with shape \[1, 2, 3\]"),
        (torch.tensor(5), r"got 0-D"),
        (None, r"prompts must be a string, .*; got NoneType"),
        (5, r"got int"),
        (1.5, r"got float"),
        (["a", 5], r"prompt 1 must be a string or a list of token ids; got int"),
        ([["a"]], r"prompt 0 must be a list of integer token ids; it holds str 'a'"),
        (np.array([[1, 2]]), r"got numpy.ndarray; pass array.tolist\(\)"),
        ({1, 2}, r"got set"),
    ],
)
def test_everything_else_is_a_config_error_naming_the_type(llada, prompts, message):
    with pytest.raises(ConfigError, match=message):
        llada.encode(prompts)
    with pytest.raises(ConfigError, match=message):  # the same check guards generate
        llada.generate(prompts, gen_length=8)


def test_ids_are_checked_against_the_model(llada, dream):
    vocab = llada.arch.valid_vocab or llada.arch.vocab_size
    with pytest.raises(ConfigError, match=rf"prompt 1 has token id\(s\) \[{vocab}\] outside the vocabulary"):
        llada.encode([[1], [2, vocab]])
    with pytest.raises(ConfigError, match=r"outside the vocabulary"):
        llada.encode([[-1]])
    with pytest.raises(ConfigError, match="contains the mask token id"):
        llada.encode([[1, llada.ids.mask_id]])
    with pytest.raises(ConfigError, match="prompt 0 is empty"):
        dream.encode([[]])  # shifted logits: the first answer position is predicted from the prompt's last token
    assert llada.encode([[]]) == [[]]


def test_normalize_never_touches_a_tokenizer():
    assert normalize("x") == ["x"]
    assert normalize([]) == []
    assert normalize([3, 4]) == [[3, 4]]
    assert normalize(torch.tensor([[1, 2], [3, 4]])) == [[1, 2], [3, 4]]


def test_text_needs_a_tokenizer(llada):
    from dlm.prompts import encode

    with pytest.raises(ConfigError, match="has no tokenizer"):
        encode("hi", None, vocab_size=10, mask_id=9)
