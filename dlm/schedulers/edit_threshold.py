"""``edit_threshold``: LLaDA2.1's decoding with token editing (inclusionAI, LLaDA2.1 modeling file ``generate``;
SGLang's ``JointThreshold``): two thresholds, one to commit masks, one to revise committed tokens.

Each step, from one forward over the active block:

* commit (mask -> token): every mask whose candidate probability is above ``threshold`` (strictly) when there are
  at least ``num_to_transfer`` of them, else the ``num_to_transfer`` most confident masks (and at least what
  finishes the block within the step budget, see :mod:`dlm.schedulers._parallel`: the official code has no
  budget; with dlm's default of one token per step it changes nothing);
* edit (token -> token): every committed answer position of the block (never a prompt position) whose candidate
  differs from its current token with probability above ``editing_threshold``.

Both are applied together. A block ends at the first step that starts with no mask and edits nothing; after its
last mask it runs at most ``max_post_steps`` more steps (the official loop's bound), so a block takes at most
(its masks) + ``max_post_steps`` steps: the engine holds the block while this scheduler says so and refuses to
hold it longer. Sampling family ``multinomial`` (at temperature 0: the argmax, as the official code).

Parameters:
    threshold: commit threshold (LLaDA2.1: 0.95; its "speed mode" lowers it and relies on edits).
    editing_threshold: edit threshold (0.9).
    max_post_steps: steps after the last mask in which edits may still happen (16).
    num_to_transfer: masks committed when none passes the threshold (1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._parallel import budget_floor
from .base import BlockInfo, Decision, Scheduler, StepView, register_scheduler, select_top


@register_scheduler("edit_threshold")
class EditThreshold(Scheduler):
    """Commit masks above one threshold and revise committed tokens above another (LLaDA2.1 token editing)."""

    sampling = "multinomial"
    edits = True

    @dataclass(frozen=True)
    class Params:
        threshold: float = 0.95
        editing_threshold: float = 0.9
        max_post_steps: int = 16
        num_to_transfer: int = 1

        def __post_init__(self):
            for name in ("threshold", "editing_threshold"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
                    raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
            for name, low in (("max_post_steps", 0), ("num_to_transfer", 1)):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, int) or v < low:
                    raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.max_hold_steps = self.params.max_post_steps

    def init_state(self, block: BlockInfo):
        return {"post": torch.zeros_like(block.masks)}  # steps of this block that started without a mask

    def step(self, cand, view: StepView, state):
        p = self.params
        allowed = view.masked_in_block
        started_empty = ~allowed.any(1)
        post = state["post"] + started_empty.long()
        # num_to_transfer, and at least what finishes the block within its step budget (with the default budget,
        # one token per step, that never exceeds num_to_transfer: the official rule)
        k = torch.maximum(torch.minimum(torch.full_like(post, p.num_to_transfer), allowed.sum(1)),
                          budget_floor(allowed, view))
        high = allowed & (cand.confidence > p.threshold)
        commit = torch.where((high.sum(1) >= k).unsqueeze(1), high, select_top(cand.confidence, allowed, k))
        editable = view.in_block & ~view.masked & ~view.prompt
        edit = editable & (cand.tokens != view.tokens) & (cand.confidence > p.editing_threshold)
        # another step after the last mask: unless this step started without masks and edited nothing, and
        # within max_post_steps such steps
        left = (allowed & ~commit).any(1)
        hold = ~left & (~started_empty | edit.any(1)) & (post < p.max_post_steps)
        return Decision(commit, edit=edit, hold=hold), {"post": post}
