"""Settings written as text: ``key=value`` pairs whose values are read as JSON when they parse.

The form of ``dlm generate --scheduler-arg``, ``dlm bench --set`` and the ``name:key=value,...`` specs of bench
grids, parsed here once for all of them.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from .errors import ConfigError


def parse_value(text: str) -> Any:
    """``text`` as JSON when it parses (numbers, true, null, lists, objects), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_kv(items: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``key=value`` pairs (values through :func:`parse_value`); ConfigError naming ``--what`` for anything else."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--{what} expects key=value, got {item!r}")
        out[key] = parse_value(value)
    return out
