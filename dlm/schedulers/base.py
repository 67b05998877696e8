"""The scheduler interface: which masked positions to commit at each step.

A scheduler only *selects* positions; which token a position takes is decided before it, by
:mod:`dlm.sampling`. The engine calls, for every block::

    state = scheduler.init_state(block)            # BlockInfo -> any state object
    decision, state = scheduler.step(cand, view, state)   # once per forward pass

``cand`` (:class:`~dlm.sampling.Candidates`) and ``view`` (:class:`StepView`) cover the candidate *region*:
the active block, or, for schedulers with ``full_region = True``, every position from the block start to the end
of the answer. State is passed in and returned, never hidden on the scheduler, so one scheduler object can
serve many generations at once.

Invariants every scheduler keeps (the engine checks them and the common tests run them on every registered
scheduler): only masked positions are committed; at least one per row and step while the active block of that
row has masks; nothing outside the active block unless ``Decision.finish`` is set for the row. Prompt and
committed tokens never change because the engine only writes where a decision commits a masked position.

Parameters are a frozen dataclass ``Params`` whose fields are the constructor's keyword arguments; every field
has a default, so a scheduler can be built by name alone and its config round-trips through JSON.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import RegistryError
from ..registry import Configurable, Registry
from ..sampling import MEASURES, SAMPLING_MODES, Candidates


@dataclass(frozen=True)
class BlockInfo:
    """The block a scheduler is about to decode (the same for every row of the batch).

    Attributes:
        index, num_blocks: which block, out of how many.
        start, end: canvas positions [start, end) of the block.
        region_start, region_end: canvas positions of the candidate region (== block unless ``full_region``).
        steps: the step budget the schedule spreads the block over (steps per block).
        masks: (B,) long, masked positions of each row in the block at its start.
        total_steps: the step budget of the whole generation.
        canvas_length: length of the canvas (prompt + answer) in positions.
        answer_start: canvas position of the first answer position.
    """

    index: int
    num_blocks: int
    start: int
    end: int
    region_start: int
    region_end: int
    steps: int
    masks: torch.Tensor
    total_steps: int
    canvas_length: int
    answer_start: int

    @property
    def in_block(self) -> slice:
        """The block's columns within the region."""
        return slice(self.start - self.region_start, self.end - self.region_start)


@dataclass
class StepView:
    """What a scheduler may look at in one step. Tensors cover the region: shape (B, n).

    Attributes:
        masked: still-masked positions (only these may be committed).
        in_block: (n,) bool, region columns inside the active block.
        active: (B,) bool, rows still decoding this block; decisions for other rows are ignored.
        step: forward passes so far in this block (0 at the first step of the block).
        global_step: forward passes so far in this generation.
        row_steps: (B,) long, forward passes each row has taken part in while decoding (a row's own progress:
            unlike ``global_step`` it does not depend on the other rows of the batch).
        block: the :class:`BlockInfo`.
        generator: the generation's random generator (for schedulers that draw random numbers).
    """

    masked: torch.Tensor
    in_block: torch.Tensor
    active: torch.Tensor
    step: int
    global_step: int
    block: BlockInfo
    generator: torch.Generator | None
    row_steps: torch.Tensor | None = None

    @property
    def masked_in_block(self) -> torch.Tensor:
        return self.masked & self.in_block


@dataclass
class Decision:
    """A scheduler's answer for one step.

    Attributes:
        commit: (B, n) bool, masked positions to commit with their candidate tokens.
        finish: (B,) bool or None. A finishing row commits every masked position of the region with its current
            candidate and stops (early commit); requires ``full_region``.
    """

    commit: torch.Tensor
    finish: torch.Tensor | None = None


class Scheduler(Configurable):
    """Base class of unmasking schedulers. Subclass, define ``Params``, ``init_state`` and ``step``.

    Class attributes (capability flags; a wrapper may set them per instance):
        measures: extra candidate measures the scheduler reads (``margin``, ``entropy``, ``logit_gap``).
        sampling: the sampling family it was defined with (``gumbel`` or ``categorical``); the engine uses it
            when the generation config says ``sampling="auto"``.
        deterministic: the decision is a function of the candidates alone (no random draws).
        full_region: needs candidates for every position from the block start to the end of the answer.
    """

    kind: ClassVar[str] = "scheduler"
    measures: frozenset[str] = frozenset()
    sampling: str = "gumbel"
    deterministic: bool = True
    full_region: bool = False

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Scheduler":
        return cls(**config)

    # ----------------------------------------------------------------- interface
    def init_state(self, block: BlockInfo) -> Any:
        return None

    def step(self, cand: Candidates, view: StepView, state: Any) -> tuple[Decision, Any]:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------- helpers
