"""The reference samplers of tests/block_samplers.py on scripted logits, where every commit and edit is known."""

from __future__ import annotations

import math

import torch

import dlm
from dlm.models.layers import block_causal_mask
from dlm.models.transformer import DenseAttention
from dlm.testing import write_tiny_checkpoint

from ..block_samplers import llada2_generate, llada21_generate, sdar_generate

V, MASK, EOS = 32, 31, 30


def scripted(rule):
    """A logits function whose softmax at position p puts ``prob`` on ``token`` for (token, prob) = rule(ids, p),
    the rest spread evenly over the other tokens but the mask; it records the windows it is called on."""
    calls: list[torch.Tensor] = []

    def fn(ids: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        L = ids.shape[1]
        assert allowed.shape == (1, L, L) and torch.equal(allowed[0, -1], torch.ones(L, dtype=torch.bool))
        calls.append(ids[0].clone())
        out = torch.empty(1, L, V, dtype=torch.float64)
        for p in range(L):
            token, prob = rule(ids[0], p)
            out[0, p] = math.log((1 - prob) / (V - 2))
            out[0, p, token] = math.log(prob)
            out[0, p, MASK] = float("-inf")
        return out
    return fn, calls


def test_llada2_quota_commits_the_most_confident_masks():
    fn, calls = scripted(lambda ids, p: (5 + p % 3, 0.1 + 0.01 * p))  # later positions are more confident
    prompt = torch.tensor([[1, 2]])
    out = llada2_generate(fn, prompt, mask_id=MASK, eos_id=EOS, gen_length=8, block_length=4, steps=2)
    # canvas ceil(10 / 4) = 3 blocks; block 0 holds the prompt and 2 masks (quota 2: one step), then 2 steps each
    assert [len(c) for c in calls] == [4, 8, 8, 12, 12]
    assert calls[2][4:6].tolist() == [MASK, MASK] and calls[2][6:8].tolist() == [5 + 6 % 3, 5 + 7 % 3]
    assert out.tolist() == [[5 + p % 3 for p in range(2, 10)]]


def test_llada2_threshold_commits_a_block_at_once_and_stops_after_eos():
    fn, calls = scripted(lambda ids, p: (EOS if p == 6 else 7, 0.99))
    out = llada2_generate(fn, torch.tensor([[1, 2]]), mask_id=MASK, eos_id=EOS, gen_length=8, block_length=4,
                          steps=4)
    assert len(calls) == 2  # one step per block; the block holding EOS is the last
    assert out.tolist() == [[7, 7, 7, 7, EOS]]  # cut after the first EOS


def test_llada21_edits_committed_tokens_never_the_prompt():
    def rule(ids, p):
        if p < 2:
            return 9, 0.99  # confident, different from the prompt: never applied
        return {MASK: (7, 0.6 + 0.01 * p), 7: (8, 0.95), 8: (8, 0.99)}[int(ids[p])]

    fn, calls = scripted(rule)
    out = llada21_generate(fn, torch.tensor([[1, 2]]), mask_id=MASK, eos_id=EOS, gen_length=2, block_length=4)
    # step 1 commits position 3 (most confident mask); step 2 commits 2 and edits 3 (7 -> 8); step 3 (no mask left)
    # edits 2; step 4 edits nothing and ends the block
    assert [c.tolist() for c in calls] == [[1, 2, MASK, MASK], [1, 2, MASK, 7], [1, 2, 7, 8], [1, 2, 8, 8]]
    assert out.tolist() == [[8, 8]]
    fn, calls = scripted(rule)
    llada21_generate(fn, torch.tensor([[1, 2]]), mask_id=MASK, eos_id=EOS, gen_length=2, block_length=4,
                     max_post_steps=1)
    assert len(calls) == 3  # the second step without masks is not run


def test_sdar_dynamic_threshold_and_stop_ids():
    fn, calls = scripted(lambda ids, p: (EOS if p == 9 else 4, 0.9))
    x = sdar_generate(fn, torch.tensor([[1, 2, 3]]), MASK, gen_length=12, block_length=4, denoising_steps=4,
                      temperature=0.0, stopping_criteria_idx=[EOS])
    assert len(calls) == 3  # every mask of a block over 0.85 at once; stop after the block holding EOS
    assert x.tolist() == [[1, 2, 3, 4, 4, 4, 4, 4, 4, EOS, 4, 4] + [MASK] * 4]


def test_sdar_sampling_is_reproducible_with_a_generator():
    fn, _ = scripted(lambda ids, p: (p % 5, 0.5))
    runs = [sdar_generate(fn, torch.tensor([[1]]), MASK, gen_length=8, block_length=4, denoising_steps=2,
                          generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1]) and not (runs[0] == MASK).any()


def test_samplers_run_on_a_tiny_checkpoint(tmp_path):
    lm = dlm.load(write_tiny_checkpoint(tmp_path / "m", "llada2_moe", seed=2), device="cpu")

    def fn(ids, allowed):
        pos = torch.arange(ids.shape[1])[None]
        assert torch.equal(allowed, block_causal_mask(pos, pos, None, 8))
        out = lm.model(ids, pos, attention=DenseAttention(None, allowed))
        out[..., lm.ids.mask_id] = float("-inf")
        return out

    prompt = torch.tensor([[10, 11, 12]])
    out = llada2_generate(fn, prompt, mask_id=lm.ids.mask_id, eos_id=lm.ids.eos_id, gen_length=12, block_length=8,
                          steps=4)
    assert 1 <= out.shape[1] <= 12 and not (out == lm.ids.mask_id).any()
    out = llada21_generate(fn, prompt, mask_id=lm.ids.mask_id, eos_id=lm.ids.eos_id, gen_length=12, block_length=8)
    assert not (out == lm.ids.mask_id).any()
