"""The key/value pool's write: what an assignment through (slot, position) indices would store, for any slots
and positions (in any order, the last slot and position included)."""

from __future__ import annotations

import pytest
import torch

from dlm.cache.store import KVPool, PoolShape


def test_write_stores_each_position_in_its_slot():
    shape = PoolShape(num_layers=2, num_slots=3, slot_len=7, kv_heads=2, head_dim=4)
    pool = KVPool(shape, torch.float32, [torch.device("cpu")] * 2)
    ref_k = torch.zeros(3, 7, 2, 4)
    ref_v = torch.zeros(3, 7, 2, 4)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        n = 6
        flat = torch.randperm(3 * 7, generator=g)[:n]
        slots, positions = flat // 7, flat % 7
        k = torch.randn(n, 4, 2, generator=g).transpose(1, 2)  # a non-contiguous source, as the model's is
        v = torch.randn(n, 2, 4, generator=g)
        pool.write(1, slots, positions, k, v)
        ref_k[slots, positions] = k
        ref_v[slots, positions] = v
        assert torch.equal(pool.k[1], ref_k) and torch.equal(pool.v[1], ref_v)
    assert not pool.k[0].any()
    assert torch.equal(pool.keys(1, 2, 7), ref_k[2:3].transpose(1, 2))
    with pytest.raises(ValueError, match="position 7 is outside"):  # would land in the next slot's first row
        pool.write(0, torch.tensor([0]), torch.tensor([7]), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
