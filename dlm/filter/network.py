"""The filter network (:class:`FilterNet`): per-position features of a block -> accept logits, in one of the two
architectures of :data:`~dlm.filter.config.ARCHS`."""

from __future__ import annotations

import torch
from torch import nn

from .config import FilterConfig
from .features import PAD, to_windows


class FilterNet(nn.Module):
    """The filter: features (N, C, L) of N blocks -> per-position accept logits (N, L).

    ``mlp``: the C x W inputs of a window (L = W) are flattened channel by channel into one MLP with W outputs.
    ``local``: each position's C x (2 * context + 1) neighbourhood (positions outside the block read as
    committed) goes through one MLP with one output, shared by all positions. Hidden layers use ReLU.
    """

    def __init__(self, config: FilterConfig):
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        C = len(config.features)
        d = C * config.width if config.arch == "mlp" else C * (2 * config.context + 1)
        for h in config.hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(nn.Linear(d, config.width if config.arch == "mlp" else 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("pad", torch.tensor([PAD[f] for f in config.features]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, L)
        if self.config.arch == "mlp":
            return self.net(x.flatten(1))
        k = self.config.context
        N, C, L = x.shape
        if k:
            side = self.pad.to(x.dtype).view(1, C, 1).expand(N, C, k)
            x = torch.cat([side, x, side], dim=2)
        hood = x.unfold(2, 2 * k + 1, 1)  # (N, C, L, 2k + 1)
        return self.net(hood.permute(0, 2, 1, 3).reshape(N, L, -1)).squeeze(-1)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def accept_probability(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, n) accept probabilities of a block from its features (B, C, n), any n (padded / windowed)."""
        dtype = next(self.parameters()).dtype
        if self.config.arch == "local":
            return torch.sigmoid(self(feats.to(dtype)).float())
        windows, n = to_windows(feats, self.config, self.pad)
        B = feats.shape[0]
        logits = self(windows.to(dtype))  # (B * K, W)
        return torch.sigmoid(logits.float()).reshape(B, -1)[:, :n]


def expected_tensors(config: FilterConfig) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of a :class:`FilterNet` with ``config`` (computed, nothing allocated)."""
    C = len(config.features)
    d = C * config.width if config.arch == "mlp" else C * (2 * config.context + 1)
    out: dict[str, tuple[int, ...]] = {}
    sizes = list(config.hidden) + [config.width if config.arch == "mlp" else 1]
    for i, h in enumerate(sizes):  # nn.Sequential indices: Linear, ReLU, Linear, ..., Linear
        out[f"net.{2 * i}.weight"], out[f"net.{2 * i}.bias"] = (h, d), (h,)
        d = h
    return out
