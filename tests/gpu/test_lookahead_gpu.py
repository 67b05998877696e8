"""The engine's lookahead on a GPU (skipped without CUDA): with CUDA graphs and the fused kernels, the forward it
launches before the host has the step's results is the forward the reference loop runs, so the tokens are
the same bits; where requests end in the middle of a block (their rows stay in one launched forward) the
batch-invariant engine still gives the same tokens."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig

from ..conftest import random_prompts

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["llada", "Dream"])
def gpu_lm(request, llada_path, dream_path):
    return dlm.load(llada_path if request.param == "llada" else dream_path, device="cuda", dtype="bfloat16")


def _run(lm, prompts, configs, **engine_kwargs):
    engine = dlm.Engine(lm, max_rows=len(prompts), max_tokens=len(prompts) * 96, **engine_kwargs)
    # the model's piecewise graphs, all of them before either run: a step that runs through a bucket's graph
    # rounds as a batch of the bucket's size, so both runs must meet the same ones
    engine.capture_graphs()
    reqs = [engine.submit(p, c) for p, c in zip(prompts, configs)]
    engine.run()
    return [r.output for r in reqs], engine.core


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "dual:last_block", "dual:last_block:block"])
def test_lookahead_gives_the_reference_loops_bits(gpu_lm, cache):
    name, _, bounds = cache.partition(":")
    frm, _, to = bounds.partition(":")
    kwargs = {**({"refresh_from": frm} if frm else {}), **({"refresh_to": to} if to else {})}
    prompts = random_prompts(gpu_lm, 4, seed=21, min_len=4, max_len=16)
    configs = [GenerationConfig(gen_length=48, block_length=16, steps=s, cache=name, cache_kwargs=kwargs,
                                stop_at_eos=False) for s in (48, 24, 12, 48)]
    ref, ref_core = _run(gpu_lm, prompts, configs, lookahead=False)
    out, core = _run(gpu_lm, prompts, configs, lookahead=True)
    assert core.lookahead_used > 0 and core.lookahead_dropped == 0 and ref_core.lookahead_used == 0
    for a, b in zip(ref, out):
        assert torch.equal(a.sequences, b.sequences)
        assert a.stats == b.stats


def test_requests_ending_mid_block_with_batch_invariance(gpu_lm):
    frequent = (138, 133, 111) if gpu_lm.model_type == "llada" else (222, 251, 77)
    prompts = random_prompts(gpu_lm, 6, seed=22, min_len=2, max_len=20)
    configs = [GenerationConfig(gen_length=32, block_length=16, steps=32, cache="dual",
                                stop_token_ids=frequent[: 1 + i % 3]) for i in range(6)]
    ref, _ = _run(gpu_lm, prompts, configs, lookahead=False, batch_invariant=True)
    out, core = _run(gpu_lm, prompts, configs, lookahead=True, batch_invariant=True)
    assert core.lookahead_used > 0
    for a, b in zip(ref, out):
        assert torch.equal(a.sequences, b.sequences)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("lookahead", [False, True])
def test_the_transfer_waits_on_the_models_gpu(llada_path, monkeypatch, lookahead):
    """A model on cuda:1 while the thread's current device is cuda:0: the step's transfer is queued on cuda:1,
    so its event must be recorded there too. A sleep queued on cuda:1 before each transfer makes an event on
    cuda:0's stream return before the copy lands (the host would read a stale buffer)."""
    from dlm.engine.core import EngineCore

    assert torch.cuda.current_device() == 0
    queue = EngineCore._queue_transfer

    def late(self, reqs, flags):
        with torch.cuda.device(self.device):
            torch.cuda._sleep(20_000_000)  # (about 10 ms of the GPU's clock)
        return queue(self, reqs, flags)

    lm = dlm.load(llada_path, device="cuda:1", dtype="float32", fast=False)
    prompts = random_prompts(lm, 2, seed=23, min_len=3, max_len=9)
    configs = [GenerationConfig(gen_length=32, block_length=16, steps=32, cache="dual", stop_at_eos=False)] * 2
    with torch.cuda.device(1):
        ref, _ = _run(lm, prompts, configs, lookahead=False, batch_invariant=True)
    monkeypatch.setattr(EngineCore, "_queue_transfer", late)
    out, _ = _run(lm, prompts, configs, lookahead=lookahead, batch_invariant=True)
    for a, b in zip(ref, out):
        assert torch.equal(a.sequences, b.sequences) and a.steps == b.steps
