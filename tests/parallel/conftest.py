"""Peaky tiny checkpoints (weights with std 1: the top-1 logit leads the top-2 by >= 0.02 on these models, far
above float32 rounding of a sharded or re-batched forward, so a greedy choice cannot flip between runs)."""

from __future__ import annotations

import pytest

from dlm.testing import write_tiny_checkpoint


@pytest.fixture(scope="session")
def peaky_paths(tmp_path_factory):
    return {mt: write_tiny_checkpoint(tmp_path_factory.mktemp(f"peaky_{mt}"), mt, seed=5, std=1.0)
            for mt in ("llada", "Dream")}


@pytest.fixture(scope="session")
def peaky_llada(peaky_paths):
    return peaky_paths["llada"]
