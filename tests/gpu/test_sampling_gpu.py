"""The temperature-0 candidates kernel (dlm.sampling_kernel) compiled for a GPU (skipped without CUDA): the
interpreted CPU test's cases, LLaDA's vocabulary at the row counts of batch 1 and of a static batch of 32, and a
decode of the bundled model with the fused kernels (which take it) against the same model's reference pass."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig, sampling_kernel
from dlm.sampling import candidates_of_rows, compute_candidates

from ..sampling_cases import CASES, check, compare

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _triton():
    if not sampling_kernel.available():
        pytest.skip("Triton is not installed")


@pytest.mark.parametrize("case", CASES)
def test_kernel_cases(case):
    check(case, compare(*case, device="cuda"))


@pytest.mark.parametrize("rows", [1, 32, 1024])
def test_llada_vocabulary(rows):
    g = torch.Generator(device="cuda").manual_seed(rows)
    logits = torch.randn(rows + 3, 126464, device="cuda", generator=g).bfloat16() * 5
    logits[:, 126336] += 30  # the mask token is the largest logit everywhere: never chosen, still in the softmax
    index = torch.arange(rows + 2, 1, -1, device="cuda")[:rows]
    kw = dict(mode="gumbel", never_ids=(126336,), ban_ids=(126081,), low_confidence_ids=(126081, 126348))
    got = candidates_of_rows(logits, index, fused=True, **kw)
    want = compute_candidates(logits[index], **kw)
    assert torch.equal(got.tokens, want.tokens)
    torch.testing.assert_close(got.confidence, want.confidence, rtol=4e-6, atol=0)


def test_decode_through_the_kernel_matches_the_reference_pass(monkeypatch):
    """The bundled model with fused kernels and without CUDA graphs (its small eager steps run the eager
    elementwise functions), with and without the kernel: the same answers."""
    lm = dlm.load(device="cuda", dtype="bfloat16", fused_kernels=True, cuda_graphs=False)
    prompts = [f"add: {a}+{b} =" for a, b in ((66, 163), (5, 7), (120, 300), (41, 9), (999, 1), (12, 12))]
    cfg = GenerationConfig(gen_length=16, block_length=8, scheduler="threshold", cache="dual")
    calls = []
    kernel = sampling_kernel.greedy
    monkeypatch.setattr(sampling_kernel, "greedy", lambda *a: calls.append(1) or kernel(*a))
    fast = lm.generate(prompts, cfg).sequences
    assert calls
    monkeypatch.setattr(sampling_kernel, "applies", lambda *a: False)
    reference = lm.generate(prompts, cfg).sequences
    assert torch.equal(fast, reference)
