"""The SwiGLU Triton kernel (dlm.models.swiglu_kernel) in Triton's CPU interpreter against the eager function
(dlm.models.elementwise.swiglu), within the last bit of silu's float32 value (the interpreter's exponential is
NumPy's, not CUDA's; in bfloat16 that bit seldom shows, so at least 99.9% of the values are equal bit for bit), for
views of a joined gate/up output, separate tensors,
several leading dimensions, partial column blocks and extreme values (infinite, NaN, huge, small, negative zero);
the fused functions taking it; what :func:`applies` refuses. Skipped where Triton is not installed; the GPU run,
bit for bit in every dtype, is in tests/gpu/test_swiglu_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.models import swiglu_kernel

from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# (leading dims..., columns); joined: gate and up as the two halves of one product's output
CASES = [([3, 37, 50], True), ([1, 5000], False), ([2, 2100], True), ([1, 1, 1], False), ([7, 2049], False),
         ([2, 3, 4, 64], True)]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from dlm.models import elementwise as ew, swiglu_kernel as sk
    out = []
    ops = ew.fused_ops(("test_swiglu_kernel",))
    for i, (shape, joined) in enumerate(json.loads(sys.argv[1])):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            g = torch.Generator().manual_seed(i)
            *lead, cols = shape
            if joined:
                both = (torch.randn(*lead, 2 * cols, generator=g) * 4).to(dt)
                gate, up = both[..., :cols], both[..., cols:]
            else:
                gate, up = ((torch.randn(*shape, generator=g) * 4).to(dt) for _ in range(2))
            # (no subnormal values: the interpreter's bfloat16 loads flush them to zero; the GPU test has them)
            specials = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 3e38, -3e38, 1e-30, 90.0])
            for t in (gate, up):
                flat = t.view(-1) if t.is_contiguous() else t.reshape(-1, cols)[0]
                n = min(8, flat.numel())
                flat[torch.randint(0, flat.numel(), (n,), generator=g)] = specials[:n].to(dt)
            assert sk.applies(gate, up)
            got, fused, ref = sk.swiglu(gate, up), ops.swiglu(gate, up), ew.swiglu(gate, up)
            both_nan = got.isnan() & ref.isnan()
            bits = torch.int16 if dt != torch.float32 else torch.int32
            same = (got.view(bits) == ref.view(bits)) | both_nan
            # within the last bit of silu's float32 value: the product may move by one unit of the dtype
            unit = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10, torch.float32: 2.0 ** -20}[dt]
            close = same | ((got.float() - ref.float()).abs() <= ref.float().abs() * unit)
            out.append({"shape": shape, "joined": joined, "dtype": str(dt), "bits_equal": bool(same.all()),
                        "equal_share": float(same.float().mean()),
                        "close": bool(close.all()), "fused_is_kernel": bool(((fused.view(bits) == got.view(bits)) | both_nan).all()),
                        "out_shape": list(got.shape), "contiguous": got.is_contiguous()})
    print(json.dumps(out))
''')


def test_kernel_equals_the_eager_function():
    results = run_interpreted(SCRIPT, json.dumps(CASES))
    assert len(results) == 3 * len(CASES)
    for r in results:
        assert r["out_shape"] == r["shape"] and r["contiguous"] and r["fused_is_kernel"], r
        assert r["close"], r
        if r["dtype"] == "torch.bfloat16":  # rounded on the bits, as torch does: NumPy's exp differs from torch's
            assert r["equal_share"] >= 0.999, r  # in silu's last float32 bit now and then, which seldom shows


def test_applies_only_where_the_kernel_serves():
    gate = torch.zeros(4, 8, dtype=torch.bfloat16)
    assert not swiglu_kernel.applies(gate, gate.clone())  # CPU tensors outside the interpreter: compiled function
    if not torch.cuda.is_available():
        return
    dev = torch.device("cuda")
    gate, up = gate.to(dev), gate.to(dev).clone()
    assert swiglu_kernel.applies(gate, up)
    assert swiglu_kernel.applies(gate[:, :4], up[:, 4:])  # rows at a stride: views of a joined output
    assert not swiglu_kernel.applies(gate.t(), up.t())  # columns not contiguous
    assert not swiglu_kernel.applies(gate, up.half())  # dtypes differ
    assert not swiglu_kernel.applies(gate.to(torch.int32), up.to(torch.int32))  # not floating
    assert not swiglu_kernel.applies(gate[:, :4], up)  # shapes differ
    wide = torch.empty(1, 65535 * swiglu_kernel.BLOCK + 1, device=dev, dtype=torch.bfloat16)
    assert not swiglu_kernel.applies(wide, wide)  # more column blocks than the grid's second axis holds
    assert not swiglu_kernel.applies(gate[0, 0], up[0, 0])  # no dimension: the compiled function
    w = torch.zeros(4, 8, device=dev, requires_grad=True)
    assert not swiglu_kernel.applies(w, w)  # a gradient asked: the compiled function keeps autograd

