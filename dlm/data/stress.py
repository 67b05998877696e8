"""Stress task families: answers whose tokens depend on each other, where parallel decoding breaks (in the spirit
of ParallelBench, Kim et al., 2025, arXiv:2510.04767).

Two kinds of family, each drawn from the seeded generators of :class:`dlm.data.tasks.Task`:

* **stress variants of the trained families** (:data:`VARIANTS`): the prompts of ``copy``, ``reverse``, ``sort``,
  ``add``, ``cumsum`` and ``dedupe`` skewed to the long end of the lengths dlm-tiny was trained on, and sums whose
  columns carry. dlm-tiny decodes them with the reference decode (it does not generalise past its training
  lengths: 0 of 32 copies of 11-16 letters, 0 of 32 five-digit sums), so their failures under parallel decoding
  are the decoding rule's, not the model's.
* **beyond** (:data:`BEYOND`): ``copy`` and ``cumsum`` past the trained lengths (11-16 items), where the
  reference decode fails too: they measure only agreement with the reference (what the learned filter predicts).
* **new families** (:data:`NEW`): ``pick`` (any k distinct items of a list: many right answers, and independent
  marginals repeat items), ``count`` (a histogram), ``brackets`` (close an open bracket sequence), ``wordrev``
  (reverse a list of multi-token words), ``add-long`` (5-8 digit sums). The recipe trains them in with
  ``--stress-families`` (:mod:`dlm.train.recipe.config`); the bundled dlm-tiny was fine-tuned with them.

Lengths depend on the split: each family's ``val`` split (tuning: the ``best`` preset is chosen on it) and
``test`` split (evaluation) draw item counts from **disjoint** ranges, the test range the longer, and ``train``
spans both. So an evaluation instance differs from every tuning instance in its seed and its length.

The dependency measure of an example (:meth:`StressTask.dependency`, exact for every family) is the number of
answer units that change together: for a family whose answer is a function of the prompt, the mean, over every
single-item edit of the prompt (each item replaced by each other allowed value), of the answer units (non-space
characters, compared position by position up to the longer answer) that change. 1.0 means every answer unit
rests on one prompt item of its own (``copy``, ``reverse``): tokens a parallel step can commit independently; a
running sum of n digits gives (n + 1) / 2, a carry chain the length of the chain. For ``pick`` (many right
answers) it is the same count on the answer side: changing one picked item to another item of the list forces,
on average, 1 + (k - 1) / (m - 1) answer units to change (m distinct items), because the new item may already be
picked elsewhere.
"""

from __future__ import annotations

import random
from typing import Iterator, Mapping, Sequence

from .tasks import DIGITS, TASKS, Example, Task, exact_match, register_task

Lengths = Mapping[str, tuple[int, int]]


def answer_units(text: str) -> list[str]:
    """The units of an answer text: its non-space characters (one token each for the trained families)."""
    return [c for c in text if not c.isspace()]


def units_changed(a: str, b: str) -> int:
    """Answer units that differ between two answers, position by position up to the longer one."""
    ua, ub = answer_units(a), answer_units(b)
    n = max(len(ua), len(ub))
    return sum(1 for i in range(n) if (ua[i] if i < len(ua) else None) != (ub[i] if i < len(ub) else None))


def substitutions(items: Sequence[str], values: Sequence[str]) -> Iterator[list[str]]:
    """Every list made from ``items`` by replacing one item with another of ``values``."""
    for i, old in enumerate(items):
        for new in values:
            if new != old:
                yield [*items[:i], new, *items[i + 1:]]


def _lengths(lengths: Lengths) -> dict[str, tuple[int, int]]:
    out = {}
    for split in ("val", "test"):
        lo, hi = lengths[split]
        if not 1 <= lo <= hi:
            raise ValueError(f"need 1 <= lo <= hi for the {split} lengths, got {(lo, hi)}")
        out[split] = (lo, hi)
    (vlo, vhi), (tlo, thi) = out["val"], out["test"]
    if not (vhi < tlo or thi < vlo):
        raise ValueError(f"the val lengths {out['val']} and test lengths {out['test']} must be disjoint")
    out["train"] = lengths.get("train", (min(vlo, tlo), max(vhi, thi)))
    return out


