"""Fixtures of the evaluation tests: the bundled dlm-tiny and small local task data."""

from __future__ import annotations

import json

import pytest

import dlm

pytest.importorskip("lm_eval", reason="the eval tests need lm-eval (pip install -e '.[test]')")


@pytest.fixture(scope="session")
def bundled():
    """The bundled dlm-tiny (trained on the synthetic families) on the CPU."""
    return dlm.load(device="cpu")


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
