"""Exceptions raised by dlm. Every message names the offending value and what is allowed."""


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
