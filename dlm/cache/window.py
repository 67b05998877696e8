"""``window``: after dKV-Cache-Greedy (Ma et al., 2025, arXiv:2505.15781): recompute only what is about to
change.

Each step feeds the positions committed by the previous step, the ``candidates`` masked positions of the block
the previous step was most confident about (the next likely commits), and the ``window`` positions on each side
of those. Only the masked ones among them get fresh candidates; every other masked position keeps the
candidate computed at an earlier step. The whole canvas is refreshed at each block start and every
``refresh_every`` steps. The most aggressive and the lossiest policy; ``refresh_every=1`` makes it exact.

How many positions a step feeds depends on the data, so step shapes would rarely repeat and CUDA graphs would
seldom replay. Under CUDA graphs the fed positions are therefore padded to a multiple of the context's
``shape_step`` (16) with copies of the first fed position: a copy computes (and stores) exactly what the
original does, so the padding changes the cost of a step, never its result. (The engine pads the number of
logits likewise.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._refresh import RefreshParams
from .base import CachePolicy, Plan, StepInfo, left_align, register_cache


@register_cache("window")
class WindowCache(CachePolicy):
    @dataclass(frozen=True)
    class Params(RefreshParams):
        refresh_every: int | None = 8
        window: int = 2
        candidates: int = 4

        def __post_init__(self):
            super().__post_init__()
            if self.window < 0:
                raise ValueError(f"window must be >= 0, got {self.window}")
            if self.candidates < 1:
                raise ValueError(f"candidates must be >= 1, got {self.candidates}")

    def plan(self, info: StepInfo) -> Plan:
        shift = self.ctx.logits_shift
        if info.confidence is None or self.refresh_due(info, self.params.refresh_every):
            return self.full_plan(info, shift)
        rs, re = info.region_start, info.region_end
        B, L = info.masked.shape
        device = info.masked.device
        masked_region = info.masked[:, rs:re]
        in_block = torch.zeros(re - rs, dtype=torch.bool, device=device)
        in_block[info.block_start - rs : info.block_end - rs] = True
        # the next likely commits: the most confident masked positions of the block
        score = info.confidence.masked_fill(~(masked_region & in_block), float("-inf"))
        k = min(self.params.candidates, re - rs)
        top = score.topk(k, dim=1).indices
        hot = torch.zeros(B, L, dtype=torch.bool, device=device)
        hot[:, rs:re].scatter_(1, top, True)
        hot &= info.masked
        hot |= info.committed_last
        w = self.params.window
        if w:
            hot = F.max_pool1d(hot.float().unsqueeze(1), 2 * w + 1, stride=1, padding=w).squeeze(1).bool()
        hot[:, info.length :] = False
        targets = hot[:, rs:re] & masked_region
        # target columns left-aligned, padded with the row's first target (or column 0)
        order = left_align(targets, targets.float().argmax(1, keepdim=True), min_width=1)
        width = order.shape[1]
        src = order + rs - shift
        rest = hot.clone()
        rest.scatter_(1, src, False)
        rorder = left_align(rest, src[:, :1])
        fed = torch.cat([src, rorder], dim=1)
        pad = -fed.shape[1] % self.ctx.shape_step
        if pad:
            fed = torch.cat([fed, src[:, :1].expand(-1, pad)], dim=1)
        return Plan(fed, slice(0, width), targets=order)
