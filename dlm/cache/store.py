"""Key/value storage: one preallocated pool of slots shared by every request of an engine.

Storage only; which positions a step recomputes is a cache *policy*'s decision (:mod:`dlm.cache.base`).

Each layer owns two tensors ``(num_slots, slot_len, kv_heads, head_dim)`` (keys and values; token-major, so a
position's keys for every head are one contiguous row that a forward writes in one piece), allocated once when
the engine is built, on the device of that layer's weights (so a model split across devices keeps each layer's
keys next to its weights). A request holds one slot per model row (two under classifier-free guidance)
from admission to its end; its canvas position ``p`` lives at index ``p`` of its slot. Nothing is allocated or
moved per step: a forward writes the keys/values of the positions it feeds (:meth:`KVPool.write`) and attends
over views of the slots (:meth:`KVPool.keys`, :meth:`KVPool.values`).

Slots are handed out lowest index first, so the slots of running requests stay close together and a batched
attention can run over one contiguous range of them.
"""

from __future__ import annotations

import functools
import heapq
from dataclasses import dataclass

import torch

from ..models.rows import copy_rows


@functools.cache
def kv_write_kernel():
    """The key/value write kernel's module, imported when first asked for (it imports Triton)."""
    from ..models import kv_write_kernel as module

    return module


@dataclass(frozen=True)
class PoolShape:
    """Geometry of a pool: ``num_slots`` slots of ``slot_len`` positions, for ``num_layers`` layers of
    ``kv_heads`` key/value heads of ``head_dim``."""

    num_layers: int
    num_slots: int
    slot_len: int
    kv_heads: int
    head_dim: int

    def bytes(self, dtype: torch.dtype) -> int:
        per = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_slots * self.kv_heads * self.slot_len * self.head_dim * per


class KVPool:
    """Preallocated key/value slots (see the module doc).

    Args:
        shape: the :class:`PoolShape`.
        dtype: storage dtype (the model's).
        devices: the device of each layer (one per layer).
    """

    def __init__(self, shape: PoolShape, dtype: torch.dtype, devices: list[torch.device]):
        if len(devices) != shape.num_layers:
            raise ValueError(f"need one device per layer ({shape.num_layers}), got {len(devices)}")
        self.shape = shape
        self.dtype = dtype
        dims = (shape.num_slots, shape.slot_len, shape.kv_heads, shape.head_dim)
        # zeros, not empty: attention may read (masked) positions nothing wrote, and 0 * NaN would poison it
        self.k = [torch.zeros(dims, dtype=dtype, device=d) for d in devices]
        self.v = [torch.zeros(dims, dtype=dtype, device=d) for d in devices]
        self._free = list(range(shape.num_slots))
        heapq.heapify(self._free)

    # ----------------------------------------------------------------- slots
    @property
    def free_slots(self) -> int:
        return len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """``n`` free slots (lowest indices first), or ``None`` when fewer are free (nothing is taken then)."""
        if n > len(self._free):
            return None
        return [heapq.heappop(self._free) for _ in range(n)]

    def release(self, slots: list[int]) -> None:
        """Give slots back. Their contents stay until overwritten (readers mask what they did not write)."""
        for s in slots:
            if s in self._free or not 0 <= s < self.shape.num_slots:
                raise ValueError(f"slot {s} is not allocated")
            heapq.heappush(self._free, s)

    def in_use(self) -> int:
        return self.shape.num_slots - len(self._free)

    # ----------------------------------------------------------------- data
    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              src: torch.Tensor | None = None, kernel: bool = False) -> None:
        """Store keys/values of W positions: slots (W,) long, positions (T,) long, k and v (T, kv_heads,
        head_dim); ``src`` (W,) long: which of the T positions are stored (default: all, W == T).

        One row copy per position into the flattened slots (``index_copy_``): on a GPU an assignment through
        two index tensors (``k[slots, positions] = ...``) ran an elementwise kernel about ten times slower.
        ``kernel``: in one launch by :mod:`dlm.models.kv_write_kernel` where it applies (the same bits)."""
        dk, dv = self.k[layer], self.v[layer]
        if positions.device.type == "cpu":  # (on a GPU the check would make the host wait; admission keeps
            stored = positions if src is None else positions[src]  # canvases within their slots)
            if stored.numel() and int(stored.max()) >= self.shape.slot_len:
                raise ValueError(f"position {int(stored.max())} is outside the slots' {self.shape.slot_len} "
                                 "positions")
            lo, hi = torch.aminmax(slots) if slots.numel() else (0, 0)
            if not (0 <= int(lo) and int(hi) < self.shape.num_slots):
                raise ValueError(f"slots {slots.tolist()} are not all among the pool's {self.shape.num_slots}")
        if kernel and kv_write_kernel().applies(k, v, dk, dv, slots, positions, src):
            kv_write_kernel().write(dk, dv, slots, positions, k, v, src)
            return
        if src is not None:
            positions, k, v = positions[src], k[src], v[src]
        rows = torch.add(positions, slots, alpha=self.shape.slot_len)
        copy_rows(dk.view(-1, *dk.shape[2:]), rows, k)
        copy_rows(dv.view(-1, *dv.shape[2:]), rows, v)

    def keys(self, layer: int, slots: slice | int, length: int) -> torch.Tensor:
        """A view (rows, kv_heads, length, head_dim) of a slot (int) or a contiguous range of slots (slice)."""
        sel = slice(slots, slots + 1) if isinstance(slots, int) else slots
        return self.k[layer][sel, :length].transpose(1, 2)

    def values(self, layer: int, slots: slice | int, length: int) -> torch.Tensor:
        sel = slice(slots, slots + 1) if isinstance(slots, int) else slots
        return self.v[layer][sel, :length].transpose(1, 2)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def pointers(self) -> list[int]:
        return [t.data_ptr() for t in self.k + self.v]

