"""Triton, where installed: the import the kernels of dlm share, and whether Triton runs in its CPU interpreter.

Triton is not a dependency of the package: without it no kernel is used (each kernel's ``applies`` asks
:func:`available`). Importing this module does not import Triton (``import dlm`` stays free of it); a kernel
module calls :func:`load` when it is imported itself, which happens once a model asks for fused kernels or FP8.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def load():
    """(``triton``, ``triton.language``), or (None, None) where Triton is not installed."""
    try:
        import triton
        import triton.language as tl
    except ImportError:  # pragma: no cover - CI installs it with the test extra
        return None, None
    return triton, tl


def available() -> bool:
    return load()[0] is not None


def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``, which the CPU tests use)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
