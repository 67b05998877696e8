"""The ``learned_filter`` scheduler: its rule (threshold 1 is low_confidence, accepted masks plus the quota), any
block length, the measures its filter needs, caches and EoTP, its parameters and the shipped default filter. The
filter's files and network are tested in tests/filter; its training in tests/train/filter."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.filter import FilterConfig, FilterNet, files, read_config, resolve_path, save_filter

from ..filter.helpers import make_filter
from .invariants import PROMPTS, check_run, record


@pytest.fixture
def tiny_llada(peaky_llada):
    """The peaked tiny LLaDA (the filter's rule shows only when predictions are confident)."""
    return peaky_llada


@pytest.fixture
def tiny_dream(peaky_dream):
    return peaky_dream


def cfg(path, threshold=None, **changes) -> dlm.GenerationConfig:
    kwargs = {"path": path} if threshold is None else {"path": path, "threshold": threshold}
    return dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="learned_filter", scheduler_kwargs=kwargs,
                                return_trace=True, **changes)


@pytest.mark.parametrize("steps", [32, 16])
def test_threshold_one_is_low_confidence(tiny_llada, tiny_dream, tmp_path, steps):
    path = make_filter(tmp_path)
    for lm in (tiny_llada, tiny_dream):
        ref = lm.generate(PROMPTS, dlm.GenerationConfig(gen_length=32, block_length=8, steps=steps,
                                                        scheduler="low_confidence"))
        out = lm.generate(PROMPTS, cfg(path, 1.0, steps=steps))
        assert out.sequences.tolist() == ref.sequences.tolist()
        assert out.nfe.tolist() == ref.nfe.tolist()


def test_accept_everything_commits_the_block_in_one_step(tiny_llada, tmp_path):
    everything = make_filter(tmp_path, "all", bias=30.0)
    out = tiny_llada.generate(PROMPTS, cfg(everything, stop_at_eos=False))
    assert out.trace.block_steps == [[1, 1, 1, 1]] * 3 and out.nfe.tolist() == [4, 4, 4]
    # the accepted positions are committed with their candidates: the same as threshold 0 (every mask passes)
    zero = tiny_llada.generate(PROMPTS, dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="threshold",
                                                             scheduler_kwargs={"threshold": 0.0},
                                                             stop_at_eos=False))
    assert out.sequences.tolist() == zero.sequences.tolist()


def test_accept_nothing_keeps_the_quota(tiny_llada, tmp_path):
    nothing = make_filter(tmp_path, "none", bias=-30.0)
    out = tiny_llada.generate(PROMPTS, cfg(nothing, 0.5, steps=16))
    ref = tiny_llada.generate(PROMPTS, dlm.GenerationConfig(gen_length=32, block_length=8, steps=16,
                                                            scheduler="low_confidence"))
    assert out.sequences.tolist() == ref.sequences.tolist() and out.nfe.tolist() == ref.nfe.tolist()


def test_commits_exactly_the_accepted_masks_plus_the_best(tiny_llada, tmp_path):
    # hand-built candidates: the filter accepts positions whose confidence is above 0.5 (a linear rule)
    net = FilterNet(FilterConfig(features=("confidence",), arch="local", context=0, hidden=(1,)))
    with torch.no_grad():
        net.net[0].weight.fill_(1.0)
        net.net[0].bias.fill_(-0.5)
        net.net[2].weight.fill_(100.0)
        net.net[2].bias.fill_(0.0)
    path, _ = save_filter(net, tmp_path / "rule.safetensors")
    sched = dlm.schedulers.create("learned_filter", {"path": str(path), "threshold": 0.9})
    from dlm.sampling import Candidates
    from dlm.schedulers.base import BlockInfo, StepView

    conf = torch.tensor([[0.2, 0.7, 0.4, 0.9, 0.3, 0.1], [0.2, 0.3, 0.1, 0.4, 0.45, 0.3]])
    masked = torch.tensor([[True, True, True, False, True, True], [True] * 6])
    rows = lambda v: torch.full((2,), v)  # noqa: E731
    block = BlockInfo(index=rows(0), num_blocks=rows(1), steps=rows(6), masks=masked.sum(1), total_steps=rows(6),
                      width=rows(6), start=rows(5), canvas_length=rows(11), answer_start=rows(5))
    view = StepView(masked=masked, in_block=torch.ones(2, 6, dtype=torch.bool), active=torch.ones(2, dtype=torch.bool),
                    step=rows(0), row_steps=rows(0), block=block, generators=[None, None])
    cand = Candidates(tokens=torch.zeros(2, 6, dtype=torch.long), confidence=conf)
    decision, _ = sched.step(cand, view, sched.init_state(block))
    # row 0: 0.7 is accepted (0.9 is committed already); row 1: nothing passes, the quota takes the best (0.45)
    assert decision.commit.tolist() == [[False, True, False, False, False, False],
                                        [False, False, False, False, True, False]]


