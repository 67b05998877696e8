"""The key/value pool's write: what an assignment through (slot, position) indices would store, for any slots
and positions (in any order, the last slot and position included); and the row copies it and the padded attention
use (dlm.models.rows), bit for bit the element copies; and the index builders of the packed layout."""

from __future__ import annotations

import pytest
import torch

from dlm.cache.store import KVPool, PoolShape
from dlm.models.rows import _words, copy_rows, ranges, runs, select_rows


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
    with pytest.raises(ValueError, match="not all among the pool's 3"):
        pool.write(0, torch.tensor([3]), torch.tensor([0]), torch.zeros(1, 2, 4), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="position 7 is outside"):  # a stored one (src), not only the fed ones
        pool.write(0, torch.tensor([0]), torch.tensor([1, 7]), torch.zeros(2, 2, 4), torch.zeros(2, 2, 4),
                   src=torch.tensor([1]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("heads, dim", [(2, 8), (3, 4), (2, 5), (1, 3)])
def test_copy_rows_is_index_copy_bit_for_bit(dtype, heads, dim):
    """As 8-byte words where the rows allow it (2 x 8 bf16), element by element otherwise (2 x 5 bf16): the same
    bytes as ``index_copy_``, NaN payloads and negative zeros included, from contiguous and strided sources."""
    g = torch.Generator().manual_seed(heads * 10 + dim)
    bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[dtype]
    info = torch.iinfo(bits)

    def random_bits(*shape):  # every bit pattern, NaNs with payloads among them
        return torch.randint(info.min, info.max, shape, generator=g, dtype=bits).view(dtype)

    for strided in (False, True):
        dst = random_bits(12, heads, dim)
        ref = dst.clone()
        src = random_bits(heads, 5, dim).transpose(0, 1) if strided else random_bits(5, heads, dim)
        rows = torch.randperm(12, generator=g)[:5]
        ref.index_copy_(0, rows, src)
        copy_rows(dst, rows, src)
        assert torch.equal(dst.view(bits), ref.view(bits))
        assert (_words(src) is not None) == ((heads * dim * src.element_size()) % 8 == 0 and dim * src.element_size() % 8 == 0)


def test_copy_rows_refuses_another_dtype_like_index_copy():
    with pytest.raises(RuntimeError):  # same width, other dtype: index_copy_'s own error, not a copy of the bits
        copy_rows(torch.zeros(4, 8, dtype=torch.bfloat16), torch.tensor([1]), torch.zeros(1, 8, dtype=torch.float16))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("heads, dim", [(2, 8), (2, 5)])
def test_select_rows_is_indexing_bit_for_bit(dtype, heads, dim):
    g = torch.Generator().manual_seed(dim)
    src = torch.randn(heads, 9, dim, generator=g).to(dtype).transpose(0, 1)  # strided rows
    index = torch.tensor([4, 0, 8, 4])
    got = select_rows(src, index)
    assert got.dtype == dtype and got.shape == (4, heads, dim) and got.is_contiguous()
    assert torch.equal(got, src[index])


@pytest.mark.parametrize("seed", range(40))
def test_ranges_and_runs_equal_one_tensor_per_row(seed):
    """The index builders of the packed layout against the per-row tensors they replace: equal and unequal
    lengths, empty ranges, no rows at all."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(0, 7, (1,), generator=g))
    starts = torch.randint(0, 60, (k,), generator=g).tolist()
    lengths = [int(torch.tensor([0, 1, 3, 32])[i]) for i in torch.randint(0, 4, (k,), generator=g)]
    if seed % 3 == 0:  # every row the same length (the fast path)
        lengths = [lengths[0]] * k if k else []
    values = torch.randint(0, 3 if seed % 2 else 1, (k,), generator=g).tolist()
    empty = torch.empty(0, dtype=torch.long)
    expect = torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths)]) if k else empty
    assert torch.equal(ranges(starts, lengths), expect)
    expect = torch.cat([torch.full((n,), v) for v, n in zip(values, lengths)]) if k else empty
    assert torch.equal(runs(values, lengths), expect)
    got = runs([float(v) for v in values], lengths, torch.float32)
    assert got.dtype == torch.float32 and torch.equal(got, expect.float())
    with pytest.raises(ValueError, match="values for"):
        runs(values + [0], lengths)
