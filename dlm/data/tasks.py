"""Synthetic task families with exact answers: list, string and arithmetic problems.

Every synthetic task is a family of prompt/answer text pairs drawn from a seeded ``random.Random``:

====================  ==================================  =============================================
family                prompt                              answer
====================  ==================================  =============================================
``copy``              ``copy: c a f b =``                 ``c a f b``
``reverse``           ``reverse: c a f b =``              ``b f a c``
``sort``              ``sort: 39147 =``                   ``13479``
``add``               ``add: 4821+975 =``                 ``5796``
``cumsum``            ``cumsum: 3914 =``                  ``3237`` (running sum mod 10)
``dedupe``            ``dedupe: c a c b a =``             ``c a b`` (first occurrences, in order)
====================  ==================================  =============================================

Letters are separated by spaces and digits are written together, so with the project's tokenizer (digits split
one per token, a space-prefixed letter is one token) every item is one token and answers stay under 16 tokens.
In ``sort``, ``add``, ``cumsum`` and ``dedupe`` answer tokens depend on each other (a carry, a running sum, what
was already emitted), which is where committing several tokens in one parallel step goes wrong.

Splits come from disjoint seed ranges: ``generate(split, n, seed)`` seeds its generator with
``offset(split) + seed`` where the offsets of ``train``, ``val`` and ``test`` are ``SEED_SPAN`` apart and
``0 <= seed < SEED_SPAN``. Because short problems can coincide by chance, :func:`make_splits` also removes from
the training (and validation) split every prompt that is in the test split.

The generators' outputs are frozen: the bundled models and the shipped filter were trained and tuned on them, so
the seed strings (``"dlm.bench.tasks/..."``, kept from the module's first home) and the split offsets must not
change. Code completion, the other task of the benchmarks, is :mod:`dlm.data.code`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

SPLITS = ("train", "val", "test")
SEED_SPAN = 2**32
_SPLIT_OFFSET = {split: i * SEED_SPAN for i, split in enumerate(SPLITS)}
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"


@dataclass(frozen=True)
class Example:
    """One synthetic problem: ``prompt`` (ends with `` =``), its exact ``answer``, and its task ``family``."""

    prompt: str
    answer: str
    family: str


def split_seed(split: str, seed: int) -> int:
    """The integer seed of ``split``'s generator; the splits' ranges never overlap."""
    if split not in _SPLIT_OFFSET:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_SPAN:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return _SPLIT_OFFSET[split] + seed


class Task:
    """A family of problems. Subclasses set ``name`` and implement :meth:`sample`."""

    name: str = ""
    description: str = ""

    def sample(self, rng: random.Random) -> tuple[str, str]:
        """One (prompt, answer) pair drawn with ``rng``."""
        raise NotImplementedError

    def generate(self, split: str, n: int, seed: int = 0, exclude: Collection[str] = ()) -> list[Example]:
        """``n`` distinct examples of ``split``, deterministic in (family, split, seed).

        Prompts in ``exclude`` are skipped (used to keep test prompts out of the training split).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        # a string seed is hashed with SHA-512 by random.Random: stable across runs and PYTHONHASHSEED. The
        # prefix names the module's first home (dlm.bench.tasks); changing it would change every split
        rng = random.Random(f"dlm.bench.tasks/{self.name}/{split_seed(split, seed)}")
        seen: set[str] = set()
        out: list[Example] = []
        attempts, limit = 0, 50 * n + 1000
        while len(out) < n:
            attempts += 1
            if attempts > limit:
                raise ValueError(f"task {self.name!r} found only {len(out)} distinct {split} examples out of the "
                                 f"{n} asked for after {limit} draws; ask for fewer or widen the task")
            prompt, answer = self.sample(rng)
            if prompt in seen or prompt in exclude:
                continue
            seen.add(prompt)
            out.append(Example(prompt, answer, self.name))
        return out


class _ListTask(Task):
    """Lists of ``min_len``..``max_len`` items from ``alphabet``; letters are space-separated, digits are not."""

    alphabet = LETTERS

    def __init__(self, min_len: int, max_len: int):
        if not 1 <= min_len <= max_len:
            raise ValueError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
        self.min_len, self.max_len = min_len, max_len

    def join(self, items: Sequence[str]) -> str:
        return ("" if self.alphabet == DIGITS else " ").join(items)

    def items(self, rng: random.Random) -> list[str]:
        n = rng.randint(self.min_len, self.max_len)
        return [rng.choice(self.alphabet) for _ in range(n)]

    def answer(self, items: list[str]) -> list[str]:
        raise NotImplementedError

    def sample(self, rng: random.Random) -> tuple[str, str]:
        items = self.items(rng)
        return f"{self.name}: {self.join(items)} =", self.join(self.answer(items))


