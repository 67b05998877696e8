"""Native model implementations (LLaDA, Dream), the architecture registry and checkpoint loading."""

from .base import MODELS, Architecture, SpecialIds, register_model
from .transformer import ArchConfig, Transformer, init_weights
from . import llada, dream, llada2, sdar, llada_moe  # noqa: E402,F401  (importing registers them)
from .loading import build_model, save_checkpoint

__all__ = [
    "MODELS", "Architecture", "ArchConfig", "SpecialIds", "Transformer", "build_model", "init_weights",
    "register_model", "save_checkpoint",
]
