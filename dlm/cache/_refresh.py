"""The ``refresh_every`` parameter shared by the cache policies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefreshParams:
    """refresh_every: besides each block start, recompute the whole canvas every k-th step of a block
    (None or 0: only at block starts). 1 makes the policy exact."""

    refresh_every: int | None = None

    def __post_init__(self):
        if self.refresh_every is not None and (not isinstance(self.refresh_every, int) or self.refresh_every < 0):
            raise ValueError(f"refresh_every must be a non-negative integer or None, got {self.refresh_every!r}")
