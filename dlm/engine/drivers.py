"""Driven requests: requests whose steps are decided by something other than a scheduler (the lossless
verifiers of :mod:`dlm.verify`).

A :class:`Driver` serves every request of one kind (one verifier configuration). Each engine step it is asked
for the rows its requests feed (:meth:`Driver.plan`: full canvases, e.g. the nested drafts of ``stepwise``),
those rows run in the same ragged forward as every other request's, and it gets their logits back
(:meth:`Driver.process`) to decide what each request keeps: it writes the request's canvas and commit steps in
the engine's slot buffers and says whether the request is done. The engine keeps the rest (slots, step
counting, events, endings), and never needs to know what a driver does.
"""

from __future__ import annotations

from typing import Any

import torch


class Driver:
    """Base class of drivers (see the module doc)."""

    def plan(self, core, requests: list) -> list[list]:
        """Per request, the :class:`~dlm.engine.pack.RowPlan` rows it feeds this step (``RowPlan.draft`` rows)."""
        raise NotImplementedError

    def process(self, core, requests: list, logits: list[list[torch.Tensor]]) -> list[tuple[bool, Any]]:
        """Per request, from the (n, V) logits of each of its rows (guidance applied): (done, error or None),
        after writing what it keeps into ``core.buf`` (its canvas, with commit step ``request.steps``)."""
        raise NotImplementedError

    def check_prompt(self, prompt_ids: list[int], config, name: str = "the prompt") -> None:
        """Raise a ConfigError for a prompt this driver cannot decode (called when the request is built)."""

    def stats(self, request) -> dict[str, float]:
        """Counters added to the request's output statistics."""
        return {}
