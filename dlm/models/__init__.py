"""Native model implementations (LLaDA, Dream), the architecture registry and checkpoint loading."""

from .base import MODELS, Architecture, SpecialIds, register_model
from .transformer import ArchConfig, Transformer, init_weights
from . import llada, dream  # noqa: E402,F401  (importing registers them)
from .lm import DiffusionLM, from_model, load
from .loading import build_model, save_checkpoint

__all__ = [
    "MODELS", "Architecture", "ArchConfig", "DiffusionLM", "SpecialIds", "Transformer", "build_model", "from_model",
    "init_weights", "load", "register_model", "save_checkpoint",
]
