"""The residual add + RMSNorm Triton kernel (dlm.models.norm_kernel) in Triton's CPU interpreter against the eager
functions (the add, then dlm.models.elementwise.rms_norm): the sum bit for bit; the norm (its squares summed in
another order, then rounded twice) within 2^-6 of its value in bfloat16 and 2^-9 in float16 (two units of the
last place at most) and equal for nearly every value, within 2^-21 in float32; in each dtype, for strided and
contiguous rows, several leading dimensions and widths that are not powers of two; the fused functions taking
it; the eager Ops' add_norm as the add then the norm; what :func:`applies` refuses. Skipped where Triton is not
installed; the GPU run is in tests/gpu/test_norm_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.models import elementwise as ew
from dlm.models import norm_kernel

from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

CASES = [([3, 5, 64], False), ([1, 7, 3584], True), ([2, 100], False), ([1, 1], False), ([4, 2, 48], True)]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from dlm.models import elementwise as ew, norm_kernel as nk
    out = []
    ops = ew.fused_ops(("test_norm_kernel",))
    for i, (shape, strided) in enumerate(json.loads(sys.argv[1])):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            g = torch.Generator().manual_seed(i)
            *lead, cols = shape
            x = (torch.randn(*shape, generator=g) * 3).to(dt)
            if strided:  # y: the first half of each row of a wider output (rows at a stride)
                y = (torch.randn(*lead, 2 * cols, generator=g) * 3).to(dt)[..., :cols]
            else:
                y = (torch.randn(*shape, generator=g) * 3).to(dt)
            w = (1 + torch.randn(cols, generator=g) / 4).to(dt)
            assert nk.applies(x, y, w)
            s, h = nk.add_rms_norm(x, y, w, 1e-5)
            fs, fh = ops.add_norm(x, y, w, 1e-5)
            rs, rh = ew.EAGER.add_norm(x, y, w, 1e-5)
            bits = torch.int16 if dt != torch.float32 else torch.int32
            unit = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10, torch.float32: 2.0 ** -22}[dt]
            close = (h.float() - rh.float()).abs() <= rh.float().abs() * 2 * unit + 1e-30  # (two roundings)
            out.append({"shape": shape, "dtype": str(dt), "sum_equal": torch.equal(s.view(bits), rs.view(bits)),
                        "norm_close": bool(close.all()), "norm_equal_share": float((h == rh).float().mean()),
                        "fused_is_kernel": torch.equal(fs.view(bits), s.view(bits)) and torch.equal(fh.view(bits), h.view(bits)),
                        "shapes": [list(s.shape), list(h.shape)], "contiguous": s.is_contiguous() and h.is_contiguous()})
    print(json.dumps(out))
''')


def test_kernel_equals_the_eager_functions():
    results = run_interpreted(SCRIPT, json.dumps(CASES))
    assert len(results) == 3 * len(CASES)
    for r in results:
        assert r["shapes"] == [r["shape"], r["shape"]] and r["contiguous"] and r["fused_is_kernel"], r
        assert r["sum_equal"] and r["norm_close"], r
        if r["dtype"] != "torch.float32":  # the reduction's order moves float32's last bit now and then, which
            assert r["norm_equal_share"] >= 0.99, r  # rounding to 16 bits seldom shows


def test_eager_add_norm_is_the_add_then_the_norm():
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randn(3, 16, generator=g).to(torch.bfloat16) for _ in range(2))
    w = torch.rand(16, generator=g).to(torch.bfloat16)
    s, h = ew.EAGER.add_norm(x, y, w, 1e-6)
    assert torch.equal(s, x + y) and torch.equal(h, ew.rms_norm(x + y, w, 1e-6))
    calls = []
    ops = ew.Ops(lambda *a: calls.append(a) or ew.rms_norm(*a), ew.rope, ew.swiglu)  # a set without its own
    s2, h2 = ops.add_norm(x, y, w, 1e-6)
    assert len(calls) == 1 and torch.equal(s2, s) and torch.equal(h2, h)


REFUSALS = textwrap.dedent('''
    import json
    import torch
    from dlm.models import norm_kernel as nk

    class Sub(torch.Tensor):
        pass

    x = torch.zeros(4, 8, dtype=torch.bfloat16)
    w = torch.ones(8, dtype=torch.bfloat16)
    narrow = torch.ones(4, dtype=torch.bfloat16)
    wide = torch.zeros(1, nk.MAX_COLS + 1, dtype=torch.bfloat16)
    cases = {
        "plain": nk.applies(x, x.clone(), w),
        "a tensor subclass": nk.applies(x.as_subclass(Sub), x.clone(), w),
        "mixed dtypes": nk.applies(x, x.float(), w), "a float32 weight": nk.applies(x, x.clone(), w.float()),
        "shapes differ": nk.applies(x, x[:, :4], w), "a weight of another width": nk.applies(x, x.clone(), narrow),
        "strided columns": nk.applies(x.t(), x.t().clone(), narrow),
        "rows too wide": nk.applies(wide, wide, torch.ones(wide.shape[1], dtype=torch.bfloat16)),
        "integers": nk.applies(x.long(), x.long(), w.long()),
    }
    with torch.no_grad():  # (as the engine runs the model)
        cases["a parameter's weight"] = nk.applies(x, x.clone(), torch.nn.Parameter(w))
    with torch.enable_grad():
        cases["gradient"] = nk.applies(x.clone().requires_grad_(), x.clone(), w)
        cases["a weight that wants its gradient"] = nk.applies(x, x.clone(), torch.nn.Parameter(w))
    print(json.dumps(cases))
''')


def test_applies_only_where_the_kernel_serves():
    """What applies() refuses, with CPU tensors under the interpreter (where the kernel would otherwise run)."""
    cases = run_interpreted(REFUSALS)
    assert cases.pop("plain") and cases.pop("a parameter's weight")
    assert not any(cases.values()), [name for name, accepted in cases.items() if accepted]
    x = torch.zeros(4, 8, dtype=torch.bfloat16)  # outside the interpreter: CPU tensors take the compiled function
    assert not norm_kernel.applies(x, x.clone(), torch.ones(8, dtype=torch.bfloat16))
