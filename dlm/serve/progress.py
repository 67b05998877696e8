"""What the HTTP side learns about an engine job: a :class:`Progress` per delivered step and one :class:`Outcome`
at its end. Plain data made where the engine runs (its thread, or its own process: they travel through a pipe),
so the HTTP side never reads engine objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Progress:
    """One engine step of one job.

    Attributes:
        step: forward passes the request has taken so far.
        block: the request's active block during the step.
        done: the request ended with this step (finished, failed or cancelled).
        failed: it ended with an error (the :class:`Outcome` that follows says which).
        tokens: the answer canvas after the step, ``gen_length`` ids (the mask id where still masked).
        committed: ``(answer position, token id)`` pairs this step committed.
        nfe: the request's forward passes so far (a verifier's included).
    """

    step: int
    block: int
    done: bool
    failed: bool
    tokens: list[int]
    committed: list[tuple[int, int]]
    nfe: int


@dataclass(frozen=True)
class Outcome:
    """How a job ended. ``status``: ``"done"``, ``"cancelled"`` or ``"failed"``; ``error``: the request's own
    error or the engine failure that ended it (None when it finished or was cancelled); ``sequence``: the
    finished answer canvas (``status == "done"`` only)."""

    status: str
    error: BaseException | None
    nfe: int
    sequence: list[int] | None


def progress_of(event) -> Progress:
    """The :class:`Progress` of a :class:`~dlm.outputs.StepEvent` (the reference of :func:`step_progress`)."""
    r = event.request
    return Progress(step=event.step, block=event.block, done=event.done, failed=event.done and r.error is not None,
                    tokens=event.tokens.tolist(), committed=event.new_tokens(), nfe=r.nfe)


def step_progress(events: list, wanted: list[bool]) -> tuple[int, list[Progress | None]]:
    """One engine step's committed positions in all, and the :class:`Progress` of each event whose ``wanted`` is
    True (None for the others): :func:`progress_of`'s values, with the wanted events' tensors converted in one go
    (a served step of a small model is mostly host time, and converting 32 answers one by one cost about a
    millisecond of it)."""
    if not events:
        return 0, []
    committed = int(torch.cat([ev.committed for ev in events]).sum())
    chosen = [ev for ev, want in zip(events, wanted) if want]
    if not chosen:
        return committed, [None] * len(events)
    tokens = torch.cat([ev.tokens for ev in chosen]).tolist()
    marks = torch.cat([ev.committed for ev in chosen]).nonzero().squeeze(1).tolist()
    made = []
    start = j = 0
    for ev in chosen:
        end = start + ev.tokens.shape[0]
        first = j
        while j < len(marks) and marks[j] < end:
            j += 1
        row = tokens[start:end]
        r = ev.request
        made.append(Progress(step=ev.step, block=ev.block, done=ev.done, failed=ev.done and r.error is not None,
                             tokens=row, committed=[(p - start, row[p - start]) for p in marks[first:j]], nfe=r.nfe))
        start = end
    it = iter(made)
    return committed, [next(it) if want else None for want in wanted]


def outcome_of(request, error: BaseException | None) -> Outcome:
    """The :class:`Outcome` of an engine ``request`` (None: it never started) that ended, ``error`` being an
    engine failure that ended it from outside (or None)."""
    if request is None:
        return Outcome("failed" if error is not None else "cancelled", error, 0, None)
    status = request.status.value
    done = status == "done" and request.output is not None
    return Outcome(status, request.error or error, request.nfe, request.output.sequences[0].tolist() if done else None)
