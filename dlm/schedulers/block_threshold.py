"""``block_threshold``: the block-wise threshold decoding of the block-diffusion models' official samplers:
LLaDA2.0's ``generate`` (inclusionAI, LLaDA2.0 modeling file) and SDAR's ``block_diffusion_generate``
(JetAstra/SDAR ``generate.py``, remasking ``low_confidence_dynamic`` / ``low_confidence_static`` /
``sequential``).

Each block gets ``steps`` steps; step s has a quota of ``block // steps`` positions, plus one in the first
``block % steps`` steps, counted on the BLOCK length (also when the prompt fills part of the first block), capped at
the masks left. ``dynamic`` (both samplers' default) commits every mask whose candidate probability is above
``threshold`` (strictly) when there are at least the quota of them, else the quota most confident masks;
``static`` always commits the quota most confident; ``sequential`` the quota leftmost masks. With the sampling
family ``multinomial`` (the engine's default for this scheduler) tokens and probabilities are those samplers' own.

Parameters:
    threshold: probability a mask's candidate must exceed (LLaDA2.0: 0.95, SDAR: 0.85).
    strategy: ``"dynamic"``, ``"static"`` or ``"sequential"``.

Where it differs from the official code: a step never commits fewer than one position while the block has masks
(after ``steps`` steps the quota is 0 and the official loop moves on, leaving masks: with the default budget it
never happens); SDAR's top-quota may pick committed positions when the quota exceeds the masks left and overwrite
them with a fresh sample, dlm never changes a committed token here (with SDAR's defaults, a quota of 1, it never
happens).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import Decision, Scheduler, StepView, linear_quota, register_scheduler, select_top

STRATEGIES = ("dynamic", "static", "sequential")


@register_scheduler("block_threshold")
class BlockThreshold(Scheduler):
    """Masks above a threshold when there are at least the step's quota of them, else the quota most confident
    (LLaDA2.0's and SDAR's samplers)."""

    sampling = "multinomial"

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.95
        strategy: str = "dynamic"

        def __post_init__(self):
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                    or not 0 <= self.threshold <= 1:
                raise ValueError(f"threshold must be a probability in [0, 1], got {self.threshold!r}")
            if self.strategy not in STRATEGIES:
                raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")

    def step(self, cand, view: StepView, state):
        allowed = view.masked_in_block
        left = allowed.sum(1)
        quota = linear_quota(view.block.width, view.block.steps, view.step)
        quota = torch.minimum(quota.clamp(min=1), left)  # never zero while masks remain
        if self.params.strategy == "sequential":
            order = allowed.long().cumsum(1)  # 1 at the leftmost mask, 2 at the next, ...
            return Decision(allowed & (order <= quota.unsqueeze(1))), state
        top = select_top(cand.confidence, allowed, quota)
        if self.params.strategy == "static":
            return Decision(top), state
        high = allowed & (cand.confidence > self.params.threshold)
        enough = high.sum(1) >= quota
        return Decision(torch.where(enough.unsqueeze(1), high, top)), state