def block_only(block: BlockInfo) -> BlockInfo:
    """``block`` with its candidate region narrowed to the block itself."""
    return dataclasses.replace(block, region_start=block.start, region_end=block.end)


def slice_candidates(cand: Candidates, cols: slice) -> Candidates:
    """The region columns ``cols`` of every tensor field of ``cand``."""
    return dataclasses.replace(cand, **{f.name: getattr(cand, f.name)[:, cols] for f in dataclasses.fields(cand)
                                        if isinstance(getattr(cand, f.name), torch.Tensor)})


def slice_view(view: StepView, cols: slice, block: BlockInfo) -> StepView:
    """``view`` restricted to the region columns ``cols`` (the block), described by ``block``."""
    return dataclasses.replace(view, masked=view.masked[:, cols], in_block=view.in_block[cols], block=block)


def linear_quota(masks: torch.Tensor, steps: int) -> torch.Tensor:
    """LLaDA's per-step quota: M masks over S steps -> floor(M/S) per step, one more in the first M mod S steps.

    masks: (B,) long. Returns (B, steps) long.
    """
    base = (masks // steps).unsqueeze(1)
    rem = (masks % steps).unsqueeze(1)
    extra = (torch.arange(steps, device=masks.device).unsqueeze(0) < rem).long()
    return base + extra


def select_top(scores: torch.Tensor, allowed: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The ``k[b]`` highest-scoring allowed positions of each row (ties: leftmost first).

    scores: (B, n) float; allowed: (B, n) bool; k: (B,) long. Returns (B, n) bool.
    """
    s = scores.masked_fill(~allowed, float("-inf"))
    order = torch.sort(s, dim=1, descending=True, stable=True).indices
    # allowed positions first: an allowed score of -inf (e.g. ``confidence_eos_eot_inf``) must still outrank the
    # -inf fill of disallowed positions, else a row could get fewer than k commits
    first = torch.sort((~allowed.gather(1, order)).to(torch.uint8), dim=1, stable=True).indices
    order = order.gather(1, first)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
    return (rank < k.unsqueeze(1)) & allowed


def at_least_one(commit: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``commit`` plus, in rows where it is empty but positions are allowed, the best-scoring allowed position."""
    best = select_top(scores, allowed, torch.ones(scores.shape[0], dtype=torch.long, device=scores.device))
    return commit | (best & ~commit.any(dim=1, keepdim=True))


# --------------------------------------------------------------------------------------------------- registry
def check_scheduler_class(cls: type) -> None:
    """Registration-time checks: a Scheduler subclass, the interface present, config round-trips through JSON."""
    if not (isinstance(cls, type) and issubclass(cls, Scheduler)):
        raise RegistryError(f"{cls!r} is not a subclass of dlm.schedulers.Scheduler")
    for method in ("init_state", "step"):
        if not callable(getattr(cls, method, None)):
            raise RegistryError(f"scheduler class {cls.__name__} has no {method}() method")
    if cls.step is Scheduler.step:
        raise RegistryError(f"scheduler class {cls.__name__} does not implement step()")
    if not dataclasses.is_dataclass(cls.Params):
        raise RegistryError(f"{cls.__name__}.Params must be a dataclass")
    missing = [f.name for f in dataclasses.fields(cls.Params)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RegistryError(f"{cls.__name__}.Params field(s) {', '.join(missing)} need defaults")
    if cls.sampling not in SAMPLING_MODES:
        raise RegistryError(f"{cls.__name__}.sampling must be one of {SAMPLING_MODES}, got {cls.sampling!r}")
    bad = set(cls.measures) - set(MEASURES)
    if bad:
        raise RegistryError(f"{cls.__name__}.measures has unknown measure(s) {sorted(bad)}; allowed: {MEASURES}")
    try:
        inst = cls()
        text = json.dumps(inst.config())
        again = cls.from_config(json.loads(text))
    except Exception as exc:  # noqa: BLE001 - reported with the class named
        raise RegistryError(f"scheduler class {cls.__name__} failed the config round-trip: {exc}") from exc
    if again.config() != inst.config():
        raise RegistryError(f"scheduler class {cls.__name__}: config changed across a JSON round-trip")


SCHEDULERS: Registry = Registry("scheduler", group="dlm.schedulers", check=check_scheduler_class)


def register_scheduler(name: str, *, override: bool = False):
    """Class decorator: ``@dlm.register_scheduler("name")`` registers a :class:`Scheduler` subclass."""
    return SCHEDULERS.register(name, override=override)


def get(name: str) -> type[Scheduler]:
    """The scheduler class registered under ``name``."""
    return SCHEDULERS.get(name)


def create(name: str, kwargs: dict[str, Any] | None = None) -> Scheduler:
    """Build the scheduler ``name`` with its keyword arguments."""
    return get(name)(**(kwargs or {}))


def names() -> list[str]:
    return SCHEDULERS.names()
