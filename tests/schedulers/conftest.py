"""Fixtures of the scheduler tests: tiny random checkpoints with peaked predictions (weights std 1.0), so that
parallel schedulers really commit several positions per step and early exits really happen."""

from __future__ import annotations

import pytest

import dlm
from dlm.testing import write_tiny_checkpoint


@pytest.fixture(scope="session")
def peaky_llada_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("peaky_llada"), "llada", seed=11, std=1.0)


@pytest.fixture(scope="session")
def peaky_dream_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("peaky_dream"), "Dream", seed=12, std=1.0)


@pytest.fixture(scope="session")
def peaky_llada(peaky_llada_path):
    return dlm.load(peaky_llada_path, device="cpu")


@pytest.fixture(scope="session")
def peaky_dream(peaky_dream_path):
    return dlm.load(peaky_dream_path, device="cpu")


@pytest.fixture(scope="session", params=["llada", "Dream"])
def peaky(request, peaky_llada, peaky_dream):
    """Each peaked tiny model in turn."""
    return peaky_llada if request.param == "llada" else peaky_dream


@pytest.fixture
def registered():
    """Register test-only schedulers for one test: ``registered(name, cls)``; they are removed afterwards, so the
    registry that other tests parameterise over stays as it was."""
    names: list[str] = []

    def register(name: str, cls: type, **kwargs) -> type:
        dlm.schedulers.SCHEDULERS.register(name, cls, **kwargs)
        names.append(name)
        return cls

    yield register
    for name in names:
        dlm.schedulers.SCHEDULERS.unregister(name)
