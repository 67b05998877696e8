"""Grid files of ``dlm bench --grid``: suite settings, named or explicit configurations and grids, in JSON (or YAML
when PyYAML is installed); the schema is in docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..errors import ConfigError
from .methods import Method, grid_methods
from .presets import SUITE_FIELDS, Suite, named, suite_preset


def method_from_entry(entry: Any) -> Method:
    """A ``configs`` entry of a grid file: a named preset (string) or ``{"name": ..., <fields>}``."""
    if isinstance(entry, str):
        return named(entry)
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ConfigError(f"a configs entry must be a preset name or a mapping with a name, got {entry!r}")
    d = dict(entry)
    name = d.pop("name")
    desc = d.pop("description", "")
    return Method(name, d, desc, "file")


def read_grid_file(path: str | Path) -> dict[str, Any]:
    """A grid file as a mapping: JSON (``.json``) or, when PyYAML is importable, YAML (``.yaml``/``.yml``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read grid file {path}: {exc}") from exc
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed (pip install pyyaml), or write it as "
                              "JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse {path} as YAML: {exc}") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"cannot parse {path} as JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping (suite settings, configs, grid), got {type(data).__name__}")
    return data


FILE_KEYS = set(SUITE_FIELDS) | {"preset", "configs", "grid"}


def suite_from_mapping(data: Mapping[str, Any], base: Suite | None = None) -> Suite:
    """A suite from a grid file's mapping (see docs/benchmarks.md for the schema).

    ``preset`` starts from a grid preset (its methods included); suite fields override it; ``configs`` (preset
    names or explicit configurations) and ``grid`` (a mapping or a list of mappings) add methods.
    """
    unknown = sorted(set(data) - FILE_KEYS)
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in the grid file; known: "
                          f"{', '.join(sorted(FILE_KEYS))}")
    suite = suite_preset(data["preset"]) if data.get("preset") else (base or Suite())
    changes = {k: data[k] for k in SUITE_FIELDS if k in data}
    methods = list(suite.methods) if data.get("preset") else []
    for entry in data.get("configs") or []:
        methods.append(method_from_entry(entry))
    grids = data.get("grid") or []
    for g in ([grids] if isinstance(grids, Mapping) else grids):
        if not isinstance(g, Mapping):
            raise ConfigError(f"a grid must be a mapping of axes, got {g!r}")
        methods.extend(grid_methods(g))
    if methods or "configs" in data or "grid" in data:
        changes["methods"] = tuple(dedupe(methods))
    return suite.replace(**changes)


def dedupe(methods: Iterable[Method]) -> list[Method]:
    """Methods in order, one per name: a later method of the same name replaces the earlier one in its place
    (so a grid file's ``{"name": "learn2pd", ...}`` overrides the preset's settings)."""
    out: dict[str, Method] = {}
    for m in methods:
        out[m.name] = m
    return list(out.values())
