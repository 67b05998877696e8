"""The temperature-0 candidates of many logits rows in two Triton kernels: token and confidence, read straight from
the model's logits.

At temperature 0 every sampling mode picks the argmax of the logits (the mask token and the banned ids left out)
and reads its confidence from the softmax of the logits (the banned ids at -inf). The reference,
:func:`dlm.sampling.compute_candidates`, gathers the candidate rows, converts them to float32, writes the whole
softmax and reads it back for the argmax and the gather: five passes over rows of 126,464 values at LLaDA's
vocabulary, about 9 ms of every block of a static batch of 32 on an H200 (BENCHMARKS.md, "Where the static
batch's time goes"). Here the rows are read where they lie (no gather, no copy), in chunks of 8,192 logits, one
program per chunk of a candidate row, which reads its chunk twice (the second time from the cache):

1. the chunk's maximum over the allowed ids, the first index of its largest logit among the choosable ids, and
   whether it holds a NaN;
2. the float32 sum of ``exp(l - the chunk's maximum)`` over the allowed ids.

A second kernel combines each row's chunks: the row's maximum, the chunks' sums rescaled to it, and the token,
the first index of the largest choosable logit (torch's argmax rule: the first of equal values).

The confidence is ``exp(l[token] - max) / sum``: the softmax's value at the token, with each exponential and the
division rounded as torch rounds them (libdevice's ``expf``, IEEE division). The tokens are the reference's
exactly; the confidences differ from torch's softmax in the last bits only: the sums add the same terms in another
One difference of rule: Dream's ``categorical``
mode takes the argmax of the probabilities, in which two different logits can round to the same probability;
here the larger logit wins. The engine uses the kernel in that mode for bfloat16 and float16 logits only, whose
distinct values give distinct probabilities unless both lie within about 1.5e-5 of 0, or every choosable
probability underflows to 0 (the mask token outweighing all others by about 100 in logit, where the reference
picks token 0 and the kernel the largest logit). On a GPU, Triton flushes float32 values below 2**-126 to 0, so a confidence that small is 0 here and a
denormal number in torch's softmax.

Used by the engine for requests at temperature 0 without extra measures (margin, entropy, logit gap) when the
model's fused kernels are on (``dlm.load(..., fused_kernels=True)``, the default on one CUDA device):
:func:`applies` says when. Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors in Triton's
interpreter (the CPU tests).
"""

from __future__ import annotations

import contextlib

import torch

from .models.triton_support import available, interpreted, load

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

CHUNK_V = 8192  # logits per program: its two passes read them from memory once (the second from the cache)
BLOCK_V = 2048  # logits per loop iteration of a program
NUM_WARPS = 4


