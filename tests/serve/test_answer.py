"""AnswerText: the final prefix of an answer, its text emitted only when it decodes cleanly."""

from __future__ import annotations

import random

import pytest

from dlm.serve.answer import AnswerText


@pytest.fixture(scope="module")
def tok(model):
    return model.tokenizer


def grow(answer: AnswerText, ids: list[int], mask: int, gen_length: int, order: list[int]) -> list[str]:
    """Commit ``ids`` position by position in ``order``; the text deltas after each commit."""
    row = [mask] * gen_length
    deltas = []
    for p in order:
        row[p] = ids[p]
        text, _ = answer.update(row)
        deltas.append(text)
    return deltas


def test_text_grows_with_the_left_to_right_prefix_only(model, tok):
    mask = model.ids.mask_id
    ids = tok("    return a + b\n", add_special_tokens=False)["input_ids"]
    answer = AnswerText(tok, mask, model.ids.stop_ids, max_tokens=len(ids))
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    deltas = grow(answer, ids, mask, len(ids), order)
    committed, before = set(), 0
    for p, delta in zip(order, deltas):
        committed.add(p)
        prefix = 0
        while prefix in committed:
            prefix += 1
        if prefix == before:
            assert delta == "", "text may grow only when the contiguous prefix grows"
        before = prefix
    assert "".join(deltas) == tok.decode(ids) and answer.finish_reason == "length" and answer.ids == ids


def test_multi_byte_characters_are_never_cut(model, tok):
    text = "s = 'é 😀 ü'\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tok.decode(ids[:k]) for k in range(len(ids))), "the test needs a split character"
    answer = AnswerText(tok, model.ids.mask_id, model.ids.stop_ids, max_tokens=len(ids))
    deltas = grow(answer, ids, model.ids.mask_id, len(ids), list(range(len(ids))))
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == text


def test_stop_token_ends_the_answer(model, tok):
    eos = model.ids.eos_id
    ids = tok("    return a", add_special_tokens=False)["input_ids"]
    row = ids + [eos] + ids
    answer = AnswerText(tok, model.ids.mask_id, model.ids.stop_ids, max_tokens=len(row))
    text, new = answer.update(row)
    assert text == "    return a" and new == ids and answer.finish_reason == "stop"
    assert answer.update(row) == ("", [])


def test_max_tokens_caps_the_answer(model, tok):
    ids = tok("    return a + b\n", add_special_tokens=False)["input_ids"]
    answer = AnswerText(tok, model.ids.mask_id, model.ids.stop_ids, max_tokens=3)
    text, new = answer.update(ids + [model.ids.mask_id] * 4)
    assert new == ids[:3] and text == tok.decode(ids[:3]) and answer.finish_reason == "length"


def test_stop_strings_cut_the_text_and_are_held_back(model, tok):
    ids = tok("x = 1\n    return a + b\n", add_special_tokens=False)["input_ids"]
    answer = AnswerText(tok, model.ids.mask_id, model.ids.stop_ids, max_tokens=len(ids), stops=("return a",))
    deltas = grow(answer, ids, model.ids.mask_id, len(ids), list(range(len(ids))))
    streamed = "".join(deltas)
    assert streamed == "x = 1\n    " and answer.finish_reason == "stop"
    assert not any("ret" in d for d in deltas), "a possible start of the stop string is held back"
    assert tok.decode(answer.ids).startswith(streamed) and len(answer.ids) < len(ids)


def test_without_a_tokenizer_ids_only(model):
    answer = AnswerText(None, model.ids.mask_id, model.ids.stop_ids, max_tokens=8)
    text, new = answer.update([5, 6, model.ids.mask_id, 7])
    assert (text, new, answer.complete) == ("", [5, 6], False)
    text, new = answer.update([5, 6, 9, 7, model.ids.eos_id])
    assert (text, new, answer.finish_reason) == ("", [9, 7], "stop")