class StressTask(Task):
    """A family whose prompt lists items (``word: items =``) and whose answer follows from them.

    Subclasses implement :meth:`draw` (items of a given count), :meth:`solve` (the answer), :meth:`parse` (the
    items back from a prompt) and :meth:`edits` (every single-item edit of a list of items).
    """

    word = ""  # the operation word of the prompt (a trained family's word for the variants)
    sep = " "
    base: str | None = None  # the trained family whose prompts these are (None: a new family)

    def __init__(self, name: str, lengths: Lengths, description: str = ""):
        self.name, self.description = name, description
        self.lengths = _lengths(lengths)

    def draw(self, rng: random.Random, n: int) -> list[str]:
        raise NotImplementedError

    def solve(self, items: Sequence[str], rng: random.Random | None = None) -> str:
        """The answer; a family with several right answers draws one with ``rng`` (the first one without)."""
        raise NotImplementedError

    def render(self, items: Sequence[str]) -> str:
        return f"{self.word}: {self.sep.join(items)} ="

    def parse(self, prompt: str) -> list[str]:
        body = prompt.strip().removeprefix(f"{self.word}:").removesuffix("=").strip()
        return body.split(self.sep) if self.sep else list(body)

    def edits(self, items: Sequence[str]) -> Iterator[list[str]]:
        raise NotImplementedError

    def correct(self, prompt: str, prediction: str, answer: str) -> bool:
        """Whether ``prediction`` answers ``prompt`` (exact match with ``answer`` unless the family has several)."""
        return exact_match(prediction, answer)

    def dependency(self, prompt: str) -> float:
        """Mean answer units changed by one single-item edit of the prompt (see the module docstring)."""
        items = self.parse(prompt)
        answer = self.solve(items)
        changed = [units_changed(answer, self.solve(e)) for e in self.edits(items)]
        return sum(changed) / len(changed) if changed else 0.0

    def sample_split(self, rng: random.Random, split: str) -> tuple[str, str]:
        lo, hi = self.lengths[split]
        items = self.draw(rng, rng.randint(lo, hi))
        return self.render(items), self.solve(items, rng)

    def sample(self, rng: random.Random) -> tuple[str, str]:
        return self.sample_split(rng, "train")

    def generate(self, split: str, n: int, seed: int = 0, exclude=()) -> list[Example]:
        """As :meth:`Task.generate`, with the item counts of ``split`` (val and test ranges are disjoint)."""
        if split not in self.lengths:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(self.lengths)}")
        return _SplitView(self, split).generate(split, n, seed, exclude)


class _SplitView(Task):
    """A family seen through one split's lengths: the seeded loop of :meth:`Task.generate` draws from it."""

    def __init__(self, task: StressTask, split: str):
        self.name, self.task, self.split = task.name, task, split

    def sample(self, rng: random.Random) -> tuple[str, str]:
        return self.task.sample_split(rng, self.split)


class ListStress(StressTask):
    """Lists of items from ``alphabet`` answered by a trained family's rule (its frozen ``answer`` and ``join``)."""

    def __init__(self, name: str, base: str, lengths: Lengths, description: str = ""):
        super().__init__(name, lengths, description)
        self.base = self.word = base
        self.rule = TASKS[base]
        self.alphabet = self.rule.alphabet
        self.sep = "" if self.alphabet == DIGITS else " "

    def draw(self, rng, n):
        return [rng.choice(self.alphabet) for _ in range(n)]

    def solve(self, items, rng=None):
        return self.rule.join(self.rule.answer(list(items)))

    def edits(self, items):
        return substitutions(items, self.alphabet)


class AddStress(StressTask):
    """``add: a+b =`` with ``n`` digits per operand; each column's digits sum to 9 or more with probability
    ``carry`` (a carry chain runs as long as columns keep summing to 9 or more)."""

    word, sep = "add", ""

    def __init__(self, name: str, lengths: Lengths, carry: float, description: str = "", base: str | None = None):
        super().__init__(name, lengths, description)
        self.carry, self.base = carry, base

    def draw(self, rng, n):
        a, b = [], []
        for col in range(n):
            lead = col == 0
            if rng.random() < self.carry:
                x = rng.randint(1 if lead else 0, 9)
                y = rng.randint(max(9 - x, 1 if lead else 0), 9)
            else:
                x = rng.randint(1 if lead else 0, 8)
                y = rng.randint(1 if lead else 0, max(8 - x, 1 if lead else 0))
            a.append(str(x))
            b.append(str(y))
        return [*a, "+", *b]

    def render(self, items):
        return f"add: {''.join(items)} ="

    def parse(self, prompt):
        return list(prompt.strip().removeprefix("add:").removesuffix("=").strip())

    def solve(self, items, rng=None):
        a, b = "".join(items).split("+")
        return str(int(a) + int(b))

    def edits(self, items):
        plus = items.index("+")
        # a leading zero would change the prompt's form, not one digit; "+" stays where it is
        leads = {i for i, n in ((0, plus), (plus + 1, len(items) - plus - 1)) if n > 1}
        return (e for e in substitutions(items, DIGITS)
                if "+" in e and e.index("+") == plus and not any(e[i] == "0" for i in leads))


