"""The scheduler interface: which masked positions to commit at each step.

A scheduler only *selects* positions; which token a position takes is decided before it, by
:mod:`dlm.sampling`. The engine calls, for the rows (requests) that share a scheduler configuration::

    state = scheduler.init_state(block)                  # rows that start a block: BlockInfo -> state
    decision, state = scheduler.step(cand, view, state)  # once per forward pass

Rows advance on their own: the rows of one call may be at different blocks, steps and canvas lengths, so every
piece of per-row information is a tensor with the row as its first dimension. ``cand``
(:class:`~dlm.sampling.Candidates`) and ``view`` (:class:`StepView`) cover each row's candidate *region*, whose
column 0 is the row's block start: the active block, or, for schedulers with ``full_region = True``, every
position from the block start to the end of the answer. Rows with shorter regions are padded on the right with
columns that are neither masked nor in the block.

State is passed in and returned, never hidden on the scheduler, so one scheduler object serves every request.
It is ``None`` or a dict whose values are tensors (or dicts of them) with the row as first dimension: the engine
keeps each row's slice between steps and stacks the rows it calls together, so a row's decisions never depend on
which other rows share the call.

Invariants every scheduler keeps (the engine checks them and the common tests run them on every registered
scheduler): only masked positions are committed; at least one per row and step while the active block of that
row has masks; nothing outside the active block unless ``Decision.finish`` is set for the row; a row's decision
depends only on that row's inputs (its candidates, view and state, and draws from its own generator). Prompt
tokens never change. Committed tokens change only by ``Decision.edit`` of a scheduler that declares ``edits``
(token editing, LLaDA2.1): an edit replaces an answer token of the active block with its current candidate, and
``Decision.hold`` keeps a block active after its last mask (for edits to follow) for at most ``max_hold_steps``
steps.

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


@dataclass
class BlockInfo:
    """The block each row is decoding. Every field is a (B,) long tensor.

    Attributes:
        index, num_blocks: which block, out of how many.
        steps: the step budget the schedule spreads the block over (steps per block).
        masks: masked positions of the block when it started.
        total_steps: the step budget of the whole generation.
        width: the block's width in region columns (columns ``0 .. width - 1`` are the block).
        start: canvas position of the block's first position (region column 0).
        canvas_length: length of the row's canvas (prompt + answer).
        answer_start: canvas position of the row's first answer position.
    """

    index: torch.Tensor
    num_blocks: torch.Tensor
    steps: torch.Tensor
    masks: torch.Tensor
    total_steps: torch.Tensor
    width: torch.Tensor
    start: torch.Tensor
    canvas_length: torch.Tensor
    answer_start: torch.Tensor

    def rows(self, index: torch.Tensor | slice) -> "BlockInfo":
        """The rows ``index`` of every field."""
        return BlockInfo(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


@dataclass
class StepView:
    """What a scheduler may look at in one step. Tensors cover the region: shape (B, n).

    Attributes:
        masked: still-masked positions (only these may be committed); False on padding columns.
        tokens: the tokens the region holds now (mask id where masked).
        prompt: region columns that are prompt positions (the first block of a block-diffusion model may hold
            the end of the prompt); never committed or edited.
        in_block: region columns inside each row's active block.
        active: (B,) bool, rows to decide for (decisions for other rows are ignored).
        step: (B,) long, steps each row has taken in its current block (0 at the block's first step).
        row_steps: (B,) long, forward passes each row has taken part in so far (its own progress).
        block: the rows' :class:`BlockInfo`.
        generators: each row's random generator (its request's), for schedulers that draw random numbers.
        request_ids: (B,) long, the id of each row's request (for schedulers that record or log per request;
            a decision must not depend on it).
    """

    masked: torch.Tensor
    in_block: torch.Tensor
    active: torch.Tensor
    step: torch.Tensor
    row_steps: torch.Tensor
    block: BlockInfo
    generators: list[torch.Generator | None]
    request_ids: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    prompt: torch.Tensor | None = None

    @property
    def masked_in_block(self) -> torch.Tensor:
        return self.masked & self.in_block


@dataclass
class Decision:
    """A scheduler's answer for one step.

    Attributes:
        commit: (B, n) bool, masked positions to commit with their candidate tokens.
        finish: (B,) bool or None. A finishing row commits every masked position of the region with its current
            candidate and stops (early commit); requires ``full_region``. For a block-diffusion model, whose
            region is the active block, the row finishes the block and goes on with the next one.
        edit: (B, n) bool or None: committed answer positions of the active block to replace with their current
            candidate (schedulers that declare ``edits`` only).
        hold: (B,) bool or None: keep the row's block active at the next step even if it has no mask left (for
            edits; schedulers that declare ``edits`` only, within their ``max_hold_steps``).
    """

    commit: torch.Tensor
    finish: torch.Tensor | None = None
    edit: torch.Tensor | None = None
    hold: torch.Tensor | None = None


class Scheduler(Configurable):
    """Base class of unmasking schedulers. Subclass, define ``Params``, ``init_state`` and ``step``.

    Class attributes (capability flags; a wrapper may set them per instance):
        measures: extra candidate measures the scheduler reads (``margin``, ``entropy``, ``logit_gap``).
        sampling: the sampling family it was defined with (``gumbel``, ``categorical``, ``multinomial``); the engine uses it
            when the generation config says ``sampling="auto"``.
        deterministic: the decision is a function of the candidates alone (no random draws).
        full_region: needs candidates for every position from the block start to the end of the answer.
        edits: may replace committed tokens (``Decision.edit``) and hold a block (``Decision.hold``).
        max_hold_steps: the most steps a held block may take after its last mask (the engine's bound).

    A scheduler whose steps per block are fixed in advance says so with :meth:`block_steps`.
    """

    kind: ClassVar[str] = "scheduler"
    measures: frozenset[str] = frozenset()
    sampling: str = "gumbel"
    deterministic: bool = True
    full_region: bool = False
    edits: bool = False
    max_hold_steps: int = 0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Scheduler":
        return cls(**config)

    # ----------------------------------------------------------------- interface
    def init_state(self, block: BlockInfo) -> Any:
        return None

    def step(self, cand: Candidates, view: StepView, state: Any) -> tuple[Decision, Any]:
        raise NotImplementedError

    def block_steps(self, masks: int, steps: int) -> int | None:
        """How many steps a block that starts with ``masks`` masks and a budget of ``steps`` steps takes, when
        that is known before any of its candidates (None: it depends on them, the default). The engine then
        launches a step's forward before the previous step's results reach the host (its lookahead); it trusts
        the answer only from the class that defines :meth:`step` or a subclass of it."""
        return None


# --------------------------------------------------------------------------------------------------- helpers
def slice_candidates(cand: Candidates, cols: slice) -> Candidates:
    """The region columns ``cols`` of every tensor field of ``cand``."""
    return dataclasses.replace(cand, **{f.name: getattr(cand, f.name)[:, cols] for f in dataclasses.fields(cand)
                                        if isinstance(getattr(cand, f.name), torch.Tensor)})


def slice_view(view: StepView, cols: slice) -> StepView:
    """``view`` restricted to the region columns ``cols`` (starting at column 0: the block)."""
    return dataclasses.replace(view, masked=view.masked[:, cols], in_block=view.in_block[:, cols])


def linear_quota(masks: torch.Tensor, steps: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """LLaDA's per-step quota at step ``step`` of a block: M masks over S steps -> floor(M/S) per step, one more in
    the first M mod S steps (and 0 once the S steps are spent).

    masks, steps, step: (B,) long. Returns (B,) long.
    """
    steps = steps.clamp(min=1)
    extra = (step < masks % steps).long()
    return torch.where(step < steps, masks // steps + extra, torch.zeros_like(masks))


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
