"""Shared fixtures: tiny random checkpoints in the exact LLaDA and Dream formats (built here, never downloaded)."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.testing import write_tiny_checkpoint

# tiny models gain nothing from more threads, and a shared machine makes extra threads stall
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def llada_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("llada"), "llada", seed=1)


@pytest.fixture(scope="session")
def dream_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("dream"), "Dream", seed=2)


@pytest.fixture(scope="session")
def llada(llada_path):
    return dlm.load(llada_path, device="cpu")


@pytest.fixture(scope="session")
def dream(dream_path):
    return dlm.load(dream_path, device="cpu")


@pytest.fixture(scope="session", params=["llada", "Dream"])
def tiny(request, llada, dream):
    """Each tiny model in turn."""
    return llada if request.param == "llada" else dream


def random_prompts(lm, n: int, seed: int, min_len: int = 1, max_len: int = 12) -> list[list[int]]:
    """Random prompts of byte tokens (ids < 256, never special tokens), lengths in [min_len, max_len]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        out.append(torch.randint(0, 256, (length,), generator=g).tolist())
    return out


@pytest.fixture
def registered_cache():
    """Register test-only cache policies for one test: ``registered_cache(name, cls)`` returns the name; they are
    removed afterwards."""
    names: list[str] = []

    def register(name: str, cls: type) -> str:
        dlm.cache.CACHES.register(name, cls)
        names.append(name)
        return name

    yield register
    for name in names:
        dlm.cache.CACHES.unregister(name)
