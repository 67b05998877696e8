"""Per-row FP8 quantization of activations (the first step of the W8A8 ``scaled_mm`` path) in one Triton kernel,
bit for bit :func:`dlm.models.fp8.quantize_rows` on a GPU.

:func:`dlm.models.fp8.quantize_rows` (the reference) takes each row's largest magnitude, makes the row's float32
scale ``max(amax, 1e-12) / 448`` and rounds ``x / scale``, clamped to +-448, to float8_e4m3fn. Compiled with
``torch.compile`` (dynamic shapes) it took 21 us for 32 rows of LLaDA-8B's 4,096 columns on an H200, 60 us at
12,288 columns and 142 us for a refresh's 1,152 x 12,288, about as long as the FP8 product after it
(BENCHMARKS.md, "FP8 activation quantizer kernel").

Here one program takes one row. A row of at most :data:`ONE_PASS_COLS` columns is held in registers and read
once; a wider one is read in blocks twice, the second time mostly from the cache. The program reduces the row's
magnitudes to their maximum (a NaN anywhere makes the row's scale NaN, as torch's ``amax``) and makes the scale
as torch does (on a GPU torch divides a tensor by a Python number as a product with the number's float32
reciprocal, on a CPU with IEEE division); then it divides the row by it (IEEE division), clamps, rounds to e4m3
to nearest even, and writes the FP8 row and its scale. Nothing else rounds, so the result equals the reference's
exactly on a GPU (``tests/gpu/test_fp8_gpu.py``). Triton's CPU interpreter runs it in the CPU tests
(``tests/models/test_fp8_rows_kernel.py``); its float8 conversion does not round to nearest, so there the kernel
stores the clamped float32 values and torch rounds them. :func:`applies` says when it is used.
"""

from __future__ import annotations

import contextlib

import torch

from .triton_support import available, interpreted, load, rows_view

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

ONE_PASS_COLS = 8192  # rows up to this wide are held in registers and read once; wider ones in blocks of CHUNK
CHUNK = 4096
FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
MIN_ROW_SCALE = 1e-12  # (dlm.models.fp8's: an all-zero row gets exact zeros)
INV_FP8_MAX = float(torch.tensor(1.0) / FP8_MAX)  # 1 / 448 rounded to float32, as torch computes it


if triton is not None:

    @triton.jit
    def _scale(amax, nan, min_scale, fp8_max, inv_fp8_max, RECIPROCAL: tl.constexpr):
        """A row's scale from its largest magnitude (NaN if the row holds a NaN), as torch computes it."""
        amax = tl.where(nan, float("nan"), amax)
        amax = tl.where(amax < min_scale, min_scale, amax)  # NaN stays NaN
        if RECIPROCAL:  # torch on a GPU divides by a Python number as a product with its float32 reciprocal
            return amax * inv_fp8_max
        return tl.math.div_rn(amax, fp8_max)

    @triton.jit
    def _store(q_ptr, c, ok, x, scale, fp8_max, BLOCK: tl.constexpr, OUT_FP32: tl.constexpr):
        """x / scale (IEEE division), clamped to +-448, stored as e4m3 (to nearest even)."""
        y = tl.math.div_rn(x, tl.full((BLOCK,), 0.0, tl.float32) + scale)
        y = tl.where(y > fp8_max, fp8_max, tl.where(y < -fp8_max, -fp8_max, y))  # NaN stays NaN
        if OUT_FP32:  # the interpreter's float8 conversion does not round to nearest: torch rounds instead
            tl.store(q_ptr + c, y, mask=ok)
        else:
            tl.store(q_ptr + c, y.to(tl.float8e4nv), mask=ok)

    @triton.jit
    def _quantize_rows(x_ptr, q_ptr, s_ptr, cols, s_x, s_q, min_scale, fp8_max, inv_fp8_max, BLOCK: tl.constexpr,
                       ONE_PASS: tl.constexpr, RECIPROCAL: tl.constexpr, OUT_FP32: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        x_row, q_row = x_ptr + row * s_x, q_ptr + row * s_q
        if ONE_PASS:  # the row in registers: read once
            c = tl.arange(0, BLOCK)
            ok = c < cols
            x = tl.load(x_row + c, mask=ok, other=0.0).to(tl.float32)
            a = tl.abs(x)
            scale = _scale(tl.max(a, 0), tl.max((a != a).to(tl.int32), 0) > 0,  # noqa: PLR0124 - the NaN test
                           min_scale, fp8_max, inv_fp8_max, RECIPROCAL)
            _store(q_row, c, ok, x, scale, fp8_max, BLOCK, OUT_FP32)
        else:  # a wide row in blocks: its maximum first, then the blocks again (mostly from the cache)
            top = tl.zeros((BLOCK,), tl.float32)
            bad = tl.zeros((BLOCK,), tl.int32)
            for c0 in range(0, cols, BLOCK):
                c = c0 + tl.arange(0, BLOCK)
                a = tl.abs(tl.load(x_row + c, mask=c < cols, other=0.0).to(tl.float32))
                top = tl.maximum(top, a)
                bad = tl.maximum(bad, (a != a).to(tl.int32))  # noqa: PLR0124 - the NaN test
            scale = _scale(tl.max(top, 0), tl.max(bad, 0) > 0, min_scale, fp8_max, inv_fp8_max, RECIPROCAL)
            for c0 in range(0, cols, BLOCK):
                c = c0 + tl.arange(0, BLOCK)
                ok = c < cols
                x = tl.load(x_row + c, mask=ok, other=0.0).to(tl.float32)
                _store(q_row, c, ok, x, scale, fp8_max, BLOCK, OUT_FP32)
        tl.store(s_ptr + row, scale)


def applies(x: torch.Tensor) -> bool:
    """Whether :func:`quantize_rows` takes ``x``: bfloat16, float16 or float32 with contiguous columns whose
    leading dimensions collapse into rows, on a CUDA device (or a CPU tensor under Triton's interpreter, for the
    tests), no gradient asked."""
    if not available() or x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or x.dim() < 1:
        return False
    if torch.is_grad_enabled() and x.requires_grad:
        return False
    if not (x.is_cuda or (x.device.type == "cpu" and interpreted())):
        return False
    v = rows_view(x)
    return v is not None and 0 < v.shape[1] < 2**31 - CHUNK and v.shape[0] < 2**31


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) -> (q (..., K) float8_e4m3fn, scale (..., 1) float32): each row's FP8 values and scale, equal to
    :func:`dlm.models.fp8.quantize_rows`'s. Check :func:`applies` first."""
    v = rows_view(x)
    rows, cols = v.shape
    fp32 = interpreted()
    q = torch.empty(x.shape, dtype=torch.float32 if fp32 else FP8, device=x.device)
    scale = torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)
    if rows == 0:
        return q.to(FP8), scale
    one_pass = cols <= ONE_PASS_COLS
    block = triton.next_power_of_2(cols) if one_pass else CHUNK
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _quantize_rows[(rows,)](v, q.view(rows, cols), scale.view(rows), cols, v.stride(0), cols, MIN_ROW_SCALE,
                                FP8_MAX, INV_FP8_MAX, BLOCK=block, ONE_PASS=one_pass, RECIPROCAL=x.is_cuda,
                                OUT_FP32=fp32, num_warps=min(8, max(4, block // 1024)))
    return q.to(FP8), scale
