"""``entropy_threshold``: Fast-dLLM's threshold rule (arXiv:2505.22618) on the entropy of each position's token
distribution, the measure of Dream's ``entropy`` algorithm (Ye et al., 2025, arXiv:2508.15487; see also the
entropy-bounded sampler of Ben-Hamu et al., 2025, arXiv:2505.24857).

Each step commits, inside the active block, the masked position of lowest entropy and every other masked
position whose entropy H = -sum p log p (in nats) is at most ``threshold``. Entropy looks at the whole
distribution, not just its top token: a position whose remaining mass is spread over many tokens scores worse
than one torn between two.

Parameters:
    threshold: entropy in nats at or below which a masked position is committed (default 0.3). Since
        -log p1 <= H, a committed position has top-1 probability >= exp(-threshold) (0.74 at 0.3); a 0.9 / 0.1
        split between two tokens has H = 0.325, so the default is close to ``threshold`` at 0.9 when the doubt
        is between two tokens, and stricter when it is spread.

Entropies are measured on the distribution tokens are drawn from (see :mod:`dlm.sampling`); like the other
rule-based schedulers it honours the step budget (see :mod:`dlm.schedulers._parallel`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._parallel import commit_rule
from .base import Decision, Scheduler, StepView, register_scheduler


@register_scheduler("entropy_threshold")
class EntropyThreshold(Scheduler):
    """Commit the lowest-entropy mask of the block and every mask whose entropy (nats) is <= threshold."""

    measures = frozenset({"entropy"})
    sampling = "categorical"

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.3

        def __post_init__(self):
            if not isinstance(self.threshold, (int, float)) or not self.threshold >= 0:
                raise ValueError(f"threshold must be an entropy in nats >= 0, got {self.threshold!r}")

    def step(self, cand, view: StepView, state):
        # neg_entropy = sum p log(p + 1e-10) = -H: higher is more certain
        chosen = cand.neg_entropy >= -self.params.threshold
        return Decision(commit_rule(cand.neg_entropy, view.masked_in_block, chosen, view)), state
