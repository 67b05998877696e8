"""The user-facing layer: load a checkpoint (:func:`load`), generate with it (:class:`DiffusionLM`), serve
requests that come and go (:class:`Engine`). Everything below it (engine, verifiers, schedulers, caches, models)
is reached through here."""

from .engine import Engine, Request, Status
from ..outputs import merge_outputs
from .lm import DiffusionLM, from_model, load, load_meta

__all__ = ["DiffusionLM", "Engine", "Request", "Status", "from_model", "load", "load_meta", "merge_outputs"]
