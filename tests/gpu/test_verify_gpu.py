"""GPU checks of the verifiers (skipped without CUDA): the batched causal verifier's greedy output is the causal
model's own ``generate`` on the GPU too, and causal and stepwise requests share one engine's steps (their drafts'
canvases come from the host and from the device) with every answer equal to the request run alone."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.verify.testing import prefer_token, write_tiny_causal

from ..conftest import random_prompts

pytestmark = pytest.mark.gpu

A = 97  # the byte token both models prefer (as in tests/verify/test_causal.py)


@pytest.fixture(scope="module")
def drafter(llada_path):
    lm = dlm.load(llada_path, device="cuda", dtype="float32")  # the default fast path (CUDA graphs)
    prefer_token(lm, {A: 24.0})
    return lm


@pytest.fixture(scope="module")
def causal_path(tmp_path_factory, llada_path, drafter):
    return write_tiny_causal(tmp_path_factory.mktemp("causal_gpu"), llada_path, seed=5,
                             prefs={A: 36.0, drafter.ids.eos_id: 30.0})


def test_batched_causal_greedy_equals_generate_on_gpu(drafter, causal_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(causal_path), dtype=torch.float64).cuda().eval()
    prompts = random_prompts(drafter, 48, seed=21, max_len=10)
    cfg = GenerationConfig(gen_length=24, verify="causal",
                           verify_kwargs={"verifier": str(causal_path), "dtype": "float64", "draft_length": 6})
    out = drafter.generate(prompts, cfg)
    eos = drafter.ids.eos_id
    for r, p in enumerate(prompts):
        ids = torch.tensor([p], device="cuda")
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=24,
                                 pad_token_id=eos)[0, len(p):].tolist()
        row = out.sequences[r].tolist()
        assert row[: len(ref)] == ref and all(t == eos for t in row[len(ref):]), r
    assert 0.2 < out.stats["acceptance_rate"] < 0.95


def test_causal_and_stepwise_requests_share_steps(drafter, causal_path):
    prompts = random_prompts(drafter, 12, seed=5, max_len=10)
    causal = GenerationConfig(gen_length=16, verify="causal",
                              verify_kwargs={"verifier": str(causal_path), "dtype": "float64", "draft_length": 4})
    stepwise = GenerationConfig(gen_length=16, block_length=8, verify="stepwise")
    configs = [causal if i % 2 else stepwise for i in range(len(prompts))]
    engine = dlm.Engine(drafter, max_rows=len(prompts), batch_invariant=True)  # exact on a GPU too
    reqs = [engine.submit(p, c) for p, c in zip(prompts, configs)]
    engine.run()
    for p, c, r in zip(prompts, configs, reqs):
        single = dlm.Engine(drafter, max_rows=1, batch_invariant=True)
        alone = single.submit(p, c)
        single.run()
        assert torch.equal(alone.output.sequences[0], r.output.sequences[0])
