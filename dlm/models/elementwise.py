"""The elementwise pieces of a transformer layer: RMSNorm, rotate-half RoPE and SwiGLU, as LLaDA and Qwen2
compute them (the order of casts matters in bf16), eager (the reference) or fused with ``torch.compile``.

At batch 1 a cached diffusion step feeds a few dozen positions, so each of the ~40 small kernels of a layer
(RMSNorm's casts and reduction, the rotary embedding's slicing and products, SwiGLU) costs about as much as the
data it touches, even when the forward is replayed from a CUDA graph. :func:`fused_ops` compiles the same three
functions with ``torch.compile`` so each becomes one or two generated kernels; the matrix products stay with
cuBLAS. Enabled with ``dlm.load(..., fused_kernels=True)``. The eager functions are the reference;
``tests/models/test_fused.py`` checks the compiled ones against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back, then scaled by the weight (LLaDA and Qwen2 order)."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool):
    """Rotate-half RoPE of q (B, H, Q, D) and k (B, Hkv, Q, D); cos/sin (B, 1, Q, D) in float32.

    full_precision: rotate in float32 (LLaDA) or in the model dtype with cos/sin cast to it (Qwen2/Dream).
    """
    if full_precision:
        qf, kf = q.float(), k.float()
        return ((qf * cos + _rotate_half(qf) * sin).to(q.dtype), (kf * cos + _rotate_half(kf) * sin).to(k.dtype))
    c, s = cos.to(q.dtype), sin.to(q.dtype)
    return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


@dataclass(frozen=True)
class Ops:
    """The three elementwise functions a transformer layer calls."""

    rms_norm: Callable
    rope: Callable
    swiglu: Callable
    fused: bool = False


EAGER = Ops(rms_norm, rope, swiglu, fused=False)
_FUSED: Ops | None = None


def fused_ops() -> Ops:
    """The three functions compiled with ``torch.compile`` (dynamic shapes, one graph each; compiled lazily, on
    their first call, which needs a C/C++ compiler on a CPU and Triton on a GPU)."""
    global _FUSED
    if _FUSED is None:
        compile_ = lambda fn: torch.compile(fn, dynamic=True, fullgraph=True)  # noqa: E731
        _FUSED = Ops(compile_(rms_norm), compile_(rope), compile_(swiglu), fused=True)
    return _FUSED
