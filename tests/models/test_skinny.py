"""Products of few rows through cuBLASLt (dlm.models.skinny) on the CPU: where the path applies (a plain
``nn.Linear`` in bfloat16/float16 on CUDA, at most MAX_ROWS rows, outside any TorchFunctionMode), the product it
computes (the rule forced on float32 CPU tensors: ``addmm`` with the zero bias against ``module(x)``), its
fallback during a graph capture without a bias made beforehand, and the fused ops taking it. The GPU run is
tests/gpu/test_skinny_gpu.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dlm.engine.numerics import BatchInvariantOps
from dlm.models import elementwise as ew
from dlm.models import skinny


def test_applies_only_to_plain_half_precision_linears_of_few_rows_on_cuda():
    lin = nn.Linear(16, 8, bias=False)
    x = torch.randn(2, 3, 16)
    assert not skinny.applies(lin, x)  # float32 on a CPU
    half = nn.Linear(16, 8, bias=False).to(torch.bfloat16)
    assert not skinny.applies(half, x.bfloat16())  # bfloat16, still a CPU

    class Sub(nn.Linear):
        pass

    assert not skinny.applies(Sub(16, 8), x)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 5, 16), (2, 32, 16), (64, 16)])
def test_the_product_equals_the_modules(monkeypatch, bias, shape):
    """The rule forced on (float32, CPU): addmm with the layer's bias or the cached zeros, reshaped back."""
    monkeypatch.setattr(skinny, "applies", lambda module, x: True)
    g = torch.Generator().manual_seed(sum(shape))
    lin = nn.Linear(16, 24, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(24, 16, generator=g))
    x = torch.randn(*shape, generator=g)
    got = skinny.linear(lin, x)
    assert got.shape == (*shape[:-1], 24)
    torch.testing.assert_close(got, lin(x), rtol=1e-5, atol=1e-5)


def test_no_bias_during_a_capture_falls_back_to_the_module(monkeypatch):
    """A zero bias made during a CUDA-graph capture would hold no values: without one made before, the
    product runs as the module; prepare() makes them for a model's o and down projections."""
    monkeypatch.setattr(skinny, "applies", lambda module, x: True)
    monkeypatch.setattr(skinny, "_ZEROS", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    lin = nn.Linear(16, 40, bias=False)
    called = []
    monkeypatch.setattr(torch, "addmm", lambda *a, **k: called.append(1))
    x = torch.randn(3, 16)
    torch.testing.assert_close(skinny.linear(lin, x), lin(x))
    assert not called and skinny._ZEROS == {}

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.o, self.down, self.up = nn.Linear(8, 8, bias=False), nn.Linear(8, 6, bias=False), nn.Linear(8, 5)

    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    skinny.prepare(nn.ModuleList([Layer()]))
    assert sorted(k[0] for k in skinny._ZEROS) == [6, 8]  # o and down, not the others


def test_not_within_a_torch_function_mode_nor_past_hooks(monkeypatch):
    """The batch-invariant forward tiles F.linear through a TorchFunctionMode, and a module's hooks run in its
    call: the path must bypass neither."""
    seen = []
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    lin = nn.Linear(16, 8, bias=False).to(torch.bfloat16)
    x = torch.randn(4, 16).bfloat16()
    seen.append(skinny.applies(lin, x))
    with BatchInvariantOps(tile=4):
        seen.append(skinny.applies(lin, x))
    seen.append(skinny.applies(lin, torch.randn(skinny.MAX_ROWS + 1, 16).bfloat16()))
    handle = lin.register_forward_hook(lambda *a: None)  # a hook on the module: it must still run
    seen.append(skinny.applies(lin, x))
    handle.remove()
    handle = nn.modules.module.register_module_forward_pre_hook(lambda *a: None)  # on every module
    seen.append(skinny.applies(lin, x))
    handle.remove()
    lin.forward = lambda t: t  # a forward of the instance's own
    seen.append(skinny.applies(lin, x))
    del lin.forward
    with torch.device("cpu"):  # a default-device context is a function mode too, and harmless
        seen.append(skinny.applies(lin, x))
    assert seen == [True, False, False, False, False, False, True]


def test_fused_ops_project_through_it_and_the_eager_ones_do_not():
    assert ew.EAGER.project is ew.project
    ops = ew.fused_ops(("test_skinny",))
    assert ops.project is skinny.linear and ops.small.project is skinny.linear
