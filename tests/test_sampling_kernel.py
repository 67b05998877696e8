"""The temperature-0 candidates kernel (dlm.sampling_kernel) in Triton's CPU interpreter, against the reference
(dlm.sampling.compute_candidates over the gathered rows): the same tokens, confidences within a few float32 ulps,
for every sampling mode, banned / never-chosen / low-confidence ids, ties within and across the kernel's vocabulary
tiles, vocabularies shorter and longer than a tile, strided rows, repeated and unordered row indices, NaN rows.
Skipped where Triton is not installed (CI installs it with the test extra on Linux x86-64); the GPU run is in
tests/gpu/test_sampling_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.sampling import (
    Candidates,
    _greedy_without_extras,
    candidates_of_rows,
    compute_candidates,
)

from .interpreted import run_interpreted
from .sampling_cases import CASES, check

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

SCRIPT = textwrap.dedent('''
    import json, sys
    from tests.sampling_cases import compare
    print(json.dumps([compare(*c) for c in json.loads(sys.argv[1])]))
''')


@needs_triton
@pytest.mark.slow
def test_kernel_gives_the_reference_tokens_and_confidences():
    for case, result in zip(CASES, run_interpreted(SCRIPT, json.dumps(CASES))):
        check(case, result)


@pytest.mark.parametrize("kw,fits", [
    (dict(mode="gumbel"), True),
    (dict(mode="gumbel", top_k=5, top_p=0.5), True),  # filters only act at temperature > 0
    (dict(mode="multinomial", top_k=5), True),
    (dict(mode="categorical"), True),
    (dict(mode="categorical", top_p=1.0), True),
    (dict(mode="categorical", top_k=5), False),  # categorical filters even at temperature 0
    (dict(mode="categorical", top_p=0.9), False),
    (dict(mode="gumbel", temperature=0.5), False),
    (dict(mode="gumbel", measures={"margin"}), False),
])
def test_which_settings_the_kernel_serves(kw, fits):
    assert _greedy_without_extras(**kw) is fits


def test_without_the_kernel_the_reference_runs(monkeypatch):
    """On a CPU without the interpreter (or with ``fused=False``, or settings the kernel does not serve) the rows
    are gathered and given to compute_candidates: the very same result."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g).bfloat16()
    rows = torch.tensor([4, 0, 4, 2])
    for fused in (False, True):
        for kw in (dict(mode="gumbel", never_ids=(3,)), dict(mode="categorical", top_k=3, measures={"margin"})):
            got, want = candidates_of_rows(logits, rows, fused=fused, **kw), compute_candidates(logits[rows], **kw)
            assert isinstance(got, Candidates)
            assert torch.equal(got.tokens, want.tokens) and torch.equal(got.confidence, want.confidence)
            assert (got.margin is None) == (want.margin is None)


ENGINE_SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import dlm
    from dlm import GenerationConfig, sampling_kernel
    from tests.conftest import random_prompts

    calls = []
    kernel = sampling_kernel.greedy
    sampling_kernel.greedy = lambda *a: calls.append(a[1].numel()) or kernel(*a)
    out = {}
    for path in sys.argv[1:]:
        # steps of fewer than 1,024 positions run the eager elementwise functions even with fused kernels: the
        # two models give the same logits, so any difference would be the candidates pass
        eager = dlm.load(path, device="cpu", dtype="float32")
        fused = dlm.load(path, device="cpu", dtype="float32", fused_kernels=True)
        prompts = random_prompts(eager, 6, seed=3)
        for name, cfg in {
            "low_confidence": GenerationConfig(gen_length=16, block_length=8, steps=8),
            "threshold+dual": GenerationConfig(gen_length=16, block_length=8, scheduler="threshold", cache="dual",
                                               logits_eos_inf=True, confidence_eos_eot_inf=True),
            "sampled": GenerationConfig(gen_length=16, block_length=8, temperature=0.7, seed=5),
        }.items():
            before = len(calls)
            a, b = eager.generate(prompts, cfg).sequences, fused.generate(prompts, cfg).sequences
            out[path + " " + name] = {"equal": bool(torch.equal(a, b)), "kernel_rows": sum(calls[before:])}
    print(json.dumps(out))
''')


@needs_triton
@pytest.mark.slow
def test_engine_takes_the_kernel_with_fused_kernels(llada_path, dream_path):
    """A model loaded with fused kernels decodes through the kernel at temperature 0 (not when sampling), with the
    tokens of the model without it."""
    results = run_interpreted(ENGINE_SCRIPT, str(llada_path), str(dream_path), timeout=900)
    assert len(results) == 6
    for name, r in results.items():
        assert r["equal"], name
        assert (r["kernel_rows"] > 0) == (not name.endswith("sampled")), (name, r)
