"""``dual``: Fast-dLLM's dual cache (Wu et al., 2025, arXiv:2505.22618; NVlabs/Fast-dLLM
``generate_with_dual_cache``).

At each block start one full forward fills the storage; the later steps feed only the block (plus, for a model
with shifted logits, the position before it, whose hidden state predicts the block's first token) and overwrite
its keys/values in place, reusing the prefix AND the suffix from the block start. The cheapest step of all
policies; approximate. ``refresh_every=1`` makes it exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._refresh import RefreshParams
from .base import CachePolicy, Plan, StepInfo, register_cache


@register_cache("dual")
class DualCache(CachePolicy):
    @dataclass(frozen=True)
    class Params(RefreshParams):
        pass

    def plan(self, info: StepInfo) -> Plan:
        shift = self.ctx.logits_shift
        if self.refresh_due(info, self.params.refresh_every):
            return self.full_plan(info, shift)
        start = info.block_start - shift
        stop = min(max(info.block_end, info.region_end - shift), info.length)
        return Plan(slice(start, stop), slice(info.region_start - shift - start, info.region_end - shift - start))