@pytest.mark.parametrize("block_length", [4, 8, 64])
def test_any_block_length(tiny_llada, tmp_path, block_length):
    # an mlp filter of width 32 pads shorter blocks and windows longer ones; a local one sees blocks as they are
    for path in (make_filter(tmp_path, "mlp"), make_filter(tmp_path, "local", arch="local", hidden=(8,))):
        config = dlm.GenerationConfig(gen_length=64, block_length=block_length, scheduler="learned_filter",
                                      scheduler_kwargs={"path": path, "threshold": 0.5}, return_trace=True)
        run = record(tiny_llada, PROMPTS, config)
        check_run(run, tiny_llada, config, "learned_filter")


def test_measures_follow_the_filter(tiny_llada, tmp_path):
    path = make_filter(tmp_path, "rich", features=("confidence", "masked", "margin", "entropy", "position",
                                                   "progress", "left_masked", "left_min_confidence",
                                                   "mean_confidence"))
    sched = dlm.schedulers.create("learned_filter", {"path": path})
    assert set(sched.measures) == {"margin", "entropy"}
    config = cfg(path, 0.5)
    check_run(record(tiny_llada, PROMPTS, config), tiny_llada, config, "learned_filter")
    plain = dlm.schedulers.create("learned_filter", {"path": make_filter(tmp_path)})
    assert set(plain.measures) == set()


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "delayed", "window"])
@pytest.mark.parametrize("eotp", [False, True])
def test_caches_and_eotp(tiny_llada, tmp_path, cache, eotp):
    assert cache in dlm.cache.CACHES.names()
    path = make_filter(tmp_path)
    config = cfg(path, 0.5, cache=cache, eotp=eotp)
    if eotp:
        out = tiny_llada.generate(PROMPTS, config)
        assert not (out.sequences == tiny_llada.ids.mask_id).any()
        assert all(s <= 8 for row in out.trace.block_steps for s in row)
    else:
        check_run(record(tiny_llada, PROMPTS, config), tiny_llada, config, "learned_filter")


def test_eotp_with_a_stop_token_the_filter_accepts(tiny_llada, tmp_path):
    # stop tokens everywhere once committed: EoTP cuts the canvas; the filter keeps working on the shorter block
    path = make_filter(tmp_path, "all", bias=30.0)
    out = tiny_llada.generate(PROMPTS, cfg(path, eotp=True, eotp_threshold=0.0001))
    assert not (out.sequences == tiny_llada.ids.mask_id).any()


def test_parameters_are_validated():
    with pytest.raises(dlm.ConfigError, match="threshold must be a probability"):
        dlm.schedulers.create("learned_filter", {"threshold": 1.5})
    with pytest.raises(dlm.ConfigError, match="path must be"):
        dlm.schedulers.create("learned_filter", {"path": 3})


def test_missing_default_filter_fails_at_first_use_not_before(tiny_llada, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "default_filter_path", lambda: tmp_path / "absent" / "learned_filter.safetensors")
    sched = dlm.schedulers.create("learned_filter", {})  # cheap, and does not fail
    assert sched.config() == {"path": None, "threshold": None}
    config = dlm.GenerationConfig(gen_length=8, scheduler="learned_filter")
    with pytest.raises(dlm.ConfigError, match="default learned filter.*no filter file at .*absent"):
        tiny_llada.generate([[1, 2, 3]], config)


def test_default_filter_is_shipped_and_model_agnostic(tiny_llada, tiny_dream):
    # the shipped filter reads only probabilities, so it runs with any model (here random tiny ones)
    path, cfg_file = resolve_path(None)
    assert path.is_file() and cfg_file.is_file(), "ship the trained filter (dlm train-filter) with the package"
    config = read_config(None)
    sched = dlm.schedulers.create("learned_filter", {})
    assert sched.threshold == config.threshold
    for lm in (tiny_llada, tiny_dream):
        c = dlm.GenerationConfig(gen_length=32, block_length=8, scheduler="learned_filter", return_trace=True)
        check_run(record(lm, PROMPTS, c), lm, c, "learned_filter")


def test_threshold_zero_commits_the_block_even_where_the_filter_says_zero(tiny_llada, tmp_path):
    path = make_filter(tmp_path, "never", bias=-200.0)  # sigmoid underflows to exactly 0
    config = dlm.GenerationConfig(gen_length=8, block_length=8, steps=8, scheduler="learned_filter",
                                  scheduler_kwargs={"path": path, "threshold": 0.0}, stop_at_eos=False)
    out = tiny_llada.generate([[5, 6, 7]], config)
    assert int(out.nfe[0]) == 1
