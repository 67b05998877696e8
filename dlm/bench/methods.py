"""A decoding method of ``dlm bench``: *how* to decode, and the text forms a grid writes it in.

A :class:`Method` is every :class:`~dlm.config.GenerationConfig` field except the shape of the run
(``gen_length``, ``block_length``, ``seed``), plus ``tokens_per_step`` (``steps = gen_length / tokens_per_step``,
LLaDA's fixed-quota knob). Grids write methods as axes of specs (:func:`parse_component`) whose cartesian product
:func:`grid_methods` builds. The named methods and suites are :mod:`dlm.bench.presets`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from ..config import GenerationConfig
from ..errors import ConfigError
from ..kvargs import parse_value

#: the reference configuration's name: first row of every group, the row every ratio is measured against
REFERENCE = "llada-reference"

# fields of GenerationConfig a method may not set: the suite's shape axes and seed decide them
SHAPE_FIELDS = ("gen_length", "block_length", "seed", "return_trace")
_CONFIG_FIELDS = {f.name for f in dataclasses.fields(GenerationConfig)}
METHOD_FIELDS = (_CONFIG_FIELDS - set(SHAPE_FIELDS)) | {"tokens_per_step"}


@dataclass(frozen=True)
class Method:
    """A decoding method: a name and the GenerationConfig fields it sets (see the module docstring).

    Attributes:
        name: the row's name in the report.
        fields: GenerationConfig fields (``scheduler``, ``scheduler_kwargs``, ``cache``, ``cache_kwargs``,
            ``verify``, ``verify_kwargs``, ``eotp``, ``steps``, ...) and optionally ``tokens_per_step``.
        description: one line for the report.
        source: where it came from: ``preset``, ``grid`` or ``file``.
    """

    name: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "preset"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"a configuration needs a non-empty name, got {self.name!r}")
        shape = sorted(set(self.fields) & set(SHAPE_FIELDS))
        if shape:
            raise ConfigError(f"configuration {self.name!r} sets {', '.join(shape)}; those are axes of the suite "
                              "(--gen-length, --block-length, --seed), not of a configuration")
        unknown = sorted(set(self.fields) - METHOD_FIELDS)
        if unknown:
            raise ConfigError(f"configuration {self.name!r} has unknown field(s) {', '.join(unknown)}; allowed: "
                              f"{', '.join(sorted(METHOD_FIELDS))}")
        if "steps" in self.fields and "tokens_per_step" in self.fields:
            raise ConfigError(f"configuration {self.name!r} sets both steps and tokens_per_step; give one")
        try:
            frozen = json.loads(json.dumps(dict(self.fields)))
        except TypeError as exc:
            raise ConfigError(f"configuration {self.name!r} must be JSON-serialisable: {exc}") from exc
        object.__setattr__(self, "fields", MappingProxyType(frozen))

    def config(self, gen_length: int, block_length: int | None, seed: int) -> GenerationConfig:
        """The GenerationConfig of this method at one shape (validated; raises ConfigError/RegistryError)."""
        d = dict(self.fields)
        tps = d.pop("tokens_per_step", None)
        if tps is not None:
            if isinstance(tps, bool) or not isinstance(tps, int) or tps < 1 or gen_length % tps:
                raise ConfigError(f"tokens_per_step={tps!r} of {self.name!r} must be a positive divisor of "
                                  f"gen_length={gen_length}")
            d["steps"] = gen_length // tps
        return GenerationConfig.from_dict({**d, "gen_length": gen_length, "block_length": block_length, "seed": seed})

    def label(self) -> str:
        """A short description of what the method does: ``threshold(threshold=0.9) + dual + eotp``."""
        return describe(self.fields)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "fields": dict(self.fields), "description": self.description,
                "source": self.source}


def _kw(kwargs: Mapping[str, Any] | None) -> str:
    if not kwargs:
        return ""
    return "(" + ", ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}"
                           for k, v in kwargs.items()) + ")"


def describe(fields: Mapping[str, Any]) -> str:
    parts = [fields.get("scheduler", "low_confidence") + _kw(fields.get("scheduler_kwargs"))]
    parts.append(fields.get("cache", "none") + _kw(fields.get("cache_kwargs")))
    if fields.get("verify"):
        parts.append(f"verify={fields['verify']}" + _kw({k: v for k, v in (fields.get("verify_kwargs") or {}).items()
                                                        if k != "verifier"}))
    for k, v in fields.items():
        if k in ("scheduler", "scheduler_kwargs", "cache", "cache_kwargs", "verify", "verify_kwargs"):
            continue
        parts.append(k if v is True else f"{k}={v}")
    return " + ".join(parts)


def parse_component(spec: Any, what: str) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """One axis value of a grid: ``(name, kwargs, extra GenerationConfig fields)``.

    Accepted forms: ``"name"``; ``"name:key=value,key=value"`` (values read as JSON when they parse);
    ``"name:{...json kwargs...}"``; ``{"name": ..., "kwargs": {...}, <other fields>}``; ``None``/``"none"`` for
    the verifier axis (no verifier). For the scheduler axis the extra fields may hold ``tokens_per_step``,
    ``steps``, ``eotp``..., which is how ``{"name": "low_confidence", "tokens_per_step": 4}`` is written.
    """
    if spec is None:
        return None, {}, {}
    if isinstance(spec, Mapping):
        d = dict(spec)
        name = d.pop("name", None)
        kwargs = d.pop("kwargs", {}) or {}
        if not isinstance(name, (str, type(None))) or not isinstance(kwargs, Mapping):
            raise ConfigError(f"a {what} entry must look like {{\"name\": ..., \"kwargs\": {{...}}}}, got {spec!r}")
        return name, dict(kwargs), d
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"a {what} must be a name, 'name:key=value,...' or a mapping; got {spec!r}")
    name, sep, rest = spec.partition(":")
    rest = rest.strip()
    if not sep or not rest:
        return name, {}, {}
    if rest.startswith("{"):
        try:
            kwargs = json.loads(rest)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"cannot read the parameters of {what} {spec!r} as JSON: {exc}") from exc
        if not isinstance(kwargs, dict):
            raise ConfigError(f"the parameters of {what} {spec!r} must be a JSON object")
        return name, kwargs, {}
    kwargs = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"{what} {spec!r}: expected key=value after ':', got {item!r}")
        kwargs[key.strip()] = parse_value(value.strip())
    return name, kwargs, {}


def grid_methods(grid: Mapping[str, Any]) -> list[Method]:
    """The cartesian product scheduler x cache x verify of a grid mapping (each axis a value or a list; missing
    axes default to low_confidence / none / no verifier), with the fields of ``set`` added to every method."""
    known = {"scheduler", "cache", "verify", "set"}
    unknown = sorted(set(grid) - known)
    if unknown:
        raise ConfigError(f"unknown grid key(s) {', '.join(unknown)}; a grid has {', '.join(sorted(known))} "
                          "(shape axes gen_length / block_length / batch_size belong to the suite)")

    def axis(key: str, default: Any) -> list[Any]:
        v = grid.get(key, default)
        return list(v) if isinstance(v, (list, tuple)) else [v]

    extra = dict(grid.get("set") or {})
    out = []
    for s, c, v in itertools.product(axis("scheduler", ["low_confidence"]), axis("cache", ["none"]),
                                     axis("verify", [None])):
        s_name, s_kw, s_extra = parse_component(s, "scheduler")
        c_name, c_kw, c_extra = parse_component(c, "cache")
        v_name, v_kw, v_extra = parse_component(v, "verifier")
        if c_extra or v_extra:
            raise ConfigError(f"only scheduler entries may carry extra fields; got {c!r} / {v!r}")
        if v_name in ("none", "null", ""):
            v_name, v_kw = None, {}
        fields: dict[str, Any] = {"scheduler": s_name or "low_confidence"}
        if s_kw:
            fields["scheduler_kwargs"] = s_kw
        fields["cache"] = c_name or "none"
        if c_kw:
            fields["cache_kwargs"] = c_kw
        if v_name:
            fields["verify"] = v_name
            if v_kw:
                fields["verify_kwargs"] = v_kw
        fields.update(s_extra)
        fields.update(extra)
        out.append(Method(describe(fields), fields, "", "grid"))
    return out
