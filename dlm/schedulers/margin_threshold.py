"""``margin_threshold``: Fast-dLLM's threshold rule (arXiv:2505.22618) on the top-1 / top-2 probability margin
that Dream's ``topk_margin`` ranks by (Kim et al., 2025, arXiv:2502.06768; Ye et al., 2025, arXiv:2508.15487).

Each step commits, inside the active block, the masked position with the largest margin p1 - p2 and every other
masked position whose margin is at least ``threshold``. A margin is small both when the model hesitates between
two tokens and when it is unsure overall, so it rejects the "confident but ambiguous" positions a plain
confidence threshold can accept.

Parameters:
    threshold: margin p1 - p2 at or above which a masked position is committed (default 0.8). Because
        p1 >= 0.9 implies p1 - p2 >= 0.8, the default commits at least what ``threshold`` at 0.9 commits.

Margins are measured on the distribution tokens are drawn from (see :mod:`dlm.sampling`); like the other
rule-based schedulers it honours the step budget (see :mod:`dlm.schedulers._parallel`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._parallel import commit_rule
from .base import Decision, Scheduler, StepView, register_scheduler


@register_scheduler("margin_threshold")
class MarginThreshold(Scheduler):
    """Commit the largest-margin mask of the block and every mask with top-1 - top-2 probability >= threshold."""

    measures = frozenset({"margin"})
    sampling = "categorical"

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.8

        def __post_init__(self):
            if not isinstance(self.threshold, (int, float)) or not 0 <= self.threshold <= 1:
                raise ValueError(f"threshold must be a margin in [0, 1], got {self.threshold!r}")

    def step(self, cand, view: StepView, state):
        chosen = cand.margin >= self.params.threshold
        return Decision(commit_rule(cand.margin, view.masked_in_block, chosen, view)), state
