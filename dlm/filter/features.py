"""The filter's inputs: per-position features of the active block, computed from the candidates' measures.

Features (per position, in positional order; a filter's config lists those it uses):
    ``confidence``: probability of the candidate token where masked, 1 where already committed (a ``-inf``
        confidence from ``confidence_eos_eot_inf`` reads as 0).
    ``masked``: 1 where still masked, 0 where committed.
    ``margin``: top-1 minus top-2 probability where masked, 1 where committed (candidate measure ``margin``).
    ``entropy``: exp(-entropy) of the predictive distribution where masked, in (0, 1], 1 where committed
        (candidate measure ``entropy``).
    ``position``: relative position in the block, 0 at its start, 1 at its end.
    ``progress``: share of the block's positions already committed.
    ``left_masked``: masked positions to the left, over the block length.
    ``left_min_confidence``: lowest confidence (as above) of the positions to the left (1 at the start).
    ``mean_confidence``: mean confidence of the block's masked positions.
All are probabilities or functions of them and of the block's layout, with no vocabulary- or model-specific
scale, so a filter runs with any model and any block length; trained on one model it is best for that model.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import ConfigError
from .config import FEATURES, FilterConfig


def block_features(features: Sequence[str], confidence: torch.Tensor, masked: torch.Tensor,
                   margin: torch.Tensor | None = None, neg_entropy: torch.Tensor | None = None) -> torch.Tensor:
    """The filter's input channels for a block: (B, C, n) float32.

    confidence, masked, margin, neg_entropy: (B, n), the block's candidate measures and its still-masked
    positions (``margin`` / ``neg_entropy`` only when a feature needs them). See the module doc for the channels.
    """
    masked = masked.bool()
    B, n = masked.shape
    one = torch.ones((), dtype=torch.float32, device=confidence.device)

    def prob(t: torch.Tensor) -> torch.Tensor:
        t = torch.nan_to_num(t.float(), nan=0.0, posinf=1.0, neginf=0.0).clamp(0.0, 1.0)
        return torch.where(masked, t, one)

    conf = prob(confidence)
    count = masked.sum(1, keepdim=True)
    chans = []
    for f in features:
        if f == "confidence":
            chans.append(conf)
        elif f == "masked":
            chans.append(masked.float())
        elif f == "margin":
            if margin is None:
                raise ConfigError("the filter uses the 'margin' feature but the candidates carry no margin")
            chans.append(prob(margin))
        elif f == "entropy":
            if neg_entropy is None:
                raise ConfigError("the filter uses the 'entropy' feature but the candidates carry no entropy")
            chans.append(prob(neg_entropy.float().exp()))
        elif f == "position":
            pos = torch.arange(n, device=masked.device, dtype=torch.float32) / max(1, n - 1)
            chans.append(pos.expand(B, n))
        elif f == "progress":
            chans.append((1 - count.float() / n).expand(B, n))
        elif f == "left_masked":
            chans.append((masked.long().cumsum(1) - masked.long()).float() / n)
        elif f == "left_min_confidence":
            chans.append(torch.cat([one.expand(B, 1), conf.cummin(dim=1).values[:, :-1]], dim=1))
        elif f == "mean_confidence":
            mean = torch.where(masked, conf, 0.0).sum(1, keepdim=True) / count.clamp(min=1)
            chans.append(torch.where(count > 0, mean, one).expand(B, n))
        else:
            raise ConfigError(f"unknown filter feature {f!r}; known: {', '.join(FEATURES)}")
    return torch.stack(chans, dim=1)


#: value of each channel at padding positions: what a committed position looks like
PAD = {"confidence": 1.0, "masked": 0.0, "margin": 1.0, "entropy": 1.0, "position": 1.0, "progress": 1.0,
        "left_masked": 0.0, "left_min_confidence": 1.0, "mean_confidence": 1.0}


def to_windows(feats: torch.Tensor, config: FilterConfig, pad: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, int]:
    """(B, C, n) features -> ((B * K, C, W) windows, n): n padded up to K * W with committed-looking positions
    (``pad``: the (C,) padding values, already on the features' device; built from the config when omitted)."""
    B, C, n = feats.shape
    W = config.width
    K = max(1, math.ceil(n / W))
    if K * W != n:
        if pad is None:
            pad = torch.tensor([PAD[f] for f in config.features], device=feats.device)
        feats = torch.cat([feats, pad.to(feats.dtype).view(1, C, 1).expand(B, C, K * W - n)], dim=2)
    return feats.reshape(B, C, K, W).permute(0, 2, 1, 3).reshape(B * K, C, W), n
