"""Fitting: the filter network trained with binary cross-entropy on the masked positions of collected data
(Learn2PD: AdamW lr 3e-3, cosine decay; the epoch with the lowest validation loss is kept), and the metrics of a
filter on such data.

Metrics (:func:`filter_metrics`), over masked positions of the recorded steps: at threshold t, a position is
*accepted* when its accept probability exceeds t. False-positive rate = accepted wrong positions / wrong positions
(label 0); false-discovery rate = accepted wrong positions / accepted positions (the share of early commits that
change the output); acceptance = accepted / all; recall = accepted right / right.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ...filter import FilterConfig, FilterNet, to_windows
from .dataset import FilterData


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation of the filter (Learn2PD: BCE, AdamW lr 3e-3)."""

    epochs: int = 40
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 256
    seed: int = 0
    max_minutes: float | None = None
    wrong_weight: float = 1.0  # loss weight of positions labelled 0 (rare: the ones a filter must catch)


def windows(data: FilterData, config: FilterConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs (M, C, W), labels (M, W) float, weights (M, W) float: 1 on masked real positions). An ``mlp``
    filter sees windows of ``width`` positions, a ``local`` one whole blocks (W = block length)."""
    feats = data.features(config.features)
    if config.arch == "local":
        return feats, data.label.float(), data.masked.float()
    x, _ = to_windows(feats, config)
    one = FilterConfig(features=("masked",), width=config.width)  # masked padding = 0: padding is never a sample
    w, _ = to_windows(data.masked.float().unsqueeze(1), one)
    y, _ = to_windows(data.label.float().unsqueeze(1), one)
    return x, y.squeeze(1), w.squeeze(1)


def bce(net: FilterNet, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    loss = nn.functional.binary_cross_entropy_with_logits(net(x), y, reduction="none")
    return (loss * w).sum() / w.sum().clamp(min=1)


def train(data: FilterData, config: FilterConfig, val: FilterData | None = None,
          settings: TrainSettings = TrainSettings(), log: Callable[[str], None] | None = None
          ) -> tuple[FilterNet, list[dict[str, float]]]:
    """Fit a filter on ``data``; returns (the net of the best validation epoch, per-epoch history)."""
    torch.manual_seed(settings.seed)
    net = FilterNet(config)
    x, y, w = samples(data, config, settings)
    held = windows(val, config) if val is not None else None
    opt = torch.optim.AdamW(net.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = max(1, math.ceil(x.shape[0] / settings.batch_size))
    total = steps_per_epoch * settings.epochs
    # cosine from lr to 0.1 x lr over every step of the run
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    gen = torch.Generator().manual_seed(settings.seed)
    history: list[dict[str, float]] = []
    best, best_state = float("inf"), None
    t0 = time.perf_counter()
    for epoch in range(settings.epochs):
        perm = torch.randperm(x.shape[0], generator=gen)
        train_loss = run_epoch(net, opt, sched, (x, y, w), perm, settings.batch_size, steps_per_epoch)
        rec = evaluate_epoch(net, epoch, train_loss, (x, y, w), held)
        history.append(rec)
        score = rec.get("val_loss", rec["train_loss_eval"])
        if score < best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
        if log is not None:
            log("epoch {epoch}: train loss {train_loss:.4f}".format(**rec)
                + (f", val loss {rec['val_loss']:.4f}" if "val_loss" in rec else ""))
        if settings.max_minutes is not None and time.perf_counter() - t0 > 60 * settings.max_minutes:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    return net.eval(), history


def samples(data: FilterData, config: FilterConfig, settings: TrainSettings
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training windows that hold at least one masked position, wrong positions weighted by
    ``settings.wrong_weight``."""
    x, y, w = windows(data, config)
    keep = w.sum(1) > 0
    x, y, w = x[keep], y[keep], w[keep]
    if settings.wrong_weight != 1.0:
        w = w * torch.where(y > 0.5, 1.0, settings.wrong_weight)
    return x, y, w


Samples = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # inputs (M, C, W), labels (M, W), weights (M, W)


def run_epoch(net: FilterNet, opt: torch.optim.Optimizer, sched, xyw: Samples, perm: torch.Tensor,
              batch_size: int, steps: int) -> float:
    """One pass over the samples in the order ``perm``; returns the mean training loss."""
    x, y, w = xyw
    net.train()
    total_loss = 0.0
    for s in range(steps):
        idx = perm[s * batch_size : (s + 1) * batch_size]
        loss = bce(net, x[idx], y[idx], w[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        total_loss += float(loss.detach()) * len(idx)
    return total_loss / x.shape[0]


@torch.no_grad()
def evaluate_epoch(net: FilterNet, epoch: int, train_loss: float, xyw: Samples, held: Samples | None
                   ) -> dict[str, float]:
    """The epoch's record: its mean training loss, the loss on all training samples and on the validation ones."""
    net.eval()
    rec = {"epoch": epoch + 1, "train_loss": train_loss, "train_loss_eval": float(bce(net, *xyw))}
    if held is not None:
        rec["val_loss"] = float(bce(net, *held))
    return rec


@torch.no_grad()
def accept_probabilities(net: FilterNet, data: FilterData) -> torch.Tensor:
    """(N, n) the filter's accept probabilities of every recorded position."""
    return net.accept_probability(data.features(net.config.features))


def filter_metrics(prob: torch.Tensor, data: FilterData, threshold: float) -> dict[str, float]:
    """False-positive rate, false-discovery rate, acceptance and recall at ``threshold`` over the masked
    positions of ``data`` (see the module doc); ``prob`` (N, n)."""
    m = data.masked
    acc = (prob > threshold) & m
    right, wrong = data.label & m, ~data.label & m
    tp, fp = int((acc & right).sum()), int((acc & wrong).sum())
    n_right, n_wrong, n = int(right.sum()), int(wrong.sum()), int(m.sum())
    return {"threshold": threshold, "positions": n, "wrong": n_wrong, "false_positive_rate": fp / max(1, n_wrong),
            "false_discovery_rate": fp / max(1, tp + fp), "acceptance": (tp + fp) / max(1, n),
            "recall": tp / max(1, n_right)}


def confidence_metrics(data: FilterData, threshold: float) -> dict[str, float]:
    """:func:`filter_metrics` of Fast-dLLM's rule (accept when confidence >= threshold), for comparison."""
    return filter_metrics(torch.nan_to_num(data.confidence, neginf=0.0) + 1e-12, data, threshold)
