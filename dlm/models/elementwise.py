"""The elementwise pieces of a transformer layer: RMSNorm, rotate-half RoPE, SwiGLU and the residual add with the
norm after it, as LLaDA and Qwen2 compute them (the order of casts matters in bf16), eager (the reference) or
fused with ``torch.compile``.

At batch 1 a cached diffusion step feeds a few dozen positions, so each of the ~40 small kernels of a layer
(RMSNorm's casts and reduction, the rotary embedding's slicing and products, SwiGLU) costs about as much as the
data it touches, even when the forward is replayed from a CUDA graph. :func:`fused_ops` compiles the same
functions with ``torch.compile`` so each becomes one or two generated kernels; on a GPU RoPE in bfloat16, SwiGLU
and the add with its norm take the Triton kernels of :mod:`dlm.models.rope_kernel`,
:mod:`dlm.models.swiglu_kernel` and :mod:`dlm.models.norm_kernel` instead (the first two equal the eager
functions bit for bit); the matrix products stay with cuBLAS, the attention output and down projections of few
rows with cuBLASLt (:mod:`dlm.models.skinny`). Enabled with ``dlm.load(..., fused_kernels=True)``.
The eager functions are the reference; ``tests/models/test_fused.py`` checks the compiled ones against them.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Callable, Hashable

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32, cast back, then scaled by the weight (LLaDA and Qwen2 order)."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual sum ``x + y`` and its :func:`rms_norm` (a layer's add before its MLP's norm)."""
    s = x + y
    return s, rms_norm(s, weight, eps)


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


def project(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``: a layer's attention output or down projection as the eager model computes it."""
    return module(x)


@dataclass(frozen=True)
class Ops:
    """The elementwise functions a transformer layer calls; ``small``: the ones an eager forward of few
    positions calls instead (:func:`ops_for_positions`), None for :data:`EAGER`. ``add_rms_norm``: the residual
    add with the norm after it in one function; None: :func:`add_rms_norm` over this set's ``rms_norm``.
    ``project``: how the layer's attention output and down projections run (``module(x)``, or with fused kernels
    :func:`dlm.models.skinny.linear`, cuBLASLt for few rows)."""

    rms_norm: Callable
    rope: Callable
    swiglu: Callable
    fused: bool = False
    small: Ops | None = None
    add_rms_norm: Callable | None = None
    project: Callable = project

    def add_norm(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(``x + y``, its RMSNorm times ``weight``)."""
        if self.add_rms_norm is not None:
            return self.add_rms_norm(x, y, weight, eps)
        s = x + y
        return s, self.rms_norm(s, weight, eps)


EAGER = Ops(rms_norm, rope, swiglu, fused=False)
_FUSED: dict[Hashable, Ops] = {}


def fused_ops(key: Hashable = None) -> Ops:
    """The three functions compiled with ``torch.compile`` (dynamic shapes; compiled lazily, on their first call,
    which needs a C/C++ compiler on a CPU and Triton on a GPU); the same :class:`Ops` for the same ``key``.

    Each key gets its own copies of the functions: torch.compile allows a function a few specialisations (its
    recompile limit, 8 by default), and each model's dtype and flags take some, so :func:`dlm.load` passes one
    key per dtype and architecture. Past the limit the compiled functions fall back to the eager ones (correct,
    slower), never an error."""
    if key not in _FUSED:
        from . import skinny

        # the RoPE kernel costs no guards: one launch; few rows' products take cuBLASLt in eager forwards too
        small = Ops(rms_norm, _with_rope_kernel(rope), swiglu, project=skinny.linear)
        _FUSED[key] = Ops(_compiled(rms_norm), _with_rope_kernel(_compiled(rope)),
                          _with_swiglu_kernel(_compiled(swiglu)), fused=True, small=small,
                          add_rms_norm=_with_norm_kernel(_compiled(add_rms_norm)), project=skinny.linear)
    return _FUSED[key]


def _with_rope_kernel(compiled: Callable) -> Callable:
    """RoPE by :mod:`dlm.models.rope_kernel` (a Triton kernel equal to :func:`rope` bit for bit) where it
    applies (bfloat16 on a CUDA GPU with Triton), else by ``compiled`` (the compiled or the eager function)."""

    from . import rope_kernel  # (imports Triton, if installed: only once fused kernels are asked for)

    def fused_rope(q, k, cos, sin, full_precision: bool):
        if rope_kernel.applies(q, k, cos, sin):
            return rope_kernel.rope(q, k, cos, sin, full_precision)
        return compiled(q, k, cos, sin, full_precision)

    return fused_rope


def _with_swiglu_kernel(compiled: Callable) -> Callable:
    """SwiGLU by :mod:`dlm.models.swiglu_kernel` (a Triton kernel equal to :func:`swiglu` bit for bit on a GPU)
    where it applies, else by ``compiled``."""

    # (imports Triton, if installed: only once fused kernels are asked for)
    from . import swiglu_kernel

    def fused_swiglu(gate, up):
        if swiglu_kernel.applies(gate, up):
            return swiglu_kernel.swiglu(gate, up)
        return compiled(gate, up)

    return fused_swiglu


def _with_norm_kernel(compiled: Callable) -> Callable:
    """The residual add and RMSNorm by :mod:`dlm.models.norm_kernel` (one Triton kernel: the sum bit for bit,
    the norm within two units of its last place) where it applies, else by ``compiled``."""

    from . import norm_kernel  # (imports Triton, if installed: only once fused kernels are asked for)

    def fused_add_rms_norm(x, y, weight, eps: float):
        if norm_kernel.applies(x, y, weight):
            return norm_kernel.add_rms_norm(x, y, weight, eps)
        return compiled(x, y, weight, eps)

    return fused_add_rms_norm


def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled, through a copy with its own code object (torch.compile counts specialisations per code
    object)."""
    copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(copy, dynamic=True)


#: An eager forward feeding fewer positions than this runs the eager functions even when the model holds fused
#: ones: each call of a compiled function costs host time (its guards) that only a large step or a CUDA-graph
#: replay hides (measured at LLaDA-8B geometry on an H200: BENCHMARKS.md, "The fast path by default"). RoPE
#: stays the Triton kernel there where it applies: one launch instead of sixteen eager operations per layer, and
#: the same result bit for bit.
FUSED_MIN_POSITIONS = 1024


def ops_for_positions(model, positions: int) -> Ops:
    """The elementwise functions an eager forward of ``positions`` fed positions passes to the model: the fused
    ops' ``small`` set (the eager functions, RoPE by its kernel where it applies) if the model's ops are fused and
    the forward feeds fewer than :data:`FUSED_MIN_POSITIONS` positions, else the model's own. Passed as an
    argument, not set on the model, so another thread's forward of the same model is not affected. Captured CUDA
    graphs do not use this: a replay launches nothing from the host, so they keep the fused kernels."""
    ops = model.ops
    if not ops.fused or positions >= FUSED_MIN_POSITIONS:
        return ops
    return ops.small or EAGER
