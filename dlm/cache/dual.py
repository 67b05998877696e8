"""``dual``: Fast-dLLM's dual cache (Wu et al., 2025, arXiv:2505.22618; NVlabs/Fast-dLLM
``generate_with_dual_cache``).

At each block start one full forward fills the storage; the later steps feed only the block (plus, for a model
with shifted logits, the position before it, whose hidden state predicts the block's first token) and overwrite
its keys/values in place, reusing the prefix AND the suffix from the block start. The cheapest step of all
policies; approximate. ``refresh_every=1`` makes it exact (with the default refresh bounds below).

``refresh_from="last_block"`` makes the refreshes cheaper and adds an approximation of its own: after the first
block, a refresh feeds only the block just finished and everything after it, keeping the stored keys/values of
the prompt and the older blocks (computed when the answer still had more masks). At gen 1024 with block 32 a
refresh then feeds on average about half the canvas. The default, ``"canvas"``, refreshes every position (the
refresh's logits are those of the no-cache forward).

``refresh_to="block"`` stops a refresh at the end of the current block (or of the region, when a scheduler's
region reaches past it) instead of the canvas's: after the first block (whose refreshes still feed everything),
the suffix's masks keep the keys/values of the first block's last refresh, computed when the answer beyond that
block was masked. A third approximation; with ``refresh_from="last_block"`` a refresh
feeds only the block just finished and the new block (64 positions with block 32), so at batch 1 it costs about
what an in-block step costs. The default, ``"canvas"``, refreshes to the canvas's end.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._refresh import RefreshParams
from .base import CachePolicy, Plan, StepInfo, register_cache

REFRESH_FROM = ("canvas", "last_block")
REFRESH_TO = ("canvas", "block")


@register_cache("dual")
class DualCache(CachePolicy):
    geometric = True
    @dataclass(frozen=True)
    class Params(RefreshParams):
        """refresh_from: ``"canvas"`` (a refresh feeds from the canvas's start) or ``"last_block"`` (after the
        first block, from the start of the block just finished; approximate). refresh_to: ``"canvas"`` (to the
        canvas's end) or ``"block"`` (after the first block, to the current block's end; the suffix keeps the
        first block's keys/values; approximate)."""

        refresh_from: str = "canvas"
        refresh_to: str = "canvas"

        def __post_init__(self):
            super().__post_init__()
            if self.refresh_from not in REFRESH_FROM:
                raise ValueError(f"refresh_from must be one of {', '.join(REFRESH_FROM)}, got {self.refresh_from!r}")
            if self.refresh_to not in REFRESH_TO:
                raise ValueError(f"refresh_to must be one of {', '.join(REFRESH_TO)}, got {self.refresh_to!r}")

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._block_starts: list[int] = []

    def refreshes_whole_canvas(self) -> bool:
        return self.params.refresh_from == "canvas" and self.params.refresh_to == "canvas"

    def begin_block(self, block_start: int, block_end: int) -> None:
        self._block_starts = [*self._block_starts[-1:], block_start]

    def plan(self, info: StepInfo) -> Plan:
        shift = self.ctx.logits_shift
        if self.refresh_due(info, self.params.refresh_every):
            return self.refresh_plan(info, shift)
        return self._span(info, shift, info.block_start - shift, self._block_stop(info, shift))

    @staticmethod
    def _block_stop(info: StepInfo, shift: int) -> int:
        """The end of what an in-block step feeds: the block (or the region's sources, if they reach further)."""
        return min(max(info.block_end, info.region_end - shift), info.length)

    @staticmethod
    def _span(info: StepInfo, shift: int, start: int, stop: int) -> Plan:
        """Feed ``[start, stop)``; logits for the region's source positions."""
        return Plan(slice(start, stop), slice(info.region_start - shift - start, info.region_end - shift - start))

    def refresh_plan(self, info: StepInfo, shift: int) -> Plan:
        """A full refresh; after the first block, ``last_block`` starts it at the previous block's start and
        ``block`` ends it at the current block's end."""
        full = self.full_plan(info, shift)
        if self.refreshes_whole_canvas() or len(self._block_starts) < 2:
            return full
        start = full.fed.start
        if self.params.refresh_from == "last_block":
            start = max(min(self._block_starts[0] - shift, info.region_start - shift), start)
        stop = self._block_stop(info, shift) if self.params.refresh_to == "block" else info.length
        return self._span(info, shift, start, stop)
