"""Selection and commit: the schedulers decide, the engine writes the decisions into the canvases.

Requests whose scheduler has the same configuration and whose regions have the same width are decided in ONE
call of the scheduler (rows = requests). Every per-row quantity the scheduler may read is that row's own (its
candidates, view, state and generator), so a request's decisions do not depend on the other rows of the call;
grouping by width as well means no row is ever padded, so even a scheduler that reads the width of its
tensors sees what it would see alone.

After the call the engine checks the scheduler's invariants per row (nothing committed outside the block without
finishing, at least one commit while the block has masks, ``finish`` only for ``full_region`` schedulers):
a violation fails that request only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SchedulerError
from ..models.transfer import to_device
from ..schedulers.base import BlockInfo, Decision, StepView, slice_candidates, slice_view
from .buffers import SlotBuffers
from .request import Request

# error codes of a row's decision (0: fine)
OUTSIDE, EMPTY, FINISH_WITHOUT_REGION, BAD_EDIT, HELD_TOO_LONG = 1, 2, 3, 4, 5


@dataclass
class GroupCommit:
    """What one scheduler call committed.

    Attributes:
        requests: the rows, in order.
        slots, starts: (B,) long device tensors: each row's slot and region start.
        commit: (B, n) bool, positions committed (a finishing row's remaining masks included).
        finish: (B,) bool, rows the scheduler finished.
        error: (B,) long, the invariant a row broke (0: none).
        hold: (B,) bool, rows whose block stays active at the next step even without masks.
        open: (B,) bool, rows whose block still has masks after this step, or is held.
    """

    requests: list[Request]
    slots: torch.Tensor
    starts: torch.Tensor
    commit: torch.Tensor
    finish: torch.Tensor
    error: torch.Tensor
    hold: torch.Tensor
    open: torch.Tensor


def group_key(r: Request) -> tuple:
    rs, re = r.region_span()
    bs, be = r.block_span()
    return (r.config.scheduler, r.scheduler_key, re - rs, be - bs)


# ------------------------------------------------------------------------------------------------ state
def stack_states(states: list[Any]) -> Any:
    """Stack per-row states (each with a leading dimension of 1) into one state of B rows."""
    first = states[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(states)
    if isinstance(first, dict):
        return {k: stack_states([s[k] for s in states]) for k in first}
    raise SchedulerError(f"scheduler state must be None, a tensor with the row first, or a dict of them; got "
                         f"{type(first).__name__}")


def split_state(state: Any, n: int) -> list[Any]:
    """The rows of a stacked state, each with a leading dimension of 1."""
    if state is None:
        return [None] * n
    if isinstance(state, torch.Tensor):
        if state.dim() == 0 or state.shape[0] != n:
            raise SchedulerError(f"scheduler state tensors must have the row as first dimension ({n} rows); got "
                                 f"shape {tuple(state.shape)}")
        return [state[i : i + 1] for i in range(n)]
    if isinstance(state, dict):
        parts = {k: split_state(v, n) for k, v in state.items()}
        return [{k: parts[k][i] for k in state} for i in range(n)]
    raise SchedulerError(f"scheduler state must be None, a tensor with the row first, or a dict of them; got "
                         f"{type(state).__name__}")


# ------------------------------------------------------------------------------------------------ views
def row_numbers(reqs: list[Request], device) -> torch.Tensor:
    """(B, 15) long on ``device``, in one transfer: per row its slot, region start, length, prompt length (the
    region's), its block's index, count, step budget, the total budget, width, start, canvas length and answer
    start (:class:`BlockInfo`'s), then its step in the block, its steps and its id (the view's)."""
    rows = []
    for r in reqs:
        bs, be = r.block_span()
        rows.append([r.slots[0], r.region_span()[0], r.length, r.layout.prompt_len,
                     r.block, len(r.layout.blocks), r.layout.steps_per_block, r.layout.total_steps, be - bs, bs,
                     r.layout.length, r.layout.prompt_len, r.block_step, r.steps, r.id])
    return to_device(rows, device, torch.long)


def block_info(t: torch.Tensor, masks: torch.Tensor) -> BlockInfo:
    """The rows' blocks from :func:`row_numbers`."""
    return BlockInfo(index=t[:, 4], num_blocks=t[:, 5], steps=t[:, 6], masks=masks, total_steps=t[:, 7],
                     width=t[:, 8], start=t[:, 9], canvas_length=t[:, 10], answer_start=t[:, 11])


def region(reqs: list[Request], buf: SlotBuffers, mask_id: int, meta: torch.Tensor):
    """(slots, starts, cols, current tokens, masked, prompt) of the rows' regions: (B,), (B,), then (B, n);
    ``meta``: the rows' :func:`row_numbers`."""
    dev = buf.device
    n = reqs[0].region_span()[1] - reqs[0].region_span()[0]
    slots, starts, lengths = meta[:, 0], meta[:, 1], meta[:, 2]
    cols = starts.unsqueeze(1) + torch.arange(n, device=dev).unsqueeze(0)
    cur = buf.tokens[slots.unsqueeze(1), cols]
    masked = (cur == mask_id) & (cols < lengths.unsqueeze(1))
    return slots, starts, cols, cur, masked, cols < meta[:, 3:4]


def _check_decision(d: Any, name: str, shape: tuple[int, int]) -> Decision:
    if not isinstance(d, Decision) or not isinstance(d.commit, torch.Tensor) or tuple(d.commit.shape) != shape:
        got = tuple(d.commit.shape) if isinstance(getattr(d, "commit", None), torch.Tensor) else type(d).__name__
        raise SchedulerError(f"scheduler {name!r} must return (Decision(commit (B, n) bool, finish), state) with "
                             f"commit of shape {shape}; got {got}")
    return d


# ------------------------------------------------------------------------------------------------ decide
def decide(reqs: list[Request], buf: SlotBuffers, mask_id: int) -> GroupCommit:
    """One scheduler call for ``reqs`` (same scheduler configuration and region width) and the resulting
    commits written into the canvases (see the module doc)."""
    sched = reqs[0].scheduler
    dev = buf.device
    numbers = row_numbers(reqs, dev)
    slots, starts, cols, cur, masked, prompt = region(reqs, buf, mask_id, numbers)
    B, n = masked.shape
    width = reqs[0].block_span()[1] - reqs[0].block_span()[0]
    in_block = (torch.arange(n, device=dev) < width).unsqueeze(0).expand(B, n)
    open_masks = masked & in_block
    masks_now = open_masks.sum(1)
    for i, r in enumerate(reqs):
        if r.needs_init:  # a block starts: remember its masks, then the scheduler's state for it
            r.block_masks = masks_now[i : i + 1]
    masks = torch.cat([r.block_masks for r in reqs])
    info = block_info(numbers, masks)
    starting = [i for i, r in enumerate(reqs) if r.needs_init]
    if starting:
        idx = to_device(starting, dev, torch.long)
        fresh_states = split_state(sched.init_state(info.rows(idx)), len(starting))
        for i, s in zip(starting, fresh_states):
            reqs[i].sched_state, reqs[i].needs_init = s, False
    view = StepView(masked=masked, in_block=in_block, active=torch.ones(B, dtype=torch.bool, device=dev),
                    step=numbers[:, 12], row_steps=numbers[:, 13], block=info, generators=[r.generator for r in reqs],
                    request_ids=numbers[:, 14], tokens=cur, prompt=prompt)
    cand = buf.candidates(slots, n, sched.measures)
    state = stack_states([r.sched_state for r in reqs])
    if sched.full_region or width == n:
        decision, state = sched.step(cand, view, state)
        decision = _check_decision(decision, sched.name, (B, n))
    else:  # the region is wider than the block only for EoTP's prediction: the scheduler sees the block
        cut = slice(0, width)
        decision, state = sched.step(slice_candidates(cand, cut), slice_view(view, cut), state)
        decision = _check_decision(decision, sched.name, (B, width))
        wide = torch.zeros(B, n, dtype=torch.bool, device=dev)
        wide[:, cut] = decision.commit
        edit = None
        if decision.edit is not None:
            edit = torch.zeros(B, n, dtype=torch.bool, device=dev)
            edit[:, cut] = decision.edit
        decision = Decision(wide, decision.finish, edit, decision.hold)
    for r, s in zip(reqs, split_state(state, B)):
        r.sched_state = s
    if any(r.config.eotp for r in reqs):  # EoTP's prediction reads the candidates the scheduler decided on
        buf.cand_tokens[slots, :n] = cand.tokens
        buf.cand_confidence[slots, :n] = cand.confidence.float()
    commit, finish, error = _validate(decision, masked, in_block, open_masks, sched.full_region)
    edit, hold, error = _edits(reqs, decision, masked, in_block, prompt, error, sched)
    if bool(reqs[0].layout.block_causal):  # finishing a block-diffusion row finishes its block, not the row
        finish = torch.zeros_like(finish)
    _write(reqs, buf, slots, cols, cur, commit if edit is None else commit | edit, cand.tokens, numbers[:, 13])
    still = (open_masks & ~commit).any(1)
    if hold is None:
        hold = torch.zeros(B, dtype=torch.bool, device=dev)
    else:
        still = still | hold
    return GroupCommit(reqs, slots, starts, commit, finish, error, hold, still)


def _validate(decision: Decision, masked, in_block, open_masks, full_region: bool):
    """(commit, finish, error) of a decision: only masked positions committed (a finishing row's remaining
    masks added), ``finish`` only from ``full_region`` schedulers, and the errors of rows that committed outside
    their block without finishing or nothing while their block has masks. ``open_masks``: masked & in_block."""
    commit = decision.commit.bool() & masked
    finish = torch.zeros(commit.shape[0], dtype=torch.bool, device=commit.device)
    error = None  # (a rule broken before the checks below)
    if decision.finish is not None:
        finish = decision.finish.bool()
        if not full_region:
            error = torch.where(finish, FINISH_WITHOUT_REGION, 0)
            finish = torch.zeros_like(finish)
        commit = commit | (masked & finish.unsqueeze(1))
    outside = (commit & ~in_block).any(1)
    empty = open_masks.any(1) & ~(commit & in_block).any(1)
    if decision.finish is not None:  # a finishing row may commit outside its block, or nothing in it
        outside, empty = outside & ~finish, empty & ~finish
    checks = torch.where(outside, OUTSIDE, torch.where(empty, EMPTY, 0))
    return commit, finish, checks if error is None else torch.where(error == 0, checks, error)


def _edits(reqs, decision: Decision, masked, in_block, prompt, error, sched):
    """The edits and holds of a decision, checked: only answer tokens of the active block, only from schedulers
    that declare ``edits``, and a block held at most ``max_hold_steps`` steps after its last mask. (None, None,
    error) for a decision without either."""
    B, dev = masked.shape[0], masked.device
    if decision.edit is None and decision.hold is None:
        return None, None, error
    edit = torch.zeros_like(masked) if decision.edit is None else decision.edit.bool()
    hold = torch.zeros(B, dtype=torch.bool, device=dev) if decision.hold is None else decision.hold.bool()
    bad = (edit & (masked | prompt | ~in_block)).any(1) | ((edit.any(1) | hold) & (not sched.edits))
    too_long = hold & to_device([r.held_steps >= sched.max_hold_steps for r in reqs], dev)
    error = torch.where((error == 0) & bad, BAD_EDIT, error)
    error = torch.where((error == 0) & too_long, HELD_TOO_LONG, error)
    return edit & ~masked & ~prompt & in_block, hold, error


def _write(reqs, buf: SlotBuffers, slots, cols, cur, commit, tokens, steps) -> None:
    """Write committed (and edited) tokens, the unconditional copies' answers, commit steps (``steps``: (B,) each
    row's steps so far) and the committed mask."""
    dev = buf.device
    new = torch.where(commit, tokens, cur)
    rows = slots.unsqueeze(1)
    buf.tokens[rows, cols] = new
    uncond = [(i, r.slots[1]) for i, r in enumerate(reqs) if r.copies == 2]
    if uncond:  # the unconditional canvas mirrors the answer (only its prompt differs)
        idx = to_device([i for i, _ in uncond], dev, torch.long)
        buf.tokens[to_device([s for _, s in uncond], dev, torch.long).unsqueeze(1), cols[idx]] = new[idx]
    step = steps.to(torch.int32).unsqueeze(1)
    buf.commit_step[rows, cols] = torch.where(commit, step, buf.commit_step[rows, cols])
    buf.committed.index_fill_(0, slots, False)  # a scalar fill: `t[index] = False` would copy False to the GPU and wait
    buf.committed[rows, cols] = commit
