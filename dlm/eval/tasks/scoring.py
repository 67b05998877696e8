"""``process_results`` of the synthetic-family tasks: the families' own checker (:func:`dlm.data.exact_match`,
equality after stripping whitespace), the rule ``dlm bench`` scores with."""

from __future__ import annotations

from typing import Any

from ...data.tasks import exact_match


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": float(exact_match(results[0], doc["answer"]))}


__all__ = ["process_results"]
