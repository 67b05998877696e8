"""Exceptions raised by dlm. Every message names the offending value and what is allowed."""

from __future__ import annotations

import pickle
import traceback


class DlmError(Exception):
    """Base class of every error dlm raises on purpose."""


class ConfigError(DlmError, ValueError):
    """A generation, scheduler or cache setting is out of range or inconsistent."""


class CheckpointError(DlmError):
    """A checkpoint folder is missing, incomplete, of an unknown format or unsafe to load."""


class RegistryError(DlmError, KeyError):
    """An unknown, duplicate or broken scheduler / cache / verifier / model name."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class SchedulerError(DlmError, RuntimeError):
    """A scheduler broke an invariant at run time (e.g. committed nothing while masks remain)."""


class GenerationError(DlmError, RuntimeError):
    """The model produced something generation cannot continue from (e.g. NaN logits)."""


def portable(exc: BaseException, with_traceback: bool = True) -> BaseException:
    """``exc`` if it can cross to another process (dlm's own errors survive pickling), else a GenerationError
    carrying its class, message and (``with_traceback``) traceback text: what dlm's worker and engine processes
    send back. The original class's name is kept as ``original`` (the server's error code)."""
    if isinstance(exc, DlmError) and _survives_pickling(exc):
        return exc
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if with_traceback else ""
    err = GenerationError(f"{type(exc).__name__}: {exc}" + (f"\n{text}" if text else ""))
    err.original = type(exc).__name__
    return err


def _survives_pickling(exc: BaseException) -> bool:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure means it cannot travel
        return False
    return True
