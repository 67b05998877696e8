"""Unmasking schedulers: one file per strategy, registered by name.

``dlm.schedulers.get(name)`` returns a class, ``dlm.schedulers.create(name, kwargs)`` an instance,
``dlm.schedulers.names()`` every registered name (built-ins and entry-point plugins of the group
``dlm.schedulers``). Write your own by subclassing :class:`Scheduler` and decorating it with
``@dlm.register_scheduler("name")``.
"""

from .base import (
    SCHEDULERS,
    BlockInfo,
    Decision,
    Scheduler,
    StepView,
    at_least_one,
    create,
    get,
    linear_quota,
    names,
    register_scheduler,
    select_top,
)

# built-in schedulers: importing a module registers it
from . import low_confidence, random_remasking, maskgit_plus, topk_margin, entropy, origin  # noqa: E402,F401
from . import threshold, factor, margin_threshold, entropy_threshold, early_commit, learned_filter  # noqa: E402,F401
from . import block_threshold, edit_threshold  # noqa: E402,F401

__all__ = [
    "SCHEDULERS", "BlockInfo", "Decision", "Scheduler", "StepView", "at_least_one", "create", "get",
    "linear_quota", "names", "register_scheduler", "select_top",
]
