"""``dlm.models.attention.sdpa`` on a GPU (skipped without CUDA): no cuDNN kernel by default, cuDNN's own when
asked for (where torch picks it), torch's switch restored, and the result equal to float32 attention within bf16
rounding, with and without a key mask and with grouped-query heads."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlm.models import attention

pytestmark = pytest.mark.gpu


def _operands(masked: bool, kv_heads: int = 32):
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(4, 32, 40, 128, device="cuda", generator=g).bfloat16()
    k, v = (torch.randn(4, kv_heads, 392, 128, device="cuda", generator=g).bfloat16() for _ in range(2))
    mask = None
    if masked:
        lengths = torch.tensor([392, 200, 17, 300], device="cuda")
        mask = (torch.arange(392, device="cuda")[None] < lengths[:, None])[:, None, None, :]
    return q, k, v, mask


def _kernels(fn) -> list[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


@pytest.mark.parametrize("masked", [False, True])
def test_default_runs_no_cudnn_kernel_and_restores_the_switch(masked):
    q, k, v, mask = _operands(masked)
    assert torch.backends.cuda.cudnn_sdp_enabled()
    names = _kernels(lambda: attention.sdpa(q, k, v, mask))
    assert names and not any("cudnn" in n for n in names), names
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_use_cudnn_attention_gives_torch_its_choice():
    q, k, v, _ = _operands(False)
    attention.use_cudnn_attention(True)
    try:
        attention.sdpa(q, k, v)  # a first call may build a plan (its own memsets): compare warm calls
        ours = _kernels(lambda: attention.sdpa(q, k, v))
    finally:
        attention.use_cudnn_attention(False)
    theirs = _kernels(lambda: F.scaled_dot_product_attention(q, k, v))
    assert any("cudnn" in n for n in ours) == any("cudnn" in n for n in theirs), (ours, theirs)
    assert [n for n in ours if "Memset" not in n] == [n for n in theirs if "Memset" not in n]


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kv_heads", [32, 4])
def test_equals_float32_attention_within_bf16_rounding(masked, kv_heads):
    q, k, v, mask = _operands(masked, kv_heads)
    out = attention.sdpa(q, k, v, mask, enable_gqa=kv_heads != 32)
    g = 32 // kv_heads
    ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(g, 1),
                                         v.float().repeat_interleave(g, 1), attn_mask=mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
