"""``low_confidence``: the remasking of LLaDA's official sampler (Nie et al., 2025, "Large Language Diffusion
Models", arXiv:2502.09992; ML-GSAI/LLaDA ``generate.py``).

Each block gets ``steps`` steps; the M masks of the block are spread over them as floor(M/S) per step plus one
more in the first M mod S steps. Each step commits that many masked positions of the block, those whose
candidate token has the highest probability under the model. With ``steps == gen_length`` this is the
one-token-per-step decode LLaDA recommends for best quality, and the reference every fast path is measured
against.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Decision, Scheduler, StepView, linear_quota, register_scheduler, select_top


@register_scheduler("low_confidence")
class LowConfidence(Scheduler):
    """LLaDA's reference: commit the per-step quota of most confident masks of the block (no parameters)."""

    sampling = "gumbel"

    @dataclass(frozen=True)
    class Params:
        pass

    def scores(self, cand, view: StepView):
        return cand.confidence

    def step(self, cand, view: StepView, state):
        k = linear_quota(view.block.masks, view.block.steps, view.step)
        commit = select_top(self.scores(cand, view), view.masked_in_block, k)
        return Decision(commit), state

    def block_steps(self, masks: int, steps: int) -> int | None:
        """Each step commits exactly its quota (:func:`linear_quota`): the block ends after min(S, M) steps."""
        return min(max(steps, 1), masks)
