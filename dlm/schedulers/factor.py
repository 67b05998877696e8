"""``factor``: the factor-based parallel decoding rule of Fast-dLLM (Wu et al., 2025, arXiv:2505.22618, v2 of
the paper; NVlabs/Fast-dLLM ``llada/generate.py``, ``get_transfer_index_dynamic``).

Sort the confidences of the block's masked positions, c_1 >= c_2 >= ... >= c_M, and commit the n most
confident, n being the longest prefix whose every member passes c_i >= 1 - f / (i + 1), i.e.
(i + 1)(1 - c_i) <= f (the comparison Fast-dLLM's code makes; the paper writes it as a strict inequality,
which differs only at exact equality). c_1 always passes, so at least one position is committed. The bound
comes from the paper's analysis: if the product of the committed marginals is close enough to 1, greedy
parallel decoding gives the same tokens as sequential decoding. Compared with a fixed threshold, the rule is
lenient for the first few positions and stricter as more are committed at once.

Parameters:
    factor: f in the rule above (Fast-dLLM's default 1.0). Larger commits more per step.

Difference from the reference code: when the first failing position is the last one of the sorted list,
``get_transfer_index_dynamic`` commits it anyway (an off-by-one in its loop exit); dlm commits exactly the
prefix the rule allows. Like the other rule-based schedulers it also honours the step budget (see
:mod:`dlm.schedulers._parallel`); with the default budget that changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._parallel import commit_rule
from .base import Decision, Scheduler, StepView, register_scheduler, select_top


def factor_prefix(confidence: torch.Tensor, allowed: torch.Tensor, factor: float) -> torch.Tensor:
    """(B,) long: per row, the longest prefix n of the allowed confidences sorted in descending order with
    c_i >= 1 - factor / (i + 1) for every i <= n (at least 1 where a row has an allowed position)."""
    B, n = confidence.shape
    vals = confidence.masked_fill(~allowed, float("-inf")).sort(dim=1, descending=True).values
    i = torch.arange(1, n + 1, device=confidence.device, dtype=torch.float64)
    passes = vals.double() >= 1 - factor / (i + 1)
    passes[:, 0] = True
    prefix = passes.long().cumprod(dim=1).sum(dim=1)
    return torch.minimum(prefix, allowed.sum(1))


@register_scheduler("factor")
class Factor(Scheduler):
    """Commit the longest confidence-sorted prefix with (n + 1)(1 - c_n) <= factor (Fast-dLLM's factor rule)."""

    sampling = "gumbel"

    @dataclass(frozen=True)
    class Params:
        factor: float = 1.0

        def __post_init__(self):
            if not isinstance(self.factor, (int, float)) or not self.factor > 0:
                raise ValueError(f"factor must be a number > 0, got {self.factor!r}")

    def step(self, cand, view: StepView, state):
        allowed = view.masked_in_block
        chosen = select_top(cand.confidence, allowed, factor_prefix(cand.confidence, allowed, self.params.factor))
        return Decision(commit_rule(cand.confidence, allowed, chosen, view)), state
