"""End-of-text prediction (EoTP, Learn2PD arXiv:2509.25188; GenerationConfig ``eotp`` / ``eotp_threshold``).

Once a stop token is committed at answer position p (or, with ``eotp_threshold``, every mask from p on is
confidently predicted to be one), everything after p becomes EOS and is dropped from the
request's canvas at once (no longer attended to or computed). The tests force stop tokens with a test-only scheduler that edits the
candidates it is given, so that where the answer ends is known exactly; the stop token is a byte the tiny models
never predict with confidence (``STOP``), so that only the forced stops end answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import dlm
from dlm.schedulers.low_confidence import LowConfidence


class ForceCandidates(LowConfidence):
    """low_confidence, after overwriting the candidates of some answer positions at one step of a request.

    At the request's step ``at_step``, in requests whose prompt has ``prompt_len`` tokens (-1: every request):
    answer positions ``stop_from``.. get candidate ``token`` with confidence ``conf`` (except ``unsure``, which
    gets 0.5), and ``first`` gets confidence 3 so the one-per-step quota commits it (a forced stop token when
    ``stop_from == first``).
    """

    full_region = True  # see the candidates of the whole answer (the engine's EoTP prediction reads them too)

    @dataclass(frozen=True)
    class Params:
        at_step: int = 0
        prompt_len: int = -1
        stop_from: int = 5
        first: int = -1
        token: int = 0
        conf: float = 3.0
        unsure: int = -1

    def step(self, cand, view, state):
        p, b = self.params, view.block
        n = cand.tokens.shape[1]
        for row in range(n and cand.tokens.shape[0]):
            if int(view.row_steps[row]) != p.at_step or p.prompt_len not in (-1, int(b.answer_start[row])):
                continue
            off = int(b.start[row] - b.answer_start[row])  # region column = answer position - off
            lo = max(p.stop_from - off, 0)
            cand.tokens[row, lo:] = p.token
            cand.confidence[row, lo:] = p.conf
            if 0 <= p.unsure - off < n:
                cand.confidence[row, p.unsure - off] = 0.5
            if 0 <= p.first - off < n:
                cand.confidence[row, p.first - off] = 3.0
        return super().step(cand, view, state)


@pytest.fixture
def force(registered):
    registered("test_force", ForceCandidates)
    return "test_force"


STOP = 1  # never a candidate of the tiny models on these prompts


def run(lm, prompts, force, **changes):
    """Generate with ``test_force``; returns the output and the events of the first request."""
    kwargs = dict(changes.pop("force_kwargs", {}))
    kwargs.setdefault("token", STOP)
    cfg = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler=force, scheduler_kwargs=kwargs,
                               return_trace=True, stop_token_ids=(STOP,), **changes)
    events = []
    out = lm.generate(prompts, cfg, stream=events.append)
    return out, [e for e in events if e.tag == 0]


PROMPT = [[72, 105, 33, 10]]


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_committed_stop_cuts_attention_and_computation(peaky, force, stop_at_eos):
    eos, P = peaky.ids.eos_id, len(PROMPT[0])
    out, events = run(peaky, PROMPT, force, eotp=True, stop_at_eos=stop_at_eos,
                      force_kwargs={"stop_from": 5, "first": 5})
    first = events[0].tokens
    assert int(first[5]) == STOP and (first[6:] == eos).all(), "everything after the stop is EOS at once"
    assert (first[:5] == peaky.ids.mask_id).all()
    # the rest of block 0 (positions 0..4, one per step) and nothing else
    assert out.nfe.tolist() == [6] and out.trace.block_steps == [[6]]
    assert (out.sequences[0, 6:] == eos).all() and not (out.sequences[0, :5] == peaky.ids.mask_id).any()
    assert (out.trace.commit_step[0, 6:] == -1).all() and int(out.trace.commit_step[0, 5]) == 0
    # from the second forward on, the canvas ends after the stop: nothing after it is computed or attended to
    assert out.stats["fed_positions"] == (P + 32) + 5 * (P + 6)


def test_dropped_positions_do_not_influence_the_answer(peaky, force):
    # after the cut the answer is decoded exactly as if the canvas ended after the stop token
    out, _ = run(peaky, PROMPT, force, eotp=True, force_kwargs={"stop_from": 5, "first": 5})
    short = peaky.generate(PROMPT, dlm.GenerationConfig(
        gen_length=6, block_length=6, scheduler=force, scheduler_kwargs={"stop_from": 5, "first": 5, "token": STOP},
        stop_token_ids=(STOP,)))
    assert out.sequences[0, :6].tolist() == short.sequences[0].tolist()


def test_cut_rows_leave_the_other_rows_alone(peaky, force):
    prompts = [[72, 105, 33, 10], [7, 8]]
    kwargs = {"stop_from": 5, "first": 5, "prompt_len": 4}
    out, _ = run(peaky, prompts, force, eotp=True, stop_at_eos=False, force_kwargs=kwargs)
    assert out.nfe.tolist() == [6, 32]
    for r, prompt in enumerate(prompts):
        alone, _ = run(peaky, [prompt], force, eotp=True, stop_at_eos=False, force_kwargs=kwargs)
        assert alone.sequences[0].tolist() == out.sequences[r].tolist()


def test_a_later_stop_overwrites_what_follows_it(peaky, force):
    # the stop is committed at step 3, after three other commits: everything after it becomes EOS
    eos = peaky.ids.eos_id
    out, events = run(peaky, PROMPT, force, eotp=True, stop_at_eos=False,
                      force_kwargs={"at_step": 3, "stop_from": 2, "first": 2})
    before = events[2].tokens
    after = events[3].tokens
    assert int(after[2]) == STOP and (after[3:] == eos).all()
    assert torch.equal(after[:2], before[:2])
    assert (before[3:] != peaky.ids.mask_id).any(), "nothing committed after the stop: test is vacuous"
    assert (out.sequences[0, 3:] == eos).all()


def test_predicted_end_beyond_the_block(peaky, force):
    # at step 0 (block 0 active) every position from 12 on is predicted EOS with confidence 0.95 >= 0.9
    eos, P = peaky.ids.eos_id, len(PROMPT[0])
    out, events = run(peaky, PROMPT, force, eotp=True, eotp_threshold=0.9, stop_at_eos=False,
                      force_kwargs={"stop_from": 12, "conf": 0.95})
    first = events[0].tokens
    assert int(first[12]) == STOP and (first[13:] == eos).all()
    assert (first[8:12] == peaky.ids.mask_id).all()
    assert int(out.trace.commit_step[0, 12]) == 0  # the predicted end is decoded at step 0
    # block 0 in 8 steps, block 1 has 4 masks left (4 steps), blocks 2 and 3 are gone
    assert out.trace.block_steps == [[8, 4]] and out.nfe.tolist() == [12]
    # the first forward feeds the whole canvas; from the second on it ends after the predicted stop
    assert out.stats["fed_positions"] == (P + 32) + 11 * (P + 13)


def test_predicted_end_waits_for_every_mask_after_it(peaky, force):
    # one unsure mask at 20 among the predicted stops: the end can only be after it
    eos = peaky.ids.eos_id
    _, events = run(peaky, PROMPT, force, eotp=True, eotp_threshold=0.9, stop_at_eos=False,
                    force_kwargs={"stop_from": 12, "conf": 0.95, "unsure": 20})
    first = events[0].tokens
    assert int(first[21]) == STOP and (first[22:] == eos).all()
    assert (first[8:21] == peaky.ids.mask_id).all()


def test_predicted_end_never_erases_committed_text(peaky, force, registered):
    # step 0 commits position 6 (a non-stop token); at step 1 positions 3.. are predicted EOS and the quota
    # commits position 0: the end can only come after position 6
    eos, mask = peaky.ids.eos_id, peaky.ids.mask_id

    class Commit6(ForceCandidates):
        def step(self, cand, view, state):
            first_step = view.row_steps == 0
            cand.confidence[first_step, 6] = 3.0
            cand.tokens[first_step, 6] = 65
            return super().step(cand, view, state)

    registered("test_commit6", Commit6)
    cfg = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="test_commit6", eotp=True,
                               eotp_threshold=0.9, stop_at_eos=False, stop_token_ids=(STOP,),
                               scheduler_kwargs={"at_step": 1, "stop_from": 3, "conf": 0.95, "first": 0,
                                                 "token": STOP})
    events = []
    peaky.generate(PROMPT, cfg, stream=events.append)
    t0, t1 = events[0].tokens, events[1].tokens
    assert int(t0[6]) == 65
    assert int(t1[6]) == 65, "a prediction must not overwrite a committed token"
    assert int(t1[7]) == STOP and (t1[8:] == eos).all()
    assert (t1[3:6] == mask).all() and int(t1[0]) != mask


def test_eotp_threshold_needs_eotp():
    with pytest.raises(dlm.ConfigError, match="eotp"):
        dlm.GenerationConfig(eotp_threshold=0.9)
    with pytest.raises(dlm.ConfigError, match="eotp_threshold"):
        dlm.GenerationConfig(eotp=True, eotp_threshold=1.5)


@pytest.mark.parametrize("name", dlm.schedulers.names())
def test_every_scheduler_runs_with_eotp(peaky, name):
    cfg = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler=name, eotp=True, eotp_threshold=0.5,
                               return_trace=True)
    if dlm.schedulers.get(name).edits:  # an edit could change a token end-of-text was predicted from
        with pytest.raises(dlm.ConfigError, match="eotp=True does not combine with the editing scheduler"):
            peaky.generate([[72, 105, 33, 10]], cfg)
        return
    out = peaky.generate([[72, 105, 33, 10], [7, 8]], cfg)
    stops = set(peaky.ids.stop_ids)
    for row in out.sequences.tolist():
        assert peaky.ids.mask_id not in row
        cut = next((i for i, t in enumerate(row) if t in stops), len(row))
        assert all(t == peaky.ids.eos_id for t in row[cut + 1:])
