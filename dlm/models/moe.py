"""Mixture of experts: routers, stacked SwiGLU experts and the MoE feed-forward of a layer.

Two routers cover the published formats:

- ``sigmoid`` (LLaDA2.x, Ling/BailingMoeV2 lineage; DeepSeek-V3 style): scores = sigmoid(router logits, float32);
  the expert *choice* uses scores + a per-expert bias, limited to the ``topk_group`` best of ``n_group`` expert groups
  (a group's score is the sum of its two best biased scores); the *weights* are the unbiased scores of the chosen
  experts, renormalised to sum to one (official modeling: whenever more than one expert is chosen, whatever
  ``norm_topk_prob`` says) and multiplied by ``routed_scaling_factor``. Shared experts run on every token.
- ``softmax`` (SDAR-30B-A3B, Qwen3-MoE layout): weights = top-k of softmax(router logits, float32), renormalised when
  ``norm_topk_prob``.

The experts of a layer are stored stacked, gate/up (E, I, d) and down (E, d, I), so that one grouped matrix product
per projection serves every expert. :class:`ExpertBank` has two paths that compute the same thing:

- ``grouped``: token copies sorted by expert, then ``torch._grouped_mm`` (one kernel per projection for all experts,
  no host synchronisation, so it can be captured in a CUDA graph);
- ``sorted``: the same sorted copies, one ``F.linear`` per expert over its contiguous slice (portable; the reference).

``auto`` (the default) takes ``grouped`` for bfloat16 on CUDA when torch has it, ``sorted`` otherwise. Either way the
weighted sum over a token's experts is taken in float32 in the router's order, as the official LLaDA2 code does.
Checkpoints store one tensor per expert; the loader writes each into its row of the stacked parameter (see
:func:`dlm.models.loading.load_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from . import elementwise as ew
from .fields import int_field
from .transformer import ArchConfig

SCORE_FUNCTIONS = ("sigmoid", "softmax")
EXPERT_IMPLS = ("auto", "grouped", "sorted")


@dataclass(frozen=True)
class MoEArchConfig(ArchConfig):
    """ArchConfig plus the experts. ``moe_layers`` lists the layers with experts; the others keep the dense SwiGLU
    of width ``intermediate_size``."""

    num_experts: int = 0
    experts_per_token: int = 0
    expert_intermediate_size: int = 0
    shared_intermediate_size: int = 0  # 0: no shared expert
    moe_layers: tuple[int, ...] = ()
    score_function: str = "softmax"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    expert_bias: bool = False
    router_fp32: bool = False  # router product in float32 (LLaDA2) or in the model dtype (Qwen3-MoE)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.score_function not in SCORE_FUNCTIONS:
            raise ValueError(f"score_function must be one of {SCORE_FUNCTIONS}, got {self.score_function!r}")
        if not 1 <= self.experts_per_token <= self.num_experts:
            raise ValueError(f"experts_per_token ({self.experts_per_token}) must be in 1..{self.num_experts}")

    @property
    def num_parameters(self) -> int:
        d, hd = self.hidden_size, self.head_dim
        attn = d * (self.num_heads + 2 * self.num_kv_heads) * hd + self.num_heads * hd * d + 2 * d
        moe = self.num_experts * (d + 3 * d * self.expert_intermediate_size) + 3 * d * self.shared_intermediate_size
        dense = 3 * d * self.intermediate_size
        per_layer = [attn + (moe if i in self.moe_layers else dense) for i in range(self.num_layers)]
        return self.vocab_size * d * (1 if self.tie_embeddings else 2) + sum(per_layer) + d


def moe_fields(cfg: dict[str, Any], default_groups: tuple[int, int] = (1, 1)) -> dict[str, int]:
    """The expert geometry of a config.json (Qwen3-MoE / Ling field names), checked: MoEArchConfig keyword arguments.
    ``default_groups`` are the format's (n_group, topk_group) when the fields are absent."""
    E, k = int_field(cfg, "num_experts"), int_field(cfg, "num_experts_per_tok")
    G, g = int_field(cfg, "n_group", default_groups[0]), int_field(cfg, "topk_group", default_groups[1])
    problem = None
    if k > E:
        problem = f"'num_experts_per_tok' ({k}) exceeds 'num_experts' ({E})"
    elif E % G:
        problem = f"'num_experts' ({E}) is not a multiple of 'n_group' ({G})"
    elif g > G:
        problem = f"'topk_group' ({g}) exceeds 'n_group' ({G})"
    elif G > 1 and E // G < 2:
        problem = f"'n_group' ({G}) leaves fewer than 2 experts per group (a group is scored by its two best)"
    elif k > g * (E // G):
        problem = f"'num_experts_per_tok' ({k}) exceeds the {g * (E // G)} experts of 'topk_group' ({g}) groups"
    if problem:
        raise CheckpointError(f"config.json: {problem}")
    return {"num_experts": E, "experts_per_token": k, "n_group": G, "topk_group": g,
            "expert_intermediate_size": int_field(cfg, "moe_intermediate_size")}


def route_sigmoid(logits: torch.Tensor, bias: torch.Tensor | None, cfg: MoEArchConfig
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-limited sigmoid routing. logits (T, E) float32 -> weights (T, k) float32, expert ids (T, k)."""
    scores = torch.sigmoid(logits)
    choice = scores if bias is None else scores + bias.float()
    if cfg.n_group > 1:
        T, E = choice.shape
        group_score = choice.view(T, cfg.n_group, -1).topk(2, dim=-1).values.sum(-1)  # (T, G)
        best = group_score.topk(cfg.topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best, True)
        choice = choice.masked_fill(~keep.repeat_interleave(E // cfg.n_group, dim=1), float("-inf"))
    ids = choice.topk(cfg.experts_per_token, dim=-1).indices
    weights = scores.gather(1, ids)
    if cfg.experts_per_token > 1:
        weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return weights * cfg.routed_scaling_factor, ids


def route_softmax(logits: torch.Tensor, cfg: MoEArchConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the softmax. logits (T, E) -> weights (T, k) float32, expert ids (T, k)."""
    weights, ids = torch.softmax(logits.float(), dim=-1).topk(cfg.experts_per_token, dim=-1)
    if cfg.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights * cfg.routed_scaling_factor, ids


def grouped_mm_available(x: torch.Tensor) -> bool:
    """Whether ``auto`` takes the grouped path for activations like ``x``: torch's grouped GEMM, CUDA, bfloat16."""
    return hasattr(torch, "_grouped_mm") and x.is_cuda and x.dtype == torch.bfloat16


class ExpertBank(nn.Module):
    """E SwiGLU experts, stacked: ``gate``/``up`` (E, I, d), ``down`` (E, d, I)."""

    def __init__(self, num_experts: int, hidden: int, intermediate: int):
        super().__init__()
        self.gate = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.up = nn.Parameter(torch.empty(num_experts, intermediate, hidden))
        self.down = nn.Parameter(torch.empty(num_experts, hidden, intermediate))
        self.impl = "auto"  # see EXPERT_IMPLS; set_expert_impl() changes it for a whole model
        # a bank holding some of a layer's experts (expert parallelism): slots routed elsewhere come as id -1
        self.partial = False

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, ops: ew.Ops = ew.EAGER
                ) -> torch.Tensor:
        """x (T, d), ids (T, k) expert of each of a token's k slots, weights (T, k) -> (T, d) in x's dtype.
        With ``partial``, a slot of id -1 contributes nothing (its expert lives in another process)."""
        T, k = ids.shape
        E = self.gate.shape[0]
        flat = ids.reshape(-1)
        dropped = (flat < 0) if self.partial else None
        if dropped is not None:
            flat = torch.where(dropped, E, flat)  # after every expert of the bank in the sorted order
        order = flat.argsort(stable=True)  # token copies grouped by expert, in token order inside a group
        # tokens per expert without torch.bincount, which reads the largest id on the host (a sync)
        counts = torch.zeros(E + (dropped is not None), dtype=torch.int64, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat))[:E]
        xs = x[order // k]
        impl = self.impl
        if impl == "auto":
            impl = "grouped" if grouped_mm_available(x) else "sorted"
        ys = self._grouped(xs, counts, ops) if impl == "grouped" else self._sorted(xs, counts, ops)
        if dropped is not None:  # the rows after the bank's last expert were never written
            ys = torch.where(dropped[order].unsqueeze(1), 0, ys)
        unsorted = torch.empty_like(ys)
        unsorted[order] = ys
        out = (unsorted.view(T, k, -1).float() * weights.unsqueeze(-1).float()).sum(1)
        return out.to(x.dtype)

    def _grouped(self, xs: torch.Tensor, counts: torch.Tensor, ops: ew.Ops) -> torch.Tensor:
        """One grouped GEMM per projection; ``offs`` are the end rows of each expert's slice."""
        offs = counts.cumsum(0).to(torch.int32)
        g = torch._grouped_mm(xs, self.gate.transpose(1, 2), offs=offs)
        u = torch._grouped_mm(xs, self.up.transpose(1, 2), offs=offs)
        return torch._grouped_mm(ops.swiglu(g, u), self.down.transpose(1, 2), offs=offs)

    def _sorted(self, xs: torch.Tensor, counts: torch.Tensor, ops: ew.Ops) -> torch.Tensor:
        """One matrix product per expert that has tokens, over its contiguous slice (reads the counts on the host)."""
        out = torch.empty(xs.shape[0], self.down.shape[1], dtype=xs.dtype, device=xs.device)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n:
                seg = xs[start:start + n]
                h = ops.swiglu(F.linear(seg, self.gate[e]), F.linear(seg, self.up[e]))
                out[start:start + n] = F.linear(h, self.down[e])
                start += n
        return out


class SwiGLU(nn.Module):
    """A bias-free SwiGLU feed-forward (the shared expert): down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate = nn.Linear(hidden, intermediate, bias=False)
        self.up = nn.Linear(hidden, intermediate, bias=False)
        self.down = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor, ops: ew.Ops = ew.EAGER) -> torch.Tensor:
        return self.down(ops.swiglu(self.gate(x), self.up(x)))


class Router(nn.Module):
    """Router weight (E, d) and, for the sigmoid router, the per-expert choice bias (E,)."""

    def __init__(self, cfg: MoEArchConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        if cfg.expert_bias:
            self.expert_bias = nn.Parameter(torch.empty(cfg.num_experts))
        else:
            self.expert_bias = None

    def forward(self, x: torch.Tensor, cfg: MoEArchConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """x (T, d) -> routing weights (T, k) float32, expert ids (T, k)."""
        if cfg.router_fp32:
            logits = F.linear(x.float(), self.weight.float())
        else:
            logits = F.linear(x, self.weight).float()
        if cfg.score_function == "sigmoid":
            return route_sigmoid(logits, self.expert_bias, cfg)
        return route_softmax(logits, cfg)


class MoE(nn.Module):
    """The MoE feed-forward of a layer: routed experts plus the shared expert(s), if any."""

    def __init__(self, cfg: MoEArchConfig):
        super().__init__()
        self.cfg = cfg
        self.router = Router(cfg)
        self.experts = ExpertBank(cfg.num_experts, cfg.hidden_size, cfg.expert_intermediate_size)
        self.shared = SwiGLU(cfg.hidden_size, cfg.shared_intermediate_size) if cfg.shared_intermediate_size else None

    def forward(self, h: torch.Tensor, ops: ew.Ops = ew.EAGER) -> torch.Tensor:
        """h (B, Q, d) normalised hidden states -> (B, Q, d)."""
        x = h.reshape(-1, h.shape[-1])
        weights, ids = self.router(x, self.cfg)
        y = self.experts(x, ids, weights, ops)
        if self.shared is not None:
            y = y + self.shared(x, ops)
        return y.view_as(h)


class MoEBlockMixin:
    """Block mixin: experts on the layers listed in ``cfg.moe_layers``, the dense SwiGLU of the base class elsewhere.
    Put it before the :class:`Block` subclass in the bases."""

    cfg: MoEArchConfig
    index: int

    def init_mlp(self, cfg: MoEArchConfig) -> None:
        if self.index in cfg.moe_layers:
            self.moe = MoE(cfg)
        else:
            super().init_mlp(cfg)  # type: ignore[misc]

    def mlp(self, h: torch.Tensor, ops: ew.Ops) -> torch.Tensor:
        if self.index in self.cfg.moe_layers:
            return self.moe(h, ops)
        return super().mlp(h, ops)  # type: ignore[misc]


def expert_names(ckpt_prefix: str, prefix: str, num_experts: int) -> dict[str, tuple[str, int]]:
    """Name map of a layer's experts: ``{ckpt_prefix}experts.{e}.{gate,up,down}_proj.weight`` -> row e of the stacked
    ``{prefix}experts.{gate,up,down}``."""
    return {f"{ckpt_prefix}experts.{e}.{p}_proj.weight": (f"{prefix}experts.{p}", e)
            for e in range(num_experts) for p in ("gate", "up", "down")}


def set_expert_impl(model: nn.Module, impl: str) -> None:
    """Choose the expert path of every MoE layer of ``model``: ``auto``, ``grouped`` or ``sorted``."""
    if impl not in EXPERT_IMPLS:
        raise ConfigError(f"unknown expert implementation {impl!r}; allowed: {', '.join(EXPERT_IMPLS)}")
    if impl == "grouped" and not hasattr(torch, "_grouped_mm"):
        raise ConfigError(f"expert implementation 'grouped' needs torch._grouped_mm (torch {torch.__version__} lacks it)")
    for module in model.modules():
        if isinstance(module, ExpertBank):
            module.impl = impl


__all__ = [
    "ExpertBank",
    "MoE",
    "MoEArchConfig",
    "MoEBlockMixin",
    "Router",
    "SwiGLU",
    "expert_names",
    "moe_fields",
    "route_sigmoid",
    "route_softmax",
    "set_expert_impl",
]
