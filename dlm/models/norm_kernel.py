"""The residual add and the RMSNorm after it, ``s = x + y; h = rms_norm(s) * weight``, in one Triton kernel.

A layer adds the attention's output to its hidden states and normalises the sum for its MLP, and the next layer
adds that MLP's output and normalises for its attention (:meth:`dlm.models.transformer.Block.attention_outputs`,
:meth:`~dlm.models.transformer.Block.attention_inputs`). Eagerly (and as separately compiled functions) each is
an add that writes ``s``, then a norm that reads it back: four kernels per layer, and at batch 1 each of the ~600
kernels a step replays costs a few microseconds whatever it moves. Here one program takes one row: it
reads x and y once, writes the sum rounded to the model dtype (the eager add's result exactly: one rounding of an
exact float32 sum), and normalises that rounded sum as :func:`dlm.models.elementwise.rms_norm` does (float32,
rounded to the model dtype, then the product with the weight rounded again).

The sum is the eager one bit for bit (a NaN is a NaN, whatever its payload); the norm's float32 reduction adds
the squares in another order than torch's kernel (as the compiled function does too), so its float32 value may
differ in the last bit now and then, which after its two roundings moves ``h`` by at most two units of its last
place, and seldom at all in bfloat16 and float16 (``tests/models/test_norm_kernel.py`` in Triton's CPU
interpreter, ``tests/gpu/test_norm_gpu.py`` on a GPU).
:func:`applies` says when the kernel is used; :func:`dlm.models.elementwise.fused_ops` falls back to the
compiled function otherwise.
"""

from __future__ import annotations

import contextlib

import torch

from .triton_support import available, interpreted, load, rows_view

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

MAX_COLS = 16384  # the widest row one program normalises (LLaDA-8B: 4,096; Dream-7B: 3,584)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
PLAIN = (torch.Tensor, torch.nn.Parameter)


if triton is not None:
    from triton.language.extra import libdevice

    from .rope_kernel import to_bf16

    @triton.jit
    def _rounded(x, dtype: tl.constexpr):
        """float32 -> the nearest value of ``dtype``, still as float32 (bfloat16 on the bits, as torch rounds)."""
        if dtype == tl.bfloat16:
            return to_bf16(x)
        return x.to(dtype).to(tl.float32)

    @triton.jit
    def _add_rms_norm(x_ptr, y_ptr, w_ptr, s_ptr, h_ptr, cols, sx, sy, eps, BLOCK: tl.constexpr,
                      LIBDEVICE: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        c = tl.arange(0, BLOCK)
        ok = c < cols
        dtype = s_ptr.dtype.element_ty
        x = tl.load(x_ptr + row * sx + c, mask=ok, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + row * sy + c, mask=ok, other=0.0).to(tl.float32)
        s = _rounded(x + y, dtype)  # the eager add's result
        tl.store(s_ptr + row * cols + c, s.to(dtype), mask=ok)
        mean = tl.sum(s * s, axis=0) / cols
        if LIBDEVICE:  # CUDA's rsqrtf, as torch's kernel calls it
            r = libdevice.rsqrt(mean + eps)
        else:  # Triton's CPU interpreter: libdevice is not interpreted
            r = 1.0 / tl.sqrt(mean + eps)
        n = _rounded(s * r, dtype)  # rms_norm in float32, cast back to the model dtype
        w = tl.load(w_ptr + c, mask=ok, other=0.0).to(tl.float32)
        tl.store(h_ptr + row * cols + c, _rounded(w * n, dtype).to(dtype), mask=ok)


def applies(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`add_rms_norm` takes these: x and y of one shape and a dtype of :data:`DTYPES`, with
    contiguous columns and rows at one stride each; a contiguous weight of the row's width and dtype; rows of at
    most :data:`MAX_COLS`; all on one CUDA device (or CPU tensors under Triton's interpreter, for the tests); plain
    tensors (no subclass); no gradient asked."""
    if not available() or x.shape != y.shape or x.dim() < 1 or not 0 < x.shape[-1] <= MAX_COLS:
        return False
    if not (type(x) is torch.Tensor and type(y) is torch.Tensor and type(weight) in PLAIN):
        return False  # (a tensor subclass, such as a distributed tensor, keeps torch's functions)
    if len({x.dtype, y.dtype, weight.dtype}) != 1 or x.dtype not in DTYPES:
        return False
    if weight.shape != x.shape[-1:] or not weight.is_contiguous():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad or weight.requires_grad):
        return False  # no backward: the compiled function keeps autograd
    if len({x.device, y.device, weight.device}) != 1 or not (x.is_cuda or (x.device.type == "cpu" and interpreted())):
        return False
    rx, ry = rows_view(x), rows_view(y)
    return rx is not None and ry is not None and rx.shape[0] < 2**31


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(``x + y``, its RMSNorm times ``weight``), new contiguous tensors of x's shape (see the module doc). Check
    :func:`applies` first."""
    rx, ry = rows_view(x), rows_view(y)
    rows, cols = rx.shape
    s = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    h = torch.empty_like(s)
    if rows == 0:
        return s, h
    block = triton.next_power_of_2(cols)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _add_rms_norm[(rows,)](rx, ry, weight, s, h, cols, rx.stride(0), ry.stride(0), eps, BLOCK=block,
                               LIBDEVICE=x.is_cuda, num_warps=min(16, max(1, block // 512)))
    return s, h
