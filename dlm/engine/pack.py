"""Planning and packing one step: every running request's cache plan becomes rows of ONE ragged forward.

For each request the cache policy says which canvas positions to feed and which of them need logits; this module
turns those plans into the packed inputs of :class:`~dlm.models.ragged.RaggedAttention` (one sequence of T fed
positions, no padding between rows), the positions whose logits are computed, and where each logit's candidates
go (the request's slot and region column). Built on the host from Python integers; each field is copied to the
device once, when a step first reads it (:meth:`Packed.on`). While every request's plan repeats (the in-block steps of a block), the step reuses the last packed
layout and its device copies (:class:`PackCache`): between the step's synchronisation and the next forward the
host then only asks the cache policies for their plans.

On a CPU the packed sequence and the logits are padded to at least :data:`MIN_ROWS` rows: float32 matrix
products of fewer rows take another kernel whose rounding differs, so without the padding a request's logits
would depend on how many positions the other requests feed (rows are independent in a matrix product once the
kernel is fixed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch

from ..cache.base import Plan, StepInfo
from ..models.ragged import RaggedRows
from ..models.rows import ranges, runs
from ..models.transfer import to_device
from .request import Request

MIN_ROWS = 16
SHAPE_STEP = 16  # under CUDA graphs: logits (pack()) and data-dependent plans (CacheContext) padded to multiples


@dataclass
class RowPlan:
    """One row of this step (two model rows under classifier-free guidance), on the host.

    Attributes:
        fed: (Q,) long, canvas positions fed.
        logit_src: (n,) long, indices into ``fed`` of the positions whose logits are needed.
        cols: (n,) long, the region column each of those logits gives candidates for.
        fresh: ``fed`` is exactly 0 .. length - 1 (the whole effective canvas, in order).
        write: the fed keys/values go to the request's slots.
        ids: None: the input ids are the request's canvas; else the canvas to feed instead, (Q,) long on the
            device (a verifier's draft: fresh, not stored).
        first_fed: the smallest position in ``fed``.
        visible: the request's visible canvas (its keys) when the plan was made (the engine's lookahead plans
            for a request's next step, whose active block may be another).
    """

    request: Request
    fed: torch.Tensor
    logit_src: torch.Tensor
    cols: torch.Tensor
    fresh: bool
    write: bool
    ids: torch.Tensor | None = None
    first_fed: int = -1  # the smallest fed position (computed from ``fed`` when not given)
    visible: int = -1  # (the request's, when not given)

    def __post_init__(self) -> None:
        if self.first_fed < 0:
            self.first_fed = int(self.fed.min())
        if self.visible < 0:
            self.visible = self.request.visible

    @classmethod
    def draft(cls, request: Request, ids: torch.Tensor, logits_from: int, logits_to: int) -> "RowPlan":
        """A full canvas ``ids`` (L,) fed in place of the request's (a host tensor, moved with the step's other
        drafts in one copy, or a device tensor), with logits for fed positions ``logits_from .. logits_to - 1``."""
        n = logits_to - logits_from
        return cls(request, torch.arange(ids.numel()), torch.arange(logits_from, logits_to), torch.arange(n),
                   True, False, ids)

    @property
    def slots(self) -> list[int]:
        return [-1] * self.request.copies if self.ids is not None else self.request.slots

    @property
    def keys(self) -> int:
        return self.fed.numel() if self.ids is not None else self.visible


@dataclass
class Packed:
    """The inputs of one ragged forward and where its outputs go.

    Attributes:
        rows: the attention's :class:`RaggedRows`.
        slot, position: (T,) long, the slot and canvas position of every packed position (for the input ids).
        logits_index: (N,) long, packed positions whose logits are computed: per request its conditional rows,
            then (classifier-free guidance) its unconditional rows.
        cond, uncond: (Nc,) long indices into the N logits: the conditional logits of each candidate, and the
            matching unconditional ones (== cond where the request has no guidance).
        cfg_scale: (Nc,) float, each candidate's request's guidance scale (0: none).
        cand_slot, cand_col: (Nc,) long, where each candidate is stored (request slot, region column).
        segments: per row plan (plan, first candidate, number of candidates), in order.
        explicit_index, explicit_ids: packed positions whose input ids are given by a plan (drafts), and those
            ids (host or device: :func:`_joined_ids`), or None.
    """

    rows: RaggedRows
    slot: torch.Tensor
    position: torch.Tensor
    logits_index: torch.Tensor
    cond: torch.Tensor
    uncond: torch.Tensor
    cfg_scale: torch.Tensor
    cand_slot: torch.Tensor
    cand_col: torch.Tensor
    segments: list[tuple[RowPlan, int, int]]
    explicit_index: torch.Tensor | None = None
    explicit_ids: torch.Tensor | None = None
    _derived: dict = field(default_factory=dict, repr=False)

    def on(self, name: str, device) -> torch.Tensor:
        """Field ``name`` on ``device``, copied once (a layout that the next step reuses keeps its copies)."""
        return self.derived((name, str(device)), lambda: to_device(getattr(self, name), device))

    def derived(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()``, computed once per packed layout and ``key`` (device tensors derived from the layout)."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]


class PackCache:
    """The last step's packed layout, returned again while every row plan is the same object as then (the
    requests' plans repeat: :func:`host_plan`). A layout's device copies and derived indices then carry over
    too, and the host does not rebuild any of it between the step's synchronisation and the next forward."""

    def __init__(self) -> None:
        self._plans: list[RowPlan] = []
        self._packed: Packed | None = None
        self._options: tuple[bool, int] | None = None

    def pack(self, plans: list[RowPlan], pad_rows: bool, logit_step: int) -> Packed:
        same = (self._packed is not None and self._options == (pad_rows, logit_step)
                and len(plans) == len(self._plans) and all(a is b for a, b in zip(plans, self._plans)))
        if not same:  # the plans are kept: an object's identity is only unique while it lives
            self._plans, self._packed = list(plans), pack(plans, pad_rows, logit_step)
            self._options = (pad_rows, logit_step)
        return self._packed