if triton is not None:
    from triton.language.extra import libdevice

    @triton.jit
    def _excluded(cols, ids_ptr, N_IDS: tl.constexpr):
        """Whether each of ``cols`` is one of the ``N_IDS`` token ids at ``ids_ptr``."""
        hit = cols < 0
        for j in tl.static_range(N_IDS):
            hit = hit | (cols == tl.load(ids_ptr + j))
        return hit

    @triton.jit
    def _exp(x, ACCURATE: tl.constexpr):
        if ACCURATE:
            return libdevice.exp(x)  # expf, as torch's softmax computes it
        return tl.exp(x)  # the interpreter (numpy's float32 exp)

    # the vocabulary and row stride are not specialised (one compiled kernel for every model); the row count is
    # the grid
    @triton.jit(do_not_specialize=["V", "stride"])
    def _chunk(logits_ptr, rows_ptr, ban_ptr, never_ptr, part_ptr, at_ptr, V, stride,
               N_BAN: tl.constexpr, N_NEVER: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
               ACCURATE: tl.constexpr):
        """Program (i, c): chunk c of row ``rows[i]``: its allowed maximum, the float32 sum of exp(l - that
        maximum), its largest choosable logit, where that is (first of equal ones) and whether it holds a NaN."""
        i, c = tl.program_id(0), tl.program_id(1)
        chunks = tl.num_programs(1)
        base = logits_ptr + tl.load(rows_ptr + i).to(tl.int64) * stride
        top = tl.full((), float("-inf"), tl.float32)
        best = tl.full((), float("-inf"), tl.float32)
        best_at = tl.full((), 0, tl.int64)
        nan = tl.full((), 0, tl.float32)
        for start in range(c * CHUNK, c * CHUNK + CHUNK, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            nan = tl.maximum(nan, tl.max((x != x).to(tl.float32)))  # noqa: PLR0124 - the NaN test
            x = tl.where(_excluded(cols, ban_ptr, N_BAN), float("-inf"), x)
            top = tl.maximum(top, tl.max(x))
            x = tl.where(_excluded(cols, never_ptr, N_NEVER), float("-inf"), x)
            tile_best, tile_at = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
            better = tile_best > best  # strictly: an equal value later in the row does not replace the first
            best_at = tl.where(better, start + tile_at.to(tl.int64), best_at)
            best = tl.where(better, tile_best, best)
        total = tl.zeros((BLOCK,), tl.float32)
        for start in range(c * CHUNK, c * CHUNK + CHUNK, BLOCK):  # the chunk again, from the cache
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            x = tl.where(_excluded(cols, ban_ptr, N_BAN), float("-inf"), x)
            total += tl.where(x == float("-inf"), 0.0, _exp(x - top, ACCURATE))  # (a chunk all -inf adds 0)
        out = part_ptr + (i * chunks + c) * 4
        tl.store(out, top)
        tl.store(out + 1, tl.sum(total))
        tl.store(out + 2, best)
        tl.store(out + 3, nan)
        tl.store(at_ptr + i * chunks + c, best_at)

    @triton.jit
    def _combine(part_ptr, at_ptr, token_ptr, conf_ptr, nan_ptr, CHUNKS: tl.constexpr, P: tl.constexpr,
                 ACCURATE: tl.constexpr):
        """Program i: row i's chunks combined: the row's maximum, the sum of its chunks' sums rescaled to it,
        the first chunk holding the largest choosable logit, and the confidence of that token."""
        i = tl.program_id(0)
        c = tl.arange(0, P)
        ok = c < CHUNKS
        part = part_ptr + (i * CHUNKS + c) * 4
        top = tl.load(part, mask=ok, other=float("-inf"))
        total = tl.load(part + 1, mask=ok, other=0.0)
        best = tl.load(part + 2, mask=ok, other=float("-inf"))
        nan = tl.load(part + 3, mask=ok, other=0.0)
        row_top = tl.max(top)
        scaled = tl.where(top == float("-inf"), 0.0, total * _exp(top - row_top, ACCURATE))
        row_best, first = tl.max(best, axis=0, return_indices=True, return_indices_tie_break_left=True)
        at = tl.load(at_ptr + i * CHUNKS + first)
        conf = tl.math.div_rn(_exp(row_best - row_top, ACCURATE), tl.sum(scaled))
        tl.store(token_ptr + i, at)
        tl.store(conf_ptr + i, conf)
        tl.store(nan_ptr + i, (tl.max(nan) > 0).to(tl.int8))


def applies(logits: torch.Tensor, rows: torch.Tensor) -> bool:
    """Whether :func:`greedy` takes these operands: 2-D float logits (positions, vocabulary) with contiguous rows
    and a 1-D integer index of rows on the same CUDA device (or CPU tensors under Triton's interpreter)."""
    if not available() or logits.dim() != 2 or rows.dim() != 1:
        return False
    return (logits.dtype in (torch.bfloat16, torch.float16, torch.float32) and logits.stride(1) == 1
            and rows.dtype in (torch.int32, torch.int64) and logits.device == rows.device
            and logits.shape[1] > 0
            and (logits.is_cuda or (logits.device.type == "cpu" and interpreted())))


def greedy(logits: torch.Tensor, rows: torch.Tensor, ban: torch.Tensor, never: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (N,) int64, confidences (N,) float32, has NaN (N,) bool) of the logits rows ``rows`` (N,): see the
    module doc. ``ban``: ids at -inf before anything (long, on the logits' device); ``never``: ids never chosen
    (they stay in the softmax). Check :func:`applies` first."""
    rows = rows.contiguous()  # (the kernel reads the index as one run)
    n = rows.numel()
    dev = logits.device
    tokens = torch.empty(n, dtype=torch.long, device=dev)
    conf = torch.empty(n, dtype=torch.float32, device=dev)
    nan = torch.empty(n, dtype=torch.int8, device=dev)
    n_ban, n_never = ban.numel(), never.numel()
    V = logits.shape[1]
    block = min(BLOCK_V, triton.next_power_of_2(V))  # a small vocabulary: one short chunk
    chunk = min(CHUNK_V, block * triton.cdiv(V, block))
    chunks = triton.cdiv(V, chunk)
    if n:
        parts = torch.empty(n, chunks, 4, dtype=torch.float32, device=dev)
        at = torch.empty(n, chunks, dtype=torch.long, device=dev)
        accurate = not interpreted()
        with torch.cuda.device(dev) if logits.is_cuda else contextlib.nullcontext():
            # an empty id list is never read, but Triton wants a real pointer for it
            ban, never = (ids if ids.numel() else rows for ids in (ban, never))
            _chunk[(n, chunks)](logits, rows, ban, never, parts, at, V, logits.stride(0), N_BAN=n_ban,
                                N_NEVER=n_never, CHUNK=chunk, BLOCK=block, ACCURATE=accurate,
                                num_warps=NUM_WARPS)
            _combine[(n,)](parts, at, tokens, conf, nan, CHUNKS=chunks, P=triton.next_power_of_2(chunks),
                           ACCURATE=accurate, num_warps=1)
    return tokens, conf, nan.bool()
