"""Fields of a checkpoint's JSON files, read with their type and range checked.

A broken ``config.json`` (``n_heads: 0``, a negative ``max_sequence_length``, ``"weight_tying": "false"``, a
mask token id outside the vocabulary) fails at load time with a :class:`CheckpointError` naming the file and the
field, never later as a ZeroDivisionError or an index error inside torch.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import CheckpointError

REQUIRED: Any = object()
TOKEN_ID_FIELDS = ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")


def _value(cfg: dict[str, Any], key: str, default: Any, source: str) -> Any:
    value = cfg.get(key)
    if value is None:
        if default is REQUIRED:
            raise CheckpointError(f"{source} has no {key!r} field (required)")
        return default
    return value


def int_field(cfg: dict[str, Any], key: str, default: Any = REQUIRED, *, minimum: int = 1,
              source: str = "config.json") -> int:
    """``cfg[key]`` as an integer >= ``minimum``; ``default`` when absent or null."""
    value = _value(cfg, key, default, source)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{source} field {key!r} must be an integer, got {value!r}")
    if value < minimum:
        raise CheckpointError(f"{source} field {key!r} must be >= {minimum}, got {value}")
    return value


def float_field(cfg: dict[str, Any], key: str, default: Any = REQUIRED, *, source: str = "config.json") -> float:
    """``cfg[key]`` as a finite number > 0 (epsilons, RoPE bases); ``default`` when absent or null."""
    value = _value(cfg, key, default, source)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{source} field {key!r} must be a finite number > 0, got {value!r}")
    return float(value)


def bool_field(cfg: dict[str, Any], key: str, default: bool, *, source: str = "config.json") -> bool:
    """``cfg[key]`` as true/false (never the truthiness of a string such as ``"false"``)."""
    value = _value(cfg, key, default, source)
    if not isinstance(value, bool):
        raise CheckpointError(f"{source} field {key!r} must be true or false, got {value!r}")
    return value


def check_token_ids(cfg: dict[str, Any], rows: int, *, source: str = "config.json") -> None:
    """The special token ids ``cfg`` sets (mask, EOS, pad, BOS) must be ids of the embedding's ``rows``.
    ``eos_token_id`` may be a list (several end tokens), as in Hugging Face configs."""
    for key in TOKEN_ID_FIELDS:
        value = cfg.get(key)
        if value is None:
            continue
        ids = value if key == "eos_token_id" and isinstance(value, list) and value else [value]
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < rows:
                raise CheckpointError(f"{source} field {key!r} must be a token id in [0, {rows}) (the "
                                      f"vocabulary), got {value!r}")


def sampling_defaults(cfg: dict[str, Any], source: str) -> dict[str, Any]:
    """The sampling filters a checkpoint file sets (``top_k``: integer >= 0, 0 = off; ``top_p``: in (0, 1],
    1 = off), checked; fields absent or null are left out."""
    out: dict[str, Any] = {}
    if cfg.get("top_k") is not None:
        out["top_k"] = int_field(cfg, "top_k", minimum=0, source=source)
    if cfg.get("top_p") is not None:
        top_p = cfg["top_p"]
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
            raise CheckpointError(f"{source} field 'top_p' must be a number in (0, 1], got {top_p!r}")
        out["top_p"] = float(top_p)
    return out
