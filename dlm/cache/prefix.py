"""``prefix``: Fast-dLLM's prefix cache (Wu et al., 2025, "Fast-dLLM", arXiv:2505.22618; NVlabs/Fast-dLLM
``generate_with_prefix_cache``).

At each block start one full forward fills the storage; the later steps of the block feed the block and
everything after it, reusing the keys/values of the prefix (prompt and earlier blocks) from the block start.
Approximate: the prefix's keys/values do not see the block's later commits. ``refresh_every=1`` makes it exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._refresh import RefreshParams
from .base import CachePolicy, Plan, StepInfo, register_cache


@register_cache("prefix")
class PrefixCache(CachePolicy):
    geometric = True
    @dataclass(frozen=True)
    class Params(RefreshParams):
        pass

    def plan(self, info: StepInfo) -> Plan:
        shift = self.ctx.logits_shift
        if self.refresh_due(info, self.params.refresh_every):
            return self.full_plan(info, shift)
        start = info.block_start - shift
        return Plan(slice(start, info.length), slice(info.region_start - shift - start, info.region_end - shift - start))
