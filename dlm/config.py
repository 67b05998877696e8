"""GenerationConfig: every setting of one generation, frozen, validated field by field, JSON round-trip."""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any, Mapping

from .errors import ConfigError
from .sampling import SAMPLING_MODES

DEFAULT_BLOCK = 32
MAX_SEED = 2**64 - 1


def _freeze(kwargs: Mapping[str, Any] | None, what: str) -> Mapping[str, Any]:
    if kwargs is None:
        return MappingProxyType({})
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{what} must be a mapping of parameter names to values, got {kwargs!r}")
    try:
        json.dumps(dict(kwargs))
    except TypeError as exc:
        raise ConfigError(f"{what} must be JSON-serialisable: {exc}") from exc
    return MappingProxyType(dict(kwargs))


@dataclass(frozen=True)
class GenerationConfig:
    """Settings of one call to :meth:`DiffusionLM.generate`.

    Attributes:
        gen_length: answer positions appended to the prompt (the canvas is prompt + gen_length masks).
        block_length: semi-autoregressive block size; blocks are decoded left to right. ``None``: 32 when it
            divides gen_length, else gen_length (one block).
        steps: step budget of the whole answer, spread evenly over the blocks (must be a multiple of the number
            of blocks). ``None``: gen_length, one token per step, the reference decode. Parallel schedulers use
            it only as a budget and may finish a block in fewer steps.
        scheduler, scheduler_kwargs: unmasking scheduler by registered name and its parameters.
        cache, cache_kwargs: cache policy by registered name and its parameters.
        verify, verify_kwargs: lossless verification mode (``None``, ``"stepwise"``, ``"causal"``, or a plugin).
        sampling: ``"auto"`` (the scheduler's own family), ``"gumbel"`` (LLaDA) or ``"categorical"`` (Dream).
        temperature: 0 is greedy; > 0 samples (Gumbel noise in float64 for ``gumbel``).
        top_k, top_p: token filters applied before sampling (only with temperature > 0 for ``gumbel``).
            ``None`` (unset): the checkpoint's ``generation_config.json``, else its format's official default
            (Dream: top_k=50, top_p=1.0; see :func:`dlm.api.defaults.effective_config`). ``top_k=0`` and
            ``top_p=1.0`` switch the filter off explicitly.
        cfg_scale: classifier-free guidance w: logits = uncond + (w + 1)(cond - uncond), with the prompt replaced
            by masks for the unconditional pass. 0 disables it.
        seed: seed of the generation's ``torch.Generator``; ``None`` draws one from torch's global generator.
        chat_template: wrap each prompt in the tokenizer's chat template (user turn + generation prompt).
        return_trace: also return the step at which each answer position was committed.
        stop_at_eos: a row stops once a stop token is committed and every position before it is committed; the
            rest of its answer becomes EOS. The text up to the first stop token is the same as without it.
        stop_token_ids: tokens that end an answer; ``None`` uses the model's (EOS and end of turn).
        logits_eos_inf: never predict EOS (LLaDA sampler option).
        confidence_eos_eot_inf: candidates that are EOS or end of turn get confidence -inf, so they are committed
            last (LLaDA sampler option).
        eotp: end-of-text prediction: once a stop token is committed at position p, every position after p
            becomes EOS and is dropped from the canvas (no longer attended to or computed).
        eotp_threshold: with ``eotp``, also trigger when every masked position after some p is predicted to be a
            stop token with confidence >= this value. ``None``: only committed stop tokens trigger.
    """

    gen_length: int = 128
    block_length: int | None = None
    steps: int | None = None
    scheduler: str = "low_confidence"
    scheduler_kwargs: Mapping[str, Any] = field(default_factory=dict)
    cache: str = "none"
    cache_kwargs: Mapping[str, Any] = field(default_factory=dict)
    verify: str | None = None
    verify_kwargs: Mapping[str, Any] = field(default_factory=dict)
    sampling: str = "auto"
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 0.0
    seed: int | None = 0
    chat_template: bool = False
    return_trace: bool = False
    stop_at_eos: bool = True
    stop_token_ids: tuple[int, ...] | None = None
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    eotp: bool = False
    eotp_threshold: float | None = None

    def __post_init__(self) -> None:
        self._check_lengths()
        self._check_components()
        self._check_sampling()
        self._check_flags()
        self._check_registered()

    def _set(self, name: str, value) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass

    def _check_lengths(self) -> None:
        _int("gen_length", self.gen_length, minimum=1)
        if self.block_length is not None:
            _int("block_length", self.block_length, minimum=1)
        if self.gen_length % self.effective_block_length:
            bl = self.effective_block_length
            raise ConfigError(
                f"gen_length ({self.gen_length}) must be a multiple of block_length ({bl}); "
                f"e.g. block_length={math.gcd(self.gen_length, bl)} or gen_length="
                f"{-(-self.gen_length // bl) * bl}"
            )
        if self.steps is not None:
            _int("steps", self.steps, minimum=1)
        if self.effective_steps % self.num_blocks:
            raise ConfigError(
                f"steps ({self.effective_steps}) must be a multiple of the number of blocks "
                f"(gen_length / block_length = {self.num_blocks})"
            )

    def _check_components(self) -> None:
        for name in ("scheduler", "cache"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name} must be a registered name (a non-empty string), got {getattr(self, name)!r}")
        if self.verify is not None and (not isinstance(self.verify, str) or not self.verify):
            raise ConfigError(f"verify must be None or a registered verifier name, got {self.verify!r}")
        for name in ("scheduler_kwargs", "cache_kwargs", "verify_kwargs"):
            self._set(name, _freeze(getattr(self, name), name))

    def _check_sampling(self) -> None:
        if self.sampling not in ("auto",) + SAMPLING_MODES:
            raise ConfigError(f"sampling must be one of auto, {', '.join(SAMPLING_MODES)}; got {self.sampling!r}")
        _float("temperature", self.temperature, minimum=0.0)
        if self.top_k is not None:
            _int("top_k", self.top_k, minimum=0)
        if self.top_p is not None:
            _float("top_p", self.top_p, minimum=0.0)
            if not 0 < self.top_p <= 1:
                raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        _float("cfg_scale", self.cfg_scale, minimum=0.0)
        if self.seed is not None:
            _int("seed", self.seed, minimum=0)
            if self.seed > MAX_SEED:  # what torch.Generator.manual_seed accepts
                raise ConfigError(f"seed must be <= 2**64 - 1, got {self.seed}")

    def _check_flags(self) -> None:
        for name in ("chat_template", "return_trace", "stop_at_eos", "logits_eos_inf", "confidence_eos_eot_inf", "eotp"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.stop_token_ids is not None:
            ids = tuple(self.stop_token_ids)
            if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
                raise ConfigError(f"stop_token_ids must be a non-empty list of token ids, got {self.stop_token_ids!r}")
            self._set("stop_token_ids", ids)
        if self.eotp_threshold is not None:
            _float("eotp_threshold", self.eotp_threshold, minimum=0.0)
            if not self.eotp:
                raise ConfigError("eotp_threshold is set but eotp is False; set eotp=True to use it")
            if not 0 < self.eotp_threshold <= 1:
                raise ConfigError(f"eotp_threshold must be in (0, 1], got {self.eotp_threshold}")

    def _check_registered(self) -> None:
        # names and parameters are checked against the registries now, not at the first step
        from . import cache as _cache
        from . import schedulers as _schedulers

        _schedulers.create(self.scheduler, dict(self.scheduler_kwargs))
        _cache.create(self.cache, dict(self.cache_kwargs))
        if self.verify is not None:
            from . import verify as _verify

            _verify.get(self.verify)

    @property
    def effective_block_length(self) -> int:
        """block_length, or its default: 32 when it divides gen_length, else gen_length."""
        if self.block_length is not None:
            return self.block_length
        return DEFAULT_BLOCK if self.gen_length % DEFAULT_BLOCK == 0 else self.gen_length

    @property
    def effective_steps(self) -> int:
        """steps, or its default: gen_length (one token per step)."""
        return self.steps if self.steps is not None else self.gen_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.effective_block_length

    @property
    def steps_per_block(self) -> int:
        return self.effective_steps // self.num_blocks

    def replace(self, **changes: Any) -> "GenerationConfig":
        """A copy with some fields changed (validated again)."""
        _check_names(changes)
        return replace(self, **changes)

    # ----------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        for k in ("scheduler_kwargs", "cache_kwargs", "verify_kwargs"):
            d[k] = dict(d[k])
        if d["stop_token_ids"] is not None:
            d["stop_token_ids"] = list(d["stop_token_ids"])
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GenerationConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a GenerationConfig is read from a JSON object of fields; got {type(d).__name__}")
        _check_names(d)
        return cls(**dict(d))

    @classmethod
    def from_json(cls, text: str) -> "GenerationConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"a GenerationConfig must be a JSON object of fields: {exc}") from exc
        return cls.from_dict(d)


def _check_names(d: Mapping[str, Any]) -> None:
    """ConfigError for names that are not fields, with the closest field name (``gen_lenght`` -> ``gen_length``)."""
    known = [f.name for f in fields(GenerationConfig)]
    unknown = [k for k in d if k not in known]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), known, n=1)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(f"unknown GenerationConfig field(s): {', '.join(hints)}; known: {', '.join(sorted(known))}")


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


def _float(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if math.isinf(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
