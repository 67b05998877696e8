"""The settings one request runs with, resolved against the model once per request.

A :class:`GenerationConfig` field left unset (``None``) is filled in this order, first that applies:

1. the explicit value in the config (or a keyword override);
2. the checkpoint's ``generation_config.json``;
3. the format's official default (:meth:`Architecture.generation_defaults`; Dream: top_k=50, top_p=1.0, what its
   ``diffusion_generate`` effectively uses, see :mod:`dlm.models.dream`).

Resolved fields: ``top_k`` and ``top_p``. ``top_k=0`` and ``top_p=1.0`` switch a filter off explicitly, so
"unset" and "off" stay distinct. The result is what the engine runs: in it, ``None`` means no filter. For a
block-diffusion model (LLaDA2, SDAR) an unset ``block_length`` is the model's own block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import GenerationConfig
from ..errors import ConfigError
from ..models.files import read_generation_config

if TYPE_CHECKING:
    from .lm import DiffusionLM

RESOLVED_FIELDS = ("top_k", "top_p")


def format_defaults(lm: "DiffusionLM") -> dict:
    """Defaults of ``lm``'s checkpoint: its format's official ones, overridden by its generation_config.json
    (read once per model)."""
    cached = getattr(lm, "_generation_defaults", None)
    if cached is None:
        cached = dict(lm.arch_cls.generation_defaults(lm.hf_config))
        if lm.path is not None:
            cached.update(read_generation_config(lm.path))
        lm._generation_defaults = cached
    return cached


def effective_config(lm: "DiffusionLM", config: GenerationConfig) -> GenerationConfig:
    """``config`` with its unset fields resolved for ``lm`` (see the module doc) and checked against it."""
    defaults = format_defaults(lm)
    changes = {name: defaults[name] for name in RESOLVED_FIELDS if getattr(config, name) is None and name in defaults}
    block = getattr(lm, "block_size", None)
    if block is not None and config.block_length is None:  # a block-diffusion model decodes its own blocks
        if config.gen_length % block:
            raise ConfigError(f"gen_length={config.gen_length} must be a multiple of {lm.model_type}'s block of "
                              f"{block} (e.g. {-(-config.gen_length // block) * block}), or set block_length")
        changes["block_length"] = block
    if changes.get("top_k", config.top_k) == 0:
        changes["top_k"] = None  # off: the engine's filters read None as no filter
    check_stop_ids(lm, config)
    return config.replace(**changes) if changes else config


def check_stop_ids(lm: "DiffusionLM", config: GenerationConfig) -> None:
    """Stop tokens must be ids of the model's vocabulary (one that is not could never end an answer)."""
    vocab = lm.arch.valid_vocab or lm.arch.vocab_size
    bad = [t for t in config.stop_token_ids or () if not 0 <= t < vocab]
    if bad:
        raise ConfigError(f"stop_token_ids {bad[:5]} are outside the model's vocabulary [0, {vocab})")
