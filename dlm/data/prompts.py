"""Prompt files: JSONL, one prompt a line, as ``dlm generate --input`` and ``dlm train-filter --prompts`` read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def read_prompt_lines(path: Path) -> list[tuple[int, str | list[int], dict[str, Any]]]:
    """The prompts of a JSONL file, as ``dlm generate --input`` reads it: each line a JSON string, or an object
    with ``prompt`` (text) or ``prompt_ids`` (token ids). Returns (line number, prompt, the line's object or {})
    for each non-empty line; ConfigError naming the file and line for anything else."""
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the prompt file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); prompt files are JSONL in UTF-8") from exc
    rows: list[tuple[int, str | list[int], dict[str, Any]]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n} is not valid JSON: {exc}") from exc
        if isinstance(item, str):
            rows.append((n, item, {}))
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            rows.append((n, item["prompt"], item))
        elif isinstance(item, dict) and isinstance(item.get("prompt_ids"), list):
            ids = item["prompt_ids"]
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
                raise ConfigError(f"{path}:{n}: 'prompt_ids' must be a list of integer token ids, got {ids!r}"[:300])
            rows.append((n, ids, item))
        else:
            raise ConfigError(f"{path}:{n}: each line must be a JSON string or an object with 'prompt' (text) "
                              "or 'prompt_ids' (token ids)")
    if not rows:
        raise ConfigError(f"{path} holds no prompts")
    return rows