# ------------------------------------------------------------------------------------------------ new families
class Pick(StressTask):
    """``pick K: c a f b e =``: any K distinct items of the list, in any order (several right answers)."""

    word, alphabet = "pick", "abcdefgh"

    def draw(self, rng, n):
        while True:
            items = [rng.choice(self.alphabet) for _ in range(n)]
            if len(set(items)) >= 2:
                return [str(rng.randint(2, min(4, len(set(items))))), *items]

    def render(self, items):
        return f"pick {items[0]}: {' '.join(items[1:])} ="

    def parse(self, prompt):
        head, _, body = prompt.strip().removesuffix("=").partition(":")
        return [head.removeprefix("pick").strip(), *body.split()]

    def solve(self, items, rng=None):
        k, distinct = int(items[0]), list(dict.fromkeys(items[1:]))
        return " ".join(rng.sample(distinct, k) if rng is not None else distinct[:k])

    def correct(self, prompt, prediction, answer):
        items = self.parse(prompt)
        got = prediction.split()
        return len(got) == int(items[0]) == len(set(got)) and set(got) <= set(items[1:])

    def dependency(self, prompt):
        items = self.parse(prompt)
        k, m = int(items[0]), len(set(items[1:]))
        return 1 + (k - 1) / (m - 1)


class Count(StressTask):
    """``count: b a b c b =`` -> ``a1 b3 c1``: how often each letter occurs, letters in alphabetical order."""

    word, alphabet = "count", "abcdef"

    def draw(self, rng, n):
        return [rng.choice(self.alphabet) for _ in range(n)]

    def solve(self, items, rng=None):
        return " ".join(f"{c}{items.count(c)}" for c in sorted(set(items)))

    def edits(self, items):
        return substitutions(items, self.alphabet)


class Brackets(StressTask):
    """``close: ( [ ] { ( =`` -> ``) } )``: the closing brackets of what is still open, innermost first."""

    word, pairs = "close", {"(": ")", "[": "]", "{": "}"}

    @classmethod
    def stack(cls, items: Sequence[str]) -> list[str] | None:
        """The open brackets left after ``items`` (None when a bracket closes one it does not match)."""
        opened: list[str] = []
        closers = {v: k for k, v in cls.pairs.items()}
        for s in items:
            if s in cls.pairs:
                opened.append(s)
            elif not opened or opened.pop() != closers[s]:
                return None
        return opened

    def draw(self, rng, n):
        while True:
            items: list[str] = []
            opened: list[str] = []
            for _ in range(n):
                if opened and rng.random() < 0.4:
                    items.append(self.pairs[opened.pop()])
                else:
                    opened.append(rng.choice(list(self.pairs)))
                    items.append(opened[-1])
            if opened:
                return items

    def solve(self, items, rng=None):
        return " ".join(self.pairs[s] for s in reversed(self.stack(items) or []))

    def edits(self, items):
        symbols = list(self.pairs) + list(self.pairs.values())
        # only edits that leave a valid prefix with something to close
        return (e for e in substitutions(items, symbols) if self.stack(e))


WORDS = ("ab", "cd", "ef", "ko", "ri", "vu", "pol", "mat", "stu", "vel", "nim", "zor", "quax", "dren", "lopi",
         "tesk", "brun", "wyx", "hag", "jel")


class WordRev(StressTask):
    """``wordrev: ko stu ab =`` -> ``ab stu ko``: reverse a list of words of 2-4 letters (one to three tokens
    each, so an answer token's position depends on the lengths of the words before it)."""

    word = "wordrev"

    def draw(self, rng, n):
        return [rng.choice(WORDS) for _ in range(n)]

    def solve(self, items, rng=None):
        return " ".join(reversed(items))

    def edits(self, items):
        return substitutions(items, WORDS)


