"""The loss curve of a training run: train and validation losses against tokens seen, as a PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence


def plot_curve(history: Sequence[dict[str, Any]], path: str | os.PathLike, title: str) -> Path:
    """Train loss (mean per log window) and validation losses against tokens seen, as a PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    tr = [(h["tokens"], h["train_loss"]) for h in history if "train_loss" in h]
    if tr:
        ax.plot([x / 1e6 for x, _ in tr], [y for _, y in tr], label="train (weighted total, mean per log window)",
                lw=1.4)
    keys = sorted({k for h in history for k in h if k.startswith("val_") and ":" not in k})
    for k in keys:
        pts = [(h["tokens"], h[k]) for h in history if k in h]
        ax.plot([x / 1e6 for x, _ in pts], [y for _, y in pts], marker="o", ms=3, lw=1,
                label=k.replace("val_", "val ").replace("total", "(weighted total)"))
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
