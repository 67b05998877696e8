"""The split-key attention kernel (dlm.models.attention_kernel) in Triton's CPU interpreter, against attention in
float64: batch 1 with its keys split, grouped-query heads folded, ragged key lengths (the padded layout's key
mask), one split and several query tiles, splits of several key tiles; and the padded ragged attention taking it
when asked (fused kernels) against the loop reference. Skipped where Triton is not installed (CI installs it with
the test extra on Linux x86-64); the GPU run is in tests/gpu/test_attention_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest

from ..attention_cases import CASES, check
from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

SCRIPT = textwrap.dedent('''
    import json, sys
    from tests.attention_cases import compare
    print(json.dumps([compare(*c[:10]) for c in json.loads(sys.argv[1])]))
''')


def test_kernel_matches_attention_in_float64():
    for case, result in zip(CASES, run_interpreted(SCRIPT, json.dumps(CASES))):
        check(case, result)


RAGGED_SCRIPT = textwrap.dedent('''
    import json
    import torch
    from dlm.cache.store import KVPool, PoolShape
    from dlm.models import attention_kernel
    from dlm.models.ragged import RaggedAttention, RaggedRows

    calls = []
    kernel = attention_kernel.attend
    attention_kernel.attend = lambda *a: calls.append(1) or kernel(*a)
    g = torch.Generator().manual_seed(0)
    H, Hkv, D = 4, 2, 64
    pool = KVPool(PoolShape(num_layers=1, num_slots=4, slot_len=96, kv_heads=Hkv, head_dim=D), torch.bfloat16,
                   [torch.device("cpu")])
    pool.k[0].normal_(generator=g)
    pool.v[0].normal_(generator=g)
    # three pooled rows (slots 0..2) of different canvas lengths, feeding 5, 5 and 3 positions
    q_len, k_len, slot = [5, 5, 3], [40, 96, 70], [0, 1, 2]
    starts = [0, 5, 10]
    positions = torch.cat([torch.arange(n) + 2 for n in q_len])
    rows = RaggedRows(q_start=starts, q_len=q_len, k_len=k_len, slot=slot, fresh=[False] * 3, write=[True] * 3,
                      block=[None] * 3, positions=positions, min_position=[2, 2, 2])
    T = sum(q_len)
    q = torch.randn(1, H, T, D, generator=g).bfloat16()
    k = torch.randn(1, Hkv, T, D, generator=g).bfloat16()
    v = torch.randn(1, Hkv, T, D, generator=g).bfloat16()
    out = {}
    for name, backend, kernels in (("loop", "loop", False), ("padded", "padded", False),
                                   ("padded+kernel", "padded", True)):
        att = RaggedAttention(rows, pool, backend, kernels=kernels)
        out[name] = att(0, q, k, v).float()
    ref = out["loop"]
    print(json.dumps({"calls": len(calls), "padded": float((out["padded"] - ref).abs().max()),
                      "kernel": float((out["padded+kernel"] - ref).abs().max()), "scale": float(ref.abs().max())}))
''')


def test_padded_ragged_attention_takes_the_kernel_when_asked():
    r = run_interpreted(RAGGED_SCRIPT)
    assert r["calls"] == 1  # the pooled rows' one padded call, and only with kernels=True
    assert r["kernel"] < 2e-2 * r["scale"]


@pytest.mark.slow
def test_random_shapes_match_attention_in_float64():
    """Sixteen random shapes: one query to dozens, one key to a few tiles, one to four key/value heads and groups,
    both head sizes and dtypes, masked or not, split or not (the splits follow from the shapes)."""
    import random

    rng = random.Random(7)
    cases = []
    for i in range(16):
        kv = rng.choice([1, 2, 4])
        cases.append((100 + i, rng.randint(1, 4), kv * rng.choice([1, 2, 3]), kv, rng.randint(1, 40),
                      rng.randint(1, 300), rng.choice([64, 128]), rng.choice(["bfloat16", "float16"]),
                      rng.random() < 0.5, rng.choice([None, 1, 16])))
    for case, result in zip(cases, run_interpreted(SCRIPT, json.dumps(cases))):
        assert result["shape"] == [case[1], case[2], case[4], case[6]], case
        assert result["max_err_rel"] < 2e-2 and result["mean_err_rel"] < 2e-3, (case, result)
        assert result["token_major"], case


def test_applies_only_to_what_the_kernel_computes(monkeypatch):
    """Per-query masks (block-causal rows), float32, other head sizes, uneven head groups, more than 256 folded
    queries and tensors needing gradients go to torch's attention."""
    import torch

    from dlm.models import attention_kernel as ak

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (applies asks; nothing is launched here)

    def ops(R=2, H=4, Hkv=2, Q=8, L=50, D=64, dtype=torch.bfloat16):
        q = torch.zeros(R, Q, H, D, dtype=dtype).transpose(1, 2)
        k = torch.zeros(R, L, Hkv, D, dtype=dtype).transpose(1, 2)
        return q, k, k.clone()

    q, k, v = ops()
    assert ak.applies(q, k, v, None)
    assert ak.applies(q, k, v, torch.ones(2, 1, 1, 50, dtype=torch.bool))
    assert not ak.applies(q, k, v, torch.ones(2, 1, 8, 50, dtype=torch.bool))  # a mask per query
    assert not ak.applies(q, k, v, torch.ones(2, 1, 1, 50))  # not a bool mask
    assert not ak.applies(*ops(dtype=torch.float32), None)
    assert not ak.applies(*ops(D=96), None)
    assert not ak.applies(*ops(H=6, Hkv=4), None)
    assert not ak.applies(*ops(H=8, Hkv=1, Q=33), None)  # 264 folded queries
    assert ak.applies(*ops(H=8, Hkv=1, Q=32), None)
    q, k, v = ops()
    with torch.enable_grad():
        assert not ak.applies(q.requires_grad_(), k, v, None)
