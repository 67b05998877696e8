"""The engine's lookahead (dlm.engine.lookahead): a step's forward launched before the previous step's results
reach the host changes no answer, under random traffic (arrivals, cancellations, requests that stop mid-block,
requests that cannot be predicted beside ones that can), and is trusted only from the components that promise
what it needs."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.cache.dual import DualCache
from dlm.errors import ConfigError
from dlm.schedulers.low_confidence import LowConfidence
from dlm.testing import write_tiny_checkpoint

from ..conftest import random_prompts
from .test_continuous_batching import run_random_traffic

# tokens the tiny models commit often: as stop tokens they end requests in the middle of a block
FREQUENT = {"llada": (138, 133, 111), "Dream": (222, 251, 77)}


def predictable_config(rng: random.Random, frequent: tuple[int, ...]) -> GenerationConfig:
    gen = rng.choice([8, 16, 24, 32])
    block = rng.choice([b for b in (4, 8, gen) if gen % b == 0])
    blocks = gen // block
    steps = rng.choice([gen] + [s for s in (gen // 2, blocks) if s >= blocks and s % blocks == 0])
    cache = rng.choice(["none", "prefix", "dual", "dual"])
    cache_kwargs = {}
    if cache != "none" and rng.random() < 0.3:
        cache_kwargs = {"refresh_every": rng.choice([1, 2])}
    if cache == "dual" and rng.random() < 0.3:
        cache_kwargs["refresh_from"] = "last_block"
    if cache == "dual" and rng.random() < 0.3:
        cache_kwargs["refresh_to"] = "block"
    stop = rng.random() < 0.6
    return GenerationConfig(
        gen_length=gen, block_length=block, steps=steps, scheduler=rng.choice(["low_confidence", "random"]),
        cache=cache, cache_kwargs=cache_kwargs, temperature=rng.choice([0.0, 0.0, 0.8]), seed=rng.randrange(10_000),
        cfg_scale=rng.choice([0.0, 0.0, 0.5]), stop_at_eos=stop,
        stop_token_ids=tuple(rng.sample(frequent, 2)) if stop and rng.random() < 0.7 else None, return_trace=True)


def unpredictable_config(rng: random.Random) -> GenerationConfig:
    """Configs whose next plan is not known in advance: a data-dependent scheduler, EoTP, a data-dependent cache."""
    kind = rng.choice(["threshold", "eotp", "delayed"])
    if kind == "threshold":
        return GenerationConfig(gen_length=16, block_length=8, steps=16, scheduler="threshold", cache="dual",
                                return_trace=True)
    if kind == "eotp":
        return GenerationConfig(gen_length=16, block_length=8, steps=16, eotp=True, return_trace=True)
    return GenerationConfig(gen_length=16, block_length=4, steps=16, cache="delayed", return_trace=True)


def run_traffic(lm, rng: random.Random, n: int, mixed: bool):
    engine = dlm.Engine(lm, max_rows=6, lookahead=True)
    frequent = FREQUENT[lm.model_type]

    def make_config(g):
        return unpredictable_config(g) if mixed and g.random() < 0.25 else predictable_config(g, frequent)

    # bursts of arrivals between quiet steps: the lookahead waits for quiet
    submitted = run_random_traffic(engine, rng, n, make_config, arrivals=(0,) * 16 + (2, 3), cancel=0.04)
    assert engine.core.ahead is None
    return engine, submitted


def check_alone(lm, submitted) -> dict[str, int]:
    counts = {"done": 0, "cancelled": 0, "stopped_early": 0}
    for r, prompt, config in submitted:
        assert r.error is None, f"request {r.id} ({config}) failed: {r.error!r}"
        if r.status == dlm.api.Status.CANCELLED:
            counts["cancelled"] += 1
            continue
        counts["done"] += 1
        alone = lm.generate([prompt], config)  # (a CPU's engine runs without the lookahead by default)
        what = f"request {r.id}: {config}"
        assert torch.equal(alone.sequences[0], r.output.sequences[0]), what
        assert int(alone.nfe[0]) == int(r.output.nfe[0]), what
        assert torch.equal(alone.trace.commit_step, r.output.trace.commit_step), what
        assert alone.trace.block_steps == r.output.trace.block_steps, what
        assert alone.stats["fed_positions"] == r.output.stats["fed_positions"], what
        blocks = config.gen_length // config.block_length
        if config.scheduler in ("low_confidence", "random") and len(r.output.trace.block_steps[0]) < blocks:
            counts["stopped_early"] += 1
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("model,seed,n,mixed,share", [("llada", 0, 100, False, 0.2), ("dream", 1, 90, True, 0.08)])
def test_traffic_with_lookahead_equals_each_request_alone(llada, dream, model, seed, n, mixed, share):
    """Mixed: a quarter of the requests cannot be predicted; the lookahead runs only while none of them is."""
    lm = llada if model == "llada" else dream
    engine, submitted = run_traffic(lm, random.Random(seed), n, mixed)
    counts = check_alone(lm, submitted)
    assert counts["done"] >= 0.7 * n and counts["cancelled"] >= 1 and counts["stopped_early"] >= 3, counts
    core = engine.core
    assert core.lookahead_used >= share * core.steps and core.lookahead_dropped == 0, (core.lookahead_used, core.steps)


@pytest.mark.parametrize("model_type", ["sdar", "llada2_moe"])
def test_block_diffusion_blocks_past_the_answer(model_type, tmp_path):
    """A block-diffusion model's last block runs past the answer; its masks there count too, so the lookahead
    launches at every step but the request's first (after its arrival) and its last, none is dropped, and the
    answers equal the reference loop's."""
    lm = dlm.load(write_tiny_checkpoint(tmp_path, model_type, seed=7, std=1.0), device="cpu")
    for prompt in random_prompts(lm, 4, seed=3, min_len=3, max_len=40):
        config = GenerationConfig(gen_length=32, steps=32, stop_at_eos=False, cache="dual", return_trace=True)
        engine = dlm.Engine(lm, max_rows=1, lookahead=True)
        r = engine.submit(prompt, config)
        engine.run()
        steps = r.output.trace.block_steps[0]
        assert engine.core.lookahead_used == sum(steps) - 2 and engine.core.lookahead_dropped == 0, steps
        assert torch.equal(r.output.sequences, lm.generate([prompt], config).sequences)


