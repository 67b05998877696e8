"""Products of few rows through cuBLASLt (dlm.models.skinny) on a GPU (skipped without CUDA): LLaDA-8B's and
Dream-7B's attention output and down projections at the row counts of cached steps, against ``module(x)``
(cuBLAS's gemm: another split of the sum, so within bfloat16/float16 rounding, not bit for bit); the same bits
from a CUDA graph as eagerly; the module's own product past MAX_ROWS rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlm.models import skinny

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("shape", [(4096, 4096), (12288, 4096), (3584, 3584), (18944, 3584)])  # in, out
@pytest.mark.parametrize("rows", [1, 32, 33, 64])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_equals_the_module_within_rounding(shape, rows, dtype):
    g = torch.Generator(device="cuda").manual_seed(rows + shape[0])
    lin = nn.Linear(*shape, bias=False, device="cuda", dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(shape[1], shape[0], device="cuda", generator=g) * shape[0] ** -0.5)
    x = torch.randn(1, rows, shape[0], device="cuda", generator=g).to(dtype)
    assert skinny.applies(lin, x)
    skinny.prepare(nn.ModuleDict({"o": lin}))
    got, want = skinny.linear(lin, x), lin(x)
    assert got.shape == want.shape and got.dtype == dtype
    unit = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    assert bool(((got.float() - want.float()).abs() <= want.float().abs() * 2 * unit + 4 * unit).all())
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        skinny.linear(lin, x)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        out = skinny.linear(lin, x)
    graph.replay()
    assert torch.equal(out, got)


def test_more_rows_take_the_module():
    lin = nn.Linear(4096, 4096, bias=False, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(skinny.MAX_ROWS + 1, 4096, device="cuda", dtype=torch.bfloat16)
    assert not skinny.applies(lin, x)
    assert torch.equal(skinny.linear(lin, x), lin(x))
