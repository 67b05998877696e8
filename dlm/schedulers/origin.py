"""``origin``: Dream's official default ``alg="origin"`` (Austin et al., 2021, D3PM, arXiv:2107.03006): at step i
every masked position is revealed independently with probability 1 - s/t (all at the last step).

Steps that would reveal nothing are redrawn at the next tick without a forward pass (the canvas, hence the
logits, would not change); the random draws are the same as the official loop's, so at batch size 1 the output
is identical to it. At batch size > 1 the official loop draws one random vector across all rows; dlm draws per
row from the row's own generator, so that every row reveals something each step and a request's answer does not
depend on its batch: the same distribution, different draws.

Parameters:
    eps: last timestep of the schedule (default 1e-3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._dream import fraction_table
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
        return {"tick": torch.zeros_like(block.masks)}

    def step(self, cand, view: StepView, state):
        frac = fraction_table(view.block.steps, self.params.eps)
        ticks = state["tick"].tolist()
        allowed = view.masked_in_block
        commit = torch.zeros_like(allowed)
        for row, last in enumerate((view.block.steps - 1).tolist()):
            cols = allowed[row].nonzero().squeeze(1)
            if not bool(view.active[row]) or cols.numel() == 0:
                continue
            while True:  # frac is 1 at the last tick, so this ends there at the latest
                tick = min(ticks[row], last)
                ticks[row] = tick + 1
                u = torch.rand(cols.numel(), generator=view.generators[row], device=allowed.device)
                hit = u < frac[row, tick]
                if hit.any():
                    commit[row, cols[hit]] = True
                    break
        return Decision(commit), {"tick": torch.tensor(ticks, dtype=torch.long, device=allowed.device)}
