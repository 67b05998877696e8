"""Ragged attention: many rows of different lengths in one forward, keys/values from a pool of slots.

The engine packs the fed positions of every row of a step into one sequence of T positions (no padding), so
every dense part of the model (projections, MLP, norms) runs once over T rows. Attention is the only part that
must see row boundaries: each row's queries attend over that row's keys, which are either

* *fresh*: the row feeds its whole canvas (positions 0..L-1 in order), so its keys are the fed positions' own
  keys (also written to its slot when it keeps storage), or
* *pooled*: the keys of the row's canvas positions 0..L-1 are read from its slot of the key/value pool, where
  this forward first wrote the fed positions' keys.

Rows of block-diffusion models may attend block-causally (a query sees the keys of its own block and the blocks
before it); the others attend bidirectionally.

Two backends compute the same function:

``loop``
    one ``scaled_dot_product_attention`` call per row, over views (no copies). The shapes of a row's call do not
    depend on the other rows, so a row's result is the same whatever runs beside it: the batch-invariant
    reference, and the faster choice when there are few rows.
``padded``
    one call per kind of row (fresh, pooled): queries scattered into a padded (rows, heads, Qmax, D) tensor;
    pooled keys read as ONE view of the contiguous range of slots the rows occupy (slots are handed out lowest
    first, so the range stays dense), with a key mask for each row's length. Grouped-query heads are folded into
    the query dimension, so keys/values are never expanded. Faster with many rows on a GPU; its rounding depends
    on the padded shapes, i.e. on the other rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import attend

BACKENDS = ("loop", "padded")


@dataclass
class RaggedRows:
    """The rows of one ragged forward. Lists have one entry per row; the forward packs row r's fed positions at
    ``q_start[r] : q_start[r] + q_len[r]``.

    Attributes:
        q_start, q_len: where each row's fed positions are in the packed sequence.
        k_len: keys each row attends over: its canvas positions ``0 .. k_len - 1``.
        slot: the row's pool slot (-1: none).
        fresh: the row feeds exactly its canvas positions ``0 .. k_len - 1`` in order (its keys are fresh).
        write: the row stores the fed positions' keys/values in its slot.
        block: block size of block-causal attention, or None (bidirectional).
        positions: (T,) long, the canvas position of every packed position (any device).
        min_position: the smallest fed canvas position of each row (decides whether a block-causal row needs a
            mask: only when some query's block ends before ``k_len``).
    """

    q_start: list[int]
    q_len: list[int]
    k_len: list[int]
    slot: list[int]
    fresh: list[bool]
    write: list[bool]
    block: list[int | None]
    positions: torch.Tensor
    min_position: list[int]
    _per_device: dict = field(default_factory=dict, repr=False)

    @property
    def total(self) -> int:
        return sum(self.q_len)

    def index(self, device: torch.device) -> "_Index":
        """Index tensors of this batch on ``device`` (built once per device)."""
        key = str(device)
        if key not in self._per_device:
            self._per_device[key] = _Index.build(self, device)
        return self._per_device[key]


    def signature(self) -> tuple:
        """Everything about the batch's layout except the positions: two batches with equal signatures run the
        same kernels on the same shapes (what a captured CUDA graph needs)."""
        return (tuple(self.q_len), tuple(self.k_len), tuple(self.slot), tuple(self.fresh), tuple(self.write),
                tuple(self.block), tuple(self.masked_rows()))

    def masked_rows(self) -> list[int]:
        """Block-causal rows whose queries need a mask (some query's block ends before the row's last key)."""
        return [r for r, bs in enumerate(self.block)
                if bs is not None and (self.min_position[r] // bs + 1) * bs < self.k_len[r]]


@dataclass
class _Index:
    """Device tensors that depend on the batch's layout only (built once per device and forward, from host
    lists; nothing here reads the positions, so a captured graph can replay them with new positions)."""

    positions: torch.Tensor
    write_src: torch.Tensor  # packed positions whose keys/values are stored
    write_slot: torch.Tensor
    groups: dict = field(default_factory=dict)  # padded backend: per kind of row, its scatter indices

    @staticmethod
    def build(rows: RaggedRows, device) -> "_Index":
        src, slot = [], []
        for r in range(len(rows.q_len)):
            if rows.write[r] and rows.slot[r] >= 0:
                src.append(torch.arange(rows.q_start[r], rows.q_start[r] + rows.q_len[r]))
                slot.append(torch.full((rows.q_len[r],), rows.slot[r]))
        write_src = torch.cat(src).to(device) if src else torch.zeros(0, dtype=torch.long, device=device)
        write_slot = torch.cat(slot).to(device) if slot else write_src
        return _Index(rows.positions.to(device), write_src, write_slot)

    def masks(self, rows: RaggedRows) -> dict[int, torch.Tensor]:
        """Row -> (Q, L) bool block-causal mask of the rows that need one (computed from the positions)."""
        out = {}
        for r in rows.masked_rows():
            bs = rows.block[r]
            qp = self.positions[rows.q_start[r] : rows.q_start[r] + rows.q_len[r]]
            keys = torch.arange(rows.k_len[r], device=qp.device)
            out[r] = keys.unsqueeze(0) < ((qp // bs + 1) * bs).unsqueeze(1)
        return out


class RaggedAttention:
    """The :class:`~dlm.models.transformer.Attention` of a ragged forward over a key/value pool.

    Args:
        rows: the :class:`RaggedRows` of the forward.
        pool: an object with ``write(layer, slots, positions, k, v)``, ``keys(layer, slots, length)`` and
            ``values(layer, slots, length)`` (:class:`dlm.cache.store.KVPool`), or None when no row uses a slot.
        backend: ``"loop"`` or ``"padded"`` (see the module doc).
    """

    def __init__(self, rows: RaggedRows, pool, backend: str = "loop"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown ragged attention backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        self.rows, self.pool, self.backend = rows, pool, backend

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (1, H, T, D); k, v: (1, Hkv, T, D)
        idx = self.rows.index(q.device)
        if idx.write_src.numel():
            self.pool.write(layer, idx.write_slot, idx.positions[idx.write_src],
                            k[0, :, idx.write_src].transpose(0, 1), v[0, :, idx.write_src].transpose(0, 1))
        masks = idx.masks(self.rows) if any(b is not None for b in self.rows.block) else {}
        if self.backend == "loop":
            return self._loop(layer, q, k, v, masks)
        return self._padded(layer, q, k, v, idx, masks)

    # ----------------------------------------------------------------- loop (reference)
    def _row_kv(self, layer: int, r: int, k: torch.Tensor, v: torch.Tensor):
        rows = self.rows
        if rows.fresh[r]:
            s = slice(rows.q_start[r], rows.q_start[r] + rows.q_len[r])
            return k[:, :, s], v[:, :, s]
        return self.pool.keys(layer, rows.slot[r], rows.k_len[r]), self.pool.values(layer, rows.slot[r], rows.k_len[r])

    def _loop(self, layer, q, k, v, masks: dict) -> torch.Tensor:
        rows, outs = self.rows, []
        for r in range(len(rows.q_len)):
            s = slice(rows.q_start[r], rows.q_start[r] + rows.q_len[r])
            kr, vr = self._row_kv(layer, r, k, v)
            mask = masks.get(r)
            outs.append(attend(q[:, :, s], kr, vr, None if mask is None else mask.unsqueeze(0)))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    # ----------------------------------------------------------------- padded (one call per kind of row)
    def _padded(self, layer, q, k, v, idx: _Index, masks: dict) -> torch.Tensor:
        rows = self.rows
        out = torch.empty_like(q)
        for pooled_keys in (False, True):
            if pooled_keys not in idx.groups:
                group = [r for r in range(len(rows.q_len)) if rows.fresh[r] != pooled_keys]
                idx.groups[pooled_keys] = _Group.build(rows, group, pooled_keys, q.device) if group else None
            g = idx.groups[pooled_keys]
            if g is not None:
                self._padded_group(layer, q, k, v, g, masks, out)
        return out

    def _padded_group(self, layer, q, k, v, g: "_Group", masks: dict, out: torch.Tensor) -> None:
        H, D, Hkv = q.shape[1], q.shape[3], k.shape[1]
        if g.pooled_keys:  # one view over the contiguous range of slots the group occupies
            keys = self.pool.keys(layer, slice(g.lo, g.lo + g.n_rows), g.Lmax)
            values = self.pool.values(layer, slice(g.lo, g.lo + g.n_rows), g.Lmax)
        else:
            keys = k.new_zeros(g.n_rows, Hkv, g.Lmax, D)
            values = v.new_zeros(g.n_rows, Hkv, g.Lmax, D)
            keys[g.row_of, :, g.col_of] = k[0, :, g.packed].transpose(0, 1)
            values[g.row_of, :, g.col_of] = v[0, :, g.packed].transpose(0, 1)
        qp = q.new_zeros(g.n_rows, H, g.Qmax, D)
        qp[g.row_of, :, g.col_of] = q[0, :, g.packed].transpose(0, 1)
        mask = g.key_ok[:, None, None, :]
        mine = [(r, p) for r, p in zip(g.members, g.place) if r in masks]
        if mine:  # block-causal rows: a mask per query
            full = g.key_ok[:, None, :].expand(g.n_rows, g.Qmax, g.Lmax).clone()
            for r, p in mine:
                m = masks[r]
                full[p, : m.shape[0], : m.shape[1]] = m
            mask = full[:, None]
        o = _attend_folded(qp, keys, values, mask, Hkv)
        out[0, :, g.packed] = o[g.row_of, :, g.col_of].transpose(0, 1)


@dataclass
class _Group:
    """The padded layout of one kind of row (fresh or pooled): scatter indices and key masks, on the device."""

    members: list[int]
    place: list[int]
    pooled_keys: bool
    lo: int
    n_rows: int
    Qmax: int
    Lmax: int
    row_of: torch.Tensor
    col_of: torch.Tensor
    packed: torch.Tensor
    key_ok: torch.Tensor

    @classmethod
    def build(cls, rows: RaggedRows, group: list[int], pooled_keys: bool, device) -> "_Group":
        if pooled_keys:  # rows are the slots lo .. hi - 1 (the pool's layout)
            lo = min(rows.slot[r] for r in group)
            n_rows = max(rows.slot[r] for r in group) + 1 - lo
            place = [rows.slot[r] - lo for r in group]
        else:
            lo, n_rows, place = 0, len(group), list(range(len(group)))
        Lmax = max(rows.k_len[r] for r in group)
        r_idx, c_idx, p_idx = [], [], []
        k_len = torch.full((n_rows,), Lmax, dtype=torch.long)
        for r, p in zip(group, place):
            n = rows.q_len[r]
            r_idx.append(torch.full((n,), p))
            c_idx.append(torch.arange(n))
            p_idx.append(torch.arange(rows.q_start[r], rows.q_start[r] + n))
            k_len[p] = rows.k_len[r]
        key_ok = torch.arange(Lmax).unsqueeze(0) < k_len.unsqueeze(1)
        return cls(group, place, pooled_keys, lo, n_rows, max(rows.q_len[r] for r in group), Lmax,
                   torch.cat(r_idx).to(device), torch.cat(c_idx).to(device), torch.cat(p_idx).to(device),
                   key_ok.to(device))


def _attend_folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, kv_heads: int):
    """SDPA with the query heads of each key/value group folded into the query dimension: q (R, H, Q, D) over
    k/v (R, Hkv, L, D), mask (R, 1, 1 or Q, L). Returns (R, H, Q, D); keys/values are never copied."""
    R, H, Q, D = q.shape
    g = H // kv_heads
    if g == 1:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    qf = q.reshape(R, kv_heads, g * Q, D)
    if mask.shape[2] != 1:
        mask = mask.repeat(1, 1, g, 1)
    o = torch.nn.functional.scaled_dot_product_attention(qf, k, v, attn_mask=mask)
    return o.reshape(R, H, Q, D)
