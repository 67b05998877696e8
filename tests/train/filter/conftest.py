"""Fixtures of the learned-filter tests: a tiny random LLaDA checkpoint with peaked predictions (so that parallel
decoding really commits several positions per step), built here, never downloaded."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.testing import write_tiny_checkpoint

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_llada(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("filter_llada"), "llada", seed=11, std=1.0)
    return dlm.load(path, device="cpu")


@pytest.fixture(scope="session")
def tiny_dream(tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("filter_dream"), "Dream", seed=12, std=1.0)
    return dlm.load(path, device="cpu")
