"""One request's state inside the engine: its canvas geometry, its components and its progress.

A request owns everything that decides its answer: its prompt, its :class:`~dlm.config.GenerationConfig`, its
scheduler state, its cache policy (with its own refresh schedule), its random generator and its slots of the
key/value pool. Nothing here depends on the other requests the engine runs, which is what makes a request's
answer independent of them.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import GenerationConfig
from ..outputs import GenerationOutput


class Status(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class Layout:
    """Where a request's prompt, answer and blocks lie on its canvas (positions 0 .. length - 1).

    Attributes:
        prompt_len: P, the prompt's tokens (canvas positions 0 .. P - 1).
        gen_length: G, the answer's positions (P .. P + G - 1).
        blocks: canvas [start, end) of every block, decoded left to right.
        steps_per_block: the step budget of a block.
        total_steps: the step budget of the whole answer.
        block_causal: for block-diffusion models, the block size of their attention (None: bidirectional).
            Blocks then start at multiples of it from canvas position 0, the first decoded block may hold the
            end of the prompt, and the canvas runs to the end of the block that holds the answer's last position.
    """

    prompt_len: int
    gen_length: int
    blocks: tuple[tuple[int, int], ...]
    steps_per_block: int
    total_steps: int
    block_causal: int | None = None

    @property
    def length(self) -> int:
        """Canvas positions: the prompt and the answer (up to a block boundary for block-diffusion models)."""
        return self.blocks[-1][1] if self.block_causal else self.prompt_len + self.gen_length

    @property
    def answer_end(self) -> int:
        return self.prompt_len + self.gen_length

    @classmethod
    def semi_autoregressive(cls, prompt_len: int, config: GenerationConfig) -> "Layout":
        """LLaDA / Dream: the answer cut into blocks of ``block_length`` from its first position."""
        bl = config.effective_block_length
        blocks = tuple((prompt_len + b * bl, prompt_len + (b + 1) * bl) for b in range(config.num_blocks))
        return cls(prompt_len, config.gen_length, blocks, config.steps_per_block, config.effective_steps)

    @classmethod
    def block_aligned(cls, prompt_len: int, config: GenerationConfig, block: int) -> "Layout":
        """Block-diffusion models (LLaDA2, SDAR): blocks of ``block`` positions from canvas position 0, decoding
        from the block that holds the prompt's end to the one that holds the answer's last position (the
        official samplers' layout, see docs/block-diffusion.md)."""
        first = prompt_len // block
        last = -(-(prompt_len + config.gen_length) // block)
        blocks = tuple((b * block, (b + 1) * block) for b in range(first, last))
        spb = config.steps_per_block
        return cls(prompt_len, config.gen_length, blocks, spb, spb * len(blocks), block)

    def block_of(self, position: int) -> int:
        """Index of the block holding canvas ``position`` (the last block for positions past the end)."""
        for b, (_, end) in enumerate(self.blocks):
            if position < end:
                return b
        return len(self.blocks) - 1


@dataclass(eq=False)
class Request:
    """A generation request and its progress (see the module doc).

    Public attributes: ``id``, ``prompt_ids``, ``config``, ``status``, ``done``, ``output`` (a one-row
    :class:`~dlm.outputs.GenerationOutput` once finished or cancelled), ``error`` (the exception that failed it),
    ``tag`` (whatever the submitter attached).
    """

    id: int
    prompt_ids: list[int]
    config: GenerationConfig
    layout: Layout
    scheduler: Any
    policy: Any
    mode: str  # sampling family: gumbel or categorical
    measures: frozenset
    stop_ids: tuple[int, ...]
    full_region: bool  # candidates for the rest of the answer (scheduler's own need or EoTP's prediction)
    scheduler_key: str = ""  # the scheduler's configuration as JSON: requests with the same key share its calls
    copies: int = 1  # model rows: 2 under classifier-free guidance (the unconditional copy)
    mask_id: int = -1
    driver: Any = None  # decides the steps instead of the scheduler (a lossless verifier), see dlm.engine.drivers
    driver_state: Any = None
    fed_this_step: bool = True
    borrowed: bool = False  # runs in another request's slots (a verifier's draft): no events, slots kept at its end
    tag: Any = None
    status: Status = Status.QUEUED
    slots: list[int] = field(default_factory=list)
    generator: torch.Generator | None = None
    # progress
    block: int = 0
    block_step: int = 0
    steps: int = 0  # engine steps taken (commit steps and events count these)
    forwards: int = 0  # of which with rows in the forward (a driven request may decide a step from earlier logits)
    length: int = 0
    block_steps: list[int] = field(default_factory=list)
    sched_state: Any = None
    needs_init: bool = True
    block_masks: torch.Tensor | None = None  # (1,) masks of the active block when it started
    block_mask_count: int | None = None  # the same on the host, once known (lookahead.py)
    answer_tokens: torch.Tensor | None = None  # (G,) the answer as last transferred to the host (lookahead.py)
    row_plan: tuple | None = None  # the last step's (plan key, RowPlan), reused while the plan repeats (pack.py)
    held_steps: int = 0  # steps the active block has been held after its last mask (token editing)
    cancel_requested: bool = False
    error: BaseException | None = None
    pending_error: BaseException | None = None  # raised during a step; fails the request when the step ends
    output: GenerationOutput | None = None
    t_submit: float = field(default_factory=time.perf_counter)
    t_start: float | None = None
    t_first: float | None = None
    t_end: float | None = None

    @property
    def done(self) -> bool:
        return self.status in (Status.DONE, Status.CANCELLED, Status.FAILED)

    @property
    def nfe(self) -> int:
        """Forward passes this request took part in (a guided one counts twice)."""
        return self.forwards * self.copies

    def block_span(self) -> tuple[int, int]:
        """The active block's canvas [start, end), cut at the effective length (EoTP)."""
        start, end = self.layout.blocks[self.block]
        return start, min(end, self.length)

    def region_span(self) -> tuple[int, int]:
        """Canvas [start, end) of the positions that get candidates this step (a block-diffusion model sees
        nothing after the active block, so its region is the block)."""
        start, end = self.block_span()
        if self.full_region and not self.layout.block_causal:
            end = min(self.layout.answer_end, self.length)
        return start, end

    @property
    def visible(self) -> int:
        """Canvas positions the model sees this step: the effective length, or, for a block-diffusion model, up
        to the end of the active block."""
        return self.block_span()[1] if self.layout.block_causal else self.length

    @property
    def exact_prefix(self) -> int:
        """Leading positions whose stored keys/values are final and exact. Block-diffusion models: the blocks
        before the active one once it has taken a step (the previous block's last commits are stored by the
        active block's first forward); bidirectional models: none (every key may change)."""
        if not self.layout.block_causal:
            return 0
        if self.block_step > 0:
            return self.layout.blocks[self.block][0]
        return self.layout.blocks[self.block - 1][0] if self.block > 0 else 0

    def __repr__(self) -> str:
        return (f"Request(id={self.id}, status={self.status.value}, prompt={len(self.prompt_ids)} tokens, "
                f"block={self.block}, steps={self.steps})")
