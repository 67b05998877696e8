"""The examples of a benchmark run: synthetic test-split problems and held-out functions to complete."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..data import CODE, get_task, stdlib_code_completion
from ..errors import ConfigError
from .presets import Suite

KINDS = ("task", CODE)  # kinds of example; each runs with its own GenerationConfig (generation length)


@dataclass(frozen=True)
class Item:
    """One example: its ``family`` (a synthetic family or ``"code"``), ``prompt`` text and exact ``answer``
    (``None`` for code, which is scored against the reference decode); ``name`` identifies code functions."""

    family: str
    prompt: str
    answer: str | None
    name: str = ""

    @property
    def kind(self) -> str:
        return CODE if self.family == CODE else "task"


def load_items(suite: Suite, tokenizer=None) -> list[Item]:
    """The suite's examples: ``n`` examples of the suite's split (test or val) per synthetic family, then ``code_n`` held-out functions
    whose prompt fits ``code_prompt_tokens`` and reference body fits ``code_gen_length - 1`` tokens."""
    items: list[Item] = []
    for fam in suite.tasks:
        if fam == CODE or suite.n == 0:
            continue
        items += [Item(e.family, e.prompt, e.answer)
                  for e in get_task(fam).generate(suite.split, suite.n, suite.seed)]
    if CODE in suite.tasks and suite.code_n > 0:
        count = None
        if tokenizer is not None:
            count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
        code = stdlib_code_completion("heldout", n=suite.code_n, seed=suite.seed, count_tokens=count,
                                      max_prompt_tokens=suite.code_prompt_tokens,
                                      max_body_tokens=suite.code_gen_length - 1)
        items += [Item(CODE, c.prompt, None, f"{c.path}:{c.name}") for c in code]
    if not items:
        raise ConfigError("the suite selects no examples; raise n / code_n or name more tasks")
    return items


def count_families(items: Sequence[Item]) -> dict[str, int]:
    out: dict[str, int] = {}
    for it in items:
        out[it.family] = out.get(it.family, 0) + 1
    return out
