"""Cache policies for bidirectional diffusion models, one file each, registered by name.

``none`` (exact reference), ``prefix`` and ``dual`` (Fast-dLLM block caches), ``delayed`` (dKV-Cache-Decode)
and ``window`` (after dKV-Cache-Greedy). Plugins register through the entry-point group ``dlm.caches``.
"""

from .base import CACHES, CacheContext, CachePolicy, Plan, StepInfo, create, get, names, register_cache

from . import none, prefix, dual, delayed, window  # noqa: E402,F401  (importing registers them)

__all__ = ["CACHES", "CacheContext", "CachePolicy", "Plan", "StepInfo", "create", "get", "names", "register_cache"]
