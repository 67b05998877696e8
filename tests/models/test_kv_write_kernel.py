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
            assert kw.applies(k, v, got.k[1], got.v[1], slot, positions, src)
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


REFUSALS = textwrap.dedent('''
    import json
    import torch
    from dlm.models import kv_write_kernel as kw

    class Sub(torch.Tensor):
        pass

    k = torch.zeros(4, 2, 8, dtype=torch.bfloat16)
    pool = torch.zeros(3, 5, 2, 8, dtype=torch.bfloat16)
    slots, positions = torch.tensor([0, 1, 2, 0]), torch.tensor([4, 0, 3, 2])
    src = torch.tensor([3, 1])

    def ok(k=k, v=None, dk=pool, dv=None, slots=slots, positions=positions, src=None):
        return kw.applies(k, k.clone() if v is None else v, dk, dk.clone() if dv is None else dv, slots, positions, src)

    cases = {
        "plain": ok(), "subset": ok(slots=slots[:2], src=src),
        "mixed dtypes": ok(v=k.float()), "float pools": ok(dk=pool.float(), dv=pool.float()),
        "shapes differ": ok(k=k.transpose(1, 2)),
        "strided last dimension": ok(k=torch.zeros(4, 2, 16, dtype=torch.bfloat16)[..., ::2]),
        "pool not contiguous": ok(dk=pool[:, :3], dv=pool[:, :3].clone()),
        "a tensor subclass": ok(k=k.as_subclass(Sub)),
        "int32 slots": ok(slots=slots.int()), "int32 positions": ok(positions=positions.int()),
        "strided slots": ok(slots=torch.tensor([0, 9, 1, 9, 2, 9, 0, 9])[::2]),
        "expanded positions": ok(positions=torch.tensor([1]).expand(4)),
        "strided src": ok(slots=slots[:2], src=torch.tensor([3, 9, 1, 9])[::2]),
        "too few positions": ok(positions=positions[:3]), "slots without src": ok(slots=slots[:2]),
        "slots and src differ": ok(slots=slots[:3], src=src),
        "2-D slots": ok(slots=slots.view(2, 2)),
    }
    with torch.enable_grad():
        cases["gradient"] = ok(k=k.clone().requires_grad_())
    print(json.dumps(cases))
''')


def test_applies_only_where_the_kernel_serves():
    """What applies() refuses, with CPU tensors under the interpreter (where the kernel would otherwise run):
    the index tensors too, which the kernel reads as contiguous int64 arrays."""
    cases = run_interpreted(REFUSALS)
    assert cases.pop("plain") and cases.pop("subset")
    assert not any(cases.values()), [name for name, accepted in cases.items() if accepted]
    k = torch.zeros(4, 2, 8, dtype=torch.bfloat16)  # outside the interpreter: CPU tensors are the reference's
    assert not kv_write_kernel.applies(k, k.clone(), torch.zeros(3, 5, 2, 8, dtype=torch.bfloat16),
                                       torch.zeros(3, 5, 2, 8, dtype=torch.bfloat16), torch.zeros(4, dtype=torch.long),
                                       torch.zeros(4, dtype=torch.long))
