"""``maskgit_plus``: Dream's official ``alg="maskgit_plus"`` (Ye et al., 2025, "Dream 7B", arXiv:2508.15487;
after Chang et al., 2022, MaskGIT, arXiv:2202.04200): rank masked positions by the probability of their
candidate token. Parameters ``eps`` and ``alg_temp`` as in :class:`~dlm.schedulers._dream.DreamConfidence`.
"""

from __future__ import annotations

from ._dream import DreamConfidence
from .base import register_scheduler


@register_scheduler("maskgit_plus")
class MaskGitPlus(DreamConfidence):
    """Dream's maskgit_plus: commit Dream's per-step quota of masks with the most probable candidates."""

    def score(self, cand):
        return cand.confidence
