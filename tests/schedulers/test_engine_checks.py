"""The engine's run-time checks of scheduler invariants: a broken scheduler is stopped with an error naming it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import dlm
from dlm.schedulers import Decision, Scheduler
from dlm.schedulers.low_confidence import LowConfidence

from .invariants import PROMPTS, check_run, record


class CommitsNothing(Scheduler):
    """Broken on purpose: never commits."""

    def step(self, cand, view, state):
        return Decision(torch.zeros_like(view.masked)), state


class CommitsOutside(Scheduler):
    """Broken on purpose: commits the first masked position after the block, without finishing."""

    full_region = True

    def step(self, cand, view, state):
        commit = torch.zeros_like(view.masked)
        outside = view.masked & ~view.in_block
        first = outside.long().argmax(1)
        commit[torch.arange(commit.shape[0]), first] = outside.any(1)
        commit |= view.masked_in_block  # and the block, so the "nothing committed" check stays quiet
        return Decision(commit), state


class FinishesWithoutRegion(LowConfidence):
    """Broken on purpose: finishes rows but sees only the block."""

    def step(self, cand, view, state):
        d, state = super().step(cand, view, state)
        return Decision(d.commit, torch.ones_like(view.active)), state


def gen(lm, name, **kw):
    return lm.generate(PROMPTS, dlm.GenerationConfig(gen_length=16, block_length=8, scheduler=name, **kw))


def test_a_scheduler_that_commits_nothing_is_stopped(peaky, registered):
    registered("test_commits_nothing", CommitsNothing)
    with pytest.raises(dlm.SchedulerError, match=r"'test_commits_nothing' committed nothing in request \d+ at step 0"):
        gen(peaky, "test_commits_nothing")


def test_a_scheduler_that_commits_outside_the_block_is_stopped(peaky, registered):
    registered("test_commits_outside", CommitsOutside)
    with pytest.raises(dlm.SchedulerError, match="'test_commits_outside' committed positions outside the active block"):
        gen(peaky, "test_commits_outside")


def test_finish_needs_full_region(peaky, registered):
    registered("test_finish_no_region", FinishesWithoutRegion)
    with pytest.raises(dlm.SchedulerError, match="'test_finish_no_region' set Decision.finish but is not full_region"):
        gen(peaky, "test_finish_no_region")


def test_an_unregistered_subclass_is_named_by_its_own_class():
    class Sub(LowConfidence):
        pass

    assert LowConfidence().name == "low_confidence"
    assert Sub().name == "Sub"


def test_finishing_rows_get_the_stop_at_eos_fill(peaky):
    # early_commit at the first step: each row's answer after its first stop token is EOS, as for any stopped row
    cfg = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="early_commit", stop_at_eos=False,
                               scheduler_kwargs={"early": 0.0, "mid": 0.0, "late": 0.0})
    free = peaky.generate(PROMPTS, cfg)
    stop = int(free.sequences[0, 5])  # make a token the answer contains a stop token
    out = peaky.generate(PROMPTS, cfg.replace(stop_at_eos=True, stop_token_ids=(stop,)))
    assert out.nfe.tolist() == [1, 1, 1]
    for row, raw in zip(out.sequences.tolist(), free.sequences.tolist()):
        cut = raw.index(stop) if stop in raw else len(raw)
        assert row[: cut + 1] == raw[: cut + 1]
        assert all(t == peaky.ids.eos_id for t in row[cut + 1:])
    assert out.sequences[0, 6:].eq(peaky.ids.eos_id).all()


def test_the_invariant_checker_catches_a_changed_token(peaky):
    # the common tests are only as good as their checker: tamper with a recorded run and expect a failure
    cfg = dlm.GenerationConfig(gen_length=16, block_length=8, scheduler="low_confidence", return_trace=True,
                               stop_at_eos=False)
    run = record(peaky, PROMPTS, cfg)
    check_run(run, peaky, cfg, "low_confidence")
    ev = run.events[0][5]
    pos = int(run.events[0][0].committed.nonzero()[0])
    tokens = ev.tokens.clone()
    tokens[pos] = (tokens[pos] + 1) % 200
    run.events[0][5] = dataclasses.replace(ev, tokens=tokens)
    with pytest.raises(AssertionError, match="changed a committed token"):
        check_run(run, peaky, cfg, "low_confidence")


def test_the_mask_token_is_never_a_candidate(peaky):
    # a model that wants to predict the mask token everywhere still decodes: the mask id is banned
    cfg = dlm.GenerationConfig(gen_length=16, block_length=8, return_trace=True)
    model = peaky.model
    mask = peaky.ids.mask_id

    class MaskLover(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, *args, **kwargs):
            logits = model(*args, **kwargs)
            logits[..., mask] = logits.amax(-1) + 5.0
            return logits

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(model, name)

    peaky.model = MaskLover()
    try:
        run = record(peaky, PROMPTS, cfg)
    finally:
        peaky.model = model
    check_run(run, peaky, cfg, "low_confidence")
