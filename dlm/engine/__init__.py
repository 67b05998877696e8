"""The engine: requests that advance on their own over one ragged forward per step (see :mod:`dlm.engine.core`).

Below the user-facing layer (:mod:`dlm.api`): it runs prepared :class:`~dlm.engine.request.Request` objects and
never imports the verifiers.
"""

from .core import EngineCore
from .request import Layout, Request, Status

__all__ = ["EngineCore", "Layout", "Request", "Status"]
