"""The RoPE Triton kernel on a GPU (skipped without CUDA): bit for bit the eager function at LLaDA-8B and
Dream-7B geometry (q and k as views of the joined projection's output, as the model passes them, with infinite,
NaN, huge, tiny and negative-zero entries among them), at the position counts of decode steps and refreshes, and
as the fused path of a model."""

from __future__ import annotations

import pytest
import torch

from dlm.models import elementwise as ew
from dlm.models import rope_kernel
from dlm.models.transformer import rope_cos_sin

pytestmark = pytest.mark.gpu


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.contiguous(), b.contiguous()
    return bool(((a.view(torch.int16) == b.view(torch.int16)) | (a.isnan() & b.isnan())).all())


@pytest.mark.parametrize("heads, kv_heads, full", [(32, 32, True), (28, 4, False)])  # LLaDA-8B, Dream-7B
@pytest.mark.parametrize("positions", [1, 32, 33, 1024, 12288])
def test_kernel_equals_the_eager_function(heads, kv_heads, full, positions):
    if not rope_kernel.available():
        pytest.skip("Triton is not installed")
    g = torch.Generator(device="cuda").manual_seed(positions)
    D = 128
    qkv = torch.randn(1, positions, (heads + 2 * kv_heads) * D, device="cuda", generator=g).bfloat16() * 3
    specials = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 3e38, -3e38, 1e-40, 65504.0],
                            device="cuda").bfloat16()  # compiled code must round and pass them as the eager one
    flat = qkv.view(-1)
    flat[torch.randint(0, flat.numel(), (specials.numel(),), device="cuda", generator=g)] = specials
    q = qkv[..., : heads * D].view(1, positions, heads, D).transpose(1, 2)
    k = qkv[..., heads * D : (heads + kv_heads) * D].view(1, positions, kv_heads, D).transpose(1, 2)
    pos = torch.randint(0, 32768, (1, positions), device="cuda", generator=g)
    cos, sin = rope_cos_sin(pos, D, 500000.0 if full else 1000000.0)
    assert rope_kernel.applies(q, k, cos, sin)
    qo, ko = rope_kernel.rope(q, k, cos, sin, full)
    qr, kr = ew.rope(q, k, cos, sin, full)
    assert _same(qo, qr) and _same(ko, kr)


@pytest.mark.parametrize("small", [False, True])  # the fused set, and its set for small eager forwards
def test_fused_ops_take_the_kernel(small):
    if not rope_kernel.available():
        pytest.skip("Triton is not installed")
    ops = ew.fused_ops(("test_rope_gpu",))
    ops = ops.small if small else ops
    q = torch.randn(1, 4, 64, 128, device="cuda").bfloat16()
    k = torch.randn(1, 2, 64, 128, device="cuda").bfloat16()
    cos, sin = rope_cos_sin(torch.arange(64, device="cuda").unsqueeze(0), 128, 10000.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        qo, ko = ops.rope(q, k, cos, sin, True)
        torch.cuda.synchronize()
    assert any(e.name == "_rope_qk" for e in prof.events()), [e.name for e in prof.events()]
    qr, kr = ew.rope(q, k, cos, sin, True)
    assert _same(qo, qr) and _same(ko, kr)
