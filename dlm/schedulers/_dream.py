"""Shared parts of Dream's official sampler (HKUNLP/Dream ``generation_utils.py``): the timestep schedule and
the confidence-ranked selection used by ``maskgit_plus``, ``topk_margin`` and ``entropy``.

Timesteps are ``linspace(1, eps, steps + 1)``; at step i (t = ts[i], s = ts[i+1]) a row with N masks commits
``int(N * (1 - s / t))`` positions, and all of them at the last step. The official loop spends a forward pass
on steps whose quota rounds down to 0 and commits nothing; such a step leaves the canvas unchanged, so the
next step would see the same logits. dlm skips those ticks without a forward pass: the commits, and so the
output, are the same and no forward pass is wasted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .base import BlockInfo, Decision, Scheduler, StepView, select_top


def transfer_fraction(steps: int, eps: float, device) -> torch.Tensor:
    """(steps,) float32: the share 1 - s/t of the remaining masks committed at each tick; 1 at the last."""
    ts = torch.linspace(1, eps, steps + 1, device=device)
    frac = 1 - ts[1:] / ts[:-1]
    frac[-1] = 1.0
    return frac


def fraction_table(steps: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, max steps) float32: each row's :func:`transfer_fraction` for its own step budget, padded with 1."""
    width = int(steps.max())
    out = torch.ones(steps.shape[0], width, dtype=torch.float32, device=steps.device)
    for s in steps.unique().tolist():
        out[steps == s, :s] = transfer_fraction(s, eps, steps.device)
    return out


def next_tick(frac: torch.Tensor, steps: torch.Tensor, tick: torch.Tensor, masks: torch.Tensor):
    """First tick >= ``tick`` whose quota int(masks * frac) is positive, per row.

    frac: (B, S) from :func:`fraction_table`; steps: (B,) each row's budget; tick: (B,) long; masks: (B,) long.
    Returns (quota (B,), new tick (B,)) where new tick is the tick after the one used. Rows without masks get
    quota 0.
    """
    ticks = torch.arange(frac.shape[1], device=frac.device).unsqueeze(0)
    last = (steps - 1).unsqueeze(1)
    quota_all = (masks.float().unsqueeze(1) * frac).long()  # int() truncation, as the official code
    quota_all = torch.where(ticks == last, masks.unsqueeze(1), quota_all)
    ok = (ticks >= tick.unsqueeze(1)) & (quota_all > 0) & (ticks <= last)
    first = torch.where(ok.any(1), ok.float().argmax(1), steps - 1)
    quota = quota_all.gather(1, first.unsqueeze(1)).squeeze(1)
    return quota, first + 1


class DreamConfidence(Scheduler):
    """Base of Dream's confidence-ranked algorithms: commit the quota of highest-scoring masked positions.

    Parameters:
        eps: last timestep of the schedule (Dream's ``eps``, default 1e-3).
        alg_temp: 0 or None ranks deterministically; > 0 samples the positions from softmax(score / alg_temp)
            without replacement (Dream's ``alg_temp``).
    """

    sampling = "categorical"

    @dataclass(frozen=True)
    class Params:
        eps: float = 1e-3
        alg_temp: float | None = None

        def __post_init__(self):
            if not 0 < self.eps < 1:
                raise ValueError(f"eps must be in (0, 1), got {self.eps}")
            if self.alg_temp is not None and self.alg_temp < 0:
                raise ValueError(f"alg_temp must be >= 0 or None, got {self.alg_temp}")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.params.alg_temp:
            self.deterministic = False

    def score(self, cand) -> torch.Tensor:
        raise NotImplementedError

    def init_state(self, block: BlockInfo):
        if bool((block.steps < 1).any()):
            raise ConfigError(f"steps per block must be >= 1, got {block.steps.tolist()}")
        return {"tick": torch.zeros_like(block.masks)}

    def step(self, cand, view: StepView, state):
        allowed = view.masked_in_block
        steps = view.block.steps
        quota, tick = next_tick(fraction_table(steps, self.params.eps), steps, state["tick"], allowed.sum(1))
        tick = torch.where(view.active, tick, state["tick"])
        score = self.score(cand)
        if self.params.alg_temp:
            commit = _sample_positions(score, allowed, quota, self.params.alg_temp, view.generators)
        else:
            commit = select_top(score, allowed, quota)
        return Decision(commit), {"tick": tick}


def _sample_positions(score, allowed, quota, alg_temp, generators):
    """Per row, ``quota`` positions drawn without replacement from softmax(score / alg_temp) over allowed ones
    (each row from its own generator)."""
    commit = torch.zeros_like(allowed)
    probs = torch.softmax(score.float().masked_fill(~allowed, float("-inf")) / alg_temp, dim=1)
    for row in range(score.shape[0]):
        k = int(quota[row])
        if k > 0:
            idx = torch.multinomial(probs[row], k, replacement=False, generator=generators[row])
            commit[row, idx] = True
    return commit
