"""Triton, where installed: the import the kernels of dlm share (Triton is not a dependency of the package, so a
kernel is never used without it: each kernel's ``applies`` asks :func:`available`), and whether it runs in its CPU
interpreter (``TRITON_INTERPRET=1``, which the CPU tests use)."""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CI installs it with the test extra
    triton = tl = None


def available() -> bool:
    return triton is not None


def interpreted() -> bool:
    """Whether Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