class Copy(_ListTask):
    name, description = "copy", "repeat a list of letters"

    def answer(self, items):
        return items


class Reverse(_ListTask):
    name, description = "reverse", "reverse a list of letters"

    def answer(self, items):
        return items[::-1]


class Sort(_ListTask):
    name, description, alphabet = "sort", "sort a string of digits", DIGITS

    def answer(self, items):
        return sorted(items)


class CumSum(_ListTask):
    name, description, alphabet = "cumsum", "running sum of a string of digits, each sum mod 10", DIGITS

    def answer(self, items):
        out, total = [], 0
        for d in items:
            total = (total + int(d)) % 10
            out.append(str(total))
        return out


class Dedupe(_ListTask):
    name, description, alphabet = "dedupe", "drop repeated letters, keeping first occurrences in order", "abcdefgh"

    def answer(self, items):
        return list(dict.fromkeys(items))


class Add(Task):
    """``a+b`` with 1..``max_digits`` digits per operand (digit counts uniform, so long sums are common)."""

    name, description = "add", "add two decimal numbers"

    def __init__(self, max_digits: int):
        if max_digits < 1:
            raise ValueError(f"max_digits must be >= 1, got {max_digits}")
        self.max_digits = max_digits

    def _number(self, rng: random.Random) -> int:
        k = rng.randint(1, self.max_digits)
        return rng.randint(0 if k == 1 else 10 ** (k - 1), 10**k - 1)

    def sample(self, rng: random.Random) -> tuple[str, str]:
        a, b = self._number(rng), self._number(rng)
        return f"add: {a}+{b} =", str(a + b)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (Copy(2, 10), Reverse(2, 10), Sort(2, 12), Add(4), CumSum(2, 10), Dedupe(3, 12))
}
FAMILIES: tuple[str, ...] = tuple(TASKS)


#: families registered by other modules of dlm.data (the stress families, :mod:`dlm.data.stress`, which subclass
#: Task and so import this module): get_task finds them beside the trained ones
EXTRA_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    """Make ``task`` known to :func:`get_task` (and so to :func:`make_splits`); names are unique."""
    if task.name in TASKS or task.name in EXTRA_TASKS:
        raise ValueError(f"a task family named {task.name!r} already exists")
    EXTRA_TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The task family ``name``: a trained family or a registered one (the stress families); the error lists the
    known families."""
    task = TASKS.get(name) or EXTRA_TASKS.get(name)
    if task is None:
        raise ValueError(f"unknown task family {name!r}; known: {', '.join(FAMILIES + tuple(EXTRA_TASKS))}")
    return task


def make_splits(families: Iterable[str] = FAMILIES, n_train: int = 1000, n_val: int = 100, n_test: int = 100,
                seed: int = 0) -> dict[str, list[Example]]:
    """Train/val/test examples of each family with no prompt shared between splits.

    The test split is drawn first; validation skips test prompts; training skips both.
    Returns ``{"train": [...], "val": [...], "test": [...]}``, families in the order given.
    """
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for name in families:
        task = get_task(name)
        test = task.generate("test", n_test, seed)
        held = {e.prompt for e in test}
        val = task.generate("val", n_val, seed, exclude=held)
        held |= {e.prompt for e in val}
        out["test"] += test
        out["val"] += val
        out["train"] += task.generate("train", n_train, seed, exclude=held)
    return out


def exact_match(prediction: str, answer: str) -> bool:
    """The scorer of every synthetic task: equality after stripping surrounding whitespace."""
    return prediction.strip() == answer.strip()


def score(examples: Sequence[Example], predictions: Sequence[str]) -> dict[str, dict[str, float]]:
    """Exact-match accuracy per family: ``{family: {"n", "correct", "accuracy"}}``."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ex, pred in zip(examples, predictions):
        counts[ex.family][0] += 1
        counts[ex.family][1] += exact_match(pred, ex.answer)
    return {f: {"n": n, "correct": c, "accuracy": c / n} for f, (n, c) in counts.items()}
