"""``none``: every step recomputes the whole canvas. The reference every other policy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from .base import CachePolicy, Plan, StepInfo, register_cache


@register_cache("none")
class NoCache(CachePolicy):
    """Full recompute at every step; keeps no storage. Exact by definition."""

    exact = True
    uses_storage = False
    geometric = True

    @dataclass(frozen=True)
    class Params:
        pass

    def plan(self, info: StepInfo) -> Plan:
        return self.full_plan(info, self.ctx.logits_shift)
