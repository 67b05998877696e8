"""The residual add + RMSNorm Triton kernel on a GPU (skipped without CUDA): the sum bit for bit the eager add's;
the norm (its squares summed in another order, then rounded twice) within 2^-6 of the eager function's value in
bfloat16 and 2^-9 in float16 (two units of the last place at most) and equal for nearly every value, within
2^-20 in float32; at LLaDA-8B's and Dream-7B's widths and the position counts of decode steps and refreshes; the
fused functions taking it."""

from __future__ import annotations

import pytest
import torch

from dlm.models import elementwise as ew
from dlm.models import norm_kernel

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("width", [4096, 3584])  # LLaDA-8B, Dream-7B
@pytest.mark.parametrize("positions", [1, 32, 1152, 12288])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_equals_the_eager_functions(width, positions, dtype):
    g = torch.Generator(device="cuda").manual_seed(positions + width)
    x = (torch.randn(1, positions, width, device="cuda", generator=g) * 2).to(dtype)
    y = (torch.randn(1, positions, width, device="cuda", generator=g) / 2).to(dtype)
    w = (1 + torch.randn(width, device="cuda", generator=g) / 8).to(dtype)
    assert norm_kernel.applies(x, y, w)
    s, h = norm_kernel.add_rms_norm(x, y, w, 1e-5)
    rs, rh = ew.EAGER.add_norm(x, y, w, 1e-5)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(s.view(bits), rs.view(bits))
    unit = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float32: 2.0**-21}[dtype]
    # the norm rounds twice (to the dtype, then its product with the weight): a last-bit difference in the first
    # may show as two units of the result's last place
    assert bool(((h.float() - rh.float()).abs() <= rh.float().abs() * 2 * unit + 1e-30).all())
    if dtype != torch.float32:
        assert (h == rh).float().mean() >= 0.99
    fs, fh = ew.fused_ops(("test_norm_gpu", str(dtype))).add_norm(x, y, w, 1e-5)
    assert torch.equal(fs, s) and torch.equal(fh, h)
