"""``early_commit``: Prophet's early answer commitment (Li et al., 2025, "Diffusion Language Models Know the Answer
Before Decoding", arXiv:2508.19982; pixeli99/Prophet ``generate_earlyexit.py``), wrapped around any scheduler.

Diffusion LMs often know the whole answer long before the step budget is spent. Each step, for each row, Prophet
measures how decided the model is by the gap between the top-1 and top-2 *raw logits* (candidate measure
``logit_gap``), averaged over answer positions. When the average gap reaches the threshold of the current phase
of decoding, the row stops refining: every remaining mask of the whole answer is committed at once with its
current candidate token and the row is finished (``Decision.finish``). Until then the ``inner`` scheduler decides
the step as it would alone.

Phases follow Prophet's code: progress = (steps taken, counting this one) / (total step budget ``steps``); the
gap must reach ``early`` (7.5) while progress < ``early_until`` (0.33), ``mid`` (5.0) while progress <
``mid_until`` (0.67), and ``late`` (2.5) after. The paper describes the phases as thirds; the code, followed
here, cuts at 0.33 and 0.67. Steps are counted per row (the forward passes the row itself took part in), so a
row's progress, and its answer, are the same in a batch as alone, whatever the inner scheduler.

Over which positions the gap is averaged (``gap_over``): Prophet averages over a fixed answer window given by
the caller (five positions where a GSM8K answer is expected). dlm has no such window, so by default
(``"masked"``) it averages over every still-masked position of the row from the active block to the end of the
answer: exactly the positions an exit would commit, so the exit happens when the model is sure of what it would
write. ``"block"`` averages over the still-masked positions of the active block only: an exit then trusts the
rest of the answer on the evidence of the current block, and comes earlier. Each row decides on its own.

Parameters:
    inner: the registered name of the scheduler deciding ordinary steps (default ``low_confidence``).
    inner_kwargs: its parameters (a JSON object).
    early, mid, late: gap thresholds of the three phases (raw logit units; Prophet's 7.5, 5.0, 2.5).
    early_until, mid_until: progress at which the early and the mid phase end (Prophet's 0.33, 0.67).
    gap_over: ``"masked"`` or ``"block"``, see above.

The wrapper needs candidates for the rest of the answer (``full_region = True``), which costs logits over the
whole remaining answer each step; an inner scheduler that is not ``full_region`` still sees only the active
block (its candidates and view are cut to the block's columns and its decision padded back). The sampling family,
measures and determinism follow the inner scheduler (plus the ``logit_gap`` measure).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError, RegistryError
from ..sampling import Candidates
from .base import BlockInfo, Decision, Scheduler, StepView, create, register_scheduler, slice_candidates, slice_view

GAP_OVER = ("masked", "block")


@register_scheduler("early_commit")
class EarlyCommit(Scheduler):
    """Prophet: run an inner scheduler, and once the top-2 logit gap is large enough commit the whole answer."""

    # per instance these follow the inner scheduler (set in __init__); the class values are the default inner's
    measures = frozenset({"logit_gap"})
    sampling = "gumbel"
    deterministic = True
    full_region = True

    @dataclass(frozen=True)
    class Params:
        inner: str = "low_confidence"
        inner_kwargs: dict = field(default_factory=dict)
        early: float = 7.5
        mid: float = 5.0
        late: float = 2.5
        early_until: float = 0.33
        mid_until: float = 0.67
        gap_over: str = "masked"

        def __post_init__(self):
            if not isinstance(self.inner, str) or not self.inner:
                raise ValueError(f"inner must be a registered scheduler name, got {self.inner!r}")
            if not isinstance(self.inner_kwargs, dict):
                raise ValueError(f"inner_kwargs must be a JSON object of the inner scheduler's parameters, "
                                 f"got {self.inner_kwargs!r}")
            try:
                json.dumps(self.inner_kwargs)
            except TypeError as exc:
                raise ValueError(f"inner_kwargs must be JSON-serialisable: {exc}") from exc
            object.__setattr__(self, "inner_kwargs", dict(self.inner_kwargs))  # a private copy
            for name in ("early", "mid", "late", "early_until", "mid_until"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                    raise ValueError(f"{name} must be a number, got {value!r}")
            if not 0 <= self.early_until <= self.mid_until <= 1:
                raise ValueError(f"need 0 <= early_until <= mid_until <= 1, got early_until={self.early_until}, "
                                 f"mid_until={self.mid_until}")
            if self.gap_over not in GAP_OVER:
                raise ValueError(f"gap_over must be one of {', '.join(GAP_OVER)}; got {self.gap_over!r}")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        p = self.params
        try:
            self.inner = create(p.inner, p.inner_kwargs)
        except RegistryError as exc:
            raise ConfigError(f"scheduler {self.name!r}: inner scheduler: {exc}") from exc
        except ConfigError as exc:
            raise ConfigError(f"scheduler {self.name!r}: inner scheduler {p.inner!r}: {exc}") from exc
        self.measures = frozenset({"logit_gap"}) | frozenset(self.inner.measures)
        self.sampling = self.inner.sampling
        self.deterministic = self.inner.deterministic

    # ----------------------------------------------------------------- the exit rule
    def gap_threshold(self, steps: torch.Tensor, total_steps: torch.Tensor) -> torch.Tensor:
        """(B,) the gap each row needs at its next step, after ``steps`` (B,) forward passes (Prophet's phases)."""
        p = self.params
        progress = (steps.float() + 1) / total_steps.clamp(min=1).float()
        late = torch.full_like(progress, p.late)
        return torch.where(progress < p.early_until, p.early, torch.where(progress < p.mid_until, p.mid, late))

    def mean_gap(self, cand: Candidates, view: StepView) -> torch.Tensor:
        """(B,) float: each row's top-1 minus top-2 logit averaged over the ``gap_over`` positions (NaN if none)."""
        where = view.masked if self.params.gap_over == "masked" else view.masked_in_block
        gap = cand.logit_gap.float().masked_fill(~where, 0.0)
        return gap.sum(1) / where.sum(1)

    # ----------------------------------------------------------------- interface
    def init_state(self, block: BlockInfo):
        return {"inner": self.inner.init_state(block)}

    def step(self, cand, view: StepView, state):
        if self.inner.full_region:
            decision, inner_state = self.inner.step(cand, view, state["inner"])
            commit = decision.commit
        else:  # the inner scheduler sees the block's columns only (the region starts at the block)
            cols = slice(0, int(view.block.width.max()))
            decision, inner_state = self.inner.step(slice_candidates(cand, cols), slice_view(view, cols),
                                                    state["inner"])
            commit = torch.zeros_like(view.masked)
            commit[:, cols] = decision.commit
        gap = self.mean_gap(cand, view)
        exit_now = (gap >= self.gap_threshold(view.row_steps, view.block.total_steps)) & view.active  # NaN: False
        if decision.finish is not None:
            exit_now = exit_now | decision.finish
        commit = torch.where(exit_now.unsqueeze(1), view.masked, commit)
        return Decision(commit, exit_now), {"inner": inner_state}
