"""Triton, where installed: the import the kernels of dlm share, whether Triton runs in its CPU interpreter, and
the (rows, columns) view the row-wise kernels take.

Triton is not a dependency of the package: without it no kernel is used (each kernel's ``applies`` asks
:func:`available`). Importing this module does not import Triton (``import dlm`` stays free of it); a kernel
module calls :func:`load` when it is imported itself, which happens once a model asks for fused kernels or FP8.
"""

from __future__ import annotations

import functools
import os

import torch


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


def rows_view(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as a (rows, columns) view with contiguous columns, or None where its leading dimensions do not
    collapse into one row stride (that would need a copy)."""
    if t.dim() < 1 or t.stride(-1) != 1:
        return None
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None
