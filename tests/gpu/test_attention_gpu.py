"""``dlm.models.attention.sdpa`` on a GPU (skipped without CUDA): no cuDNN kernel by default, cuDNN's own when
asked for (where torch picks it), torch's switch restored, and the result equal to float32 attention within bf16
rounding, with and without a key mask and with grouped-query heads; and the split-key Triton kernel of the fused
kernels (dlm.models.attention_kernel) against attention in float64 and torch's kernel, alone and in a decode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlm.models import attention, attention_kernel
from dlm.models.ragged import _attend_folded

from ..attention_cases import CASES, check, compare

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


# ---------------------------------------------------------------- the split-key kernel (dlm.models.attention_kernel)
@pytest.mark.parametrize("case", CASES)
def test_split_kernel_cases(case):
    if not attention_kernel.available():
        pytest.skip("Triton is not installed")
    check(case, compare(*case[:10], device="cuda"))


# (rows, queries, keys, heads, kv heads, masked): batch 1 (keys split), a static batch's in-block step, pooled
# rows of different lengths, Dream-7B's grouped heads
GEOMETRIES = [(1, 32, 1152, 32, 32, False), (32, 32, 384, 32, 32, False), (28, 32, 384, 32, 32, True),
              (1, 32, 1152, 28, 4, False), (32, 32, 384, 28, 4, True)]


@pytest.mark.parametrize("rows, queries, keys, heads, kv_heads, masked", GEOMETRIES)
def test_split_kernel_is_as_close_as_torchs_kernel(rows, queries, keys, heads, kv_heads, masked):
    """At the engine's shapes (pool-like token-major operands) the kernel is as close to float64 attention as
    torch's own bf16 kernel is, within a small margin."""
    if not attention_kernel.available():
        pytest.skip("Triton is not installed")
    g = torch.Generator(device="cuda").manual_seed(rows + keys + heads)
    q = torch.randn(rows, queries, heads, 128, device="cuda", generator=g).bfloat16().transpose(1, 2)
    k = (torch.randn(rows, keys, kv_heads, 128, device="cuda", generator=g) * 2).bfloat16().transpose(1, 2)
    v = torch.randn(rows, keys, kv_heads, 128, device="cuda", generator=g).bfloat16().transpose(1, 2)
    mask = None
    if masked:
        lengths = torch.randint(keys // 4, keys + 1, (rows,), device="cuda", generator=g)
        mask = (torch.arange(keys, device="cuda")[None] < lengths[:, None])[:, None, None, :]
    assert attention_kernel.applies(q, k, v, mask)
    got = attention_kernel.attend(q, k, v, mask)
    torchs = _attend_folded(q, k, v, mask, kv_heads)
    grp = heads // kv_heads
    ref = F.scaled_dot_product_attention(q.double(), k.double().repeat_interleave(grp, 1),
                                         v.double().repeat_interleave(grp, 1), attn_mask=mask)
    err, err_torch = ((got.double() - ref).abs().max().item(), (torchs.double() - ref).abs().max().item())
    assert got.shape == torchs.shape and got.transpose(1, 2).is_contiguous()
    assert err <= 1.5 * err_torch + 1e-3, (err, err_torch)


def test_decode_with_the_split_kernel_agrees_with_torchs_attention(monkeypatch):
    """The bundled model with its default (fused) settings, with and without the kernel: the same answers on
    almost every prompt (the kernel rounds differently, which may flip a near-tie) and the same accuracy. 128
    prompts in lockstep: the in-block steps feed 1,024 positions (the kernel runs eagerly from there) and repeat
    their layout (captured graphs run it too)."""
    import dlm
    from dlm import GenerationConfig

    if not attention_kernel.available():
        pytest.skip("Triton is not installed")
    pairs = [(a, b) for a in range(1, 400, 23) for b in range(2, 200, 25)][:128]
    prompts = [f"add: {a}+{b} =" for a, b in pairs]
    cfg = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", stop_at_eos=False)
    applies = attention_kernel.applies
    # the reference first, on a model of its own: captured graphs keep the attention they were captured with
    monkeypatch.setattr(attention_kernel, "applies", lambda *a: False)
    reference = dlm.load(device="cuda").generate(prompts, cfg).texts
    monkeypatch.setattr(attention_kernel, "applies", applies)
    calls = []
    kernel = attention_kernel.attend
    monkeypatch.setattr(attention_kernel, "attend", lambda *a: calls.append(1) or kernel(*a))
    lm = dlm.load(device="cuda")
    assert lm.model.ops.fused
    fast = lm.generate(prompts, cfg).texts
    assert calls
    same = sum(a == b for a, b in zip(fast, reference))
    right = [sum(t.strip().startswith(str(a + b)) for t, (a, b) in zip(out, pairs)) for out in (fast, reference)]
    assert same >= 0.95 * len(prompts), (same, right)
    assert abs(right[0] - right[1]) <= 3, right
