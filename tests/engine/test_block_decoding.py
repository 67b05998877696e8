"""Block-diffusion models (LLaDA2.x, SDAR) in the engine: the official samplers token for token, the exact block
cache, batch invariance, token editing's invariants.

The official samplers are the literal re-implementations of tests/block_samplers.py (full recomputation of the
window at every step under the block-causal mask, batch size 1). The tiny random models get -inf logits on the
mask token, as those samplers would otherwise "commit" it (see that module's docstring); dlm never does.
"""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.testing import write_tiny_checkpoint

from ..block_samplers import llada2_generate, llada21_generate, sdar_generate
from ..conftest import random_prompts


class NoMask(torch.nn.Module):
    """The model with -inf logits on the mask token (what trained checkpoints effectively do)."""

    def __init__(self, model, mask_id: int):
        super().__init__()
        self.inner, self.mask_id = model, mask_id

    def forward(self, *args, **kwargs):
        logits = self.inner(*args, **kwargs).clone()
        logits[..., self.mask_id] = float("-inf")
        return logits

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)


@pytest.fixture(scope="module", params=["llada2_moe", "sdar"])
def block_lm(request, tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=7, std=1.0)
    lm = dlm.load(path, device="cpu")
    lm.model = NoMask(lm.model, lm.ids.mask_id)
    return lm


def logits_fn(lm):
    def fn(ids, mask):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        return lm.model(ids, pos, key_mask=mask).float()

    return fn


def first_stop(row: list[int], stops) -> list[int]:
    cut = next((i for i, t in enumerate(row) if t in stops), len(row) - 1)
    return row[: cut + 1]


def block_of(lm) -> int:
    return 8 if lm.model_type == "sdar" else 32


# ------------------------------------------------------------------------------------------------ official samplers
@pytest.mark.parametrize("temperature,top_k,top_p", [(0.0, None, None), (0.8, None, None), (1.0, 20, 0.9)])
@pytest.mark.parametrize("cache", ["none", "dual"])
def test_threshold_decoding_equals_the_official_sampler(block_lm, temperature, top_k, top_p, cache):
    """LLaDA2.0's block-wise threshold decoding (SDAR's low_confidence_dynamic is the same rule) token for token,
    with the block cache too; prompts of lengths that end inside a block and on a boundary."""
    lm = block_lm
    block = block_of(lm)
    eos = lm.ids.eos_id
    for trial, plen in enumerate((3, block, block + 5)):
        prompt = random_prompts(lm, 1, seed=30 + trial, min_len=plen, max_len=plen)[0]
        gen, steps = 2 * block, block // 2
        ref = llada2_generate(logits_fn(lm), torch.tensor([prompt]), mask_id=lm.ids.mask_id, eos_id=eos,
                              gen_length=gen, block_length=block, steps=steps, threshold=0.6,
                              temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=torch.Generator().manual_seed(trial))
        cfg = GenerationConfig(gen_length=gen, block_length=block, steps=steps * 2, scheduler="block_threshold",
                               scheduler_kwargs={"threshold": 0.6}, temperature=temperature, top_k=top_k,
                               top_p=top_p, seed=trial, cache=cache, stop_token_ids=(eos,))
        out = lm.generate([prompt], cfg)
        assert first_stop(out.sequences[0].tolist(), {eos}) == ref[0].tolist(), (trial, plen)


@pytest.mark.parametrize("strategy,sdar_name", [("dynamic", "low_confidence_dynamic"),
                                                ("static", "low_confidence_static"), ("sequential", "sequential")])
def test_sdar_strategies_equal_the_official_sampler(block_lm, strategy, sdar_name):
    lm = block_lm
    block = block_of(lm)
    eos = lm.ids.eos_id
    for trial in range(3):
        prompt = random_prompts(lm, 1, seed=50 + trial, min_len=2, max_len=block + 3)[0]
        ref = sdar_generate(logits_fn(lm), torch.tensor([prompt]), lm.ids.mask_id, gen_length=2 * block,
                            block_length=block, denoising_steps=block, temperature=1.0,
                            remasking_strategy=sdar_name, confidence_threshold=0.5, stopping_criteria_idx=[eos],
                            generator=torch.Generator().manual_seed(trial))[0, len(prompt):].tolist()
        cfg = GenerationConfig(gen_length=2 * block, block_length=block, steps=2 * block, scheduler="block_threshold",
                               scheduler_kwargs={"threshold": 0.5, "strategy": strategy}, temperature=1.0, seed=trial,
                               stop_token_ids=(eos,))
        out = lm.generate([prompt], cfg)
        got = out.sequences[0].tolist()
        assert first_stop(got, {eos}) == first_stop(ref[: len(got)], {eos}), (strategy, trial)


