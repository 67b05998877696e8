"""``topk_margin``: Dream's official ``alg="topk_margin"`` (after Kim et al., 2025, arXiv:2502.06768): rank masked
positions by the margin between their top-1 and top-2 probabilities. Parameters ``eps`` and ``alg_temp`` as in
:class:`~dlm.schedulers._dream.DreamConfidence`.
"""

from __future__ import annotations

from ._dream import DreamConfidence
from .base import register_scheduler


@register_scheduler("topk_margin")
class TopKMargin(DreamConfidence):
    """Dream's topk_margin: commit Dream's per-step quota of masks with the largest top-1 - top-2 margin."""

    measures = frozenset({"margin"})

    def score(self, cand):
        return cand.margin
