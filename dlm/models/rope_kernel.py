"""Rotate-half RoPE of q and k in one Triton kernel, bit for bit the eager function's result.

:func:`dlm.models.elementwise.rope` (the reference) rotates q (B, H, Q, D) and k (B, Hkv, Q, D) with float32
cos/sin (B, 1, Q, D): in float32 with one rounding to the model dtype at the end (LLaDA), or in the model dtype
with every product and sum rounded (Qwen2/Dream). ``torch.compile`` fuses it into a kernel that moved its bytes
at about a third of an H200's memory bandwidth at 12,288 positions (a cache refresh of 32 requests) and may
contract a product and a sum into one fused multiply-add, which rounds differently from the eager function.

Here one program rotates a tile of positions of one head: it reads the two halves of each row and of cos/sin
once, computes in float32 and writes the rotated rows token-major (the layout the compiled function gave,
which the key/value pool's row copies and the attention read). Every rounding the eager function makes is made
explicitly (round to nearest even on the bits, the way torch converts float32 to bfloat16), multiply-add
contraction is switched off, and nothing else rounds: the result equals the eager function's exactly (a NaN is
a NaN, whatever its payload), on a GPU and in Triton's CPU interpreter alike (``tests/models/test_rope_kernel.py``;
the GPU run is in ``tests/gpu/test_rope_gpu.py``). bfloat16 only, half a head of a power of two; :func:`applies` says when the kernel
is used, and :func:`dlm.models.elementwise.fused_ops` falls back to the compiled function otherwise.
"""

from __future__ import annotations

import contextlib

import torch

from .triton_support import available, interpreted, load

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

BLOCK_Q = 32  # positions per program
NUM_WARPS = 4


if triton is not None:

    @triton.jit
    def to_bf16(x):
        """float32 -> the nearest bfloat16 value (ties to even), still as float32; NaN stays NaN."""
        bits = x.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return tl.where(x != x, x, rounded.to(tl.float32, bitcast=True))  # noqa: PLR0124 - the NaN test

    @triton.jit
    def _rotate(x_ptr, cos_ptr, sin_ptr, out_ptr, b, h, q0, Q, sx_b, sx_h, sx_q, sc_b, sc_q, so_b, so_h, so_q,
                HALF: tl.constexpr, BLOCK: tl.constexpr, FULL: tl.constexpr):
        pos = q0 + tl.arange(0, BLOCK)
        d = tl.arange(0, HALF)
        ok = (pos < Q)[:, None]
        x = x_ptr + b * sx_b + h * sx_h + pos[:, None] * sx_q + d[None, :]
        c = cos_ptr + b * sc_b + pos[:, None] * sc_q + d[None, :]
        s = sin_ptr + b * sc_b + pos[:, None] * sc_q + d[None, :]
        x1 = tl.load(x, mask=ok).to(tl.float32)
        x2 = tl.load(x + HALF, mask=ok).to(tl.float32)
        c1 = tl.load(c, mask=ok)
        c2 = tl.load(c + HALF, mask=ok)
        s1 = tl.load(s, mask=ok)
        s2 = tl.load(s + HALF, mask=ok)
        if FULL:  # (x * cos + rotate_half(x) * sin) in float32, rounded once
            o1 = to_bf16(x1 * c1 + (-x2) * s1)
            o2 = to_bf16(x2 * c2 + x1 * s2)
        else:  # every operation in bfloat16: cos/sin cast, each product and the sum rounded
            c1 = to_bf16(c1)
            c2 = to_bf16(c2)
            s1 = to_bf16(s1)
            s2 = to_bf16(s2)
            o1 = to_bf16(to_bf16(x1 * c1) + to_bf16((-x2) * s1))
            o2 = to_bf16(to_bf16(x2 * c2) + to_bf16(x1 * s2))
        o = out_ptr + b * so_b + h * so_h + pos[:, None] * so_q + d[None, :]
        tl.store(o, o1.to(tl.bfloat16), mask=ok)  # exact: the values are bfloat16 values already
        tl.store(o + HALF, o2.to(tl.bfloat16), mask=ok)

    # the position count varies from step to step: not specialised, so one compiled kernel serves every count (a
    # variant per divisibility would compile, for a second or so, in the middle of a run). The batch strides are
    # counts times whole heads, multiples of 16 for any count: specialised, they cost no variant and keep the
    # loads aligned (unspecialised, the kernel took 5.8x longer at 2.4x the positions on an H200)
    @triton.jit(do_not_specialize=["Q"])
    def _rope_qk(q_ptr, k_ptr, cos_ptr, sin_ptr, qo_ptr, ko_ptr, Q, H, sq_b, sq_h, sq_q, sk_b, sk_h, sk_q,
                 sc_b, sc_q, sqo_b, sqo_h, sqo_q, sko_b, sko_h, sko_q,
                 HALF: tl.constexpr, BLOCK: tl.constexpr, FULL: tl.constexpr):
        q0 = tl.program_id(0) * BLOCK
        head = tl.program_id(1)
        b = tl.program_id(2)
        if head < H:
            _rotate(q_ptr, cos_ptr, sin_ptr, qo_ptr, b, head, q0, Q, sq_b, sq_h, sq_q, sc_b, sc_q,
                    sqo_b, sqo_h, sqo_q, HALF, BLOCK, FULL)
        else:
            _rotate(k_ptr, cos_ptr, sin_ptr, ko_ptr, b, head - H, q0, Q, sk_b, sk_h, sk_q, sc_b, sc_q,
                    sko_b, sko_h, sko_q, HALF, BLOCK, FULL)


