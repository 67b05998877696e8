"""The file behind the ``best`` preset: ``dlm/bench/best.json`` (package data), written by ``dlm bench choose-best``
(:mod:`dlm.bench.choose`) and read when :mod:`dlm.bench.presets` is imported.

The file holds the chosen method's GenerationConfig fields, the rule it was chosen by, the tuning run it was
chosen on (command, date, suite, model) and every candidate's figures, so that the choice can be checked and
repeated. Nobody edits the fields by hand: rerun the command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError

FORMAT = "dlm-best-preset"
VERSION = 1
BEST_FILE = Path(__file__).with_name("best.json")


def read_best(path: str | Path | None = None) -> dict[str, Any]:
    """The best-preset file (``BEST_FILE`` by default) as a mapping, checked: format, version, a ``method``
    with a ``fields`` mapping. ConfigError naming the file otherwise."""
    path = Path(path) if path is not None else BEST_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read the best-preset file {path}: {exc}; rewrite it with `dlm bench "
                          "choose-best`") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ConfigError(f"{path} is not a {FORMAT!r} file of version {VERSION}; rewrite it with `dlm bench "
                          "choose-best`")
    method = data.get("method")
    if not isinstance(method, Mapping) or not isinstance(method.get("fields"), Mapping) or not method.get("name"):
        raise ConfigError(f"{path}: 'method' must be {{\"name\": ..., \"fields\": {{...}}}}, got {method!r}")
    return data


def best_fields(path: str | Path | None = None) -> dict[str, Any]:
    """The GenerationConfig fields of the chosen method."""
    return dict(read_best(path)["method"]["fields"])


def write_best(data: Mapping[str, Any], path: str | Path | None = None) -> Path:
    """Write a best-preset mapping (``format`` and ``version`` added), checked by reading it back."""
    path = Path(path) if path is not None else BEST_FILE
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, **data}, indent=1) + "\n")
    read_best(path)
    return path
