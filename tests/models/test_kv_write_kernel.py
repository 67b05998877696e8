"""The key/value write kernel (dlm.models.kv_write_kernel) in Triton's CPU interpreter against the pool's reference
write (dlm.cache.store.KVPool.write without the kernel): the same bits in every slot, for all fed positions and a
subset of them (``src``), token-major and transposed sources (the model's layout), several head shapes and dtypes,
NaN payloads and negative zeros included; what :func:`applies` refuses. Skipped where Triton is not installed; the
GPU run is in tests/gpu/test_kv_write_gpu.py."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import pytest
import torch

from dlm.models import kv_write_kernel

from ..interpreted import run_interpreted

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

# (slots, slot_len, kv_heads, head_dim, fed positions, stored positions or None for all, transposed source)
CASES = [(3, 7, 2, 4, 6, None, True), (4, 9, 3, 8, 10, 4, False), (2, 5, 1, 3, 5, 5, True),
         (5, 40, 4, 32, 33, None, False), (2, 12, 8, 128, 9, 3, True)]

SCRIPT = textwrap.dedent('''
    import json, sys
    import torch
    from dlm.cache.store import KVPool, PoolShape
    from dlm.models import kv_write_kernel as kw
    out = []
    for i, (slots, slot_len, heads, dim, T, W, transposed) in enumerate(json.loads(sys.argv[1])):
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            g = torch.Generator().manual_seed(i)
            shape = PoolShape(num_layers=2, num_slots=slots, slot_len=slot_len, kv_heads=heads, head_dim=dim)
            ref, got = (KVPool(shape, dt, [torch.device("cpu")] * 2) for _ in range(2))
            for p in (ref, got):  # the same old contents, which the writes must leave where they do not write
                for t in p.k + p.v:
                    t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(99)).to(dt))
            flat = torch.randperm(slots * slot_len, generator=g)[:T]
            slot, positions = flat // slot_len, flat % slot_len
            src = None if W is None else torch.randperm(T, generator=g)[:W]
            slot = slot if src is None else slot[src]  # one slot per stored position
            if transposed:  # (1, heads, T, dim) -> token-major (T, heads, dim): the model's layout, not contiguous
                k = torch.randn(1, heads, T, dim, generator=g).to(dt)[0].transpose(0, 1)
            else:
                k = torch.randn(T, heads, dim, generator=g).to(dt)
            v = torch.randn(T, heads, dim, generator=g).to(dt)
            for t in (k, v):  # a NaN with a payload and a negative zero: copied as bytes
                t[0, 0, 0] = -0.0
            v.view(torch.int16 if dt != torch.float32 else torch.int32)[-1, -1, -1] = -1  # NaN, all bits set
            assert kw.applies(k, v, got.k[1], got.v[1])
            ref.write(1, slot, positions, k, v, src=src)
            got.write(1, slot, positions, k, v, src=src, kernel=True)
            bits = torch.int16 if dt != torch.float32 else torch.int32
            same = all(torch.equal(a.view(bits), b.view(bits)) for a, b in zip(ref.k + ref.v, got.k + got.v))
            out.append({"case": i, "dtype": str(dt), "same": same})
    print(json.dumps(out))
''')


def test_kernel_stores_the_reference_bits():
    results = run_interpreted(SCRIPT, json.dumps(CASES))
    assert len(results) == 3 * len(CASES)
    assert all(r["same"] for r in results), [r for r in results if not r["same"]]


class _Sub(torch.Tensor):
    pass


def test_applies_only_where_the_kernel_serves():
    k = torch.zeros(4, 2, 8, dtype=torch.bfloat16)
    pool = torch.zeros(3, 5, 2, 8, dtype=torch.bfloat16)
    assert not kv_write_kernel.applies(k, k.clone(), pool, pool.clone())  # CPU tensors outside the interpreter
    if not torch.cuda.is_available():
        return
    dev = torch.device("cuda")
    k, pool = k.to(dev), pool.to(dev)
    assert kv_write_kernel.applies(k, k.clone(), pool, pool.clone())
    assert not kv_write_kernel.applies(k.as_subclass(_Sub), k.clone(), pool, pool.clone())  # a tensor subclass
    assert not kv_write_kernel.applies(k, k.float(), pool, pool.clone())  # mixed dtypes
    assert not kv_write_kernel.applies(k, k.clone(), pool.float(), pool.float())
    assert not kv_write_kernel.applies(k.transpose(1, 2), k.clone(), pool, pool.clone())  # shapes differ
    wide = torch.zeros(4, 2, 16, dtype=torch.bfloat16, device=dev)[..., ::2]  # strided last dimension
    assert not kv_write_kernel.applies(wide, wide.clone(), pool, pool.clone())
    assert not kv_write_kernel.applies(k, k.clone(), pool[:, :3], pool[:, :3])  # a non-contiguous pool
    assert not kv_write_kernel.applies(k.cpu(), k.clone(), pool, pool.clone())  # two devices
    with torch.enable_grad():
        assert not kv_write_kernel.applies(k.clone().requires_grad_(), k.clone(), pool, pool.clone())
