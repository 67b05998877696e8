"""The FP8 activation quantizer kernel (dlm.models.fp8_rows_kernel) in Triton's CPU interpreter against the reference
(dlm.models.fp8.quantize_rows): the same scales and FP8 bits, for several widths (a row in registers or in blocks,
partial blocks), leading dimensions, rows with a stride, and special rows (all zero, a NaN, an infinity, huge and
tiny values); what :func:`applies` refuses. Skipped where Triton is not installed; the GPU run, where the kernel
rounds to FP8 itself, is in tests/gpu/test_fp8_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.models import fp8_rows_kernel

from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# (leading dims..., columns), whether the rows are views at a stride (a slice of wider rows)
CASES = [([1, 16], False), ([3, 100], False), ([2, 5, 64], False), ([6, 4096], False), ([2, 2049], True),
         ([4, 3584], True), ([1, 1], False), ([5, 9000], False), ([2, 8193], True)]  # (the last two: in blocks)

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from dlm.models import fp8, fp8_rows_kernel as k
    out = []
    for i, (shape, strided) in enumerate(json.loads(sys.argv[1])):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            g = torch.Generator().manual_seed(i)
            *lead, cols = shape
            full = torch.randn(*lead, cols + (7 if strided else 0), generator=g) * 20
            x = full[..., :cols].to(dt) if strided else full.to(dt)
            flat = x if x.dim() == 2 else x.view(-1, cols)  # (a view: the changes below reach x)
            # (no subnormal inputs: the interpreter's half-precision loads flush them to zero)
            specials = [0.0, float("nan"), float("inf"), 6e4 if dt == torch.float16 else 3e38]
            if not strided and flat.shape[0] >= 4:
                flat[1] = 0                       # an all-zero row: exact zeros, scale 1e-12 / 448
                flat[2, 0] = specials[1]          # a NaN: the row's scale is NaN
                flat[3, -1] = specials[2]         # an infinity: its scale is infinite, the row NaN
            if flat.shape[0] >= 1 and cols >= 3:
                flat[0, :3] = torch.tensor([specials[3], 1e-3, -7.0]).to(dt)
            assert k.applies(x)
            (q, s), (q_ref, s_ref) = k.quantize_rows(x), fp8.quantize_rows(x)
            s_same = (s == s_ref) | (s.isnan() & s_ref.isnan())
            qf, qf_ref = q.float(), q_ref.float()
            q_same = (q.view(torch.uint8) == q_ref.view(torch.uint8)) | (qf.isnan() & qf_ref.isnan())
            out.append({"shape": shape, "strided": strided, "dtype": str(dt), "q_shape": list(q.shape),
                        "s_shape": list(s.shape), "q_dtype": str(q.dtype), "scales_equal": bool(s_same.all()),
                        "bits_equal": bool(q_same.all())})
    print(json.dumps(out))
''')


def test_kernel_equals_the_reference():
    results = run_interpreted(SCRIPT, json.dumps(CASES))
    assert len(results) == 3 * len(CASES)
    for r in results:
        assert r["q_shape"] == r["shape"] and r["s_shape"] == r["shape"][:-1] + [1], r
        assert r["q_dtype"] == "torch.float8_e4m3fn" and r["scales_equal"] and r["bits_equal"], r


def test_applies_only_where_the_kernel_serves():
    x = torch.zeros(4, 8, dtype=torch.bfloat16)
    assert not fp8_rows_kernel.applies(x)  # CPU tensors outside the interpreter: the compiled function
    if not torch.cuda.is_available():
        return
    dev = torch.device("cuda")
    x = x.to(dev)
    assert fp8_rows_kernel.applies(x) and fp8_rows_kernel.applies(x[:, :4])  # rows at a stride
    assert not fp8_rows_kernel.applies(x.t())  # columns not contiguous
    assert not fp8_rows_kernel.applies(x.to(torch.int32))  # not floating
    assert not fp8_rows_kernel.applies(x[0, 0])  # no dimension
    assert not fp8_rows_kernel.applies(torch.zeros(2, 8, device=dev, requires_grad=True))  # a gradient asked