def _engine_and_alone(lm, prompts, configs, **kwargs):
    alone = [lm.generate([p], c) for p, c in zip(prompts, configs)]
    return dlm.Engine(lm, max_rows=4, lookahead=True, **kwargs), alone


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "dual:last_block", "dual:to_block", "dual:every2"])
def test_a_static_batch_looks_ahead_at_every_step_but_its_first_and_last(tiny, cache):
    """Requests in lockstep (the same schedule): every next step is known, across block ends too (the next
    block's first step, a refresh), and the answers equal each request's alone."""
    name, _, variant = cache.partition(":")
    kwargs = {"last_block": {"refresh_from": "last_block"}, "every2": {"refresh_every": 2},
              "to_block": {"refresh_from": "last_block", "refresh_to": "block"}}.get(variant, {})
    prompts = random_prompts(tiny, 4, seed=31, min_len=2, max_len=14)
    config = GenerationConfig(gen_length=32, block_length=8, steps=16, cache=name, cache_kwargs=kwargs,
                              stop_at_eos=False, return_trace=True)
    engine = dlm.Engine(tiny, max_rows=4, lookahead=True)
    reqs = [engine.submit(p, config) for p in prompts]
    engine.run()
    assert engine.core.lookahead_used == engine.core.steps - 2 and engine.core.lookahead_dropped == 0
    for r, p in zip(reqs, prompts):
        alone = tiny.generate([p], config)
        assert torch.equal(r.output.sequences, alone.sequences)
        assert r.output.stats == alone.stats and torch.equal(r.output.trace.commit_step, alone.trace.commit_step)


