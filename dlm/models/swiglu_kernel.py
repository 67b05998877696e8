"""SwiGLU, ``silu(gate) * up``, in one Triton kernel, bit for bit the eager function's result.

:func:`dlm.models.elementwise.swiglu` (the reference) computes ``F.silu(gate)`` (in float32 on a GPU,
``x / (1 + exp(-x))``, rounded to the model dtype) and multiplies it by ``up`` (in float32, rounded again).
``torch.compile`` fuses the two into one kernel that skips the first rounding, so its result differs from the
eager function's in the last bit now and then, and at a cache refresh of 32 requests (12,288 positions, LLaDA-8B's
12,288-wide MLP) it moved its bytes at about 2.6 TB/s on an H200, some two thirds of the copy bandwidth.

Here one program takes ``BLOCK`` consecutive columns of one row: it reads gate and up once, computes silu in
float32 the way torch's kernel does (CUDA's accurate ``expf`` through libdevice, an IEEE division), rounds it to
the model dtype, multiplies (a product of two bfloat16 or float16 values is exact in float32) and rounds once: the
eager function's result exactly on a GPU (``tests/gpu/test_swiglu_gpu.py``). In Triton's CPU interpreter the
exponential is NumPy's, so there the tests allow the last bit of silu's float32 value to differ
(``tests/models/test_swiglu_kernel.py``). gate and up may be views of a joined gate/up product's output (rows
with a stride, columns contiguous); :func:`applies` says when the kernel is used, and
:func:`dlm.models.elementwise.fused_ops` falls back to the compiled function otherwise.
"""

from __future__ import annotations

import contextlib

import torch

from .triton_support import available, interpreted, load, rows_view

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

BLOCK = 2048  # columns per program
NUM_WARPS = 8
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


if triton is not None:
    from triton.language.extra import libdevice

    from .rope_kernel import to_bf16

    @triton.jit
    def silu_product(g, u, DTYPE: tl.constexpr, LIBDEVICE: tl.constexpr):
        """silu(g) * u of float32 tensors holding values of the model dtype ``DTYPE``, rounded as the eager
        function rounds (see the module doc); returned as float32 holding values of ``DTYPE``."""
        if LIBDEVICE:  # CUDA's expf, as torch's kernel calls it
            e = libdevice.exp(-g)
        else:  # Triton's CPU interpreter (NumPy's exp): libdevice is not interpreted
            e = tl.exp(-g)
        silu = tl.math.div_rn(g, 1.0 + e)  # torch: x / (1 + exp(-x)) in float32
        if DTYPE == tl.bfloat16:  # rounded on the bits, to nearest even, as torch rounds
            return to_bf16(to_bf16(silu) * u)  # (the interpreter's own conversion rounds otherwise)
        return (silu.to(DTYPE).to(tl.float32) * u).to(DTYPE).to(tl.float32)  # F.silu's result, then the product's

    # one program per row and block of columns: the row count (the grid's) varies from step to step, and the
    # row strides are the layer's widths, fixed per model
    @triton.jit
    def _swiglu(g_ptr, u_ptr, o_ptr, cols, s_g, s_u, s_o, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = c < cols
        g = tl.load(g_ptr + row * s_g + c, mask=ok).to(tl.float32)
        u = tl.load(u_ptr + row * s_u + c, mask=ok).to(tl.float32)
        out = silu_product(g, u, o_ptr.dtype.element_ty, LIBDEVICE)
        tl.store(o_ptr + row * s_o + c, out.to(o_ptr.dtype.element_ty), mask=ok)


def applies(gate: torch.Tensor, up: torch.Tensor) -> bool:
    """Whether :func:`swiglu` takes these operands: equal shapes and a floating dtype of
    :data:`DTYPES` (both alike), contiguous columns with rows at one stride each, at most 65,535 x ``BLOCK``
    columns, on one CUDA device (or CPU tensors under Triton's interpreter, for the tests), no gradient asked."""
    if not available() or gate.shape != up.shape or gate.dtype != up.dtype or gate.dtype not in DTYPES:
        return False
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return False  # no backward: the compiled function keeps autograd
    if gate.device != up.device or not (gate.is_cuda or (gate.device.type == "cpu" and interpreted())):
        return False
    g, u = rows_view(gate), rows_view(up)
    # the grid: rows on its first axis (up to 2**31 - 1), blocks of columns on its second (up to 65,535)
    return (g is not None and u is not None and g.shape[0] < 2**31 and g.shape[1] < 2**31 - BLOCK
            and triton.cdiv(g.shape[1], BLOCK) <= 65535)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up``, equal to :func:`dlm.models.elementwise.swiglu`'s (see the module doc), as a new
    contiguous tensor of gate's shape. Check :func:`applies` first."""
    g, u = rows_view(gate), rows_view(up)
    rows, cols = g.shape
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if rows == 0 or cols == 0:
        return out
    o = out.view(rows, cols)
    grid = (rows, triton.cdiv(cols, BLOCK))
    with torch.cuda.device(gate.device) if gate.is_cuda else contextlib.nullcontext():
        _swiglu[grid](g, u, o, cols, g.stride(0), u.stride(0), o.stride(0), BLOCK=BLOCK,
                      LIBDEVICE=gate.is_cuda, num_warps=NUM_WARPS)
    return out
