"""The padded ragged attention against the loop reference where one group in lockstep covers every fed position
(a static batch: all rows fresh, or all pooled, of equal lengths): its output is the attention's own tensor,
not a copy, and equal to the loop's; with an output buffer given (the piecewise graphs) it is written there."""

from __future__ import annotations

import pytest
import torch

from dlm.cache.store import KVPool, PoolShape
from dlm.models.ragged import RaggedAttention, RaggedRows


def _rows(fresh: bool, n_rows: int, q: int, k: int) -> RaggedRows:
    starts = [r * q for r in range(n_rows)]
    first = 0 if fresh else k - q
    positions = torch.cat([torch.arange(first, first + q) for _ in range(n_rows)])
    return RaggedRows(q_start=starts, q_len=[q] * n_rows, k_len=[k] * n_rows, slot=list(range(n_rows)),
                      fresh=[fresh] * n_rows, write=[True] * n_rows, block=[None] * n_rows, positions=positions,
                      min_position=[first] * n_rows)


@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_one_uniform_group_returns_its_output_equal_to_the_loop(fresh, heads, kv_heads, monkeypatch):
    outs = []  # the output each padded group was given (None: return its own)
    group = RaggedAttention._padded_group
    monkeypatch.setattr(RaggedAttention, "_padded_group", lambda self, *a: outs.append(a[-1]) or group(self, *a))
    n_rows, k, D = 3, 24, 16
    q = k if fresh else 8
    T = n_rows * q
    out = {}
    for backend in ("loop", "padded", "padded+buffer"):
        pool = KVPool(PoolShape(num_layers=1, num_slots=n_rows, slot_len=k, kv_heads=kv_heads, head_dim=D),
                      torch.float32, [torch.device("cpu")])
        pool.k[0].copy_(torch.randn(pool.k[0].shape, generator=torch.Generator().manual_seed(5)))
        pool.v[0].copy_(torch.randn(pool.v[0].shape, generator=torch.Generator().manual_seed(6)))
        gen = torch.Generator().manual_seed(7)
        qx = torch.randn(1, heads, T, D, generator=gen)
        kx, vx = torch.randn(1, kv_heads, T, D, generator=gen), torch.randn(1, kv_heads, T, D, generator=gen)
        buffer = torch.full((T + 5, heads, D), float("nan")) if backend == "padded+buffer" else None
        att = RaggedAttention(_rows(fresh, n_rows, q, k), pool, backend.split("+")[0], out=buffer)
        out[backend] = att(0, qx, kx, vx)
        if buffer is not None:  # written into the buffer given
            assert out[backend].data_ptr() == buffer.data_ptr()
    assert out["padded"].shape == (1, heads, T, D)
    torch.testing.assert_close(out["padded"], out["loop"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["padded+buffer"], out["loop"], rtol=1e-5, atol=1e-5)
    assert len(outs) == 2 and outs[0] is None and outs[1] is not None  # one group each: uncopied, then buffered
