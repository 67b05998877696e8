"""``origin``: Dream's official default ``alg="origin"`` (Austin et al., 2021, D3PM, arXiv:2107.03006): at step i
every masked position is revealed independently with probability 1 - s/t (all at the last step).

Steps that would reveal nothing are redrawn at the next tick without a forward pass (the canvas, hence the
logits, would not change); the random draws are the same as the official loop's, so at batch size 1 the output
is identical to it. At batch size > 1 the official loop draws one random vector across all rows; dlm draws per
row so that every row reveals something each step: the same distribution, different draws.

Parameters:
    eps: last timestep of the schedule (default 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._dream import transfer_fraction
from .base import BlockInfo, Decision, Scheduler, StepView, register_scheduler


@register_scheduler("origin")
class Origin(Scheduler):
    """Dream's origin (default): reveal each mask independently with probability 1 - s/t (D3PM reverse step)."""

    sampling = "categorical"
    deterministic = False

    @dataclass(frozen=True)
    class Params:
        eps: float = 1e-3

        def __post_init__(self):
            if not 0 < self.eps < 1:
                raise ValueError(f"eps must be in (0, 1), got {self.eps}")

    def init_state(self, block: BlockInfo):
        return {"frac": transfer_fraction(block.steps, self.params.eps, block.masks.device),
                "tick": [0] * block.masks.shape[0]}

    def step(self, cand, view: StepView, state):
        frac, ticks = state["frac"], list(state["tick"])
        allowed = view.masked_in_block
        commit = torch.zeros_like(allowed)
        last = frac.shape[0] - 1
        for row in range(allowed.shape[0]):
            cols = allowed[row].nonzero().squeeze(1)
            if not bool(view.active[row]) or cols.numel() == 0:
                continue
            while True:  # frac is 1 at the last tick, so this ends there at the latest
                tick = min(ticks[row], last)
                ticks[row] = tick + 1
                u = torch.rand(cols.numel(), generator=view.generator, device=allowed.device)
                hit = u < frac[tick]
                if hit.any():
                    commit[row, cols[hit]] = True
                    break
        return Decision(commit), {"frac": frac, "tick": ticks}