def host_plan(request: Request, plan: Plan, shift: int) -> RowPlan:
    """A policy's :class:`~dlm.cache.base.Plan` as host tensors. The request keeps the last one: a plan of
    slices that repeats (the in-block steps of a block) returns the same :class:`RowPlan` object, which lets
    :class:`PackCache` reuse the step's packed layout."""
    key = _repeat_key(request, plan, shift)
    if key is not None and request.row_plan is not None and request.row_plan[0] == key:
        return request.row_plan[1]
    row = _build_row(request, plan, shift)
    request.row_plan = None if key is None else (key, row)
    return row


def _repeat_key(request: Request, plan: Plan, shift: int) -> tuple | None:
    """Everything a RowPlan is built from, for plans of slices (None for index plans: never reused)."""
    fed, index = plan.fed, plan.logits_index
    if not (isinstance(fed, slice) and isinstance(index, slice) and plan.targets is None):
        return None
    return (fed.start, fed.stop, fed.step, index.start, index.stop, index.step, request.visible,
            request.region_span()[0], shift, request.policy.uses_storage, tuple(request.slots))


def _build_row(request: Request, plan: Plan, shift: int) -> RowPlan:
    region_start, _ = request.region_span()
    fed, index = plan.fed, plan.logits_index
    if isinstance(fed, slice):  # (policies' slices have no step)
        fed_t, first = torch.arange(fed.start, fed.stop), fed.start
        fresh = fed.start == 0 and fed.stop == request.visible
    else:
        fed_t = fed[0].cpu()
        first = int(fed_t.min())
        fresh = fed_t.numel() == request.visible and bool((fed_t == torch.arange(request.visible)).all())
    logit_src = torch.arange(index.start, index.stop) if isinstance(index, slice) else index[0].cpu()
    if plan.targets is not None:
        cols = plan.targets[0].cpu()
    elif isinstance(fed, slice) and isinstance(index, slice):  # consecutive columns
        col = fed.start + index.start + shift - region_start
        cols = torch.arange(col, col + index.stop - index.start)
    else:
        cols = fed_t[logit_src] + shift - region_start
    return RowPlan(request, fed_t, logit_src, cols, fresh, request.policy.uses_storage, first_fed=first)


def step_info(request: Request, tokens: torch.Tensor, committed: torch.Tensor, confidence: torch.Tensor,
              mask_id: int) -> StepInfo:
    """What the request's cache policy sees (device tensors computed only if the policy reads them)."""
    slot, length = request.slots[0], request.visible
    bs, be = request.block_span()
    rs, re = request.region_span()
    return StepInfo(
        step=request.block_step, block_start=bs, block_end=be, region_start=rs, region_end=re, length=length,
        exact_prefix=request.exact_prefix,
        masked=lambda: (tokens[slot, :length] == mask_id).unsqueeze(0),
        committed_last=lambda: committed[slot, :length].unsqueeze(0),
        confidence=(lambda: confidence[slot, : re - rs].unsqueeze(0)) if request.block_step > 0 else None,
    )