def test_block_steps_is_the_number_of_steps_low_confidence_takes(llada):
    """The promise the lookahead relies on: min(S, M) steps for a block of M masks and S steps."""
    prompts = random_prompts(llada, 6, seed=2)
    for gen, block, steps in [(16, 8, 16), (16, 8, 4), (24, 8, 6), (16, 16, 32), (12, 4, 3)]:
        cfg = GenerationConfig(gen_length=gen, block_length=block, steps=steps, stop_at_eos=False,
                               return_trace=True)
        out = llada.generate(prompts, cfg)
        spb = steps // (gen // block)
        expected = LowConfidence().block_steps(block, spb)
        assert all(b == [expected] * (gen // block) for b in out.trace.block_steps), (gen, block, steps)


def test_a_request_that_stops_mid_block_leaves_the_launched_forward(llada):
    """Two requests; one ends at a stop token in the middle of a block while the next forward, with its rows, is
    already launched: the other request uses that forward, both answers equal their answers alone, and the
    engine drops the launched forward once no request it feeds is running."""
    prompts = random_prompts(llada, 2, seed=11, min_len=4, max_len=8)
    configs = [GenerationConfig(gen_length=32, block_length=16, steps=32, stop_token_ids=(FREQUENT["llada"][0],)),
               GenerationConfig(gen_length=32, block_length=16, steps=32, cache="dual", stop_at_eos=False)]
    engine, alone = _engine_and_alone(llada, prompts, configs)
    reqs = [engine.submit(p, c) for p, c in zip(prompts, configs)]
    ended_ahead = False
    while engine.pending:
        running = not reqs[0].done
        engine.step()
        ahead = engine.core.ahead
        ended_ahead |= running and reqs[0].done and ahead is not None and reqs[0] in ahead.requests
    assert ended_ahead, "request 0 did not end while a forward with its rows was launched"
    for r, a in zip(reqs, alone):
        assert torch.equal(r.output.sequences, a.sequences)
        assert r.output.stats["fed_positions"] == a.stats["fed_positions"]
    assert engine.core.ahead is None and engine.core.lookahead_dropped == 0


def test_cancelling_and_submitting_while_a_forward_is_launched(llada):
    prompts = random_prompts(llada, 3, seed=12, min_len=3, max_len=9)
    configs = [GenerationConfig(gen_length=32, block_length=8, steps=32, cache=c, stop_at_eos=False)
               for c in ("dual", "prefix", "none")]
    engine, alone = _engine_and_alone(llada, prompts, configs)
    a, b = engine.submit(prompts[0], configs[0]), engine.submit(prompts[1], configs[1])
    engine.step()
    engine.step()
    assert engine.core.ahead is not None
    engine.cancel(b)
    used = engine.core.lookahead_used
    engine.step()  # b's rows of the launched forward are ignored; a uses it
    assert b.status == dlm.api.Status.CANCELLED and engine.core.pool.in_use() == 1
    assert engine.core.lookahead_used == used + 1
    assert engine.core.ahead is not None
    c = engine.submit(prompts[2], configs[2])  # waits while a launched forward is pending, then joins
    engine.step()  # uses the launched forward; the arrival keeps the next one from being launched early
    assert c.status == dlm.api.Status.QUEUED and engine.core.ahead is None
    engine.step()
    assert c.status == dlm.api.Status.RUNNING
    engine.run()
    assert torch.equal(a.output.sequences, alone[0].sequences)
    assert torch.equal(c.output.sequences, alone[2].sequences)
    assert c.output.steps == alone[2].steps


@dataclass(frozen=True)
class _NoParams:
    pass


class _OwnStep(LowConfidence):
    """Overrides step without restating block_steps: the promise is not inherited."""

    Params = _NoParams

    def step(self, cand, view, state):
        return super().step(cand, view, state)


class _OwnScores(LowConfidence):
    """Changes only the scores: the step, and its promise, are LowConfidence's."""

    Params = _NoParams

    def scores(self, cand, view):
        return -cand.confidence


class _OwnPlan(DualCache):
    def plan(self, info):
        return super().plan(info)


class _OwnPlanGeometric(_OwnPlan):
    geometric = True


def test_promises_are_trusted_only_from_the_class_that_keeps_them(llada, registered_cache):
    from dlm.engine.lookahead import declares

    assert not declares(_OwnStep(), "block_steps", "step")
    assert declares(_OwnScores(), "block_steps", "step")
    assert not declares(_OwnPlan(), "geometric", "plan")
    assert declares(_OwnPlanGeometric(), "geometric", "plan")
    instance = LowConfidence()
    instance.block_steps = lambda masks, steps: 1  # a per-instance override is not the class's promise
    assert not declares(instance, "block_steps", "step")
    name = registered_cache("own_plan", _OwnPlan)
    engine = dlm.Engine(llada, max_rows=2, lookahead=True)
    r = engine.submit(random_prompts(llada, 1, seed=3)[0], GenerationConfig(gen_length=16, block_length=8, steps=16,
                                                                         cache=name, stop_at_eos=False))
    engine.run()
    assert r.output is not None and engine.core.lookahead_used == 0


def test_lookahead_must_be_a_bool(llada):
    with pytest.raises(ConfigError, match="lookahead must be True, False or None"):
        dlm.Engine(llada, max_rows=2, lookahead="yes")
    assert dlm.Engine(llada, max_rows=2).core.lookahead is False  # off on a CPU by default


class _FailsAtStep2(DualCache):
    geometric = True

    def plan(self, info):
        if info.step == 2:
            raise ValueError("plan failed at step 2")
        return super().plan(info)


@pytest.mark.parametrize("lookahead", [False, True])
def test_a_plan_that_raises_is_reported_by_the_step_that_runs_it(llada, registered_cache, lookahead):
    """A lookahead's plan that raises leaves the step before it whole: the error comes from the next step, as
    without the lookahead."""
    name = registered_cache(f"fails_at_2_{lookahead}", _FailsAtStep2)
    engine = dlm.Engine(llada, max_rows=1, lookahead=lookahead)
    r = engine.submit(random_prompts(llada, 1, seed=5)[0], GenerationConfig(gen_length=16, block_length=8, steps=16,
                                                                         cache=name, stop_at_eos=False))
    steps = [len(engine.step()), len(engine.step())]
    with pytest.raises(ValueError, match="plan failed at step 2"):
        engine.step()
    assert steps == [1, 1] and r.steps == 2 and engine.core.ahead is None


def test_a_queued_request_starts_when_it_would_without_the_lookahead(llada):
    """A request waiting in the queue while another ends at a stop token in the middle of a block starts at the
    step after, as in the reference loop (no forward is launched early while the queue holds a request)."""
    prompts = random_prompts(llada, 3, seed=11, min_len=4, max_len=8)
    configs = [GenerationConfig(gen_length=32, block_length=16, steps=32, stop_token_ids=(FREQUENT["llada"][0],)),
               GenerationConfig(gen_length=32, block_length=16, steps=32, cache="dual", stop_at_eos=False),
               GenerationConfig(gen_length=16, block_length=8, steps=16, stop_at_eos=False)]
    starts = []
    for lookahead in (False, True):
        engine = dlm.Engine(llada, max_rows=2, lookahead=lookahead)
        a, _ = engine.submit(prompts[0], configs[0]), engine.submit(prompts[1], configs[1])
        engine.step()
        engine.step()
        c = engine.submit(prompts[2], configs[2])  # no free slot: queued until a ends
        ended = started = None
        while engine.pending:
            engine.step()
            ended = ended or (engine.core.steps if a.done else None)
            started = started or (engine.core.steps if c.status != dlm.api.Status.QUEUED else None)
        starts.append((ended, started, a.output.steps))
    assert starts[0] == starts[1] and starts[0][0] < 16, starts  # (a ends in its first block's middle)
