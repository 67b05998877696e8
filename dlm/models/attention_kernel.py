"""Attention of a cached step's few queries over pooled keys: a Triton kernel split over the keys.

A cached decode step feeds a block of a few dozen positions per request, whose queries attend over the request's
whole canvas of keys in the key/value pool (a thousand or more at batch 1). torch's FlashAttention-2 kernel tiles
the queries, so at batch 1 it runs one or two programs per head and splits the keys in a second pass of its own:
15 us per layer at LLaDA-8B geometry on an H200 for 19 MB of keys and values that the GPU reads in 5
(BENCHMARKS.md, "What cuDNN's attention would give inside CUDA graphs"). Here:

* the query heads that share a key/value head are folded into one tile of queries (grouped-query attention reads
  each key once);
* the keys of a row are cut into splits so that there are a few hundred programs, each computing an online
  softmax over its split in float32 (scores ``q.k * 1/sqrt(D)``, probabilities rounded to the value dtype for
  their product with the values, as FlashAttention does);
* a second kernel combines the splits of each query (their maxima, sums and partial outputs), in a fixed order,
  and writes the output token-major, (rows, queries, heads, D), the layout the model reads next.

The split count and tile sizes depend on the shapes only (never on timing or on the device), so a call gives the
same bits every time; they are not those of torch's kernels (another summation order), so the reference is
:func:`dlm.models.attention.attend` within tolerance (``tests/models/test_attention_kernel.py`` in Triton's CPU
interpreter, ``tests/gpu/test_attention_gpu.py`` on a GPU). Used by the padded ragged attention for rows that
read pooled keys, when the model's fused kernels are on (:mod:`dlm.models.ragged`); :func:`applies` says for
which operands.
"""

from __future__ import annotations

import contextlib
import math

import torch

from .triton_support import available, interpreted, load

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

BLOCK_N = 64  # keys per loop iteration
MAX_FOLDED = 256  # at most this many queries per key/value head (heads folded): a cached step's block
TARGET_PROGRAMS = 264  # split the keys until a call has about this many programs (two per SM of an H100/H200)
NUM_WARPS = 4
# software pipelining of the split kernel's key/value loads: Triton's default where a row's keys are one split,
# two stages where they are cut into several (few rows, many keys: batch 1), which a sweep on an H200 found
# faster there and slower for a batch's rows (BENCHMARKS.md, the split kernel's settings)
NUM_STAGES, NUM_STAGES_SPLIT = 3, 2


