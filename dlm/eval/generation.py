"""lm-eval's ``generate_until`` requests through ``DiffusionLM.generate``: grouping, stop strings, answer lengths,
speed accounting.

Rules (documented in docs/eval.md):

* Requests with the same answer length and the same stop tokens form a group; a group's prompts go to
  ``model.generate`` sorted by token length (longest first, so padding inside a batch is small) in batches of
  ``batch_size``. With temperature 0 or a seed, a request's answer does not depend on its batch.
* ``until``: the answer text is cut before the earliest occurrence of any stop string. A stop string that encodes
  to a single token is also passed to the decoder as a stop token (``stop_strings_as_tokens``), so the row stops
  once it is committed: the text before it is unchanged, and the positions after it are not decoded.
* answer length: the ``gen_length`` model_arg when given, else the task's ``max_gen_toks`` rounded up to a
  multiple of the block length (:meth:`EvalSettings.gen_length_for`).
* a prompt longer than the context allows (prompt + answer > the model's context) keeps its last tokens, as
  lm-eval's Hugging Face model does; truncations are counted in the speed report.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from ..errors import ConfigError
from ..bench.scoring import generated_length
from .args import EvalSettings

log = logging.getLogger("dlm.eval")

# generation_kwargs of a task that are read here; the others are decoding settings, which are model_args
READ_GEN_KWARGS = ("until", "max_gen_toks")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task gives none


@dataclass
class GenerationCounters:
    """Totals over ``generate_until`` requests (per task in ``tasks``)."""

    requests: int = 0
    generated_tokens: int = 0
    nfe: int = 0
    seconds: float = 0.0
    truncated_prompts: int = 0
    gen_lengths: dict[int, int] = field(default_factory=dict)

    def add(self, other: "GenerationCounters") -> None:
        self.requests += other.requests
        self.generated_tokens += other.generated_tokens
        self.nfe += other.nfe
        self.seconds += other.seconds
        self.truncated_prompts += other.truncated_prompts
        for k, v in other.gen_lengths.items():
            self.gen_lengths[k] = self.gen_lengths.get(k, 0) + v


@dataclass
class Request:
    """One ``generate_until`` request, tokenised: ``ids`` (prompt tokens), ``until`` (stop strings),
    ``gen_length``, ``stop_ids`` (extra stop tokens from single-token stop strings), ``task``, and whether the
    prompt was ``truncated`` to fit the context."""

    index: int
    ids: list[int]
    until: list[str]
    gen_length: int
    stop_ids: tuple[int, ...]
    task: str
    truncated: bool = False


def stop_strings(gen_kwargs: dict[str, Any]) -> list[str]:
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not all(isinstance(s, str) for s in until):
        raise ConfigError(f"a task's 'until' must be a string or a list of strings, got {until!r}")
    return [s for s in until if s]


def single_token_ids(tokenizer, strings: Sequence[str]) -> tuple[int, ...]:
    """Ids of the stop strings that the tokenizer encodes as exactly one token."""
    out = []
    for s in strings:
        ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            out.append(int(ids[0]))
    return tuple(sorted(set(out)))


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in until) if i >= 0), default=len(text))
    return text[:cut]


def fit_prompt(ids: list[int], gen_length: int, max_length: int) -> tuple[list[int], bool]:
    """The prompt's last tokens that fit ``max_length - gen_length`` positions, and whether it was cut."""
    room = max_length - gen_length
    if room < 1:
        raise ConfigError(f"gen_length={gen_length} leaves no room for a prompt in the model's context of "
                          f"{max_length} tokens; lower gen_length or max_gen_toks")
    return (ids, False) if len(ids) <= room else (ids[-room:], True)


def warn_ignored(gen_kwargs: dict[str, Any], seen: set[str]) -> None:
    """Say once per key that a task's sampling setting is not used (decoding settings are model_args)."""
    for key in sorted(set(gen_kwargs) - set(READ_GEN_KWARGS) - seen):
        seen.add(key)
        log.warning("dlm: the task's generation_kwargs %s=%r is ignored; decoding settings are model_args "
                    "(e.g. temperature=..., scheduler=...)", key, gen_kwargs[key])


def run_group(lm, settings: EvalSettings, group: list[Request], pool=None) -> tuple[list[tuple[str, int, int]], float]:
    """Decode one group (same gen_length and stop tokens), in this process or on ``pool``'s replicas (a
    :class:`dlm.parallel.ReplicaPool`). Returns (text, generated tokens, NFE) per request in the group's order,
    and the seconds the decode took."""
    first = group[0]
    config = settings.config(first.gen_length)
    base_stops = tuple(sorted(set(config.stop_token_ids or lm.ids.stop_ids)))
    stops = tuple(sorted(set(base_stops) | set(first.stop_ids)))
    if stops != base_stops:
        config = config.replace(stop_token_ids=stops)
    order = sorted(range(len(group)), key=lambda i: -len(group[i].ids))
    _sync(lm.device)
    t0 = time.perf_counter()
    prompts = [group[i].ids for i in order]
    if pool is not None:
        out = pool.generate(prompts, config, batch_size=settings.batch_size)
    else:
        out = lm.generate(prompts, config, batch_size=settings.batch_size,
                          progress=None if settings.batch_size else False)
    _sync(lm.device)
    seconds = time.perf_counter() - t0
    rows: list[tuple[str, int, int]] = [("", 0, 0)] * len(group)
    stop_set = set(stops)
    for j, i in enumerate(order):
        n_gen = generated_length(out.sequences[j].tolist(), stop_set)
        rows[i] = (cut_at_stop(out.texts[j], group[i].until), n_gen, int(out.nfe[j]))
    return rows, seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_all(lm, settings: EvalSettings, requests: list[Request],
                 per_task: dict[str, GenerationCounters], pool=None) -> list[str]:
    """Answers of every request, in the requests' order; ``per_task`` counters updated (tokens and NFE exactly
    per request; a group's seconds shared among its requests in proportion to their generated tokens)."""
    groups: dict[tuple[int, tuple[int, ...]], list[Request]] = {}
    for r in requests:
        groups.setdefault((r.gen_length, r.stop_ids), []).append(r)
    texts: list[str] = [""] * len(requests)
    for group in groups.values():
        rows, seconds = run_group(lm, settings, group, pool)
        total = sum(n for _, n, _ in rows) or 1
        for r, (text, n_gen, nfe) in zip(group, rows):
            texts[r.index] = text
            c = per_task.setdefault(r.task, GenerationCounters())
            c.add(GenerationCounters(requests=1, generated_tokens=n_gen, nfe=nfe, seconds=seconds * n_gen / total,
                                     truncated_prompts=int(r.truncated), gen_lengths={r.gen_length: 1}))
    return texts


__all__ = ["GenerationCounters", "Request", "cut_at_stop", "fit_prompt", "generate_all", "single_token_ids",
           "stop_strings", "warn_ignored"]
