"""GPU checks (skipped without CUDA): device placement, dtypes, CUDA-graph replay equal to eager, exact caches."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig

from ..conftest import random_prompts

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["llada", "Dream"])
def gpu_path(request, llada_path, dream_path):
    return llada_path if request.param == "llada" else dream_path


def test_generate_on_gpu_matches_cpu_fp32(gpu_path):
    cpu = dlm.load(gpu_path, device="cpu", dtype="float32")
    gpu = dlm.load(gpu_path, device="cuda", dtype="float32")
    prompts = random_prompts(cpu, 3, seed=1)
    cfg = GenerationConfig(gen_length=16, block_length=8, stop_at_eos=False)
    a, b = cpu.generate(prompts, cfg).sequences, gpu.generate(prompts, cfg).sequences
    assert (a == b).float().mean() > 0.9  # different kernels; near-ties may flip a token


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "delayed", "window"])
def test_cuda_graphs_equal_eager(gpu_path, cache):
    lm = dlm.load(gpu_path, device="cuda", dtype="float32")
    prompts = random_prompts(lm, 4, seed=2, min_len=1, max_len=12)
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache=cache, stop_at_eos=False)
    eager = lm.generate(prompts, cfg).sequences
    lm.cuda_graphs = True
    graphed = lm.generate(prompts, cfg).sequences
    assert torch.equal(eager, graphed)


def test_exact_caches_on_gpu(gpu_path):
    lm = dlm.load(gpu_path, device="cuda", dtype="float32")
    prompts = random_prompts(lm, 3, seed=3)
    base = GenerationConfig(gen_length=16, block_length=8, stop_at_eos=False)
    ref = lm.generate(prompts, base).sequences
    for cache in ("prefix", "dual", "delayed", "window"):
        assert torch.equal(lm.generate(prompts, base.replace(cache=cache, cache_kwargs={"refresh_every": 1})).sequences, ref)


def test_bf16_runs(gpu_path):
    lm = dlm.load(gpu_path, device="cuda", dtype="bfloat16", cuda_graphs=True)
    out = lm.generate(random_prompts(lm, 2, seed=4), GenerationConfig(gen_length=16, block_length=8, cache="dual"))
    assert out.sequences.shape == (2, 16) and out.sequences.device.type == "cpu"

