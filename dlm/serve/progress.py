"""What the HTTP side learns about an engine job: a :class:`Progress` per delivered step and one :class:`Outcome`
at its end. Plain data made where the engine runs (its thread, or its own process: they travel through a pipe),
so the HTTP side never reads engine objects.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """The :class:`Progress` of a :class:`~dlm.outputs.StepEvent`."""
    r = event.request
    return Progress(step=event.step, block=event.block, done=event.done, failed=event.done and r.error is not None,
                    tokens=event.tokens.tolist(), committed=event.new_tokens(), nfe=r.nfe)


def outcome_of(request, error: BaseException | None) -> Outcome:
    """The :class:`Outcome` of an engine ``request`` (None: it never started) that ended, ``error`` being an
    engine failure that ended it from outside (or None)."""
    if request is None:
        return Outcome("failed" if error is not None else "cancelled", error, 0, None)
    status = request.status.value
    done = status == "done" and request.output is not None
    return Outcome(status, request.error or error, request.nfe, request.output.sequences[0].tolist() if done else None)
