"""The gate/up product with SwiGLU in one Triton kernel on a Hopper GPU (skipped elsewhere): the bits of cuBLAS's
two products and the eager SwiGLU at LLaDA-8B's and Dream-7B's widths, from 1,024 to 12,288 rows, in bfloat16 and
float16; inside a CUDA graph; in a model's forward and in the engine's decode, where the logits and the tokens
are those without the kernel, bit for bit."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dlm
from dlm import GenerationConfig
from dlm.models import elementwise as ew
from dlm.models import swiglu_product_kernel as kernel
from dlm.models.joined import JoinedLinear

from ..conftest import random_prompts

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="needs a Hopper GPU")]


def _module(depth: int, width: int, dtype: torch.dtype, seed: int) -> JoinedLinear:
    g = torch.Generator(device="cuda").manual_seed(seed)
    parts = [torch.nn.Linear(depth, width, bias=False, device="cuda", dtype=dtype) for _ in range(2)]
    with torch.no_grad():
        for p in parts:
            p.weight.copy_(torch.randn(width, depth, device="cuda", generator=g) / depth ** 0.5)
    return JoinedLinear(("gate", "up"), parts).requires_grad_(False)


def _reference(module: JoinedLinear, x: torch.Tensor) -> torch.Tensor:
    gate, up = module.weight.split(module.sizes)
    return ew.swiglu(F.linear(x, gate), F.linear(x, up))


@pytest.mark.parametrize("depth,width", [(4096, 12288), (3584, 18944)])  # LLaDA-8B, Dream-7B
@pytest.mark.parametrize("rows", [1024, 1100, 4097, 12288])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_gives_the_two_products_and_swiglu_bit_for_bit(depth, width, rows, dtype):
    module = _module(depth, width, dtype, seed=rows)
    x = torch.randn(1, rows, depth, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)).to(dtype)
    assert kernel.applies(module, x)
    got = kernel.swiglu_product(module, x)
    assert got.shape == (1, rows, width) and got.is_contiguous()
    assert torch.equal(got, _reference(module, x))


def test_kernel_replays_in_a_cuda_graph():
    module = _module(4096, 12288, torch.bfloat16, seed=0)
    x = torch.randn(2048, 4096, device="cuda", dtype=torch.bfloat16)
    kernel.swiglu_product(module, x)  # compiled before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel.swiglu_product(module, x)
    x.copy_(torch.randn_like(x))
    graph.replay()
    assert torch.equal(out, _reference(module, x))


@pytest.mark.parametrize("name", ["llada", "Dream"])
def test_a_models_logits_and_decode_are_those_without_the_kernel(name, llada_path, dream_path, monkeypatch):
    path = llada_path if name == "llada" else dream_path
    calls = []
    real = kernel.swiglu_product
    monkeypatch.setattr(kernel, "swiglu_product", lambda m, h: calls.append(1) or real(m, h))
    lm = dlm.load(path, device="cuda", dtype="bfloat16")
    ids = torch.tensor(random_prompts(lm, 4, seed=3, min_len=300, max_len=300), device="cuda")  # 1,200 rows
    prompts = random_prompts(lm, 8, seed=4, min_len=96, max_len=120)  # every step feeds > 1,024 positions
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache="none", stop_at_eos=False)
    with torch.no_grad():
        logits = lm.model(ids)
    tokens = lm.generate(prompts, cfg).sequences
    assert len(calls) >= len(lm.model.layers)
    monkeypatch.setattr(kernel, "applies", lambda *a: False)
    ref = dlm.load(path, device="cuda", dtype="bfloat16")  # its own CUDA graphs, captured without the kernel
    with torch.no_grad():
        assert torch.equal(ref.model(ids), logits)
    assert torch.equal(ref.generate(prompts, cfg).sequences, tokens)
