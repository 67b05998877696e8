"""What ``dlm bench`` runs: the :class:`Suite` (tasks, sizes, shapes, settings, methods), the named methods and
the grid presets.

A :class:`Suite` is *what* to run methods (:mod:`dlm.bench.methods`) on: task families, example counts, the shape
axes (gen_length x block_length x batch size) and the measurement settings. Every method runs at every shape; each
shape is a *group* whose first row is always :data:`~dlm.bench.methods.REFERENCE`, the row every ratio of the group
is measured against.

Named methods (:data:`NAMED`) and grid presets (:data:`SUITES`) are defined here and only here. The project's
recommended fast setting is :data:`BEST`: tune it in this one place.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..data import CODE, FAMILIES, STRESS_FAMILIES
from ..errors import ConfigError
from .best import best_fields
from .methods import REFERENCE, Method, grid_methods

#: The project's recommended fast setting (the ``best`` preset): the method chosen by ``dlm bench choose-best``
#: (:mod:`dlm.bench.choose`: the fewest forward passes within 0.5 points of the reference decode on every
#: family and length bucket of the stress families' tuning split), read from ``dlm/bench/best.json``
#: (:mod:`dlm.bench.best`). Never edit it by hand: rerun the command. For a model without a learned filter of its
#: own, ``fast-dllm`` (threshold 0.9 + dual) is the filter-free choice.
BEST: dict[str, Any] = best_fields()


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
        tasks: synthetic families of :mod:`dlm.data.tasks` and/or ``"code"`` (held-out stdlib functions).
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
        split: the split the synthetic examples are drawn from: ``test`` (evaluation) or ``val`` (tuning; the
            stress families draw other lengths there, :mod:`dlm.data.stress`).
        breakdown: report accuracy and NFE by answer length and dependency bucket (:mod:`dlm.bench.breakdown`).
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
    split: str = "test"
    breakdown: bool = False
    methods: tuple[Method, ...] = ()

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 - frozen dataclass
        for name in ("tasks", "gen_length", "block_length", "batch_size", "methods"):
            value = getattr(self, name)
            set_(name, tuple(value) if isinstance(value, (list, tuple)) else (value,))
        known = FAMILIES + STRESS_FAMILIES + (CODE,)
        unknown = [t for t in self.tasks if t not in known]
        if unknown:
            raise ConfigError(f"unknown task(s) {unknown}; known: {', '.join(known)}")
        if self.split not in ("val", "test"):
            raise ConfigError(f"split must be 'test' (evaluation) or 'val' (tuning), got {self.split!r}")
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


def _stress_methods() -> tuple[Method, ...]:
    """The named methods; with the dual cache and EoTP (``best``'s setting), the threshold rule from 0.7 to 0.99,
    the learned filter at three thresholds, factor, early commit and LLaDA's fixed 4 tokens per step: the
    candidates ``dlm bench choose-best`` picks ``best`` from. Short names (``threshold-0.9``): each of them runs
    with ``dual`` + ``eotp``."""
    specs = [(f"threshold-{t}", "threshold", {"threshold": t}, {}) for t in (0.7, 0.8, 0.9, 0.95, 0.99)]
    specs += [(f"filter-{t}", "learned_filter", {"threshold": t}, {}) for t in (0.9, 0.96, 0.99)]
    specs += [("factor-1.0", "factor", {"factor": 1.0}, {}),
              ("early-commit-0.9", "early_commit", {"inner": "threshold", "inner_kwargs": {"threshold": 0.9}}, {}),
              ("4-per-step", "low_confidence", {}, {"tokens_per_step": 4})]
    grid = [Method(name, {"scheduler": s, "scheduler_kwargs": kw, "cache": "dual", "eotp": True, **extra},
                   f"{s} with the dual cache and EoTP (a candidate of the best preset)", "preset")
            for name, s, kw, extra in specs]
    named_fields = [dict(m.fields) for m in NAMED.values()]
    return tuple(NAMED.values()) + tuple(m for m in grid if dict(m.fields) not in named_fields)


#: Grid presets. ``quick``: every named method on 28 examples (4 per family + 4 functions), two timed repeats and
#: a 2-row warm-up; on a CPU with a dlm-tiny-sized model it runs in about 7 minutes (``--threads 1`` on a shared
#: machine). ``full``: 64 test examples per family + 64 functions, two generation lengths, the named methods plus
#: 14 scheduler x cache combinations, three repeats and full-batch warm-up (meant for a GPU). ``stress``: the
#: stress families (:mod:`dlm.data.stress`), 8 per family, every named method and the candidates of ``best``,
#: with the breakdown by answer length and dependency; one timed pass (the figures are accuracy and NFE).
SUITES: dict[str, Suite] = {
    "quick": Suite(n=4, code_n=4, gen_length=(32,), batch_size=(16,), repeats=2, warmup=1, warmup_rows=2,
                   methods=tuple(NAMED.values())),
    "full": Suite(n=64, code_n=64, gen_length=(32, 128), batch_size=(64,), repeats=3, warmup=1,
                  methods=_full_methods()),
    "stress": Suite(tasks=STRESS_FAMILIES, n=8, gen_length=(32,), batch_size=(64,), repeats=1, warmup=1,
                    warmup_rows=2, breakdown=True, methods=_stress_methods()),
}


def suite_preset(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise ConfigError(f"unknown grid preset {name!r}; known: {', '.join(SUITES)}") from None
