"""Tasks with exact answers: synthetic list/string/arithmetic problems and stdlib code completion.

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

Code completion uses functions of held-out standard-library files (see :mod:`dlm.train.corpus`): the prompt is the
``def`` line(s) plus the docstring, the reference is the body, and a completion counts when it parses
(:func:`completion_parses` states the rule).
"""

from __future__ import annotations

import ast
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Iterator, Sequence

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
        # a string seed is hashed with SHA-512 by random.Random: stable across runs and PYTHONHASHSEED
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


def get_task(name: str) -> Task:
    """The task family ``name``; the error lists the known families."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task family {name!r}; known: {', '.join(FAMILIES)}") from None


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


# ------------------------------------------------------------------------------------------------ code completion
@dataclass(frozen=True)
class CodeExample:
    """A function to complete.

    Attributes:
        prompt: the ``def`` line(s) and the docstring if any, dedented to column 0, ending with a newline.
        reference: the original body (dedented the same way), ending with a newline.
        path: the source file, relative to the standard library's folder.
        name: ``function_name:line``.
    """

    prompt: str
    reference: str
    path: str
    name: str
    family: str = "code"


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _dedent(lines: list[str], col: int) -> list[str] | None:
    """Strip ``col`` leading spaces from every line; None when a non-blank line has less indentation."""
    if col == 0:
        return list(lines)
    out = []
    for line in lines:
        if not line.strip():
            out.append("\n" if line.endswith("\n") else "")
        elif line[:col].strip(" ") == "" and len(line) > col:
            out.append(line[col:])
        else:
            return None
    return out


def _signature_end(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str], first_stmt: int) -> int | None:
    """Index of the line after a docstring-less function's signature (the first header that parses)."""
    start, col = node.lineno - 1, node.col_offset
    parts = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, *node.args.defaults,
             *(d for d in node.args.kw_defaults if d is not None), node.args.vararg, node.args.kwarg, node.returns]
    last = max((p.end_lineno or 0 for p in parts if p is not None), default=node.lineno)
    for end in range(max(start + 1, last), first_stmt + 1):
        head = _dedent(lines[start:end], col)
        if head is None:
            return None
        try:
            ast.parse("".join(head) + "    pass\n")
        except SyntaxError:
            continue
        return end
    return None


def _function_nodes(body: list[ast.stmt]) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Function definitions among ``body`` and the statements nested in it (expressions are not searched)."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        for name in ("body", "orelse", "finalbody"):
            inner = getattr(node, name, None)
            if isinstance(inner, list):
                yield from _function_nodes(inner)
        for handler in getattr(node, "handlers", ()):
            yield from _function_nodes(handler.body)
        for case in getattr(node, "cases", ()):
            yield from _function_nodes(case.body)


def extract_functions(source: str, path: str = "<string>", max_prompt_chars: int | None = None,
                      max_body_chars: int | None = None) -> list[CodeExample]:
    """Every function (methods and nested functions included) of ``source`` that splits into header and body.

    Skipped: one-line functions, functions whose only statement is the docstring, functions holding lines less
    indented than their ``def`` (multi-line strings), any whose header + body does not parse on its own, and
    any over the optional size limits.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    out = []
    for node in _function_nodes(tree.body):
        has_doc = _is_docstring(node.body[0])
        rest = node.body[1:] if has_doc else node.body
        if not rest or node.end_lineno is None:
            continue
        start, first = node.lineno - 1, rest[0].lineno - 1
        if has_doc:
            header_end = node.body[0].end_lineno
        else:
            header_end = _signature_end(node, lines, first)
        if header_end is None or header_end <= start or first < header_end:
            continue
        header = _dedent(lines[start:header_end], node.col_offset)
        body = _dedent(lines[header_end : node.end_lineno], node.col_offset)
        if header is None or body is None:
            continue
        prompt, reference = "".join(header), "".join(body)
        if (max_prompt_chars is not None and len(prompt) > max_prompt_chars
                or max_body_chars is not None and len(reference) > max_body_chars):
            continue
        try:
            ast.parse(prompt + reference)
        except SyntaxError:
            continue
        out.append(CodeExample(prompt, reference, path, f"{node.name}:{node.lineno}"))
    out.sort(key=lambda e: int(e.name.rsplit(":", 1)[1]))
    return out


def code_completion(files: Iterable[tuple[str, str]], n: int | None = None, seed: int = 0, *,
                    max_prompt_chars: int = 600, max_body_chars: int = 400,
                    count_tokens: Callable[[str], int] | None = None, max_prompt_tokens: int | None = None,
                    max_body_tokens: int | None = None) -> list[CodeExample]:
    """Functions of ``files`` (``(relative path, source text)`` pairs) small enough to complete.

    A function is kept when its prompt and reference body fit the character limits and, when ``count_tokens``
    is given, the token limits (so that a generation of ``max_body_tokens`` positions can hold the whole
    reference). With ``n``, a deterministic sample of ``n`` of them (by ``seed``); otherwise all, in file order.
    """
    pool = []
    for path, text in files:
        for ex in extract_functions(text, path, max_prompt_chars, max_body_chars):
            if count_tokens is not None:
                if max_prompt_tokens is not None and count_tokens(ex.prompt) > max_prompt_tokens:
                    continue
                if max_body_tokens is not None and count_tokens(ex.reference) > max_body_tokens:
                    continue
            pool.append(ex)
    if n is not None and n < len(pool):
        picked = sorted(random.Random(f"dlm.bench.code/{seed}").sample(range(len(pool)), n))
        pool = [pool[i] for i in picked]
    return pool


def stdlib_code_completion(split: str = "heldout", n: int | None = None, seed: int = 0, **kwargs) -> list[CodeExample]:
    """:func:`code_completion` over the running Python's standard library, ``split`` "heldout" or "train"
    (the file split of :func:`dlm.train.corpus.stdlib_corpus` with its default settings)."""
    from ..train.corpus import stdlib_corpus

    corpus = stdlib_corpus()
    files = corpus.heldout if split == "heldout" else corpus.train if split == "train" else None
    if files is None:
        raise ValueError(f"unknown code split {split!r}; allowed: heldout, train")
    return code_completion(((f.rel, f.read()) for f in files), n=n, seed=seed, **kwargs)


def completion_body(completion: str, finished: bool) -> str:
    """The body a completion gives to a function whose header (at column 0) is the prompt.

    The rule: the body is the completion (already cut at the first end-of-text token by the decoder) up to the
    first non-blank line that is not indented, which ends the function. If neither that nor an end-of-text token
    ended it (``finished`` False: the generation ran out of positions), its last line is dropped when it has no
    newline, since it was cut off mid-line.
    """
    kept: list[str] = []
    ended = finished
    for line in completion.splitlines(keepends=True):
        if line.strip() and line[0] not in " \t":
            ended = True
            break
        kept.append(line)
    if not ended and kept and not kept[-1].endswith("\n"):
        kept.pop()
    return "".join(kept)


def completion_parses(prompt: str, completion: str, finished: bool) -> bool:
    """True when ``prompt`` + :func:`completion_body` parses with :mod:`ast` as one function holding at least one
    statement besides its docstring. Nothing is repaired: a body cut inside a bracket or after a ``:`` fails."""
    body = completion_body(completion, finished)
    if not body.strip():
        return False
    if not prompt.endswith("\n"):
        prompt += "\n"
    try:
        tree = ast.parse(prompt + body)
    except (SyntaxError, ValueError):
        return False
    if len(tree.body) != 1 or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    stmts = tree.body[0].body
    return len(stmts) - (1 if _is_docstring(stmts[0]) else 0) >= 1
