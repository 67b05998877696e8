"""``dual``: Fast-dLLM's dual cache (Wu et al., 2025, arXiv:2505.22618; NVlabs/Fast-dLLM
``generate_with_dual_cache``).

At each block start one full forward fills the storage; the later steps feed only the block (plus, for a model
with shifted logits, the position before it, whose hidden state predicts the block's first token) and overwrite
its keys/values in place, reusing the prefix AND the suffix from the block start. The cheapest step of all
policies; approximate. ``refresh_every=1`` makes it exact.

``refresh_from="last_block"`` makes the refreshes cheaper and adds an approximation of its own: after the first
block, a refresh feeds only the block just finished and everything after it, keeping the stored keys/values of
the prompt and the older blocks (computed when the answer still had more masks). At gen 1024 with block 32 a
refresh then feeds on average about half the canvas. The default, ``"canvas"``, refreshes every position (the
refresh's logits are those of the no-cache forward).
"""

from __future__ import annotations

from dataclasses import dataclass

from ._refresh import RefreshParams
from .base import CachePolicy, Plan, StepInfo, register_cache

REFRESH_FROM = ("canvas", "last_block")


@register_cache("dual")
class DualCache(CachePolicy):
    geometric = True
    @dataclass(frozen=True)
    class Params(RefreshParams):
        """refresh_from: ``"canvas"`` (a refresh feeds every position) or ``"last_block"`` (after the first block,
        from the start of the block just finished; approximate)."""

        refresh_from: str = "canvas"

        def __post_init__(self):
            super().__post_init__()
            if self.refresh_from not in REFRESH_FROM:
                raise ValueError(f"refresh_from must be one of {', '.join(REFRESH_FROM)}, got {self.refresh_from!r}")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._block_starts: list[int] = []

    def begin_block(self, block_start: int, block_end: int) -> None:
        self._block_starts = [*self._block_starts[-1:], block_start]

    def plan(self, info: StepInfo) -> Plan:
        shift = self.ctx.logits_shift
        if self.refresh_due(info, self.params.refresh_every):
            return self.refresh_plan(info, shift)
        start = info.block_start - shift
        stop = min(max(info.block_end, info.region_end - shift), info.length)
        return Plan(slice(start, stop), slice(info.region_start - shift - start, info.region_end - shift - start))

    def refresh_plan(self, info: StepInfo, shift: int) -> Plan:
        """A full refresh, or with ``last_block`` after the first block: from the previous block's start on."""
        full = self.full_plan(info, shift)
        if self.params.refresh_from == "canvas" or len(self._block_starts) < 2:
            return full
        start = max(min(self._block_starts[0] - shift, info.region_start - shift), full.fed.start)
        return Plan(slice(start, info.length), slice(info.region_start - shift - start, info.region_end - shift - start))
