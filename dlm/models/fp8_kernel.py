"""The W8A16 product of an FP8 weight: a Triton kernel for the few-row products of decode steps.

``y = (x @ Q.T) * scale + b`` for x (M, K) bf16 activations, Q (N, K) float8_e4m3fn weights and per-output-channel
float32 scales. Each program reads a (BLOCK_N, BLOCK_K) tile of Q at a time, converts it to bf16 in registers
(exact: every e4m3 value is a bf16 value) and multiplies it with the matching bf16 tile of x on the tensor cores,
accumulating in float32; the scale is applied to the float32 sum (to each part's sum when K is cut into parts,
below), the bias after it, and the result is rounded to bf16 once. The activations are not quantized (unlike ``torch._scaled_mm``'s W8A8 product), so the only error
against the unquantized layer is the weight's own rounding.

A decode step at batch 1 feeds a few dozen positions, so its products read each weight once for a few rows: they
are bound by the weight read, and reading 1 byte per weight instead of 2 is what makes FP8 faster there. A product
of many rows (a full cache refresh) is bound by arithmetic instead; there FP8's tensor-core rate (twice bf16's)
wins, so :class:`~dlm.models.fp8.FP8Linear` takes another path above :data:`MAX_ROWS` rows.

The weight tile is the product's left operand (it fills the tensor core's 64-wide side) and the few rows the
right one. Where a layer has too few output tiles to fill the GPU, K is cut into parts (:func:`splits`) whose
float32 partial sums a second small kernel adds in a fixed order (no atomics). The tile sizes are fixed
(:data:`BLOCK_N`, :data:`BLOCK_K`, chosen with ``benchmarks/fp8_gpu.py --parts kernel``), never autotuned: an
autotuner would time candidates on first use (inside a step, possibly during a CUDA-graph capture) and could
pick another tiling in another process, which changes the float32 summation order and so the rounding. So a
product gives the same bits in every run; it does depend on the row count (the row tile), as cuBLAS's does.

Triton needs a CUDA GPU of compute capability >= 8.9 for float8 e4m3 (:func:`works`). Under
``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors in Triton's interpreter (whose bf16 matrix product is
not reliable, so there it multiplies in float32, which for bf16 operands and a float32 sum is the same
arithmetic, and whose cast to bf16 truncates, so there the kernel stores float32 and torch rounds it): ``tests/models/test_fp8_kernel.py`` runs it that way, ``tests/gpu/test_fp8_gpu.py`` on the GPU.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch

from .triton_support import interpreted

MAX_ROWS = 128  # FP8Linear's W8A16 product takes at most this many rows (see fp8.FP8Linear for more)
BLOCK_N = 64  # output channels per program
BLOCK_K = 128  # input features per loop iteration
NUM_WARPS = 4
NUM_STAGES = 4  # up to 64 rows; 3 above (the activation tile grows with the rows: shared memory)
MIN_PROGRAMS = 256  # split K until a product has at least this many programs (about two per SM of an H100/H200)
MAX_SPLIT = 8


@functools.cache
def _kernels():
    """The jitted kernels (Triton imported on first use: it is not a dependency of the package)."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["M"])
    def w8a16(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, M, N, K, K_SPLIT, stride_xm, stride_wn,
              HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, DOT_FP32: tl.constexpr, PARTIAL: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # the weight tile is the left operand (BLOCK_N x BLOCK_K, converted in registers), the activations the
        # right one (BLOCK_K x BLOCK_M): the few rows are the product's narrow side
        pid_n, pid_k = tl.program_id(0), tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, BLOCK_M)
        k_start = pid_k * K_SPLIT
        k_end = tl.minimum(K, k_start + K_SPLIT)
        rk = k_start + tl.arange(0, BLOCK_K)
        n_ok = rn[:, None] < N
        m_ok = rm[None, :] < M
        w_ptrs = w_ptr + rn[:, None] * stride_wn + rk[None, :]
        x_ptrs = x_ptr + rm[None, :] * stride_xm + rk[:, None]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            if EVEN_K:
                w = tl.load(w_ptrs, mask=n_ok, other=0.0)
                x = tl.load(x_ptrs, mask=m_ok, other=0.0)
            else:
                k_ok = rk - k_start + k0 < k_end
                w = tl.load(w_ptrs, mask=n_ok & k_ok[None, :], other=0.0)
                x = tl.load(x_ptrs, mask=m_ok & k_ok[:, None], other=0.0)
            if DOT_FP32:
                acc += tl.dot(w.to(tl.float32), x.to(tl.float32))
            else:
                acc += tl.dot(w.to(tl.bfloat16), x)
            w_ptrs += BLOCK_K
            x_ptrs += BLOCK_K
        acc = acc * tl.load(scale_ptr + rn, mask=rn < N, other=0.0)[:, None]
        out_mask = n_ok & m_ok
        if PARTIAL:  # float32 partial sums (SPLIT, M, N), added up by reduce_splits
            tl.store(out_ptr + pid_k * M * N + rm[None, :] * N + rn[:, None], acc, mask=out_mask)
        else:
            if HAS_BIAS:
                acc += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
            tl.store(out_ptr + rm[None, :] * N + rn[:, None], acc.to(out_ptr.dtype.element_ty), mask=out_mask)

    @triton.jit
    def reduce_splits(part_ptr, bias_ptr, y_ptr, MN, N, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                      BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        ok = offs < MN
        acc = tl.load(part_ptr + offs, mask=ok, other=0.0)
        for s in tl.static_range(1, SPLIT):  # in split order: the same sum every time
            acc += tl.load(part_ptr + s * MN + offs, mask=ok, other=0.0)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=ok)

    return w8a16, reduce_splits


