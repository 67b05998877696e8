"""The SwiGLU Triton kernel on a GPU (skipped without CUDA): bit for bit the eager function in bfloat16, float16
and float32, at LLaDA-8B's and Dream-7B's MLP widths, at the position counts of decode steps and refreshes, on
views of a joined gate/up output and on separate tensors, with infinite, NaN, huge, subnormal and negative-zero
entries among them; and as the fused functions' SwiGLU."""

from __future__ import annotations

import pytest
import torch

from dlm.models import elementwise as ew
from dlm.models import swiglu_kernel

pytestmark = pytest.mark.gpu

SPECIALS = [float("inf"), -float("inf"), float("nan"), -0.0, 3e38, -3e38, 1e-40, 90.0, -90.0, 88.7, -88.7]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    bits = torch.int32 if a.dtype == torch.float32 else torch.int16
    return bool(((a.view(bits) == b.view(bits)) | (a.isnan() & b.isnan())).all())


def _operands(positions: int, width: int, dtype: torch.dtype, joined: bool, seed: int):
    g = torch.Generator(device="cuda").manual_seed(seed)
    if joined:  # the halves of one product's output, rows at a stride
        both = torch.randn(1, positions, 2 * width, device="cuda", generator=g).to(dtype) * 4
        gate, up = both[..., :width], both[..., width:]
    else:
        gate, up = (torch.randn(1, positions, width, device="cuda", generator=g).to(dtype) * 4 for _ in range(2))
    specials = torch.tensor(SPECIALS, device="cuda").to(dtype)
    for t in (gate, up):
        rows = t.view(-1, width)  # (a view: the assignment writes into t)
        r = torch.randint(0, rows.shape[0], (specials.numel(),), device="cuda", generator=g)
        c = torch.randint(0, width, (specials.numel(),), device="cuda", generator=g)
        rows[r, c] = specials
    return gate, up


@pytest.mark.parametrize("width", [12288, 18944])  # LLaDA-8B, Dream-7B
@pytest.mark.parametrize("positions", [1, 32, 33, 1024, 12288])
@pytest.mark.parametrize("joined", [True, False])
def test_kernel_equals_the_eager_function_in_bfloat16(width, positions, joined):
    if not swiglu_kernel.available():
        pytest.skip("Triton is not installed")
    gate, up = _operands(positions, width, torch.bfloat16, joined, positions + width)
    assert swiglu_kernel.applies(gate, up)
    assert _same(swiglu_kernel.swiglu(gate, up), ew.swiglu(gate, up))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("joined", [True, False])
def test_kernel_equals_the_eager_function_in_other_dtypes(dtype, joined):
    if not swiglu_kernel.available():
        pytest.skip("Triton is not installed")
    gate, up = _operands(1024, 12288, dtype, joined, 7)
    assert _same(swiglu_kernel.swiglu(gate, up), ew.swiglu(gate, up))


def test_every_bfloat16_gate_value():
    """All 65,536 bfloat16 values as gate (up = 1 and up = 3), the whole range of silu's argument."""
    if not swiglu_kernel.available():
        pytest.skip("Triton is not installed")
    gate = torch.arange(-(2**15), 2**15, device="cuda", dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    gate = gate.view(256, 256)
    for u in (1.0, 3.0):
        up = torch.full_like(gate, u)
        assert _same(swiglu_kernel.swiglu(gate, up), ew.swiglu(gate, up))


def test_fused_ops_take_the_kernel():
    if not swiglu_kernel.available():
        pytest.skip("Triton is not installed")
    ops = ew.fused_ops(("test_swiglu_gpu",))
    gate, up = _operands(64, 512, torch.bfloat16, True, 1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        out = ops.swiglu(gate, up)
        torch.cuda.synchronize()
    assert any(e.name == "_swiglu" for e in prof.events()), [e.name for e in prof.events()]
    assert _same(out, ew.swiglu(gate, up))
