"""``learned_filter``: a learned unmasking filter, Learn2PD (Bao et al., 2025, "Learning to Parallel: Accelerating
Diffusion Large Language Models via Learnable Parallel Decoding", arXiv:2509.25188).

Each step commits:

* every masked position of the active block whose accept probability (from the filter, :mod:`dlm.filter`)
  exceeds ``threshold``, plus
* the standard per-step quota: LLaDA's linear quota (floor(M/S) per step, one more in the first M mod S steps)
  and at least ``ceil(masks left / steps left)`` (the budget floor of :mod:`dlm.schedulers._parallel`), always at
  least one position, taken by candidate confidence as LLaDA's sampler does.

With ``threshold = 1`` nothing passes the filter and the scheduler is exactly ``low_confidence``. The filter is
trained with :mod:`dlm.train.filter` (``dlm train-filter``): decode prompts one token per step, record the
features of every masked position at every step, label a position 1 when its candidate equals the final output,
fit the network with binary cross-entropy. Its features are probabilities, so a filter runs with any model and
block length; it is best for the model it was trained on (the shipped one: dlm-tiny).

Parameters:
    path: the ``.safetensors`` file of the filter (its ``.json`` config beside it; the ``.json`` path or a folder
        holding ``learned_filter.safetensors`` also work). ``None``: the filter shipped with the bundled dlm-tiny.
        An explicit path is read and checked when the scheduler is built (so a bad path fails when the
        GenerationConfig is made); the default one when the scheduler is first used, so building the scheduler
        stays cheap and works without it. A missing or malformed file raises :class:`~dlm.errors.ConfigError`
        naming it.
    threshold: accept probability above which a masked position is committed. ``None``: the threshold stored
        with the filter (tuned on validation prompts when it was trained; Learn2PD's 0.96 when not tuned).
        1.0 disables the filter (``low_confidence``); 0 commits every masked position of the block.

Composes with every cache policy and with end-of-text prediction (``GenerationConfig.eotp``): the engine applies
EoTP after the scheduler's commits, and a block shortened by EoTP is just a shorter block to the filter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..filter import FilterConfig, FilterNet, block_features, cached_filter, check_threshold, read_config
from ._parallel import budget_floor
from .base import BlockInfo, Decision, Scheduler, StepView, linear_quota, register_scheduler, select_top


@register_scheduler("learned_filter")
class LearnedFilter(Scheduler):
    """Learn2PD: commit the masks a learned filter accepts, plus LLaDA's per-step quota (arXiv:2509.25188)."""

    sampling = "gumbel"
    deterministic = True
    # per instance: the measures the filter's features need (read from its config when the scheduler is built)
    measures = frozenset()

    @dataclass(frozen=True)
    class Params:
        path: str | None = None
        threshold: float | None = None

        def __post_init__(self):
            if self.path is not None and (not isinstance(self.path, str) or not self.path):
                raise ValueError(f"path must be a filter file path (a non-empty string) or None for the default "
                                 f"filter, got {self.path!r}")
            if self.threshold is not None:
                check_threshold(self.threshold)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._config: FilterConfig | None = None
        self._nets: dict[torch.device, FilterNet] = {}  # the loaded filter per device (no file access per step)
        if self.params.path is not None:
            # an explicit file is checked now, so a bad path fails when the GenerationConfig is built
            self._config = cached_filter(self.params.path, torch.device("cpu")).config
        else:
            # the default filter may be absent (it is shipped with the bundled model): building the scheduler
            # must stay cheap and must not fail; its first use raises the clear error instead
            try:
                self._config = read_config(None)
            except ConfigError:
                self._config = None
        if self._config is not None:
            self.measures = self._config.measures

    @property
    def filter_config(self) -> FilterConfig:
        if self._config is None:
            self._config = read_config(self.params.path)
        return self._config

    @property
    def threshold(self) -> float:
        t = self.params.threshold
        return float(self.filter_config.threshold if t is None else t)

    def accept_probability(self, cand, view: StepView) -> torch.Tensor:
        """(B, n) the filter's probability that each position's candidate is final (meaningful where masked)."""
        device = cand.confidence.device
        net = self._nets.get(device)
        if net is None:
            net = self._nets[device] = cached_filter(self.params.path, device)
        feats = block_features(net.config.features, cand.confidence, view.masked_in_block, cand.margin,
                               cand.neg_entropy)
        return net.accept_probability(feats)

    def step(self, cand, view: StepView, state):
        allowed = view.masked_in_block
        t = self.threshold
        accept = self.accept_probability(cand, view) > t if t > 0 else allowed
        k = torch.maximum(linear_quota(view.block.masks, view.block.steps, view.step), budget_floor(allowed, view))
        commit = (accept & allowed) | select_top(cand.confidence, allowed, k)
        return Decision(commit), state
