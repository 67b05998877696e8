"""Invariants every registered scheduler keeps, run on every name in the registry at collection time (so an
installed plugin is tested too), on a tiny LLaDA and a tiny Dream checkpoint, through the engine."""

from __future__ import annotations

import json

import pytest

import dlm
from dlm.schedulers import SCHEDULERS

from .invariants import PROMPTS, check_run, record

# every registered scheduler with its defaults, plus settings that reach code paths the defaults may not
CONFIGS = [(name, {}) for name in dlm.schedulers.names()] + [
    ("early_commit", {"early": 0.0, "mid": 0.0, "late": 0.0}),  # exits at the first step
    ("early_commit", {"early": 4.0, "mid": 3.0, "late": 2.0}),  # exits part-way
    ("early_commit", {"inner": "threshold", "inner_kwargs": {"threshold": 0.7}, "early": 4.0, "mid": 3.0,
                      "late": 2.0, "gap_over": "block"}),
    ("threshold", {"threshold": 0.5}),
    ("maskgit_plus", {"alg_temp": 0.5}),
]
IDS = [name + ("" if not kw else "-" + "-".join(f"{k}={v}" for k, v in kw.items())) for name, kw in CONFIGS]


def config(name, kwargs, **changes) -> dlm.GenerationConfig:
    return dlm.GenerationConfig(gen_length=32, block_length=8, scheduler=name, scheduler_kwargs=kwargs,
                                return_trace=True, **changes)


def assert_same_alone(lm, run, cfg, name):
    """Every request's answer, NFE and trace are what it gets alone (batch invariance, every scheduler)."""
    for r, prompt in enumerate(PROMPTS):
        alone = lm.generate([prompt], cfg)
        assert alone.sequences[0].tolist() == run.out.sequences[r].tolist(), f"{name}: row {r} differs alone"
        assert int(alone.nfe[0]) == int(run.out.nfe[r])
        assert alone.trace.commit_step[0].tolist() == run.out.trace.commit_step[r].tolist()


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_invariants_greedy_batch(peaky, name, kwargs):
    cfg = config(name, kwargs)
    run = record(peaky, PROMPTS, cfg)
    check_run(run, peaky, cfg, name)
    assert_same_alone(peaky, run, cfg, name)


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_seeded_sampling_is_reproducible_and_batch_invariant(peaky, name, kwargs):
    cfg = config(name, kwargs, temperature=0.8, seed=1234)
    first = record(peaky, PROMPTS, cfg)
    check_run(first, peaky, cfg, name)
    again = peaky.generate(PROMPTS, cfg)
    assert first.out.sequences.tolist() == again.sequences.tolist()
    assert first.out.trace.commit_step.tolist() == again.trace.commit_step.tolist()
    assert_same_alone(peaky, first, cfg, name)


@pytest.mark.parametrize("name", dlm.schedulers.names())
def test_invariants_confidence_eos_eot_inf(peaky_llada, name):
    # stop candidates get confidence -inf: a block whose masks are all predicted EOS must still progress
    cfg = config(name, {}, confidence_eos_eot_inf=True)
    check_run(record(peaky_llada, PROMPTS, cfg), peaky_llada, cfg, name)


@pytest.mark.parametrize("name", dlm.schedulers.names())
def test_block_within_step_budget(peaky, name):
    # half the steps: every block within block_length steps; built-ins also within their budget (4 per block)
    cfg = config(name, {}, steps=16)
    run = record(peaky, PROMPTS, cfg)
    check_run(run, peaky, cfg, name)
    if {e.name: e.source for e in SCHEDULERS.entries()}[name] == "dlm":
        bound = cfg.steps_per_block + dlm.schedulers.create(name).max_hold_steps  # edits may hold a block
        assert max(max(s) for s in run.out.trace.block_steps) <= bound, run.out.trace.block_steps


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=IDS)
def test_config_json_round_trip(name, kwargs):
    cls = dlm.schedulers.get(name)
    s = cls(**kwargs)
    again = cls.from_config(json.loads(json.dumps(s.config())))
    assert again.config() == s.config()
    assert type(again) is cls
    assert (again.sampling, again.deterministic, again.full_region, set(again.measures)) == \
        (s.sampling, s.deterministic, s.full_region, set(s.measures))
    gc = config(name, kwargs)
    assert dlm.GenerationConfig.from_json(gc.to_json()) == gc


@pytest.mark.parametrize("name", dlm.schedulers.names())
def test_class_is_documented(name):
    cls = dlm.schedulers.get(name)
    assert (cls.__doc__ or "").strip(), f"scheduler {name!r} ({cls.__name__}) has no class docstring"
    assert cls.sampling in dlm.sampling.SAMPLING_MODES
