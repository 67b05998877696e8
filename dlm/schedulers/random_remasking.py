"""``random``: LLaDA's official sampler with random remasking (ML-GSAI/LLaDA ``generate.py``,
``remasking='random'``).

Same per-step quota as ``low_confidence``, but the positions to commit are chosen uniformly at random among the
block's masks. The random scores are drawn for every canvas position of the row (``torch.rand((1, L))`` from the
row's own generator), as the official sampler draws them for a batch of one, so with the same generator state a
single prompt gets the same positions. In a batch the official sampler draws one (B, L) tensor across all rows;
dlm draws per row so that a request's answer does not depend on its batch: the same distribution, other draws.
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
        b, n = view.block, cand.tokens.shape[1]
        rows = []
        for g, length, start in zip(view.generators, b.canvas_length.tolist(), b.start.tolist()):
            u = torch.rand((1, length), generator=g, device=cand.tokens.device)[:, start : start + n]
            rows.append(torch.nn.functional.pad(u, (0, n - u.shape[1])))
        return torch.cat(rows)
