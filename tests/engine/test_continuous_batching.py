"""Batch invariance of the continuous-batching engine, as a property: hundreds of requests with random configs
(every scheduler, every cache, both verifiers, guidance, EoTP, greedy and seeded sampling) arrive at random steps
into a small engine, some are cancelled while they run, and every finished request's answer, forward passes and
trace are token for token those it gets alone. Cancelled requests give their slots back at once.

Seeded (fixed seeds below): a failure names the request and its config, and reproduces.
"""

from __future__ import annotations

import random

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.verify.testing import write_tiny_causal

from ..conftest import random_prompts

pytestmark = pytest.mark.slow

SCHEDULER_VARIANTS = {
    "threshold": [{}, {"threshold": 0.5}],
    "factor": [{}, {"factor": 2.0}],
    "early_commit": [{"early": 2.0, "mid": 1.5, "late": 1.0}],
    "maskgit_plus": [{}, {"alg_temp": 0.5}],
    "edit_threshold": [{"editing_threshold": 0.5, "max_post_steps": 2}],
}


def _builtin(registry) -> list[str]:
    """The names a registry module holds from dlm itself, sorted."""
    return sorted(n for n in registry.names() if registry.get(n).__module__.startswith("dlm."))


def random_config(rng: random.Random, causal_path, allow_causal: bool) -> GenerationConfig:
    gen = rng.choice([8, 16, 24, 32])
    block = rng.choice([b for b in (4, 8, gen) if gen % b == 0])
    blocks = gen // block
    kind = rng.random()
    if kind < 0.1:  # lossless: the stepwise verifier
        return GenerationConfig(gen_length=gen, block_length=block, verify="stepwise",
                                verify_kwargs={"drafts": rng.choice([2, 4, 6]), "adaptive": rng.random() < 0.5},
                                stop_at_eos=rng.random() < 0.5, return_trace=True)
    if kind < 0.2 and allow_causal:  # lossless: the causal verifier
        return GenerationConfig(gen_length=gen, verify="causal", temperature=rng.choice([0.0, 0.7]),
                                seed=rng.randrange(1000),
                                verify_kwargs={"verifier": str(causal_path), "draft_length": rng.choice([2, 4, 6]),
                                               "draft_steps": rng.choice([1, 1, 2])}, return_trace=True)
    scheduler = rng.choice(_builtin(dlm.schedulers))  # plugins other tests register would change the draws
    kwargs = rng.choice(SCHEDULER_VARIANTS.get(scheduler, [{}]))
    cache = rng.choice(_builtin(dlm.cache))
    cache_kwargs = {}
    if cache != "none" and rng.random() < 0.3:
        cache_kwargs = {"refresh_every": rng.choice([1, 2, 3])}
    edits = dlm.schedulers.get(scheduler).edits
    eotp = not edits and rng.random() < 0.25
    steps = rng.choice([gen, gen] + ([gen // 2] if (gen // 2) % blocks == 0 and gen // 2 >= blocks else []))
    return GenerationConfig(
        gen_length=gen, block_length=block, steps=steps, scheduler=scheduler, scheduler_kwargs=kwargs, cache=cache,
        cache_kwargs=cache_kwargs, temperature=rng.choice([0.0, 0.0, 0.8]), seed=rng.randrange(10_000),
        top_k=rng.choice([None, None, 20]), cfg_scale=rng.choice([0.0, 0.0, 0.0, 0.5]),
        stop_at_eos=rng.random() < 0.6, eotp=eotp, eotp_threshold=0.6 if eotp and rng.random() < 0.5 else None,
        return_trace=True)


def run_random_traffic(engine, rng: random.Random, n: int, make_config, arrivals=(0, 0, 1, 1, 2, 3),
                       cancel: float = 0.05):
    """Submit ``n`` requests (configs from ``make_config(rng)``) at random steps into ``engine``, ``arrivals``
    (a random choice of it) before each step, cancelling a running one with probability ``cancel``; returns
    (request, prompt, config) triples and checks the slots every step."""
    prompts = random_prompts(engine.model, n, seed=rng.randrange(10_000), min_len=1, max_len=20)
    todo = [(p, make_config(rng)) for p in prompts]
    submitted = []
    while todo or engine.pending:
        for _ in range(min(len(todo), rng.choice(arrivals))):
            p, c = todo.pop()
            submitted.append((engine.submit(p, c), p, c))
        running = [r for r, _, _ in submitted if r.status == dlm.api.Status.RUNNING]
        if running and rng.random() < cancel:
            engine.cancel(rng.choice(running))
        engine.step()
        held = sum(r.copies for r in engine.core.running if not r.borrowed)  # drafts run in their owner's slots
        assert engine.core.pool.in_use() == held, "slots of ended requests were not freed"
    assert engine.core.pool.in_use() == 0
    return submitted


def check_alone(lm, submitted) -> tuple[int, int]:
    done = cancelled = 0
    for r, prompt, config in submitted:
        assert r.error is None, f"request {r.id} ({config}) failed: {r.error!r}"
        if r.status == dlm.api.Status.CANCELLED:
            cancelled += 1
            assert r.output is not None and r.output.sequences.shape == (1, config.gen_length)
            continue
        done += 1
        alone = lm.generate([prompt], config)
        assert torch.equal(alone.sequences[0], r.output.sequences[0]), f"request {r.id}: {config}"
        assert int(alone.nfe[0]) == int(r.output.nfe[0]), f"request {r.id}: {config}"
        assert torch.equal(alone.trace.commit_step, r.output.trace.commit_step), f"request {r.id}: {config}"
    return done, cancelled


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory, llada_path):
    return write_tiny_causal(tmp_path_factory.mktemp("causal_cb"), llada_path, seed=5)


@pytest.mark.parametrize("model,seed,n", [("llada", 0, 110), ("dream", 1, 100)])
def test_every_request_equals_itself_alone(llada, dream, causal_path, model, seed, n):
    lm = llada if model == "llada" else dream
    rng = random.Random(seed)
    submitted = run_random_traffic(dlm.Engine(lm, max_rows=6), rng, n,
                                   lambda g: random_config(g, causal_path, allow_causal=model == "llada"))
    done, cancelled = check_alone(lm, submitted)
    assert done >= 0.7 * n and cancelled >= 1, (done, cancelled)  # about 1 in 5 requests is cancelled
    kinds = {(c.verify or c.scheduler) for _, _, c in submitted}
    assert {"stepwise", "threshold", "low_confidence"} <= kinds, kinds
