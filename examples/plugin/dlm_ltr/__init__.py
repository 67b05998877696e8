"""An example dlm scheduler plugin: semi-autoregressive left-to-right decoding with a confidence threshold.

Each step commits the leftmost masked position of the active block, and keeps going to the right through the
following masked positions for as long as each is confident (candidate probability >= ``threshold``). The
answer grows left to right like an autoregressive decode, but a confident run of tokens costs one forward pass
instead of one each. The class is registered by the entry point in ``pyproject.toml``; it needs no decorator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm.schedulers import Decision, Scheduler, StepView


class LeftToRightThreshold(Scheduler):
    """Left to right: commit the leftmost mask of the block and the confident masks that follow it."""

    sampling = "gumbel"  # LLaDA-style Gumbel-max tokens when temperature > 0

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.9  # confidence a mask needs to join the run
        max_per_step: int | None = None  # cap on the run's length (None: the whole block)

        def __post_init__(self):
            if not 0 <= self.threshold <= 1:
                raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
            if self.max_per_step is not None and self.max_per_step < 1:
                raise ValueError(f"max_per_step must be >= 1 or None, got {self.max_per_step!r}")

    def step(self, cand, view: StepView, state):
        allowed = view.masked_in_block  # (B, n): masks of the active block
        order = allowed.long().cumsum(1)  # 1 at the leftmost mask, 2 at the next, ...
        unsure = allowed & (cand.confidence < self.params.threshold)
        run = allowed & (unsure.long().cumsum(1) == 0)  # masks left of the first unsure one
        # the leftmost mask always; and enough to finish the block within its step budget
        steps_left = (view.block.steps - view.step).clamp(min=1)  # (B,): every row at its own step
        need = torch.clamp((allowed.sum(1) + steps_left - 1) // steps_left, min=1).unsqueeze(1)
        commit = run | (allowed & (order <= need))
        if self.params.max_per_step is not None:
            commit &= order <= torch.clamp(need, min=self.params.max_per_step)
        return Decision(commit), state
