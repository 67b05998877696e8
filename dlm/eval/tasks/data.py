"""The JSONL files of the local lm-eval tasks: written from dlm's task families, read back as datasets.

Files (one JSON object per line):

* ``<family>.jsonl``: ``{"prompt", "answer", "family"}``, the family's test split (``Task.generate("test", n,
  seed)``, the same items ``dlm bench`` draws with the same n and seed);
* ``choice.jsonl``: ``{"prompt", "choices", "label", "family"}``: the answer and 3 distractors, each the answer
  with one item replaced by another symbol of the family's alphabet or two different neighbours swapped, in an
  order drawn from a seeded generator. All candidates have the answer's length in items.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Iterable

from ...data.tasks import DIGITS, FAMILIES, LETTERS, get_task
from ...errors import ConfigError
from . import DATA_DIR

CHOICE_FILE = "choice.jsonl"
CHOICES = 4
DEFAULT_N = 100  # test items per family (dlm bench's test split size)
DEFAULT_CHOICE_N = 20  # multiple-choice items per family
ENV_DATA_DIR = "DLM_EVAL_DATA"


def family_rows(family: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [{"prompt": e.prompt, "answer": e.answer, "family": family}
            for e in get_task(family).generate("test", n, seed)]


def _items(answer: str) -> tuple[list[str], str]:
    """The answer's items and their separator (letters are space-separated, digits written together)."""
    return (answer.split(" "), " ") if " " in answer or answer.isalpha() else (list(answer), "")


def distractors(answer: str, k: int, rng: random.Random) -> list[str]:
    """``k`` distinct wrong answers of the answer's length: one item replaced, or two different neighbours
    swapped. Raises when the answer admits fewer than ``k`` such variants."""
    items, sep = _items(answer)
    alphabet = DIGITS if all(i.isdigit() for i in items) else LETTERS
    variants: set[str] = set()
    for i, item in enumerate(items):
        variants.update(sep.join(items[:i] + [c] + items[i + 1:]) for c in alphabet if c != item)
        if i + 1 < len(items) and items[i] != items[i + 1]:
            variants.add(sep.join(items[:i] + [items[i + 1], items[i]] + items[i + 2:]))
    variants.discard(answer)
    if len(variants) < k:
        raise ValueError(f"answer {answer!r} has only {len(variants)} variants; {k} needed")
    return rng.sample(sorted(variants), k)


def choice_rows(families: Iterable[str], n: int, seed: int = 0) -> list[dict[str, Any]]:
    rows = []
    for family in families:
        rng = random.Random(f"dlm.eval.choice/{family}/{seed}")
        for e in get_task(family).generate("test", n, seed):
            choices = [e.answer] + distractors(e.answer, CHOICES - 1, rng)
            rng.shuffle(choices)
            rows.append({"prompt": e.prompt, "choices": choices, "label": choices.index(e.answer), "family": family})
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")


def write_data(out_dir: str | os.PathLike, n: int = DEFAULT_N, choice_n: int = DEFAULT_CHOICE_N,
               seed: int = 0, families: Iterable[str] = FAMILIES) -> list[Path]:
    """Write ``<family>.jsonl`` for each family and ``choice.jsonl`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    families = list(families)
    paths = []
    for family in families:
        paths.append(out / f"{family}.jsonl")
        _write_jsonl(paths[-1], family_rows(family, n, seed))
    paths.append(out / CHOICE_FILE)
    _write_jsonl(paths[-1], choice_rows(families, choice_n, seed))
    return paths


def data_dir(metadata: dict[str, Any]) -> Path:
    """Where the JSONL files are: ``dlm_data_dir`` of lm-eval's metadata, else ``$DLM_EVAL_DATA``, else the
    files shipped with dlm."""
    return Path(metadata.get("dlm_data_dir") or os.environ.get(ENV_DATA_DIR) or DATA_DIR)


def read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read task data {path}: {exc}; write it with "
                          f"`dlm eval-data {path.parent}`") from exc
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSONL: {exc}") from exc


def _dataset(rows: list[dict[str, Any]]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_family(family: str | None = None, **metadata: Any):
    """lm-eval ``custom_dataset`` of a synthetic family's task (called with the task's metadata and
    dataset_kwargs)."""
    if family not in FAMILIES:
        raise ConfigError(f"unknown task family {family!r}; known: {', '.join(FAMILIES)}")
    return _dataset(read_rows(data_dir(metadata) / f"{family}.jsonl"))


def load_choice(**metadata: Any):
    """lm-eval ``custom_dataset`` of ``dlm_choice``."""
    return _dataset(read_rows(data_dir(metadata) / CHOICE_FILE))


__all__ = ["choice_rows", "data_dir", "distractors", "family_rows", "load_choice", "load_family", "write_data"]
