"""The W8A16 Triton kernel of FP8 weights (dlm.models.fp8_kernel) in Triton's CPU interpreter: every row tile,
ragged K, bias or none, batch dimensions, against the product of the same operands in float64 rounded to bf16.
Skipped where Triton is not installed (CI installs it with the test extra on Linux x86-64); the GPU run of the
same kernel is in tests/gpu/test_fp8_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.models import fp8_kernel

from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# (rows, out_features, in_features, bias, split): rows 1..128 cover the four row tiles (16 to 128) and
# partial tiles; in_features not a multiple of the 128-wide K tile takes the masked loop; out_features not a
# multiple of the 64-wide N tile masks the last program's columns; split None is the layer's own
# (fp8_kernel.splits: 1, 2 and 4 here), an explicit one cuts K into parts of uneven or no work
CASES = [(1, 64, 256, False, None), (5, 96, 512, True, None), (16, 48, 320, True, None), (17, 128, 768, False, None),
         (32, 64, 96, True, None), (33, 80, 1024, False, None), (64, 128, 1000, True, None), (7, 64, 640, True, 3),
         (40, 64, 256, False, 4), (100, 64, 256, True, None), (128, 48, 384, False, 2)]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from dlm.models.fp8 import quantize_weight
    from dlm.models.fp8_kernel import linear_w8a16
    results = []
    for i, (m, n, k, bias, split) in enumerate(json.loads(sys.argv[1])):
        g = torch.Generator().manual_seed(i)
        q, scale = quantize_weight(torch.randn(n, k, generator=g) * 0.05)
        x = torch.randn(m, 2 * k, generator=g).bfloat16()[:, k:]  # a view with a row stride of 2k
        x[0, : k // 2] *= 1000  # rows of very different ranges within one K tile, and across tiles
        b = torch.randn(n, generator=g).bfloat16() if bias else None
        assert x.stride(0) == 2 * k
        y = linear_w8a16(x.unsqueeze(0), q, scale, b, split=split)[0]
        want = x.double() @ q.double().T * scale.double()[None, :] + (b.double() if bias else 0)
        want16 = want.to(torch.bfloat16)
        ulp = (want16.float().abs() * 2.0 ** -7).clamp(min=2.0 ** -126)
        results.append({"shape": list(y.shape), "dtype": str(y.dtype),
                        "mismatch": int((y != want16).sum()), "size": y.numel(),
                        "max_ulps": float(((y.float() - want16.float()).abs() / ulp).max())})
    print(json.dumps(results))
''')


def test_kernel_is_the_rounded_product_of_its_operands():
    """The output is x @ (Q * scale).T + b computed exactly and rounded once to bf16: at most one bf16 step off
    anywhere (a float32 sum against float64) and equal almost everywhere."""
    results = run_interpreted(SCRIPT, json.dumps(CASES))
    assert len(results) == len(CASES) == 11
    for case, r in zip(CASES, results):
        assert r["shape"] == list(case[:2]) and r["dtype"] == "torch.bfloat16"
        assert r["max_ulps"] <= 1.0, (case, r)
        assert r["mismatch"] <= 0.01 * r["size"], (case, r)


def test_splits_depend_on_the_shape_only():
    """K is cut until a product has about two programs per SM, into equal parts of whole K tiles, none empty
    (Dream-7B's 3584 inputs: 28 tiles, 7 parts of 4, not 8 parts with an empty one)."""
    assert [fp8_kernel.splits(n, k) for n, k in [(4096, 4096), (12288, 4096), (4096, 12288), (126464, 4096),
                                                 (64, 256), (64, 1024), (512, 3584)]] == [4, 2, 4, 1, 1, 4, 7]


def test_row_tiles():
    assert [fp8_kernel.block_m(m) for m in (1, 16, 17, 32, 33, 64, 65, 200, 256)] == [16, 16, 32, 32, 64, 64, 128,
                                                                                       256, 256]


def test_layers_take_the_kernel_up_to_a_row_count_set_by_their_shape():
    """32 rows for a product that widens, 64 for a square one, all the kernel takes for one that narrows (the
    crossings measured on an H200), kept by each FP8 layer, joined ones included (their joined output width)."""
    from dlm.models.fp8 import FP8Linear
    from dlm.models.joined import JoinedFP8Linear

    assert [fp8_kernel.max_rows(k, n) for k, n in [(4096, 12288), (4096, 4096), (4096, 24576), (12288, 4096),
                                                   (3584, 4608), (18944, 3584)]] == [32, 64, 32, 128, 32, 128]
    assert FP8Linear(4096, 4096, bias=False, device="meta").w8a16_rows == 64
    parts = [FP8Linear(256, 256, bias=False, device="meta") for _ in range(3)]
    for p in parts:
        p.compute_dtype = torch.bfloat16
    assert JoinedFP8Linear(("q", "k", "v"), parts).w8a16_rows == 32  # 256 -> 768: widens


def test_more_rows_than_the_kernel_takes_is_an_error():
    q = torch.zeros(16, 16, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=f"at most {fp8_kernel.MAX_ROWS} rows, got {fp8_kernel.MAX_ROWS + 1}"):
        fp8_kernel.linear_w8a16(torch.zeros(fp8_kernel.MAX_ROWS + 1, 16, dtype=torch.bfloat16), q,
                                torch.ones(16), None)


def test_operands_are_checked():
    q = torch.zeros(16, 32, dtype=torch.float8_e4m3fn)
    with pytest.raises(ValueError, match=r"bf16 activations \(\.\.\., K\) by a float8_e4m3fn weight \(N, K\)"):
        fp8_kernel.linear_w8a16(torch.zeros(2, 16, dtype=torch.bfloat16), q, torch.ones(16), None)  # K 16 != 32
    with pytest.raises(ValueError, match="torch.float32"):
        fp8_kernel.linear_w8a16(torch.zeros(2, 32), q, torch.ones(16), None)


def test_not_used_off_the_gpu():
    assert not fp8_kernel.works(torch.device("cpu"))
