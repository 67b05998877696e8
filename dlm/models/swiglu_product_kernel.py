"""A layer's gate/up product and SwiGLU in one Triton kernel: ``silu(x @ gate.T) * (x @ up.T)`` without writing
the two products to memory.

With many rows (a cache refresh or an in-block step of a large batch) the gate/up products are bound by the
tensor cores, and :mod:`dlm.models.swiglu_kernel` then reads back what they wrote (twice the MLP's width per row)
to write half of it again: 246 us of every LLaDA-8B layer at a static batch's refresh (12,288 rows), about 7% of
the products' time. Here each program of a persistent grid takes tiles of 128 rows x 128 columns of the output:
it multiplies the rows by 128 columns of the gate weight and the same 128 columns of the up weight (the two
halves of the joined weight of :class:`dlm.models.joined.JoinedLinear`, both read through TMA descriptors),
accumulates in float32 over the depth in blocks of 64, rounds both accumulators to the model dtype as the
products' outputs are rounded, and applies :func:`dlm.models.swiglu_kernel.silu_product`, the eager function's
arithmetic.

Its result is the reference's (``swiglu(F.linear(x, gate), F.linear(x, up))``) bit for bit wherever the two
products round alike: on an H200 (torch 2.11, Triton 3.6) cuBLAS's kernels for these products sum the depth in
the same order, and ``tests/gpu/test_swiglu_product_gpu.py`` checks equal bits at LLaDA-8B's and Dream-7B's widths
from 1,024 to 12,288 rows. It is no split-K product, so a row's result does not depend on how many rows share
the call. Where it is used and how fast: docs/gpu.md ("fused kernels") and BENCHMARKS.md.

:func:`applies` says when the kernel takes a layer's MLP input: a plain joined gate/up layer without biases in
bfloat16 or float16 on a Hopper GPU (TMA; measured only there), at least :data:`MIN_ROWS` rows, outside any torch
function mode (the batch-invariant forward tiles ``F.linear`` itself), no gradient asked; or CPU tensors under
Triton's interpreter, for the tests. Elsewhere the two products and the SwiGLU function run as before.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from .fp8 import function_mode_active
from .plain import global_hooks, plain_module
from .triton_support import available, interpreted, load

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

#: fewer rows than this keep cuBLAS and the SwiGLU kernel: from 64 to 512 rows (LLaDA-8B and Dream-7B) the fused
#: kernel was 2-26% slower, from 1,024 rows on 2-10% faster (BENCHMARKS.md, "The gate/up product with SwiGLU")
MIN_ROWS = 1024
BLOCK_ROWS, BLOCK_COLS, BLOCK_DEPTH = 128, 128, 64
NUM_STAGES, NUM_WARPS, GROUP_ROWS = 3, 8, 8
DTYPES = (torch.bfloat16, torch.float16)


if triton is not None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    from .swiglu_kernel import silu_product

    @triton.jit
    def _tile_position(tile, tiles_m, tiles_n, GROUP: tl.constexpr):
        """Tiles in groups of ``GROUP`` row blocks, column by column within a group (the programs running at
        once share the weight's columns and the rows' blocks in the cache)."""
        per_group = GROUP * tiles_n
        first_m = (tile // per_group) * GROUP
        size_m = min(tiles_m - first_m, GROUP)
        return first_m + (tile % per_group) % size_m, (tile % per_group) // size_m

    # the row count varies from step to step: not specialised (one compiled kernel for every count)
    @triton.jit(do_not_specialize=["rows"])
    def _swiglu_product(x_desc, w_desc, o_desc, rows, width, depth, PROGRAMS: tl.constexpr, BM: tl.constexpr,
                        BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr, dtype: tl.constexpr,
                        LIBDEVICE: tl.constexpr):
        tiles_m = tl.cdiv(rows, BM)
        tiles_n = tl.cdiv(width, BN)
        steps = tl.cdiv(depth, BK)
        for tile in range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS):
            pm, pn = _tile_position(tile, tiles_m, tiles_n, GROUP)
            r, c = pm * BM, pn * BN
            gate = tl.zeros((BM, BN), dtype=tl.float32)
            up = tl.zeros((BM, BN), dtype=tl.float32)
            for k in range(steps):
                x = x_desc.load([r, k * BK])  # (past the depth, the descriptors read zeros)
                gate = tl.dot(x, w_desc.load([c, k * BK]).T, gate)
                # (a gate tile past the width reads up's rows: those columns are past the output's, not stored)
                up = tl.dot(x, w_desc.load([width + c, k * BK]).T, up)
            out = silu_product(gate.to(dtype).to(tl.float32), up.to(dtype).to(tl.float32), dtype, LIBDEVICE)
            o_desc.store([r, c], out.to(dtype))


@functools.cache
def _hopper(device: torch.device) -> bool:
    return torch.cuda.get_device_capability(device)[0] == 9


@functools.cache
def _programs(device: torch.device) -> int:
    """The persistent grid's size: one program per multiprocessor (4 under the interpreter)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _aligned(t: torch.Tensor) -> bool:
    """A TMA descriptor's needs: contiguous columns, 16-byte aligned start and row stride."""
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0)


def applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`swiglu_product` takes ``x`` (..., depth) through ``module`` (see the module doc)."""
    from .joined import JoinedLinear

    if not available() or type(module) is not JoinedLinear or module.names != ("gate", "up"):
        return False
    w = module.weight
    if module.bias is not None or w.dtype not in DTYPES or x.dtype != w.dtype or x.device != w.device:
        return False
    if torch.is_grad_enabled() and (w.requires_grad or x.requires_grad):
        return False
    if x.dim() < 2 or x.numel() // max(x.shape[-1], 1) < MIN_ROWS or x.shape[-1] != w.shape[1]:
        return False
    if x.is_cuda:
        if not _hopper(x.device):
            return False
    elif not (x.device.type == "cpu" and interpreted()):
        return False
    width = module.sizes[0]
    if module.sizes != [width, width] or width % 8 or not _aligned(w):
        return False
    return plain_module(module) and not global_hooks() and not function_mode_active()


def swiglu_product(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``silu(gate(x)) * up(x)`` of a joined gate/up ``module`` (see the module doc), as a new contiguous tensor
    of shape (..., width). Check :func:`applies` first."""
    depth = x.shape[-1]
    width = module.sizes[0]
    x2 = x.reshape(-1, depth)
    if not _aligned(x2):
        x2 = x2.contiguous()
    rows = x2.shape[0]
    out = torch.empty(rows, width, dtype=x.dtype, device=x.device)
    x_desc = TensorDescriptor.from_tensor(x2, [BLOCK_ROWS, BLOCK_DEPTH])
    w_desc = TensorDescriptor.from_tensor(module.weight, [BLOCK_COLS, BLOCK_DEPTH])
    o_desc = TensorDescriptor.from_tensor(out, [BLOCK_ROWS, BLOCK_COLS])
    tiles = triton.cdiv(rows, BLOCK_ROWS) * triton.cdiv(width, BLOCK_COLS)
    programs = _programs(x.device)  # (fewer tiles than programs: one program a tile)
    dtype = tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _swiglu_product[(min(programs, tiles),)](
            x_desc, w_desc, o_desc, rows, width, depth, PROGRAMS=programs, BM=BLOCK_ROWS, BN=BLOCK_COLS,
            BK=BLOCK_DEPTH, GROUP=GROUP_ROWS, dtype=dtype, LIBDEVICE=x.is_cuda, num_stages=NUM_STAGES,
            num_warps=NUM_WARPS)
    return out.view(*x.shape[:-1], width)
