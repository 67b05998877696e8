"""Bundled models. ``dlm-tiny`` (and its causal twin ``dlm-tiny-ar``) live in this package folder."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent


def default_model_path() -> Path:
    """The folder of the bundled dlm-tiny checkpoint."""
    path = ASSETS / "dlm-tiny"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the bundled dlm-tiny model is missing from {path}; pass a checkpoint folder instead")
    return path


def default_verifier_path() -> Path:
    """The folder of the bundled dlm-tiny-ar causal model (the verifier of the causal lossless mode)."""
    path = ASSETS / "dlm-tiny-ar"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the bundled dlm-tiny-ar model is missing from {path}; pass a verifier folder instead")
    return path
