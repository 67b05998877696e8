"""The prompts a filter is trained and tuned on: task examples, function headers or a JSONL file, each with its
generation length; and how they are batched for decoding."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ...data import FAMILIES, get_task, read_prompt_lines, stdlib_code_completion
from ...errors import ConfigError


@dataclass(frozen=True)
class Prompt:
    """A prompt to decode: ``text`` or token ``ids``, its ``gen_length``, and a ``family`` label (for reports)."""

    text: str | None = None
    ids: tuple[int, ...] | None = None
    gen_length: int = 32
    family: str = ""
    answer: str | None = None


def task_prompts(split: str = "train", n_per_family: int = 100, seed: int = 0, families: Sequence[str] | None = None,
                 gen_length: int = 32) -> list[Prompt]:
    """Prompts (with answers) of the synthetic tasks' ``split``, as :mod:`dlm.train.evaluate` prompts them."""
    out = []
    for fam in families or FAMILIES:
        out += [Prompt(text=e.prompt, gen_length=gen_length, family=e.family, answer=e.answer)
                for e in get_task(fam).generate(split, n_per_family, seed)]
    return out


def code_prompts(n: int, seed: int = 0, gen_length: int = 64, tokenizer=None, max_prompt_tokens: int = 96,
                 split: str = "train") -> list[Prompt]:
    """``n`` function-completion prompts (``def`` line + docstring) from the standard library's files of
    ``split`` (:func:`dlm.data.stdlib_code_completion`: ``train`` for training a filter, ``heldout`` to
    measure one)."""
    count = None
    if tokenizer is not None:
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    code = stdlib_code_completion(split, n=n, seed=seed, count_tokens=count, max_prompt_tokens=max_prompt_tokens,
                                  max_body_tokens=gen_length - 1)
    return [Prompt(text=c.prompt, gen_length=gen_length, family="code") for c in code]


def read_prompts(path: str | Path, gen_length: int = 32) -> list[Prompt]:
    """A JSONL prompt file as ``dlm generate --input`` reads it (:func:`dlm.data.read_prompt_lines`): each line a
    JSON string, or an object with ``prompt`` (text) or ``prompt_ids`` (token ids); objects may also give
    ``gen_length``, ``family`` and ``answer``."""
    out = []
    for n, prompt, item in read_prompt_lines(Path(path)):
        g = item.get("gen_length", gen_length)
        if isinstance(g, bool) or not isinstance(g, int) or g < 1:
            raise ConfigError(f"{path}:{n}: gen_length must be a positive integer, got {g!r}")
        fam = str(item.get("family", ""))
        ans = item.get("answer") if isinstance(item.get("answer"), str) else None
        if isinstance(prompt, str):
            out.append(Prompt(text=prompt, gen_length=g, family=fam, answer=ans))
        else:
            out.append(Prompt(ids=tuple(prompt), gen_length=g, family=fam, answer=ans))
    return out


def encode_prompts(lm, prompts: Sequence[Prompt]) -> list[list[int]]:
    """The token ids of every prompt (its ``ids``, or its ``text`` encoded by the model's tokenizer)."""
    ids = []
    for p in prompts:
        if p.ids is not None:
            ids.append(list(p.ids))
        else:
            ids.append(lm.encode([p.text])[0])
    return ids


def batches(prompts: Sequence[Prompt], ids: Sequence[Sequence[int]], batch_size: int
            ) -> Iterator[tuple[int, list[int]]]:
    """(gen_length, prompt indices) of each decoding batch: prompts sorted by generation length and prompt length
    (less padding), at most ``batch_size`` per batch, one generation length per batch."""
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].gen_length, len(ids[i])))
    i = 0
    while i < len(order):
        g = prompts[order[i]].gen_length
        batch = [order[i]]
        while (len(batch) < batch_size and i + len(batch) < len(order)
               and prompts[order[i + len(batch)]].gen_length == g):
            batch.append(order[i + len(batch)])
        i += len(batch)
        yield g, batch


def answer_tokens(row: Sequence[int], stop_ids: set[int]) -> list[int]:
    """A decoded answer up to and including its first stop token (all of it when there is none)."""
    cut = next((p for p, t in enumerate(row) if t in stop_ids), len(row) - 1)
    return list(row[: cut + 1])
