"""The ``model_args`` of the lm-eval model ``dlm``: parsed, typed and checked before anything is loaded.

lm-eval hands ``--model_args a=1,b=x`` to the model class as keyword arguments (values already cast by its
``handle_arg_string``: ``true``/``false``, ``none``, ints, floats, else strings); the Python API may pass any
objects. :func:`parse_model_args` accepts both and returns an :class:`EvalSettings`:

* loading: ``pretrained`` (checkpoint folder; default the bundled dlm-tiny), ``dtype``, ``device``,
  ``attn_backend``, ``fast``, ``fused_kernels``, ``cuda_graphs``, ``quantize`` (see :func:`dlm.load`);
* batching: ``batch_size`` (prompts per ``generate`` call), ``max_batch_size`` (accepted, unused);
* likelihood: ``mc_num``, ``mc_batch_size``, ``check_greedy`` (see :mod:`dlm.eval.likelihood`);
* prompts: ``add_bos_token`` (start every prompt with BOS when the tokenizer does not, as Dream's evaluation
  does), ``stop_strings_as_tokens`` (a stop string that is one token also stops the decoder), ``ignore_until``
  (keep the whole answer: Dream's and Fast-dLLM's ``escape_until`` for code tasks that post-process it);
* every :class:`~dlm.config.GenerationConfig` field (``scheduler``, ``cache``, ``verify``, ``gen_length``, ...).
  Parameter mappings are JSON (``scheduler_kwargs={"threshold":0.9}``) or dotted keys, which survive lm-eval's
  comma-separated string: ``scheduler.threshold=0.9,cache.refresh_every=4,verify.verifier=PATH``.

Anything else is a :class:`~dlm.errors.ConfigError` naming the argument and listing the allowed ones.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import DEFAULT_BLOCK, GenerationConfig
from ..errors import ConfigError
from ..kvargs import parse_value

_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(GenerationConfig)}
_HINTS = typing.get_type_hints(GenerationConfig)
# dotted prefixes: "scheduler.threshold=0.9" -> scheduler_kwargs["threshold"] = 0.9
DOTTED = {"scheduler": "scheduler_kwargs", "cache": "cache_kwargs", "verify": "verify_kwargs"}


@dataclass(frozen=True)
class EvalSettings:
    """Everything the lm-eval model needs, validated.

    Attributes:
        load: keyword arguments of :func:`dlm.load` (``path`` included).
        generation: the GenerationConfig fields that were given (the rest keep their defaults).
        batch_size: prompts per ``generate`` call (``None``: all prompts of a group at once).
        mc_num: Monte Carlo samples per loglikelihood request.
        mc_batch_size: samples per forward pass (divides ``mc_num``).
        check_greedy: also compute lm-eval's ``is_greedy`` flag (one decode per request; LLaDA's
            ``is_check_greedy``, off by default as LLaDA recommends).
        add_bos_token: prompts start with the BOS token (added when the tokenizer does not add it).
        stop_strings_as_tokens: a stop string of the task that is a single token also becomes a stop token.
        ignore_until: the task's stop strings are not applied; answers end at the model's stop tokens.
        data_parallel: decode the prompts on this many replicas, one per GPU (``"auto"``: every visible GPU; on the
            CPU, processes), through :class:`dlm.parallel.ReplicaPool`; ``None``: in this process.
    """

    load: Mapping[str, Any] = field(default_factory=dict)
    generation: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    mc_num: int = 128
    mc_batch_size: int = 32
    check_greedy: bool = False
    add_bos_token: bool = False
    stop_strings_as_tokens: bool = True
    ignore_until: bool = False
    data_parallel: int | str | None = None

    @property
    def fixed_gen_length(self) -> int | None:
        """``gen_length`` when given (every request uses it); ``None``: each task's ``max_gen_toks``."""
        return self.generation.get("gen_length")

    def config(self, gen_length: int | None = None) -> GenerationConfig:
        """The GenerationConfig of the given fields at ``gen_length`` (the fixed one when given)."""
        fields = dict(self.generation)
        if gen_length is not None and self.fixed_gen_length is None:
            fields["gen_length"] = gen_length
        return GenerationConfig.from_dict(fields)

    def gen_length_for(self, max_gen_toks: int) -> int:
        """The answer length of a request: the fixed ``gen_length``, else ``max_gen_toks`` rounded up to a multiple
        of the block length (``block_length``, or 32 when unset) so that the blocks tile the answer."""
        if self.fixed_gen_length is not None:
            return self.fixed_gen_length
        block = self.generation.get("block_length") or DEFAULT_BLOCK
        return -(-int(max_gen_toks) // block) * block


# model_args that are not GenerationConfig fields: name -> (kind, default)
_LOAD_ARGS = {"pretrained": "path", "dtype": "str", "device": "str", "attn_backend": "str",
              "fast": "bool", "fused_kernels": "bool", "cuda_graphs": "bool", "quantize": "quantize"}
_RUN_ARGS = {"batch_size": "int?", "max_batch_size": "int?", "mc_num": "int", "mc_batch_size": "int",
             "check_greedy": "bool", "add_bos_token": "bool", "stop_strings_as_tokens": "bool",
             "ignore_until": "bool", "data_parallel": "replicas"}


def allowed_args() -> list[str]:
    """Every accepted model_arg name (dotted parameter keys shown as ``scheduler.<param>`` etc.)."""
    return sorted(_LOAD_ARGS) + sorted(_RUN_ARGS) + sorted(_CONFIG_FIELDS) + [f"{p}.<param>" for p in DOTTED]


def _fail(name: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"model_arg {name}={value!r}: {what}")


def as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise _fail(name, value, "expected true or false")


def as_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        raise _fail(name, value, "expected an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _fail(name, value, "expected an integer") from None
    if not isinstance(value, int):
        raise _fail(name, value, "expected an integer")
    if minimum is not None and value < minimum:
        raise _fail(name, value, f"must be >= {minimum}")
    return value


def as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise _fail(name, value, "expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _fail(name, value, "expected a number") from None


def as_mapping(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise _fail(name, value, f"expected a JSON object ({exc}); or use dotted keys such as "
                        f"{name.split('_')[0]}.<param>=<value>") from None
    if not isinstance(value, Mapping):
        raise _fail(name, value, "expected a mapping of parameter names to values (a JSON object)")
    return dict(value)


def _none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))


def config_value(name: str, value: Any) -> Any:
    """``value`` cast to the type of GenerationConfig field ``name`` (the config then checks its range)."""
    hint = _HINTS[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = type(None) in typing.get_args(hint)
    base = args[0] if args else hint
    if optional and _none(value):
        return None
    if name in DOTTED.values():
        return as_mapping(name, value)
    if name == "stop_token_ids":
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip().startswith("[") else value.split(";")
            except json.JSONDecodeError:
                raise _fail(name, value, "expected a JSON list of token ids or ids separated by ';'") from None
        items = value if isinstance(value, (list, tuple)) else [value]
        return [as_int(name, v, minimum=0) for v in items]
    if base is bool:
        return as_bool(name, value)
    if base is int:
        return as_int(name, value)
    if base is float:
        return as_float(name, value)
    return value if isinstance(value, str) else str(value)


def _run_value(name: str, value: Any) -> Any:
    kind = _RUN_ARGS[name]
    if kind == "replicas":
        if _none(value):
            return None
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            return as_int(name, value, minimum=1)
        except ConfigError:
            raise _fail(name, value, "expected a number of replicas >= 1 or 'auto'") from None
    if kind == "bool":
        return as_bool(name, value)
    if kind == "int?":
        if _none(value):
            return None
        if isinstance(value, str) and value.strip().lower().startswith("auto"):
            raise _fail(name, value, "'auto' is not supported: give the number of prompts per generate call "
                        "(the engine batches them; larger is faster until memory runs out)")
        return as_int(name, value, minimum=1)
    return as_int(name, value, minimum=1)


def _load_value(name: str, value: Any) -> Any:
    if _LOAD_ARGS[name] == "bool":
        return as_bool(name, value)
    if _LOAD_ARGS[name] == "quantize":  # checked now, before the model is loaded
        from ..models.fp8 import check_quantize

        return check_quantize(None if _none(value) else value)
    return None if _none(value) else str(value)


def parse_model_args(args: Mapping[str, Any]) -> EvalSettings:
    """Validate lm-eval ``model_args`` (see the module docstring) into :class:`EvalSettings`."""
    load: dict[str, Any] = {}
    run: dict[str, Any] = {}
    gen: dict[str, Any] = {}
    for name, value in args.items():
        prefix, dot, param = str(name).partition(".")
        if dot and prefix in DOTTED and param:
            gen.setdefault(DOTTED[prefix], {})[param] = parse_value(value) if isinstance(value, str) else value
        elif name in _LOAD_ARGS:
            load[name] = _load_value(name, value)
        elif name in _RUN_ARGS:
            run[name] = _run_value(name, value)
        elif name in _CONFIG_FIELDS:
            value = config_value(name, value)
            if name in DOTTED.values():
                value = {**value, **gen.get(name, {})}
            gen[name] = value
        else:
            raise ConfigError(f"unknown model_arg {name!r}; allowed: {', '.join(allowed_args())}")
    run.pop("max_batch_size", None)  # lm-eval passes it to every model; the engine batches on its own
    path = load.pop("pretrained", None)
    settings = EvalSettings(load={"path": path, **{k: v for k, v in load.items() if v is not None}},
                            generation=gen, **run)
    _check(settings)
    return settings


def _check(s: EvalSettings) -> None:
    """Fail now, before the model loads, on settings that cannot work."""
    eff = min(s.mc_batch_size, s.mc_num)
    if s.mc_num % eff:
        raise ConfigError(f"model_arg mc_num={s.mc_num} must be a multiple of mc_batch_size={s.mc_batch_size} "
                          "(each forward pass evaluates mc_batch_size Monte Carlo samples)")
    if s.fixed_gen_length is None and s.generation.get("steps") is not None:
        raise ConfigError("model_arg steps is set but gen_length is not: the step budget belongs to a fixed answer "
                          "length; give gen_length too (or leave steps unset for one token per step)")
    # every other field (names of schedulers/caches/verifiers and their parameters included) is checked by
    # GenerationConfig itself, at a length that fits the block rules
    s.config(s.gen_length_for(1))


__all__ = ["DOTTED", "EvalSettings", "allowed_args", "config_value", "parse_model_args"]
