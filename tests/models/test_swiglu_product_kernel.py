"""The gate/up product with SwiGLU in one Triton kernel (dlm.models.swiglu_product_kernel) in Triton's CPU
interpreter: against the two products and the eager SwiGLU (float16: the interpreter's TMA loads of bfloat16 are
not faithful; its products sum in another order than the CPU's, so close, not equal), over partial tiles of rows,
columns and depth, leading dimensions and a strided input; in a model's forward, where the MLP takes it (and the
logits stay those of the eager model); what :func:`applies` refuses. Skipped where Triton is not installed; the
GPU run, equal bits to cuBLAS's products, is tests/gpu/test_swiglu_product_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.models import swiglu_product_kernel as kernel
from dlm.models.joined import JoinedLinear

from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# (leading dims of x, depth, width): rows from 1,024 (the kernel's minimum) with partial tiles of each kind
CASES = [([1024], 64, 128), ([1100], 72, 200), ([2, 530], 136, 64), ([1, 1031], 8, 8)]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    import torch.nn.functional as F
    from torch import nn
    from dlm.models import elementwise as ew, swiglu_product_kernel as kernel
    from dlm.models.joined import JoinedLinear
    out = []
    for i, (lead, depth, width) in enumerate(json.loads(sys.argv[1])):
        g = torch.Generator().manual_seed(i)
        gate, up = nn.Linear(depth, width, bias=False), nn.Linear(depth, width, bias=False)
        with torch.no_grad():
            for lin in (gate, up):
                lin.weight.copy_(torch.randn(width, depth, generator=g) / depth ** 0.5)
        module = JoinedLinear(("gate", "up"), [gate.half(), up.half()]).requires_grad_(False)
        x = torch.randn(*lead, depth + 8, generator=g).half()[..., 4:depth + 4]  # a strided view
        assert kernel.applies(module, x)
        got = kernel.swiglu_product(module, x)
        wg, wu = module.weight.float().split(width)
        ref = ew.swiglu(F.linear(x.float(), wg).half(), F.linear(x.float(), wu).half())
        same = got == ref
        close = (got.float() - ref.float()).abs() <= 4e-3 * ref.float().abs() + 2e-3
        out.append({"case": [lead, depth, width], "shape": list(got.shape), "equal_share": float(same.float().mean()),
                    "close": bool(close.all()), "worst": float((got.float() - ref.float()).abs().max())})
    print(json.dumps(out))
''')

MODEL_SCRIPT = textwrap.dedent('''
    import dataclasses, json
    import torch
    from dlm.models import elementwise as ew, swiglu_product_kernel as kernel
    from dlm.models.joined import join_projections
    from dlm.testing import random_model, tiny_arch
    model = random_model(tiny_arch("llada", hidden=64, mlp=160, max_position=2048), seed=3, std=0.05).half()
    join_projections(model)
    ids = torch.randint(0, 256, (1, 1024), generator=torch.Generator().manual_seed(4))
    calls = []
    real = kernel.swiglu_product
    kernel.swiglu_product = lambda m, h: calls.append(h.shape[:-1].numel()) or real(m, h)
    with torch.no_grad():
        eager = model(ids).float()
        model.ops = dataclasses.replace(ew.EAGER, gated=ew.fused_ops(("test_swiglu_product",)).gated)
        fused = model(ids).float()
        model(ids[:, :1000])  # fewer rows than the kernel takes: the two products as before
    valid = eager.isfinite()  # (the padded vocabulary's logits are -inf in both)
    print(json.dumps({"calls": calls, "worst": float((fused - eager)[valid].abs().max()),
                      "scale": float(eager[valid].abs().max()), "same_invalid": bool(torch.equal(~valid, ~fused.isfinite()))}))
''')


def test_kernel_matches_the_two_products_and_swiglu():
    results = run_interpreted(SCRIPT, json.dumps(CASES))
    assert len(results) == len(CASES)
    for r, (lead, _, width) in zip(results, CASES):
        assert r["shape"] == [*lead, width], r
        assert r["close"], r
        assert r["equal_share"] >= 0.99, r  # mostly the same bits: a product's last bit moves now and then


def test_a_models_mlp_takes_the_kernel_from_1024_rows():
    r = run_interpreted(MODEL_SCRIPT)
    assert r["calls"] == [1024, 1024], r  # each of the two layers once; the 1,000-row forward took none
    assert r["same_invalid"] and r["worst"] <= 0.02 * r["scale"], r


def _joined(width=16, depth=16, dtype=torch.bfloat16, bias=False, device="cpu"):
    parts = [torch.nn.Linear(depth, width, bias=bias, device=device, dtype=dtype) for _ in range(2)]
    return JoinedLinear(("gate", "up"), parts).requires_grad_(False)


def test_applies_only_where_the_kernel_serves():
    x = torch.zeros(kernel.MIN_ROWS, 16, dtype=torch.bfloat16)
    assert not kernel.applies(_joined(), x)  # CPU tensors outside the interpreter
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9:
        return
    dev = torch.device("cuda")
    module, x = _joined(device=dev), x.to(dev)
    assert kernel.applies(module, x)
    assert kernel.applies(module, x.view(2, kernel.MIN_ROWS // 2, 16))
    assert not kernel.applies(module, x[1:])  # too few rows: the two products
    assert not kernel.applies(_joined(bias=True, device=dev), x)  # biases
    assert not kernel.applies(_joined(dtype=torch.float32, device=dev), x.float())  # float32 (TF32 products)
    assert not kernel.applies(module, x.half())  # dtypes differ
    assert not kernel.applies(_joined(width=12, device=dev), x)  # a width TMA cannot tile (16-byte rows)
    qkv = JoinedLinear(("q", "k", "v"), [torch.nn.Linear(16, 16, bias=False, device=dev, dtype=torch.bfloat16)
                                        for _ in range(3)])
    assert not kernel.applies(qkv, x)  # not a gate/up pair
    assert not kernel.applies(torch.nn.Linear(16, 32, bias=False, device=dev, dtype=torch.bfloat16), x)
    handle = module.register_forward_hook(lambda *a: None)
    assert not kernel.applies(module, x)  # a hook on the module: it must run
    handle.remove()
    grad = _joined(device=dev).requires_grad_(True)
    assert not kernel.applies(grad, x)  # a gradient asked
