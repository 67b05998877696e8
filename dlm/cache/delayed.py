"""``delayed``: dKV-Cache-Decode (Ma et al., 2025, "dKV-Cache: The Cache for Diffusion Language Models",
arXiv:2505.15781; horseee/dKV-Cache).

A committed token's keys/values enter the cache one step after its commit: at its commit step they were
computed from a mask input, so the next step recomputes them from the real token and from then on they are
reused. Masked positions are always recomputed. With shifted logits (Dream) the position p-1 whose hidden state
predicts a masked p is recomputed too, so p-1 is cached only once p is committed. The whole canvas is refreshed
at each block start and every ``refresh_every`` steps (default 4; the authors use 2 to 16). Approximate; 1 makes
it exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._refresh import RefreshParams
from .base import CachePolicy, Plan, StepInfo, register_cache


@register_cache("delayed")
class DelayedCache(CachePolicy):
    @dataclass(frozen=True)
    class Params(RefreshParams):
        refresh_every: int | None = 4

    def plan(self, info: StepInfo) -> Plan:
        shift = self.ctx.logits_shift
        if self.refresh_due(info, self.params.refresh_every):
            return self.full_plan(info, shift)
        recompute = info.masked | info.committed_last
        if shift:
            recompute = recompute.clone()
            recompute[:, :-shift] |= info.masked[:, shift:]
        return self.indexed_plan(info, shift, recompute)
