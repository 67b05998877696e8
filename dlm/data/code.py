"""Code completion on standard-library functions: the prompt is the ``def`` line(s) plus the docstring, the
reference is the body, and a completion counts when it parses (:func:`completion_parses` states the rule).

Functions come from the files of :mod:`dlm.data.corpus` (held-out files for evaluation, training files for
training). The sample of :func:`code_completion` is seeded with ``"dlm.bench.code/{seed}"`` (the module's first
home): the bundled models were evaluated on it, so the string must not change.
"""

from __future__ import annotations

import ast
import random
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .corpus import stdlib_corpus

CODE = "code"  # the task name of code completion, beside the synthetic families


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
    family: str = CODE


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
    (the file split of :func:`dlm.data.corpus.stdlib_corpus` with its default settings)."""
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