@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_token_editing_equals_llada21(block_lm, cache):
    """LLaDA2.1: commits and edits of a step from one forward, blocks held while edits happen."""
    lm = block_lm
    block = block_of(lm)
    eos = lm.ids.eos_id
    edited = 0
    for trial in range(4):
        prompt = random_prompts(lm, 1, seed=70 + trial, min_len=3, max_len=block + 2)[0]
        kw = dict(threshold=0.7, editing_threshold=0.3, max_post_steps=3, num_to_transfer=2)
        ref = llada21_generate(logits_fn(lm), torch.tensor([prompt]), mask_id=lm.ids.mask_id, eos_id=eos,
                               gen_length=2 * block, block_length=block, **kw)
        cfg = GenerationConfig(gen_length=2 * block, block_length=block, scheduler="edit_threshold",
                               scheduler_kwargs=kw, stop_at_eos=False, cache=cache, stop_token_ids=(eos,),
                               return_trace=True)
        out = lm.generate([prompt], cfg)
        assert first_stop(out.sequences[0].tolist(), {eos}) == ref[0].tolist(), trial
        plain = lm.generate([prompt], cfg.replace(scheduler_kwargs={**kw, "editing_threshold": 1.0}))
        edited += not torch.equal(plain.sequences, out.sequences)  # the edits changed the answer
    assert edited, "no edit changed an answer: the test would not exercise editing"


# ------------------------------------------------------------------------------------------------ engine properties
@pytest.mark.parametrize("scheduler,kwargs", [("low_confidence", {}), ("threshold", {"threshold": 0.7}),
                                              ("block_threshold", {}), ("early_commit", {"early": 1.0}),
                                              ("learned_filter", {}), ("edit_threshold", {"editing_threshold": 0.5})])
def test_block_cache_is_exact_and_batch_invariant(block_lm, scheduler, kwargs):
    """The block cache gives the no-cache answer token for token, and every request the answer it gets alone."""
    lm = block_lm
    block = block_of(lm)
    prompts = random_prompts(lm, 4, seed=9, min_len=1, max_len=2 * block)
    base = GenerationConfig(gen_length=2 * block, block_length=block, scheduler=scheduler, scheduler_kwargs=kwargs,
                            return_trace=True)
    ref = lm.generate(prompts, base)
    for cache in ("prefix", "dual"):
        out = lm.generate(prompts, base.replace(cache=cache))
        assert torch.equal(out.sequences, ref.sequences), cache
        assert out.stats["fed_positions"] < ref.stats["fed_positions"]
    for r, p in enumerate(prompts):
        alone = lm.generate([p], base.replace(cache="dual"))
        assert torch.equal(alone.sequences[0], ref.sequences[r])


def test_eotp_and_stops_on_block_models(block_lm):
    lm = block_lm
    block = block_of(lm)
    prompts = random_prompts(lm, 3, seed=4, min_len=2, max_len=block)
    cfg = GenerationConfig(gen_length=4 * block, block_length=block, scheduler="threshold", eotp=True,
                           eotp_threshold=0.5, cache="dual")
    out = lm.generate(prompts, cfg)
    for row in out.sequences.tolist():
        assert lm.ids.mask_id not in row
        cut = next((i for i, t in enumerate(row) if t in lm.ids.stop_ids), len(row))
        assert all(t == lm.ids.eos_id for t in row[cut + 1:])


def test_editing_is_refused_with_eotp_and_held_blocks_are_bounded(block_lm):
    lm = block_lm
    with pytest.raises(dlm.ConfigError, match="eotp=True does not combine with the editing scheduler"):
        lm.generate([[5, 6]], GenerationConfig(gen_length=block_of(lm), scheduler="edit_threshold", eotp=True))
    # editing_threshold 0 edits whatever changes: blocks are held, never longer than max_post_steps
    block = block_of(lm)
    cfg = GenerationConfig(gen_length=2 * block, block_length=block, scheduler="edit_threshold", stop_at_eos=False,
                           scheduler_kwargs={"editing_threshold": 0.0, "max_post_steps": 2}, return_trace=True)
    out = lm.generate(random_prompts(lm, 3, seed=2, min_len=2, max_len=9), cfg)
    for steps in out.trace.block_steps:
        assert all(s <= block + 2 for s in steps), steps