if triton is not None:

    @triton.jit(do_not_specialize=["L", "split_len"])
    def _split(q_ptr, k_ptr, v_ptr, ok_ptr, o_ptr, part_ptr, ml_ptr, Q, L, GQ, Hkv, split_len, scale,
               sq_r, sq_h, sq_q, sk_r, sk_h, sk_l, sv_r, sv_h, sv_l, sok_r, so_r, so_q, so_h,
               HAS_MASK: tl.constexpr, PARTIAL: tl.constexpr, DOT_FP32: tl.constexpr, D: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """Program (row x kv head, query tile, split): the online softmax of a tile of folded queries over one
        split of the row's keys; the normalised output (one split) or the unnormalised partial with its maxima
        and sums (several)."""
        rh, mt, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        splits = tl.num_programs(2)
        r = rh // Hkv
        hk = rh % Hkv
        f = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # folded query: head hk * G + f // Q, query f % Q
        f_ok = f < GQ
        head = hk * (GQ // Q) + f // Q
        qi = f % Q
        d = tl.arange(0, D)
        q = tl.load(q_ptr + r * sq_r + head[:, None] * sq_h + qi[:, None] * sq_q + d[None, :],
                    mask=f_ok[:, None], other=0.0)
        if DOT_FP32:
            q = q.to(tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, D), tl.float32)
        start = sp * split_len
        end = tl.minimum(L, start + split_len)
        for n0 in range(start, end, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            in_split = n < end
            ok = in_split
            if HAS_MASK:
                ok = ok & (tl.load(ok_ptr + r * sok_r + n, mask=in_split, other=0) != 0)
            k = tl.load(k_ptr + r * sk_r + hk * sk_h + n[:, None] * sk_l + d[None, :], mask=in_split[:, None],
                        other=0.0)
            # (masked-out keys' values read as 0: a stale NaN in a released slot times a weight of 0 is NaN)
            v = tl.load(v_ptr + r * sv_r + hk * sv_h + n[:, None] * sv_l + d[None, :], mask=ok[:, None], other=0.0)
            if DOT_FP32:
                k = k.to(tl.float32)
            s = tl.dot(q, tl.trans(k)) * scale
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: every weight 0, not NaN
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if DOT_FP32:
                pv = tl.dot(p.to(v.dtype).to(tl.float32), v.to(tl.float32))
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m_i = m_new
        if PARTIAL:
            row = rh * splits + sp
            tl.store(part_ptr + (row * GQ + f[:, None]) * D + d[None, :], acc, mask=f_ok[:, None])
            tl.store(ml_ptr + (row * GQ + f) * 2, m_i, mask=f_ok)
            tl.store(ml_ptr + (row * GQ + f) * 2 + 1, l_i, mask=f_ok)
        else:
            o = acc / l_i[:, None]
            tl.store(o_ptr + r * so_r + qi[:, None] * so_q + head[:, None] * so_h + d[None, :],
                     o.to(o_ptr.dtype.element_ty), mask=f_ok[:, None])

    @triton.jit
    def _combine(part_ptr, ml_ptr, o_ptr, Q, GQ, Hkv, so_r, so_q, so_h,
                 SPLITS: tl.constexpr, P: tl.constexpr, D: tl.constexpr):
        """Program (row x kv head, folded query): its splits' partial outputs weighted by exp(max - overall max)
        and divided by the weighted sum of their sums, splits in order."""
        rh, f = tl.program_id(0), tl.program_id(1)
        r = rh // Hkv
        hk = rh % Hkv
        head = hk * (GQ // Q) + f // Q
        qi = f % Q
        s = tl.arange(0, P)
        s_ok = s < SPLITS
        row = rh * SPLITS + s
        m = tl.load(ml_ptr + (row * GQ + f) * 2, mask=s_ok, other=float("-inf"))
        lsum = tl.load(ml_ptr + (row * GQ + f) * 2 + 1, mask=s_ok, other=0.0)
        top = tl.max(m)
        w = tl.where(m == float("-inf"), 0.0, tl.exp(m - top))
        d = tl.arange(0, D)
        part = tl.load(part_ptr + (row[:, None] * GQ + f) * D + d[None, :], mask=s_ok[:, None], other=0.0)
        o = tl.sum(part * w[:, None], 0) / tl.sum(lsum * w)
        tl.store(o_ptr + r * so_r + qi * so_q + head * so_h + d, o.to(o_ptr.dtype.element_ty))


def applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether :func:`attend` takes these operands: q (R, H, Q, D), k and v (R, Hkv, L, D) in bfloat16 or
    float16 with contiguous head dimensions, D 64 or 128, H a multiple of Hkv with at most :data:`MAX_FOLDED`
    queries per key/value head, ``mask`` None or a per-key (R, 1, 1, L) bool mask, on one CUDA device (or CPU
    tensors under Triton's interpreter)."""
    if not available() or q.dim() != 4 or k.dim() != 4 or v.shape != k.shape:
        return False
    R, H, Q, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    if k.shape[0] != R or k.shape[3] != D or H % Hkv or Q == 0 or L == 0 or R == 0:
        return False
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (R, 1, 1, L) or mask.stride(3) != 1):
        return False
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return False
    return (q.dtype == k.dtype == v.dtype and q.dtype in (torch.bfloat16, torch.float16) and D in (64, 128)
            and (H // Hkv) * Q <= MAX_FOLDED and q.stride(3) == k.stride(3) == v.stride(3) == 1
            and len({q.device, k.device, v.device} | ({mask.device} if mask is not None else set())) == 1
            and max(_reach(t) for t in (q, k, v)) < 2**31 and R * Q * H * D < 2**31
            and (q.is_cuda or (q.device.type == "cpu" and interpreted())))


def _reach(t: torch.Tensor) -> int:
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + BLOCK_N * abs(t.stride(2))


def plan(q: torch.Tensor, k: torch.Tensor) -> tuple[int, int, int, int]:
    """(query tile, query tiles, splits, keys per split) of a call, from the shapes alone: enough splits of whole
    key tiles for about :data:`TARGET_PROGRAMS` programs."""
    R, H, Q, _ = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    GQ = (H // Hkv) * Q
    block_m = 16 if GQ <= 16 else 32 if GQ <= 32 else 64
    m_tiles = triton.cdiv(GQ, block_m)
    tiles = triton.cdiv(L, BLOCK_N)
    want = max(1, min(tiles, triton.cdiv(TARGET_PROGRAMS, R * Hkv * m_tiles)))
    split_len = triton.cdiv(tiles, want) * BLOCK_N
    return block_m, m_tiles, triton.cdiv(L, split_len), split_len


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over the keys where ``mask`` (R, 1, 1, L) is True (all keys if None): (R, H, Q,
    D), a view of a token-major (R, Q, H, D) tensor. Check :func:`applies` first."""
    R, H, Q, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    GQ = (H // Hkv) * Q
    block_m, m_tiles, splits, split_len = plan(q, k)
    out = torch.empty(R, Q, H, D, dtype=q.dtype, device=q.device)
    ok = mask[:, 0, 0, :] if mask is not None else q  # (q: any pointer, never read without a mask)
    if splits > 1:
        part = torch.empty(R * Hkv * splits * GQ * D, dtype=torch.float32, device=q.device)
        ml = torch.empty(R * Hkv * splits * GQ * 2, dtype=torch.float32, device=q.device)
    else:
        part = ml = out
    fp32 = interpreted()
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _split[(R * Hkv, m_tiles, splits)](
            q, k, v, ok, out, part, ml, Q, L, GQ, Hkv, split_len, 1.0 / math.sqrt(D),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), ok.stride(0), out.stride(0), out.stride(1), out.stride(2),
            HAS_MASK=mask is not None, PARTIAL=splits > 1, DOT_FP32=fp32, D=D, BLOCK_M=block_m, BLOCK_N=BLOCK_N,
            num_warps=NUM_WARPS, num_stages=NUM_STAGES_SPLIT if splits > 1 else NUM_STAGES)
        if splits > 1:
            _combine[(R * Hkv, GQ)](part, ml, out, Q, GQ, Hkv, out.stride(0), out.stride(1), out.stride(2),
                                    SPLITS=splits, P=triton.next_power_of_2(splits), D=D, num_warps=NUM_WARPS)
    return out.transpose(1, 2)
