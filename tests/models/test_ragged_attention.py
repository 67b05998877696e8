"""The padded ragged attention against the loop reference where one group in lockstep covers every fed position
(a static batch: all rows fresh, or all pooled, of equal lengths): its output is the attention's own tensor,
not a copy, and equal to the loop's; with an output buffer given (the piecewise graphs) it is written there."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from dlm.cache.store import KVPool, PoolShape
from dlm.models import ragged
from dlm.models.ragged import RaggedAttention, RaggedRows, _Group, _GroupMemo, group_of


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


def _random_rows(rng: random.Random) -> RaggedRows:
    n = rng.randint(1, 6)
    fresh = [rng.random() < 0.5 for _ in range(n)]
    q_len = [rng.randint(1, 9) for _ in range(n)]
    k_len = [q if f else q + rng.randint(0, 9) for q, f in zip(q_len, fresh)]
    slot = rng.sample(range(8), n)
    starts = [sum(q_len[:r]) for r in range(n)]
    positions = torch.cat([torch.arange(k - q, k) for q, k in zip(q_len, k_len)])
    return RaggedRows(q_start=starts, q_len=q_len, k_len=k_len, slot=slot, fresh=fresh, write=[True] * n,
                      block=[None] * n, positions=positions, min_position=[k - q for q, k in zip(q_len, k_len)])


def _same_group(a: _Group, b: _Group) -> bool:
    for f in dataclasses.fields(_Group):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if not (torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y):
            return False
    return True


def test_the_group_memo_gives_each_layout_its_own_build(monkeypatch):
    """Random layouts, each seen twice in a row and again later: every group the memo hands out equals a fresh
    build of its layout, a layout seen again gets the same group without a build, and the memo keeps at most
    its size."""
    memo = _GroupMemo(size=8)
    monkeypatch.setattr(ragged, "_GROUPS", memo)
    builds = []
    build = _Group.build
    monkeypatch.setattr(_Group, "build", classmethod(lambda cls, *a: builds.append(a) or build(*a)))
    rng = random.Random(3)
    layouts = [_random_rows(rng) for _ in range(40)]
    for rows in layouts + layouts[::3]:
        for pooled in (False, True):
            group = [r for r in range(len(rows.q_len)) if rows.fresh[r] != pooled]
            if not group:
                continue
            n = len(builds)
            first = group_of(rows, group, pooled, "cpu")
            again = group_of(rows, list(group), pooled, "cpu")
            assert again is first and len(builds) <= n + 1
            assert _same_group(first, build(rows, group, pooled, "cpu"))
            assert len(memo._groups) <= 8


@pytest.mark.parametrize("field", ["q_start", "q_len", "k_len", "slot"])
def test_layouts_that_differ_in_one_field_get_their_own_groups(field, monkeypatch):
    monkeypatch.setattr(ragged, "_GROUPS", _GroupMemo())
    base = {"q_start": [0, 4], "q_len": [4, 4], "k_len": [9, 9], "slot": [0, 1]}
    other = {k: list(v) for k, v in base.items()}
    other[field][1] += {"q_start": 1, "q_len": -1, "k_len": -2, "slot": 2}[field]
    groups = []
    for lay in (base, other):
        rows = RaggedRows(**lay, fresh=[False, False], write=[True, True], block=[None, None],
                          positions=torch.arange(sum(lay["q_len"])), min_position=[0, 0])
        groups.append(group_of(rows, [0, 1], True, "cpu"))
        assert _same_group(groups[-1], _Group.build(rows, [0, 1], True, "cpu"))
    assert groups[0] is not groups[1] and not _same_group(groups[0], groups[1])


def test_a_layout_on_another_stream_gets_its_own_group(monkeypatch):
    """A group's index copies are queued on the stream that built it: a forward on another stream must not be
    handed it (it could read the indices before they land), and gets its own build."""
    monkeypatch.setattr(ragged, "_GROUPS", _GroupMemo())
    stream = [7]
    monkeypatch.setattr(ragged, "_stream_id", lambda device: stream[0])
    rows = _random_rows(random.Random(5))
    pooled = not rows.fresh[0]
    group = [r for r in range(len(rows.q_len)) if rows.fresh[r] != pooled]
    first = group_of(rows, group, pooled, "cpu")
    assert group_of(rows, group, pooled, "cpu") is first
    stream[0] = 8
    other = group_of(rows, group, pooled, "cpu")
    assert other is not first and _same_group(other, first)
    stream[0] = 7
    assert group_of(rows, group, pooled, "cpu") is first
