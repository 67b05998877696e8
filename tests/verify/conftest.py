"""Fixtures of the lossless-mode tests: several tiny random diffusion checkpoints (LLaDA and Dream, different
seeds), and tiny causal verifiers that share the tiny LLaDA tokenizer (built here, never downloaded)."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.testing import write_tiny_checkpoint

# name -> (format, seed); the first two are the session models of tests/conftest.py (same seeds)
DIFFUSION_MODELS = {"llada-1": ("llada", 1), "llada-11": ("llada", 11), "dream-2": ("Dream", 2),
                    "dream-12": ("Dream", 12)}


@pytest.fixture(scope="session")
def diffusion_paths(tmp_path_factory):
    return {name: write_tiny_checkpoint(tmp_path_factory.mktemp(name), fmt, seed=seed)
            for name, (fmt, seed) in DIFFUSION_MODELS.items()}


@pytest.fixture(scope="session")
def diffusion_models(diffusion_paths):
    return {name: dlm.load(path, device="cpu") for name, path in diffusion_paths.items()}


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """One intra-op thread for these tests: the tiny models gain nothing from more, and on a shared 2-core machine
    torch's two OpenMP threads spin against other processes (measured here: 25-150x slower). Restored after the
    package's tests."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