# ------------------------------------------------------------------------------------------------ the families
#: stress variants of the six trained families: same prompts, lengths at the long end of training, carrying sums
VARIANTS: tuple[StressTask, ...] = (
    ListStress("copy-long", "copy", {"val": (6, 8), "test": (9, 10)}, "copy 6-8 (val) / 9-10 (test) letters"),
    ListStress("reverse-long", "reverse", {"val": (6, 8), "test": (9, 10)},
               "reverse 6-8 (val) / 9-10 (test) letters"),
    ListStress("sort-long", "sort", {"val": (7, 9), "test": (10, 12)}, "sort 7-9 (val) / 10-12 (test) digits"),
    AddStress("add-carry", {"val": (3, 3), "test": (4, 4)}, carry=0.8, base="add",
              description="add two 3-digit (val) / 4-digit (test) numbers whose columns carry (80% of columns)"),
    ListStress("cumsum-long", "cumsum", {"val": (6, 8), "test": (9, 10)},
               "running sums mod 10 of 6-8 (val) / 9-10 (test) digits"),
    ListStress("dedupe-long", "dedupe", {"val": (7, 9), "test": (10, 12)},
               "dedupe 7-9 (val) / 10-12 (test) letters"),
)
#: the trained families past the lengths dlm-tiny was trained on (at most 10 items): the reference decode fails
#: there (0 of 32 copies of 11-16 letters), so they measure only whether a rule agrees with the reference; held out
#: from the learned filter's training too (its robustness to lengths it never saw)
BEYOND: tuple[StressTask, ...] = (
    ListStress("copy-beyond", "copy", {"val": (11, 13), "test": (14, 16)}, "copy 11-13 (val) / 14-16 (test) letters"),
    ListStress("cumsum-beyond", "cumsum", {"val": (11, 13), "test": (14, 16)},
               "running sums mod 10 of 11-13 (val) / 14-16 (test) digits"),
)
#: families the bundled dlm-tiny was not trained on (the recipe's --stress-families trains them in)
NEW: tuple[StressTask, ...] = (
    Pick("pick", {"val": (4, 6), "test": (7, 9)}, "any k distinct letters of a list of 4-6 (val) / 7-9 (test)"),
    Count("count", {"val": (3, 6), "test": (7, 9)}, "letter counts of 3-6 (val) / 7-9 (test) letters"),
    Brackets("brackets", {"val": (3, 7), "test": (8, 12)}, "close 3-7 (val) / 8-12 (test) brackets"),
    WordRev("wordrev", {"val": (2, 4), "test": (5, 6)}, "reverse 2-4 (val) / 5-6 (test) multi-token words"),
    AddStress("add-long", {"val": (5, 6), "test": (7, 8)}, carry=0.5,
              description="add two 5-6 (val) / 7-8 (test) digit numbers"),
)
STRESS_TASKS: dict[str, StressTask] = {register_task(t).name: t for t in VARIANTS + BEYOND + NEW}
STRESS_FAMILIES: tuple[str, ...] = tuple(STRESS_TASKS)
NEW_FAMILIES: tuple[str, ...] = tuple(t.name for t in NEW)

# the trained families seen as stress families (for their dependency measure only; their generators are frozen)
_TRAINED_VIEWS: dict[str, StressTask] = {
    **{f: ListStress(f, f, {"val": (1, 1), "test": (2, 2)}) for f in ("copy", "reverse", "sort", "cumsum", "dedupe")},
    "add": AddStress("add", {"val": (1, 1), "test": (2, 2)}, carry=0.0, base="add"),
}


def stress_view(family: str) -> StressTask | None:
    """The stress family ``family``, or a trained family's view as one (None for code and unknown names)."""
    return STRESS_TASKS.get(family) or _TRAINED_VIEWS.get(family)


def dependency(family: str, prompt: str) -> float | None:
    """The dependency measure of one example (module docstring); None for a family without one (code)."""
    view = stress_view(family)
    return None if view is None else view.dependency(prompt)


def answer_length(answer: str) -> int:
    """The length of an answer in units (non-space characters; one token each for the trained families)."""
    return len(answer_units(answer))


def check_answer(family: str, prompt: str, prediction: str, answer: str) -> bool:
    """Whether ``prediction`` is a right answer: exact match, or the family's own check when it has several."""
    view = STRESS_TASKS.get(family)
    return view.correct(prompt, prediction, answer) if view is not None else exact_match(prediction, answer)
