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
    on the padded shapes, i.e. on the other rows. With ``kernels=True`` (the model's fused kernels) the rows that
    read pooled keys (a cached step's) take the split-key Triton kernel of :mod:`dlm.models.attention_kernel`
    where it applies.

Both backends store the fed keys and values into the pool first (rows that write); with ``kernels=True`` in one
launch per layer by :mod:`dlm.models.kv_write_kernel` where it applies (the same bits as the reference copies).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from .attention import attend, sdpa
from .elementwise import ops_for_positions
from .rows import copy_rows, ranges, runs, select_rows
from .transfer import to_device

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
    _per_device: dict = field(default_factory=dict, repr=False)  # index tensors per device, and the signature

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
        same kernels on the same shapes (what a captured CUDA graph needs). Computed once per batch."""
        if "signature" not in self._per_device:
            self._per_device["signature"] = (
                tuple(self.q_len), tuple(self.k_len), tuple(self.slot), tuple(self.fresh), tuple(self.write),
                tuple(self.block), tuple(self.masked_rows()))
        return self._per_device["signature"]

    def masked_rows(self) -> list[int]:
        """Block-causal rows whose queries need a mask (some query's block ends before the row's last key)."""
        return [r for r, bs in enumerate(self.block)
                if bs is not None and (self.min_position[r] // bs + 1) * bs < self.k_len[r]]


@dataclass
class _Index:
    """Device tensors that depend on the batch's layout only (built once per device and forward, from host
    lists; nothing here reads the positions, so a captured graph can replay them with new positions)."""

    positions: torch.Tensor
    write_src: object  # packed positions whose keys/values are stored (a tensor, ALL, or None)
    write_slot: torch.Tensor | None
    groups: dict = field(default_factory=dict)  # padded backend: per kind of row, its scatter indices

    @staticmethod
    def build(rows: RaggedRows, device) -> "_Index":
        stored = [r for r in range(len(rows.q_len)) if rows.write[r] and rows.slot[r] >= 0]
        positions = to_device(rows.positions, device)
        if not stored:
            return _Index(positions, None, None)
        lengths = [rows.q_len[r] for r in stored]
        write_slot = to_device(runs([rows.slot[r] for r in stored], lengths), device)
        if sum(lengths) == positions.numel():  # every fed position is stored, in packed order
            return _Index(positions, ALL, write_slot)
        return _Index(positions, to_device(ranges([rows.q_start[r] for r in stored], lengths), device), write_slot)

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
        pool: an object with ``write(layer, slots, positions, k, v, src=None, kernel=False)`` (``src``: which of
            the fed positions are stored, None for all; ``kernel``: the write kernel may be used),
            ``keys(layer, slots, length)`` and ``values(layer, slots, length)``
            (:class:`dlm.cache.store.KVPool`), or None when no row uses a slot.
        backend: ``"loop"`` or ``"padded"`` (see the module doc).
        out: a (T' >= T, H, D) buffer whose first T rows receive the outputs (the returned tensor is a view of
            it), or None for a new tensor.

    Internally the fed positions are token-major, (T, heads, D): a position's keys are one contiguous row, so the
    pool writes rows, and rows of equal length in slot order (a batch in lockstep) are views, not copies.
    """

    def __init__(self, rows: RaggedRows, pool, backend: str = "loop", out: torch.Tensor | None = None,
                 kernels: bool = False):
        if backend not in BACKENDS:
            raise ValueError(f"unknown ragged attention backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        self.rows, self.pool, self.backend, self.out = rows, pool, backend, out
        self.kernels = kernels  # Triton kernels where they apply: pooled rows' attention, key/value writes

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # q: (1, H, T, D); k, v: (1, Hkv, T, D) -> token-major (T, heads, D)
        qt, kt, vt = q[0].transpose(0, 1), k[0].transpose(0, 1), v[0].transpose(0, 1)
        idx = self.rows.index(q.device)
        if idx.write_src is not None:
            self.pool.write(layer, idx.write_slot, idx.positions, kt, vt,
                            src=None if idx.write_src is ALL else idx.write_src, kernel=self.kernels)
        masks = idx.masks(self.rows) if any(b is not None for b in self.rows.block) else {}
        if self.backend == "loop":
            out = self._output(qt)
            self._loop(layer, qt, kt, vt, masks, out)
        else:
            out = self._padded(layer, qt, kt, vt, idx, masks)
        return out.transpose(0, 1).unsqueeze(0)

    def _output(self, qt: torch.Tensor) -> torch.Tensor:
        """Where the (T, H, D) output goes: the given buffer's first T rows, or a new tensor."""
        return torch.empty_like(qt) if self.out is None else self.out[: qt.shape[0]]

    # ----------------------------------------------------------------- loop (reference)
    def _loop(self, layer, qt, kt, vt, masks: dict, out: torch.Tensor) -> None:
        rows = self.rows
        for r in range(len(rows.q_len)):
            s = slice(rows.q_start[r], rows.q_start[r] + rows.q_len[r])
            if rows.fresh[r]:
                kr, vr = kt[s].transpose(0, 1).unsqueeze(0), vt[s].transpose(0, 1).unsqueeze(0)
            else:
                kr = self.pool.keys(layer, rows.slot[r], rows.k_len[r])
                vr = self.pool.values(layer, rows.slot[r], rows.k_len[r])
            mask = masks.get(r)
            o = attend(qt[s].transpose(0, 1).unsqueeze(0), kr, vr, None if mask is None else mask.unsqueeze(0))
            out[s] = o[0].transpose(0, 1)

    # ----------------------------------------------------------------- padded (one call per kind of row)
    def _padded(self, layer, qt, kt, vt, idx: _Index, masks: dict) -> torch.Tensor:
        """The (T, H, D) output: one group in lockstep covering every fed position (a static batch) returns its
        attention's output as it is, without copying it into an output tensor."""
        rows = self.rows
        for pooled_keys in (False, True):
            if pooled_keys not in idx.groups:
                group = [r for r in range(len(rows.q_len)) if rows.fresh[r] != pooled_keys]
                idx.groups[pooled_keys] = group_of(rows, group, pooled_keys, qt.device) if group else None
        groups = [idx.groups[k] for k in (False, True) if idx.groups[k] is not None]
        if self.out is None and len(groups) == 1 and groups[0].uniform == (0, qt.shape[0]):
            return self._padded_group(layer, qt, kt, vt, groups[0], masks, None)
        out = self._output(qt)
        for g in groups:
            self._padded_group(layer, qt, kt, vt, g, masks, out)
        return out

    def _padded_group(self, layer, qt, kt, vt, g: "_Group", masks: dict, out: torch.Tensor | None
                      ) -> torch.Tensor | None:
        """The group's attention into its rows of ``out``; with ``out`` None (a uniform group, every fed
        position), returned instead: (T, H, D)."""
        H, D = qt.shape[1], qt.shape[2]
        Hkv = kt.shape[1]
        if g.pooled_keys:  # one view over the contiguous range of slots the group occupies
            keys = self.pool.keys(layer, slice(g.lo, g.lo + g.n_rows), g.Lmax)
            values = self.pool.values(layer, slice(g.lo, g.lo + g.n_rows), g.Lmax)
        elif g.uniform is not None:  # equal rows, consecutive: the fresh keys are a view
            a, b = g.uniform
            keys = kt[a:b].view(g.n_rows, g.Lmax, Hkv, D).transpose(1, 2)
            values = vt[a:b].view(g.n_rows, g.Lmax, Hkv, D).transpose(1, 2)
        else:
            keys, values = kt.new_zeros(g.n_rows * g.Lmax, Hkv, D), vt.new_zeros(g.n_rows * g.Lmax, Hkv, D)
            copy_rows(keys, g.dest, select_rows(kt, g.packed))
            copy_rows(values, g.dest, select_rows(vt, g.packed))
            keys = keys.view(g.n_rows, g.Lmax, Hkv, D).transpose(1, 2)
            values = values.view(g.n_rows, g.Lmax, Hkv, D).transpose(1, 2)
        if g.uniform is not None:
            a, b = g.uniform
            qp = qt[a:b].view(g.n_rows, g.Qmax, H, D).transpose(1, 2)
        else:
            qp = qt.new_zeros(g.n_rows * g.Qmax, H, D)
            copy_rows(qp, g.qdest, select_rows(qt, g.packed))
            qp = qp.view(g.n_rows, g.Qmax, H, D).transpose(1, 2)
        mask = None if g.all_keys else g.key_ok[:, None, None, :]
        mine = [(r, p) for r, p in zip(g.members, g.place) if r in masks]
        if mine:  # block-causal rows: a mask per query
            full = g.key_ok[:, None, :].expand(g.n_rows, g.Qmax, g.Lmax).clone()
            for r, p in mine:
                m = masks[r]
                full[p, : m.shape[0], : m.shape[1]] = m
            mask = full[:, None]
        kernel = _kernel(self.kernels and g.pooled_keys, qp, keys, values, mask)
        if kernel is not None:
            o = kernel.attend(qp, keys, values, mask).transpose(1, 2)  # token-major: no copy
        else:
            o = _attend_folded(qp, keys, values, mask, Hkv).transpose(1, 2)  # (rows, Qmax, H, D)
        if g.uniform is not None:
            a, b = g.uniform
            if out is None:
                return o.reshape(b - a, H, D)
            out[a:b] = o.reshape(b - a, H, D)
        else:
            copy_rows(out, g.packed, select_rows(o.reshape(g.n_rows * g.Qmax, H, D), g.qdest))
        return None


def eager_forward(model, pool, backend: str, rows: RaggedRows, ids: torch.Tensor, positions: torch.Tensor,
                  logits_index: torch.Tensor) -> torch.Tensor:
    """Logits (N, V) of the model's eager forward over ragged ``rows`` (ids and positions (1, T), logits_index
    (1, N)), with the elementwise functions and attention kernels that suit a forward of T positions
    (:func:`~dlm.models.elementwise.ops_for_positions`)."""
    ops = ops_for_positions(model, ids.shape[1])
    attention = RaggedAttention(rows, pool, backend, kernels=ops.fused)
    return model(ids, positions, attention=attention, logits_index=logits_index, ops=ops)[0]


ALL = object()  # marker: every fed position is written, in packed order


@dataclass
class _Group:
    """The padded layout of one kind of row (fresh or pooled): indices and key masks, on the device.

    ``uniform`` is (first, end) packed position when the rows have equal query (and, fresh, key) lengths, come
    one after the other in the packed sequence and occupy consecutive padded rows: then queries, fresh keys and
    outputs are views, with no index kernels at all (a batch in lockstep)."""

    members: list[int]
    place: list[int]
    pooled_keys: bool
    lo: int
    n_rows: int
    Qmax: int
    Lmax: int
    packed: torch.Tensor  # packed positions of the group's fed positions (empty where ``uniform``)
    qdest: torch.Tensor  # their rows in the padded (rows * Qmax) query layout (empty where ``uniform``)
    dest: torch.Tensor  # their rows in the padded (rows * Lmax) fresh-key layout (empty where ``uniform``)
    key_ok: torch.Tensor  # (rows, Lmax) bool
    all_keys: bool
    uniform: tuple[int, int] | None

    @classmethod
    def build(cls, rows: RaggedRows, group: list[int], pooled_keys: bool, device) -> "_Group":
        if pooled_keys:  # rows are the slots lo .. hi - 1 (the pool's layout)
            lo = min(rows.slot[r] for r in group)
            n_rows = max(rows.slot[r] for r in group) + 1 - lo
            place = [rows.slot[r] - lo for r in group]
        else:
            lo, n_rows, place = 0, len(group), list(range(len(group)))
        Qmax = max(rows.q_len[r] for r in group)
        Lmax = max(rows.k_len[r] for r in group)
        k_len = torch.full((n_rows,), Lmax, dtype=torch.long)
        k_len[place] = torch.tensor([rows.k_len[r] for r in group])
        key_ok = torch.arange(Lmax).unsqueeze(0) < k_len.unsqueeze(1)
        starts = [rows.q_start[r] for r in group]
        lengths = [rows.q_len[r] for r in group]
        uniform = None
        if (place == list(range(n_rows)) and all(n == Qmax for n in lengths)
                and all(b - a == Qmax for a, b in zip(starts, starts[1:]))
                and (pooled_keys or all(rows.k_len[r] == Qmax for r in group))):
            uniform = (starts[0], starts[0] + n_rows * Qmax)
            packed = qdest = dest = torch.empty(0, dtype=torch.long, device=device)  # views: no index used
        else:
            packed = to_device(ranges(starts, lengths), device)
            qdest = to_device(ranges([p * Qmax for p in place], lengths), device)
            dest = to_device(ranges([p * Lmax for p in place], lengths), device)
        return cls(group, place, pooled_keys, lo, n_rows, Qmax, Lmax, packed, qdest, dest, to_device(key_ok, device),
                   bool(key_ok.all()), uniform)


class _GroupMemo:
    """The :class:`_Group` of the last ``size`` layouts seen, by everything :meth:`_Group.build` reads and the
    stream it was built on. A served batch keeps its layout from step to step until a request joins or leaves,
    and building a group's index tensors on the host (three :func:`~dlm.models.rows.ranges` of every fed
    position, and their transfers) took 16% of a small model's engine process on an H200 host (with torch's
    default CPU threads; 4% with one). The groups are read only (index tensors, a key mask), so one serves every
    forward of its layout on its stream: their host-to-device copies are queued on that stream, and a forward on
    another stream (another engine's thread, a capture's side stream) builds its own rather than read them
    before they land."""

    def __init__(self, size: int = 32):
        self.size = size
        self._groups: OrderedDict[tuple, _Group] = OrderedDict()
        self._lock = threading.Lock()  # engines in several threads share it

    def get(self, rows: RaggedRows, group: list[int], pooled_keys: bool, device) -> _Group:
        device = torch.device(device)
        key = (str(device), _stream_id(device), pooled_keys, tuple(group),
               *(tuple(getattr(rows, f)[r] for r in group) for f in ("q_start", "q_len", "k_len", "slot")))
        with self._lock:
            found = self._groups.get(key)
            if found is not None:
                self._groups.move_to_end(key)
                return found
        built = _Group.build(rows, group, pooled_keys, device)
        with self._lock:
            self._groups[key] = built
            while len(self._groups) > self.size:
                self._groups.popitem(last=False)
        return built


def _stream_id(device: torch.device) -> int:
    """The current stream of ``device`` (0 off CUDA): what the group's host-to-device copies are queued on."""
    return torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0


_GROUPS = _GroupMemo()


def group_of(rows: RaggedRows, group: list[int], pooled_keys: bool, device) -> _Group:
    """``_Group.build(rows, group, pooled_keys, device)``, or the same group built for an earlier forward of the
    same layout."""
    return _GROUPS.get(rows, group, pooled_keys, device)


def _kernel(wanted: bool, q, k, v, mask):
    """:mod:`dlm.models.attention_kernel` if ``wanted`` and it takes these operands, else None (Triton is imported
    only once a step asks for the kernel)."""
    if not wanted:
        return None
    from . import attention_kernel

    return attention_kernel if attention_kernel.applies(q, k, v, mask) else None


def _attend_folded(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, kv_heads: int):
    """SDPA with the query heads of each key/value group folded into the query dimension: q (R, H, Q, D) over
    k/v (R, Hkv, L, D), mask (R, 1, 1 or Q, L) or None (every key). Returns (R, H, Q, D); keys/values are never
    copied."""
    R, H, Q, D = q.shape
    g = H // kv_heads
    if g == 1:
        return sdpa(q, k, v, mask)
    qf = q.reshape(R, kv_heads, g * Q, D)
    if mask is not None and mask.shape[2] != 1:
        mask = mask.repeat(1, 1, g, 1)
    o = sdpa(qf, k, v, mask)
    return o.reshape(R, H, Q, D)