def max_rows(in_features: int, out_features: int) -> int:
    """Rows up to which :class:`~dlm.models.fp8.FP8Linear` takes this kernel rather than the W8A8 product
    (``torch._scaled_mm`` after the activations' quantization): :data:`MAX_ROWS` for a product that narrows, 64
    for a square one, 32 for one that widens. Each crossing measured on an H200 over LLaDA-8B's and Dream-7B's
    eight products at 16 to 256 rows (BENCHMARKS.md, "Which FP8 path for how many rows"): the kernel's time grows
    with the rows' tile and with the output width, the W8A8 product's hardly below 256 rows."""
    if out_features > in_features:
        return 32
    return 64 if out_features == in_features else MAX_ROWS


def block_m(rows: int) -> int:
    """Rows per program: the next power of two from 16 (the smallest tensor-core tile) to :data:`MAX_ROWS`."""
    return max(16, 1 << max(0, rows - 1).bit_length())


@functools.cache
def splits(n: int, k: int, block_n: int = BLOCK_N, block_k: int = BLOCK_K) -> int:
    """How many parts K is cut into: doubled (up to :data:`MAX_SPLIT`, while the parts keep two K tiles or more
    on average) until the product has :data:`MIN_PROGRAMS` programs, then as many as equal parts of whole tiles
    need (:func:`cut`; no part is empty). Depends on the layer's shape only, never on the row count, so a layer
    always sums in the same order."""
    split, tiles_n, tiles_k = 1, -(-n // block_n), -(-k // block_k)
    while tiles_n * split < MIN_PROGRAMS and split < MAX_SPLIT and tiles_k >= 4 * split:
        split *= 2
    return cut(tiles_k, split)[0]


def cut(tiles_k: int, split: int) -> tuple[int, int]:
    """(parts, K tiles per part) of ``tiles_k`` tiles cut into at most ``split`` equal parts, none empty."""
    per = -(-tiles_k // split)
    return -(-tiles_k // per), per


def linear_w8a16(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                 block_n: int = BLOCK_N, block_k: int = BLOCK_K, num_warps: int = NUM_WARPS,
                 num_stages: int | None = None, split: int | None = None) -> torch.Tensor:
    """x (..., K) bf16 with at most :data:`MAX_ROWS` rows -> (..., N) bf16; q (N, K) float8_e4m3fn, scale (N,)
    float32, bias (N,) or ``None``. The tile arguments are for the benchmark's sweep (``num_stages=None``: by
    the row count; ``split=None``: :func:`splits`); the defaults are the ones the model uses."""
    lead, k = x.shape[:-1], x.shape[-1]
    if x.dtype != torch.bfloat16 or q.dtype != torch.float8_e4m3fn or q.shape[1] != k:
        raise ValueError(f"linear_w8a16 multiplies bf16 activations (..., K) by a float8_e4m3fn weight (N, K); got "
                         f"{x.dtype} {tuple(x.shape)} and {q.dtype} {tuple(q.shape)}")
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], q.shape[0]
    if m > MAX_ROWS:
        raise ValueError(f"linear_w8a16 takes at most {MAX_ROWS} rows, got {m}")
    split, per = cut(-(-k // block_k), splits(n, k, block_n, block_k) if split is None else split)
    k_split = per * block_k
    num_stages = num_stages or (NUM_STAGES if m <= 64 else NUM_STAGES - 1)
    # the interpreter truncates float32 to bf16 instead of rounding it: there the kernel stores float32
    out_dtype = torch.float32 if interpreted() else x.dtype
    y = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0:
        return y.to(x.dtype).view(*lead, n)
    w8a16, reduce_splits = _kernels()
    partial = split > 1
    out = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if partial else y
    dummy = scale  # stands for an absent bias (never read)
    # Triton launches on the current device: make it the tensors' (a device_map spreads layers over GPUs)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        w8a16[(-(-n // block_n), split)](
            x2, q, scale, bias if bias is not None else dummy, out, m, n, k, k_split, x2.stride(0), q.stride(0),
            HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, DOT_FP32=interpreted(), PARTIAL=partial,
            BLOCK_M=block_m(m), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages)
        if partial:
            block = 1024
            reduce_splits[(-(-(m * n) // block),)](out, bias if bias is not None else dummy, y, m * n, n,
                                                  SPLIT=split, HAS_BIAS=bias is not None, BLOCK=block)
    return y.to(x.dtype).view(*lead, n)


@functools.cache
def works(device: torch.device) -> bool:
    """Whether the kernel runs on ``device`` and gives the right numbers: a CUDA GPU of compute capability
    >= 8.9 with Triton. Tried once per device, at load, on small products of every row tile, with and without
    a bias; a failure warns and leaves ``torch._scaled_mm``. (Variants of other shapes compile on first use,
    which in a CUDA-graph step is its eager warm-up run, never the capture.)"""
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 9):
        return False
    from torch.utils._triton import has_triton

    if not has_triton():
        return False
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(128, 512, device=device, generator=g).to(torch.float8_e4m3fn)
        scale = torch.rand(128, device=device, generator=g) + 0.5
        bias = torch.randn(128, device=device, generator=g).to(torch.bfloat16)
        ok = True
        for rows in (1, 17, 33, 65):  # the four row tiles: 16 to 128
            x = torch.randn(rows, 512, device=device, generator=g).to(torch.bfloat16)
            for b in (None, bias):
                want = x.double() @ q.double().t() * scale.double() + (0 if b is None else b.double())
                got = linear_w8a16(x, q, scale, b).double()
                ok &= bool(((got - want).abs() <= 1e-2 * want.abs() + 1e-2).all())
    except Exception as exc:  # noqa: BLE001 - any compiler or launch failure means: do not use the kernel
        warnings.warn(f"the FP8 W8A16 Triton kernel does not run on {device} ({type(exc).__name__}: {exc}); "
                      "FP8 weights use torch._scaled_mm for every product", stacklevel=2)
        return False
    if not ok:
        warnings.warn(f"the FP8 W8A16 Triton kernel gave wrong numbers on {device}; FP8 weights use "
                      "torch._scaled_mm for every product", stacklevel=2)
    return ok


__all__ = ["MAX_ROWS", "block_m", "interpreted", "linear_w8a16", "splits", "works"]
