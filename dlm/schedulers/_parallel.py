"""Shared parts of the parallel (rule-based) schedulers ``threshold``, ``factor``, ``margin_threshold`` and
``entropy_threshold``: each picks, per row, a set of masked positions of the active block by a rule on one
per-position score, and commits at least

* one position (the highest-scoring one), so every step makes progress, and
* ``ceil(M / (S - s))`` positions, where M masks remain in the block, S is the block's step budget and s the
  steps already spent on it, so the block always finishes within its budget.

With the default budget (``steps == gen_length``, so S == block_length) the second floor is never above one and
the rules behave exactly as published; with a smaller budget it tops the rule up with the next highest scores.
"""

from __future__ import annotations

import torch

from .base import StepView, select_top


def budget_floor(allowed: torch.Tensor, view: StepView) -> torch.Tensor:
    """(B,) long: the fewest commits this step that still let each row finish the block within its budget.

    allowed: (B, n) bool, the masked positions of the active block. At least 1 where a row has any.
    """
    remaining = allowed.sum(1)
    steps_left = (view.block.steps - view.step).clamp(min=1)
    return (remaining + steps_left - 1) // steps_left


def commit_rule(scores: torch.Tensor, allowed: torch.Tensor, chosen: torch.Tensor, view: StepView) -> torch.Tensor:
    """``chosen`` (restricted to ``allowed``) plus the top-scoring allowed positions the budget floor requires.

    scores: (B, n) float, higher is more certain; chosen: (B, n) bool, the rule's own selection.
    Returns (B, n) bool.
    """
    return (chosen & allowed) | select_top(scores, allowed, budget_floor(allowed, view))