def applies(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether :func:`rope` takes these operands: bfloat16 q/k (B, heads, Q, D) with contiguous rows, float32
    cos/sin (B, 1, Q, D) alike, D / 2 a power of two, on one CUDA device (or CPU tensors under Triton's
    interpreter, for the tests)."""
    if not available() or q.dim() != 4 or k.dim() != 4 or cos.shape != sin.shape:
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        return False  # no backward: the compiled function keeps autograd
    B, _, Q, D = q.shape
    half = D // 2
    return (q.dtype == k.dtype == torch.bfloat16 and cos.dtype == sin.dtype == torch.float32
            and k.shape[0] == B and k.shape[2] == Q and k.shape[3] == D and tuple(cos.shape) == (B, 1, Q, D)
            and D % 2 == 0 and half & (half - 1) == 0 and half >= 1
            and q.stride(3) == k.stride(3) == cos.stride(3) == sin.stride(3) == 1 and cos.stride() == sin.stride()
            and len({q.device, k.device, cos.device, sin.device}) == 1
            and all(_reach(t) < 2**31 for t in (q, k, cos, sin))
            and (B * Q + BLOCK_Q) * max(q.shape[1], k.shape[1]) * D < 2**31  # the outputs
            and (q.is_cuda or (q.device.type == "cpu" and interpreted())))


def _reach(t: torch.Tensor) -> int:
    """The largest element offset a program computes for ``t`` (a position tile past the end included): the
    kernel's offsets are 32-bit integers."""
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + BLOCK_Q * abs(t.stride(2))


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, full_precision: bool
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated q and k, equal to :func:`dlm.models.elementwise.rope`'s (see the module doc), token-major in
    memory: (B, Q, heads, D) tensors returned as (B, heads, Q, D) views. Check :func:`applies` first."""
    B, H, Q, D = q.shape
    Hkv = k.shape[1]
    qo = torch.empty(B, Q, H, D, dtype=q.dtype, device=q.device).transpose(1, 2)
    ko = torch.empty(B, Q, Hkv, D, dtype=k.dtype, device=k.device).transpose(1, 2)
    if Q == 0 or B == 0:
        return qo, ko
    grid = (triton.cdiv(Q, BLOCK_Q), H + Hkv, B)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _rope_qk[grid](q, k, cos, sin, qo, ko, Q, H, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                     k.stride(2), cos.stride(0), cos.stride(2), qo.stride(0), qo.stride(1), qo.stride(2),
                     ko.stride(0), ko.stride(1), ko.stride(2), HALF=D // 2, BLOCK=BLOCK_Q, FULL=bool(full_precision),
                     num_warps=NUM_WARPS, enable_fp_fusion=False)
    return qo, ko

