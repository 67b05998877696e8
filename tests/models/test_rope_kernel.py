"""The RoPE Triton kernel (dlm.models.rope_kernel) in Triton's CPU interpreter: bit for bit the eager function
(dlm.models.elementwise.rope) in both precisions, for strided views of a joined projection's output, several
batch rows, partial position tiles, and extreme values (huge, tiny, infinite, NaN (of any payload), negative zero). Skipped where
Triton is not installed; the GPU run is in tests/gpu/test_rope_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.models import rope_kernel

from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# (batch, heads, kv heads, positions, head dim)
SHAPES = [(1, 4, 2, 37, 16), (2, 3, 3, 5, 8), (1, 2, 1, 70, 128), (3, 1, 1, 1, 2), (1, 2, 2, 33, 64)]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from dlm.models import elementwise as ew, rope_kernel as rk
    from dlm.models.transformer import rope_cos_sin
    out = []
    for i, (B, H, Hkv, Q, D) in enumerate(json.loads(sys.argv[1])):
        g = torch.Generator().manual_seed(i)
        qkv = (torch.randn(B, Q, (H + 2 * Hkv) * D, generator=g) * 4).bfloat16()  # a joined projection's output
        flat = qkv.view(-1)
        specials = torch.tensor([float("inf"), -float("inf"), float("nan"), -0.0, 3e38, -3e38, 1e-40, 65504.0])
        flat[torch.randint(0, flat.numel(), (min(8, flat.numel()),), generator=g)] = specials[: min(8, flat.numel())].bfloat16()
        q = qkv[..., : H * D].view(B, Q, H, D).transpose(1, 2)
        k = qkv[..., H * D : (H + Hkv) * D].view(B, Q, Hkv, D).transpose(1, 2)
        cos, sin = rope_cos_sin(torch.randint(0, 100000, (B, Q), generator=g), D, 500000.0)
        for full in (True, False):
            assert rk.applies(q, k, cos, sin)
            qo, ko = rk.rope(q, k, cos, sin, full)
            qr, kr = ew.rope(q, k, cos, sin, full)
            # the same bits everywhere (negative zeros included), NaN where the eager function has NaN (its
            # payload aside)
            same = all(bool(((a.view(torch.int16) == b.view(torch.int16)) | (a.isnan() & b.isnan())).all())
                       for a, b in ((qo.contiguous(), qr.contiguous()), (ko.contiguous(), kr.contiguous())))
            out.append({"shape": [B, H, Hkv, Q, D], "full": full, "bits_equal": same,
                        "token_major": qo.stride(2) == H * D and ko.stride(2) == Hkv * D,
                        "q_shape": list(qo.shape), "k_shape": list(ko.shape)})
    print(json.dumps(out))
''')


def test_kernel_equals_the_eager_function_bit_for_bit():
    results = run_interpreted(SCRIPT, json.dumps(SHAPES))
    assert len(results) == 2 * len(SHAPES)
    for r in results:
        B, H, Hkv, Q, D = r["shape"]
        assert r["bits_equal"] and r["token_major"], r
        assert r["q_shape"] == [B, H, Q, D] and r["k_shape"] == [B, Hkv, Q, D]


def test_applies_only_where_the_kernel_is_exact():
    q = torch.zeros(1, 4, 8, 16, dtype=torch.bfloat16)
    k = torch.zeros(1, 2, 8, 16, dtype=torch.bfloat16)
    cos = sin = torch.zeros(1, 1, 8, 16)
    assert not rope_kernel.applies(q, k, cos, sin)  # CPU tensors outside the interpreter: the compiled function
    if not torch.cuda.is_available():
        return
    dev = torch.device("cuda")
    q, k, cos, sin = q.to(dev), k.to(dev), cos.to(dev), sin.to(dev)
    assert rope_kernel.applies(q, k, cos, sin)
    assert not rope_kernel.applies(q.half(), k.half(), cos, sin)  # float16: not emulated
    assert not rope_kernel.applies(q[..., :12], k[..., :12], cos[..., :12], sin[..., :12])  # half of 6
    assert not rope_kernel.applies(q.transpose(2, 3), k, cos, sin)  # rows not contiguous


def test_applies_neither_to_gradients_nor_to_offsets_past_32_bits(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # CPU tensors count as the kernel's (nothing is launched here)
    q = torch.zeros(2, 4, 8, 16, dtype=torch.bfloat16)
    k = torch.zeros(2, 2, 8, 16, dtype=torch.bfloat16)
    cos = sin = torch.zeros(2, 1, 8, 16)
    assert rope_kernel.applies(q, k, cos, sin)
    assert not rope_kernel.applies(q.requires_grad_(), k, cos, sin)  # no backward: the compiled function's
    with torch.no_grad():
        assert rope_kernel.applies(q, k, cos, sin)
    # the largest offset a program computes, a position tile past the end included
    assert rope_kernel._reach(k) == (1 * 256 + 1 * 128 + 7 * 16 + 15) + rope_kernel.BLOCK_Q * 16
