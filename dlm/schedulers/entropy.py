"""``entropy``: Dream's official ``alg="entropy"`` (Ye et al., 2025, arXiv:2508.15487): rank masked positions by
negative entropy sum p log(p + 1e-10) of their token distribution (the most certain first). Parameters ``eps``
and ``alg_temp`` as in :class:`~dlm.schedulers._dream.DreamConfidence`.
"""

from __future__ import annotations

from ._dream import DreamConfidence
from .base import register_scheduler


@register_scheduler("entropy")
class Entropy(DreamConfidence):
    """Dream's entropy: commit Dream's per-step quota of masks whose token distribution has the lowest entropy."""

    measures = frozenset({"entropy"})

    def score(self, cand):
        return cand.neg_entropy