def pack(plans: list[RowPlan], pad_rows: bool, logit_step: int = 1) -> Packed:
    """Pack the plans into one ragged forward (see the module doc). ``logit_step``: pad the logits' positions to
    a multiple of it (with the first packed position, whose extra logits nobody reads), so that steps whose
    number of logits varies by a few (the ``window`` cache's) repeat their shape for CUDA graphs.

    Rows that feed their whole canvas (fresh) are placed first, the others after them, each kind in the plans'
    order (:func:`placement`); the logits and the segments keep the plans' order."""
    q_start, q_len, k_len, slot, fresh, write, block, min_pos = [], [], [], [], [], [], [], []
    pos_parts, slot_of_row, first_row = [], [], {}
    explicit_index, explicit_ids = [], []
    cursor = 0
    for i in placement(plans):  # Python numbers per row; the tensors are joined once below
        p = plans[i]
        r = p.request
        first_row[i] = len(q_start)
        q = p.fed.numel()
        for copy, s in enumerate(p.slots):
            q_start.append(cursor)
            q_len.append(q)
            k_len.append(p.keys)
            slot.append(s)
            fresh.append(p.fresh)
            write.append(p.write)
            block.append(r.layout.block_causal)
            min_pos.append(p.first_fed)
            pos_parts.append(p.fed)
            slot_of_row.append(max(s, r.slots[0] if r.slots else 0))
            if p.ids is not None:
                explicit_index.append(torch.arange(cursor, cursor + q))
                explicit_ids.append(p.ids if copy == 0 else _unconditional(p.ids, r))
            cursor += q
    if pad_rows and cursor < MIN_ROWS:  # a dummy row that attends to itself only and writes nothing
        extra = MIN_ROWS - cursor
        q_start.append(cursor), q_len.append(extra), k_len.append(extra), slot.append(-1), fresh.append(True)
        write.append(False), block.append(None), min_pos.append(0)
        pos_parts.append(torch.arange(extra))
        slot_of_row.append(plans[0].request.slots[0])
    logits_index, candidates = _logits(plans, first_row, q_start)
    if pad_rows and logits_index.numel() < MIN_ROWS:
        logits_index = torch.cat([logits_index, logits_index.new_zeros(MIN_ROWS - logits_index.numel())])
    if logits_index.numel() % logit_step:
        logits_index = torch.cat([logits_index, logits_index.new_zeros(-logits_index.numel() % logit_step)])
    position = torch.cat(pos_parts)
    slot_index = runs(slot_of_row, q_len)
    rows = RaggedRows(q_start, q_len, k_len, slot, fresh, write, block, position, min_pos)
    packed = Packed(rows, slot_index, position, logits_index, *candidates)
    if explicit_ids:
        packed.explicit_index, packed.explicit_ids = torch.cat(explicit_index), _joined_ids(explicit_ids)
    return packed


def placement(plans: list[RowPlan]) -> list[int]:
    """The order in which the plans' rows are placed in the packed sequence: fresh rows first. Fresh rows of
    equal length placed one after the other are one view in the padded attention
    (:class:`~dlm.models.ragged.RaggedAttention`), with no index kernels, whatever order the requests run in."""
    return sorted(range(len(plans)), key=lambda i: not plans[i].fresh)


def _logits(plans: list[RowPlan], first_row: dict[int, int], q_start: list[int]) -> tuple[torch.Tensor, tuple]:
    """The packed positions whose logits are computed, in the plans' order (per request its conditional rows,
    then its unconditional ones), and the candidates' fields of :class:`Packed` (cond .. segments)."""
    logit_src, logit_start, logit_len = [], [], []
    cond, uncond, counts, scale, cand_slot, cand_col, segments = [], [], [], [], [], [], []
    n_logits = n_cand = 0
    for i, p in enumerate(plans):
        r = p.request
        n = p.logit_src.numel()
        for copy in range(len(p.slots)):
            logit_src.append(p.logit_src)
            logit_start.append(q_start[first_row[i] + copy])
            logit_len.append(n)
        cond.append(n_logits)  # (the first logit of each run of n)
        uncond.append(n_logits + n if r.copies == 2 else n_logits)
        n_logits += n * r.copies
        counts.append(n)
        scale.append(float(r.config.cfg_scale))
        cand_slot.append(r.slots[0])
        cand_col.append(p.cols)
        segments.append((p, n_cand, n))
        n_cand += n
    # each logit's packed position: its row's first packed position + its index among the row's fed positions
    index = torch.cat(logit_src) + runs(logit_start, logit_len)
    return index, (ranges(cond, counts), ranges(uncond, counts), runs(scale, counts, torch.float32),
                   runs(cand_slot, counts), torch.cat(cand_col), segments)


def _joined_ids(parts: list[torch.Tensor]) -> torch.Tensor:
    """The drafts' canvases as one tensor: on the host when every plan gave host ids (the forward then moves them
    in one copy), else on the device of the first that did not."""
    device = next((t.device for t in parts if t.device.type != "cpu"), None)
    return torch.cat(parts if device is None else [t.to(device) for t in parts])


def _unconditional(ids: torch.Tensor, r: Request) -> torch.Tensor:
    """A draft's unconditional copy: its prompt replaced by masks (classifier-free guidance)."""
    out = ids.clone()
    out[: r.layout.prompt_len] = r.mask_id
    return out
