"""What ``dlm bench`` runs: decoding methods (named presets and grids of them) and suites (tasks, sizes, shapes).

A :class:`Method` is *how* to decode: every :class:`~dlm.config.GenerationConfig` field except the shape of the
run (``gen_length``, ``block_length``, ``seed``), plus ``tokens_per_step`` (``steps = gen_length /
tokens_per_step``, LLaDA's fixed-quota knob). A :class:`Suite` is *what* to run it on: task families, example
counts, the shape axes (gen_length x block_length x batch size) and the measurement settings. Every method runs at
every shape; each shape is a *group* whose first row is always :data:`REFERENCE`, the row every ratio of the group
is measured against.

Named methods (:data:`NAMED`) and grid presets (:data:`SUITES`) are defined here and only here. The project's
recommended fast setting is :data:`BEST`: tune it in this one place.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from ..config import GenerationConfig
from ..errors import ConfigError
from .tasks import FAMILIES

CODE = "code"  # the task name of held-out standard-library code completion
REFERENCE = "llada-reference"

#: The project's recommended fast setting (the ``best`` preset): the learned filter (Learn2PD; the filter shipped
#: for dlm-tiny unless ``scheduler_kwargs={"path": ...}`` names another) with the dual block cache and end-of-text
#: prediction. On dlm-tiny it needs about half the forward passes of Fast-dLLM's threshold 0.9 + dual at the same
#: or better accuracy; without EoTP the dual cache lost 2 points at gen_length 128 (BENCHMARKS.md). For a model
#: without a filter of its own, ``fast-dllm`` (threshold 0.9 + dual) is the filter-free choice.
BEST: dict[str, Any] = {"scheduler": "learned_filter", "cache": "dual", "eotp": True}

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


# ------------------------------------------------------------------------------------------------ named methods
NAMED: dict[str, Method] = {m.name: m for m in (
    Method(REFERENCE, {"scheduler": "low_confidence", "cache": "none"},
           "LLaDA's sampler: low_confidence, one token per step (steps = gen_length), no cache; the reference"),
    Method("fast-dllm", {"scheduler": "threshold", "scheduler_kwargs": {"threshold": 0.9}, "cache": "dual"},
           "Fast-dLLM: confidence threshold 0.9 + dual block cache"),
    Method("dkv", {"scheduler": "low_confidence", "cache": "delayed", "cache_kwargs": {"refresh_every": 4}},
           "dKV-Cache-Decode: delayed cache (refresh every 4 steps), low_confidence one token per step"),
    Method("prophet", {"scheduler": "early_commit", "scheduler_kwargs": {"inner": "low_confidence"}},
           "Prophet: early commit (top-2 logit gap) wrapping low_confidence"),
    Method("learn2pd", {"scheduler": "learned_filter", "eotp": True},
           "Learn2PD: learned filter scheduler + end-of-text prediction"),
    Method("lossless-stepwise", {"scheduler": "low_confidence", "cache": "none", "verify": "stepwise"},
           "lossless w.r.t. the one-token-per-step decode (FreeDave-style nested drafts)"),
    Method("lossless-causal", {"scheduler": "low_confidence", "cache": "none", "verify": "causal"},
           "lossless w.r.t. a causal LM verifier (greedy output = the causal model's)"),
    Method("best", BEST, "the project's recommended fast setting (dlm.bench.presets.BEST)"),
)}


def named(name: str) -> Method:
    """The named method ``name``; the error lists the known names."""
    try:
        return NAMED[name]
    except KeyError:
        raise ConfigError(f"unknown configuration preset {name!r}; known: {', '.join(NAMED)}") from None


# ------------------------------------------------------------------------------------------------ suites
@dataclass(frozen=True)
class Suite:
    """Tasks, shapes and measurement settings of one benchmark run, and the methods to run.

    Attributes:
        tasks: synthetic families of :mod:`dlm.bench.tasks` and/or ``"code"`` (held-out stdlib functions).
        n: test-split examples per synthetic family.
        code_n: held-out functions to complete (when ``"code"`` is in ``tasks``).
        gen_length: generation lengths of the synthetic tasks (a shape axis).
        code_gen_length: generation length of code completion.
        code_prompt_tokens: longest code prompt kept, in tokens.
        block_length: block lengths (a shape axis; ``None``: GenerationConfig's default).
        batch_size: batch sizes (a shape axis).
        repeats: timed repeats of each configuration (the median is reported).
        warmup: untimed passes over the first batch of each kind before timing.
        warmup_rows: rows of that warm-up batch (``None``: a full batch, the same shape as the timed batches,
            which a GPU needs; on a CPU a couple of rows warm up as well and cost less).
        seed: seed of the task examples, of every GenerationConfig and of torch.
        methods: the configurations; the reference is added in front when missing.
    """

    tasks: tuple[str, ...] = FAMILIES + (CODE,)
    n: int = 4
    code_n: int = 6
    gen_length: tuple[int, ...] = (32,)
    code_gen_length: int = 64
    code_prompt_tokens: int = 96
    block_length: tuple[int | None, ...] = (32,)
    batch_size: tuple[int, ...] = (16,)
    repeats: int = 1
    warmup: int = 1
    warmup_rows: int | None = None
    seed: int = 0
    methods: tuple[Method, ...] = ()

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        for name in ("tasks", "gen_length", "block_length", "batch_size", "methods"):
            value = getattr(self, name)
            set_(name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        unknown = [t for t in self.tasks if t not in FAMILIES and t != CODE]
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}; known: {', '.join(FAMILIES + (CODE,))}")
        if not self.tasks:
            raise ConfigError("the suite needs at least one task")
        for name, lo in (("n", 0), ("code_n", 0), ("code_gen_length", 1), ("code_prompt_tokens", 1), ("repeats", 1),
                         ("warmup", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name in ("gen_length", "batch_size"):
            vals = getattr(self, name)
            if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in vals):
                raise ConfigError(f"{name} must be a non-empty list of positive integers, got {list(vals)!r}")
        if not self.block_length or any(v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1)
                                        for v in self.block_length):
            raise ConfigError(f"block_length must be a non-empty list of positive integers (or null), "
                              f"got {list(self.block_length)!r}")
        if self.warmup_rows is not None and (isinstance(self.warmup_rows, bool) or not isinstance(self.warmup_rows, int)
                                             or self.warmup_rows < 1):
            raise ConfigError(f"warmup_rows must be a positive integer or null, got {self.warmup_rows!r}")
        names = [m.name for m in self.methods]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"configuration name(s) {dupes} appear more than once with different settings")

    @property
    def shapes(self) -> list[tuple[int, int | None, int]]:
        """(gen_length, block_length, batch_size) of every group, in order."""
        return list(itertools.product(self.gen_length, self.block_length, self.batch_size))

    def with_reference(self) -> tuple[Method, ...]:
        """The methods with :data:`REFERENCE` first (added when missing, moved to the front when present)."""
        rest = tuple(m for m in self.methods if m.name != REFERENCE)
        ref = next((m for m in self.methods if m.name == REFERENCE), NAMED[REFERENCE])
        return (ref,) + rest

    def replace(self, **changes: Any) -> "Suite":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "methods"}
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
        d["methods"] = [m.to_dict() for m in self.methods]
        return d


SUITE_FIELDS = tuple(f.name for f in dataclasses.fields(Suite) if f.name != "methods")


# ------------------------------------------------------------------------------------------------ parsing
def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


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
        kwargs[key.strip()] = _value(value.strip())
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
    """A suite from a grid file's mapping (see ``notes/README-bench.md`` for the schema).

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


# ------------------------------------------------------------------------------------------------ grid presets
def _grid(schedulers: Sequence[Any], caches: Sequence[Any], verifiers: Sequence[Any] = (None,),
          extra: Mapping[str, Any] | None = None) -> list[Method]:
    return grid_methods({"scheduler": list(schedulers), "cache": list(caches), "verify": list(verifiers),
                         "set": dict(extra or {})})


def _full_methods() -> tuple[Method, ...]:
    """The named methods; Fast-dLLM's threshold and LLaDA's fixed 4 tokens/step over every cache policy; other
    parallel rules with the dual cache."""
    by_cache = _grid(["threshold:threshold=0.9", {"name": "low_confidence", "tokens_per_step": 4}],
                     ["none", "prefix", "dual", "delayed", "window"])
    with_dual = _grid(["threshold:threshold=0.7", "threshold:threshold=0.8", "threshold:threshold=0.95",
                       "factor:factor=1.0", 'early_commit:{"inner": "threshold", "inner_kwargs": {"threshold": 0.9}}'],
                      ["dual"])
    named_fields = [dict(m.fields) for m in NAMED.values()]
    grid = [m for m in by_cache + with_dual if dict(m.fields) not in named_fields]  # fast-dllm is threshold + dual
    return tuple(NAMED.values()) + tuple(grid)


#: Grid presets. ``quick``: every named method on 28 examples (4 per family + 4 functions), two timed repeats and
#: a 2-row warm-up; on a CPU with a dlm-tiny-sized model it runs in about 7 minutes (``--threads 1`` on a shared
#: machine). ``full``: 64 test examples per family + 64 functions, two generation lengths, the named methods plus
#: 14 scheduler x cache combinations, three repeats and full-batch warm-up (meant for a GPU).
SUITES: dict[str, Suite] = {
    "quick": Suite(n=4, code_n=4, gen_length=(32,), batch_size=(16,), repeats=2, warmup=1, warmup_rows=2,
                   methods=tuple(NAMED.values())),
    "full": Suite(n=64, code_n=64, gen_length=(32, 128), batch_size=(64,), repeats=3, warmup=1,
                  methods=_full_methods()),
}


def suite_preset(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ConfigError(f"unknown grid preset {name!r}; known: {', '.join(SUITES)}") from None
