"""Bundled models: ``dlm-tiny`` (and its causal twin ``dlm-tiny-ar``) and ``dlm-tiny-block`` live in this package
folder. The diffusion ones can be named instead of a folder (``dlm generate --model dlm-tiny-block``)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

ASSETS = Path(__file__).resolve().parent

#: the diffusion models shipped here, selectable by name where a checkpoint folder is expected
BUNDLED_MODELS = ("dlm-tiny", "dlm-tiny-block")


def bundled_model_path(name: str) -> Path:
    """The folder of the bundled diffusion model ``name`` (one of :data:`BUNDLED_MODELS`)."""
    if name not in BUNDLED_MODELS:
        raise CheckpointError(f"no bundled model is called {name!r}; bundled: {', '.join(BUNDLED_MODELS)}")
    path = ASSETS / name
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the bundled {name} model is missing from {path}; pass a checkpoint folder instead")
    return path


def resolve_model(model: str | None) -> str | Path | None:
    """A ``--model`` value: a bundled model's name gives its folder, unless a path of that name exists (a folder
    of the user's); anything else is returned unchanged (``None``: the loader's default, dlm-tiny)."""
    if model is None or model not in BUNDLED_MODELS or Path(model).exists():
        return model
    return bundled_model_path(model)


def default_model_path() -> Path:
    """The folder of the bundled dlm-tiny checkpoint."""
    return bundled_model_path("dlm-tiny")


def default_verifier_path() -> Path:
    """The folder of the bundled dlm-tiny-ar causal model (the verifier of the causal lossless mode)."""
    path = ASSETS / "dlm-tiny-ar"
    if not (path / "config.json").is_file():
        raise CheckpointError(f"the bundled dlm-tiny-ar model is missing from {path}; pass a verifier folder instead")
    return path
