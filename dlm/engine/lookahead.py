"""Lookahead: a step's forward launched before the previous step's results reach the host.

Between two forwards the host waits for the step's one transfer, turns it into events, and plans, packs and
launches the next forward; on a GPU that is idle time (about 0.5 ms a step at batch 1 on an H200, 1-2 ms at
batch 32). When every running request's next plan is certain before the step's results, the engine launches the
next forward right after queuing the step's own work (the input ids are read on the device, after this step's
commits), and only then waits for the transfer: the host's work runs while the GPU computes.

A request's next plan is certain when its policy plans from the geometry alone (``CachePolicy.geometric``), its
scheduler knows in advance how many steps a block takes (``Scheduler.block_steps``), so that the host knows
whether this step ends the block (:func:`forecast`: the next step is then the first of the next block with masks,
planned by a copy of the policy given that block's start; a request whose last block ends has no next step),
and nothing else can change its geometry (end-of-text prediction, edits, a lossless verifier's
driver), and no request waits to start (the queue is empty and none arrived since the last step: a request
submitted while a forward is launched starts a step later, so arrivals turn the lookahead off until the traffic
quiets). What can still happen is that a request ends at this step (stop-at-EOS, a failure, a cancellation): its
rows of the launched forward are then ignored (their keys and values go to slots it has released, which the
next owner's first step rewrites before reading). A request whose state after the step differs from the
prediction in any other way would make the engine drop the launched forward and run the step as usual (counted
in ``EngineCore.lookahead_dropped``; it does not happen with the built-in components).

The launched forward is exactly the forward the next step would run, with one exception: rows of a request that
ended stay in it. With batch-invariant numerics (a CPU, or ``batch_invariant=True``) that changes nothing; in the
default GPU mode, where a request's logits already depend on the rows beside it, it is one more such case.
Weights changed in place between two steps (``load_state_dict`` into the model) reach the forward one step later
than without the lookahead: change them between generations, or build the engine with ``lookahead=False``.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch

from .request import Request, Status


@dataclass
class Ahead:
    """A forward launched for the next step: its packed layout and logits, the requests it feeds, the policies'
    plans (counted in their statistics once the step uses them) and each request's predicted state."""

    packed: Any
    logits: torch.Tensor
    requests: list[Request]
    plans: list[Any]
    keys: dict[int, tuple]

    def live(self) -> bool:
        return any(r.status == Status.RUNNING for r in self.requests)


def declares(obj: Any, flag: str, method: str) -> bool:
    """Whether ``obj``'s class sets ``flag`` to a true value at or below the class that defines ``method``
    (a subclass that overrides ``method`` without restating ``flag`` does not inherit the promise), and the
    instance overrides neither."""
    if flag in vars(obj) or method in vars(obj):
        return False
    return _class_declares(type(obj), flag, method) and bool(getattr(obj, flag))


@functools.cache
def _class_declares(cls: type, flag: str, method: str) -> bool:
    """The class part of :func:`declares` (looked up once per class: the engine asks at every step)."""
    flag_owner = next((c for c in cls.__mro__ if flag in vars(c)), None)
    method_owner = next((c for c in cls.__mro__ if method in vars(c)), None)
    return flag_owner is not None and method_owner is not None and issubclass(flag_owner, method_owner)


def block_steps(r: Request) -> int | None:
    """Steps the request's active block takes, when its scheduler knows that in advance."""
    sched = r.scheduler
    if r.block_mask_count is None or not declares(sched, "block_steps", "step"):
        return None
    return sched.block_steps(r.block_mask_count, r.layout.steps_per_block)


def forecast(r: Request) -> tuple[int, int] | None:
    """The request's (block, step in the block) at the step after the current one, when known now: one step on
    in the same block, or the first step of the next block with masks when this step ends its block; (-1, -1)
    when this step ends its last block (the request is done). None when it is not known (see the module doc)."""
    if (r.driver is not None or r.borrowed or r.cancel_requested or r.pending_error is not None or r.config.eotp
            or r.scheduler.edits or not declares(r.policy, "geometric", "plan")):
        return None
    n = block_steps(r)
    if n is None:
        return None
    if r.block_step + 1 < n:
        return r.block, r.block_step + 1
    nxt = next_block(r)
    return (-1, -1) if nxt is None else (nxt, 0)


