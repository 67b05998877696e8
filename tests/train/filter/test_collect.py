"""Data collection for the learned filter: the recording run is the reference decode, and its labels are right."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.train.filter.collect import collect, collect_parallel
from dlm.train.filter.dataset import FilterData
from dlm.train.filter.prompts import Prompt

A, B_, C, D, X, Y = 40, 41, 42, 43, 44, 45  # byte tokens, never special ids of the tiny models

# what the "model" predicts at each forward pass for the 4 answer positions: (token, logit) per position.
# The reference (one commit per step, the most confident) commits position 0, then 2, then 1, then 3.
SCRIPT = [
    [(A, 6.0), (B_, 1.0), (C, 4.0), (D, 2.0)],  # step 0: commits 0 (A)
    [(A, 0.0), (X, 1.0), (C, 5.0), (Y, 2.0)],  # step 1: commits 2 (C)
    [(A, 0.0), (B_, 4.0), (C, 0.0), (Y, 1.0)],  # step 2: commits 1 (B)
    [(A, 0.0), (B_, 0.0), (C, 0.0), (D, 3.0)],  # step 3: commits 3 (D)
]
FINAL = [A, B_, C, D]
# labels of the still-masked positions at each step (candidate == final output), by hand
EXPECTED = [
    {0: True, 1: True, 2: True, 3: True},
    {1: False, 2: True, 3: False},
    {1: True, 3: False},
    {3: True},
]


class Scripted(torch.nn.Module):
    """The model, with the logits of the 4 answer positions replaced by SCRIPT's at each forward pass (one prompt,
    block of 4: the engine asks for exactly those 4 logits, first)."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.calls = model, 0

    def forward(self, *args, **kwargs):
        logits = self.inner(*args, **kwargs).clone()
        logits[:, :4] = -30.0
        logits[:, :4, 50] = -1.0  # a runner-up everywhere, so confidences follow the scripted logits
        for pos, (tok, value) in enumerate(SCRIPT[self.calls]):
            logits[:, pos, tok] = value
        self.calls += 1
        return logits

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


def test_labels_on_a_hand_checked_decode(tiny_llada):
    lm = tiny_llada
    model = lm.model
    lm.model = Scripted(model)
    try:
        data = collect(lm, [Prompt(ids=(72, 105, 33), gen_length=4)], block_length=4)
    finally:
        lm.model = model
    assert data.references == [FINAL]  # no stop token: the whole answer
    assert len(data) == 4 and data.step.tolist() == [0, 1, 2, 3] and data.block.tolist() == [0, 0, 0, 0]
    for s, expected in enumerate(EXPECTED):
        masked = data.masked[s].nonzero().flatten().tolist()
        assert masked == sorted(expected), f"step {s}: masked positions {masked}"
        got = {p: bool(data.label[s, p]) for p in masked}
        assert got == expected, f"step {s}"
    # the recorded confidences are the softmax probabilities of the scripted candidates
    probs = torch.softmax(torch.tensor([6.0, -1.0] + [-30.0] * (lm.arch.vocab_size - 2)), 0)
    assert float(data.confidence[0, 0]) == pytest.approx(float(probs[0]), rel=1e-5)


def test_collection_is_the_reference_decode(tiny_llada):
    lm = tiny_llada
    prompts = [Prompt(ids=(72, 101, 108, 108, 111), gen_length=8), Prompt(ids=(9, 8), gen_length=8),
               Prompt(ids=(100, 101, 102, 103), gen_length=16)]
    before = set(dlm.schedulers.names())
    data = collect(lm, prompts, block_length=4, batch_size=2)
    assert set(dlm.schedulers.names()) == before, "the recording scheduler must be unregistered afterwards"
    for p, ref in zip(prompts, data.references):
        out = lm.generate([list(p.ids)], dlm.GenerationConfig(gen_length=p.gen_length, steps=p.gen_length,
                                                              block_length=4, scheduler="low_confidence"))
        row = out.sequences[0].tolist()
        cut = next((i for i, t in enumerate(row) if t in lm.ids.stop_ids), len(row) - 1)
        assert ref == row[: cut + 1]
    # every recorded sample has a masked position; positions committed at a step are labelled right
    assert data.masked.any(1).all()
    assert data.block.max() == 3  # the 16-token prompt has four blocks of 4
    assert torch.isfinite(data.confidence[data.masked]).all()


def test_save_load_round_trip(tiny_llada, tmp_path):
    data = collect(tiny_llada, [Prompt(ids=(7, 8, 9), gen_length=8)], block_length=8)
    data.save(tmp_path / "d.safetensors")
    again = FilterData.load(tmp_path / "d.safetensors")
    for k in FilterData.TENSORS:
        assert torch.equal(getattr(data, k), getattr(again, k))
    assert again.references == data.references and again.block_length == 8


def test_parallel_collection_is_the_same_data(tiny_llada):
    prompts = [Prompt(ids=tuple(range(5 + i, 9 + 2 * i)), gen_length=8) for i in range(5)]
    one = collect(tiny_llada, prompts, block_length=4, batch_size=2)
    two = collect_parallel(str(tiny_llada.path), prompts, workers=2, block_length=4, batch_size=2)
    assert two.references == one.references and two.families == one.families
    for k in ("masked", "label", "prompt", "step", "block"):
        assert torch.equal(getattr(one, k), getattr(two, k)), k
    assert torch.allclose(one.confidence, two.confidence, atol=1e-5)


def test_loading_something_else_is_a_clear_error(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(dlm.ConfigError, match="is not filter data"):
        FilterData.load(tmp_path / "x.safetensors")
