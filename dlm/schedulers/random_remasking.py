"""``random``: LLaDA's official sampler with random remasking (ML-GSAI/LLaDA ``generate.py``,
``remasking='random'``).

Same per-step quota as ``low_confidence``, but the positions to commit are chosen uniformly at random among the
block's masks. The random scores are drawn for every canvas position (``torch.rand((B, L))``) exactly as the
official sampler draws them, so with the same generator state the same positions are chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import StepView, register_scheduler
from .low_confidence import LowConfidence


@register_scheduler("random")
class RandomRemasking(LowConfidence):
    """LLaDA's random remasking: commit the per-step quota of masks of the block chosen uniformly at random."""

    deterministic = False

    @dataclass(frozen=True)
    class Params:
        pass

    def scores(self, cand, view: StepView):
        b = view.block
        u = torch.rand((cand.tokens.shape[0], b.canvas_length), generator=view.generator,
                       device=cand.tokens.device)
        return u[:, b.region_start : b.region_end]