def next_block(r: Request) -> int | None:
    """The block holding the answer's first mask after the active block (the active block's commits do not
    reach past it), from the answer as last transferred; None when no mask is left after it."""
    start = r.layout.prompt_len
    after = max(r.block_span()[1] - start, 0)
    left = (r.answer_tokens[after:] == r.mask_id).nonzero()
    return None if left.numel() == 0 else r.layout.block_of(start + after + int(left[0, 0]))


def state_key(r: Request, place: tuple[int, int] | None = None) -> tuple:
    """What a request's plan is made from: its block and step in the block (``place`` instead, if given),
    effective length and slots."""
    return (*(place or (r.block, r.block_step)), r.length, tuple(r.slots))


def block_mask_count(tokens: torch.Tensor, r: Request, offset: int) -> int:
    """Masks of the request's active block, at its start, from ``tokens`` (host, canvas positions from
    ``offset``); the block's positions past them (a block-diffusion model's last block runs past the answer)
    have never been in an active block, so they are masks too."""
    start, end = r.block_span()
    known_end = offset + tokens.numel()
    masks = int((tokens[max(start - offset, 0) : max(min(end, known_end) - offset, 0)] == r.mask_id).sum())
    return masks + max(0, end - max(start, known_end))


class Lookahead:
    """The engine's lookahead, as methods of :class:`~dlm.engine.core.EngineCore` (which plans, packs, runs the
    forward and keeps ``running``, ``queue``, ``arrived``, ``ahead`` and the statistics)."""

    def _may_look_ahead(self, plain: list[Request], driven: dict) -> dict[int, tuple[int, int]] | None:
        """Each running request's (block, step in the block) at the next step (:func:`forecast`, by request
        id) when the next step's forward may be launched now, else None: the lookahead is on, every running
        request is plain and its next step known, and no request waits to start: the queue is empty (a request
        ending at this step, at a stop token, would otherwise leave room that a launched forward cannot give
        it) and none arrived since the last step (a request that arrives while a forward is launched waits one
        step more, so arrivals turn the lookahead off until the traffic quiets)."""
        if not self.lookahead or driven or not plain or self.arrived or self.queue:
            return None
        places = {}
        for r in plain:
            place = forecast(r)
            if place is None:
                return None
            places[id(r)] = place
        return places

    def _launch_ahead(self, reqs: list[Request], places: dict[int, tuple[int, int]]) -> Ahead | None:
        """The next step's forward for ``reqs`` at their forecast ``places`` (those whose last block ends at this
        step have no next step; see :mod:`dlm.engine.lookahead`), queued on the device after this step's
        commits. None if no request goes on, or if planning or launching it raised: the next step then plans and
        runs it as usual, and reports the error there (this step's results are already on their way)."""
        going = [r for r in reqs if places[id(r)][0] >= 0]
        if not going:
            return None
        rows, plans = [], []
        try:
            for r in going:
                row, plan = self._plan_at(r, places[id(r)])
                rows.append(row)
                plans.append(plan)
            packed = self.packs.pack(rows, self.pad_rows, self.shape_step)
            logits = self._forward(packed)
        except Exception:  # noqa: BLE001 - see the docstring
            return None
        return Ahead(packed, logits, going, plans, {id(r): state_key(r, places[id(r)]) for r in going})

    def _plan_at(self, r: Request, place: tuple[int, int]):
        """:meth:`_plan` of the request as it will be at ``place`` (block, step in the block); a new block's start
        is given to a copy of its policy (the request's own gets it when the block starts)."""
        saved = r.block, r.block_step, r.policy
        try:
            if place[0] != r.block:
                r.block, r.policy = place[0], copy.deepcopy(r.policy)
                r.policy.begin_block(*r.block_span())
            r.block_step = place[1]
            return self._plan(r)
        finally:
            r.block, r.block_step, r.policy = saved

    def _take_ahead(self):
        """(packed, logits) of the forward launched for this step, if it serves every running request as
        predicted; else None (then the step plans and runs its own)."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return None
        self._cancel_requested()  # their rows are ignored; a request queued since waits for the next step
        live = [r for r in ahead.requests if r.status == Status.RUNNING]
        if not live or [id(r) for r in live] != [id(r) for r in self.running] or any(
                state_key(r) != ahead.keys[id(r)] for r in live):
            self.lookahead_dropped += bool(live)
            return None
        for r, plan in zip(ahead.requests, ahead.plans):
            if r.status == Status.RUNNING:
                r.policy.count(plan)
        self.lookahead_used += 1
        return ahead.packed, ahead.logits
