"""Tensor parallelism for the layers torch's plan does not cover, in the ``local`` mode: a fused QKV projection
(LLaDA2.x) and MoE feed-forwards (LLaDA2.x, SDAR-MoE), with expert parallelism.

- Fused QKV: the weight's rows are q heads, then k heads, then v heads; rank r keeps its q heads, its k heads and its
  v heads, in that order, so the layer's own split (by the projection's output width) finds the local heads.
- MoE: the router is replicated (every rank routes every token the same way); rank r holds the routed experts
  ``[r E/N, (r+1) E/N)`` (only those are read from the checkpoint) and the shared expert's MLP columns ``r/N``
  (gate/up rows, down columns). Each rank computes its experts' contributions and its part of the shared expert,
  and one ``all_reduce`` per layer sums them (:class:`ExpertParallelMoE`).

Weights keep their global shapes on the meta-built model (the loader checks the checkpoint against them), except
the stacked experts, which are built with the local expert count (the loader checks one expert at a time).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..models import elementwise as ew

Slicer = Callable[[torch.Tensor], torch.Tensor]
EXPERT_PARAMS = ("experts.gate", "experts.up", "experts.down")


def qkv_rows(num_heads: int, num_kv_heads: int, head_dim: int, rank: int, size: int) -> Slicer:
    """This rank's rows of a fused (q | k | v) projection's weight (rows, d) or bias (rows,)."""
    hq, hkv = num_heads // size, num_kv_heads // size
    q0, k0, v0 = 0, num_heads * head_dim, (num_heads + num_kv_heads) * head_dim

    def take(t: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.narrow(0, q0 + rank * hq * head_dim, hq * head_dim),
                          t.narrow(0, k0 + rank * hkv * head_dim, hkv * head_dim),
                          t.narrow(0, v0 + rank * hkv * head_dim, hkv * head_dim)])

    return take


def even_part(dim: int, rank: int, size: int) -> Slicer:
    """This rank's 1/size of a tensor along ``dim``."""
    def take(t: torch.Tensor) -> torch.Tensor:
        n = t.shape[dim] // size
        return t.narrow(dim, rank * n, n)

    return take


def layer_slicers(layer: nn.Module, prefix: str, rank: int, size: int) -> dict[str, Slicer]:
    """The custom slicers of one layer's parameters (full name -> slicer): its fused QKV and shared expert."""
    cfg = layer.cfg
    out: dict[str, Slicer] = {}
    if isinstance(getattr(layer, "qkv", None), nn.Linear):
        take = qkv_rows(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, rank, size)
        out[f"{prefix}qkv.weight"] = take
        if layer.qkv.bias is not None:
            out[f"{prefix}qkv.bias"] = take
    shared = getattr(getattr(layer, "moe", None), "shared", None)
    if shared is not None:
        out[f"{prefix}moe.shared.gate.weight"] = even_part(0, rank, size)
        out[f"{prefix}moe.shared.up.weight"] = even_part(0, rank, size)
        out[f"{prefix}moe.shared.down.weight"] = even_part(1, rank, size)
    return out


def localize_experts(layer: nn.Module, size: int) -> None:
    """Rebuild the meta-built layer's stacked experts with E/size experts (this rank's)."""
    from ..models.moe import ExpertBank

    bank = layer.moe.experts
    E, inter, hidden = bank.gate.shape
    with torch.device("meta"):
        local = ExpertBank(E // size, hidden, inter)
    local.impl = bank.impl
    layer.moe.experts = local


def expert_names(name_map: dict, rank: int, size: int, num_experts: int) -> dict:
    """The loader's name map with each stacked expert row renumbered for this rank, or None (not read) for an
    expert another rank holds."""
    n = num_experts // size
    first = rank * n
    out = {}
    for key, target in name_map.items():
        if isinstance(target, tuple) and target[0].endswith(EXPERT_PARAMS):
            name, e = target
            target = (name, e - first) if first <= e < first + n else None
        out[key] = target
    return out


class ExpertParallelMoE(nn.Module):
    """A layer's MoE on one rank: the replicated router, this rank's routed experts (from ``first``) and its part of
    the shared expert; one all-reduce sums the ranks' partial outputs. h (B, Q, d) -> (B, Q, d), the same on every
    rank."""

    def __init__(self, moe: nn.Module, first: int, group):
        super().__init__()
        self.cfg, self.router, self.experts, self.shared = moe.cfg, moe.router, moe.experts, moe.shared
        self.experts.partial = True
        self.first, self.group = first, group

    def forward(self, h: torch.Tensor, ops: ew.Ops = ew.EAGER) -> torch.Tensor:
        x = h.reshape(-1, h.shape[-1])
        weights, ids = self.router(x, self.cfg)
        local = ids - self.first
        local = torch.where((local >= 0) & (local < self.experts.gate.shape[0]), local, -1)
        y = self.experts(x, local, weights, ops)
        if self.shared is not None:  # its down projection holds this rank's columns: a partial sum too
            y = y + self.shared(x, ops)
        dist.all_reduce(y, group=self.group)
        return y.view_as(h)
