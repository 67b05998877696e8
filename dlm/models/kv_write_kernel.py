"""The keys and values of a step's fed positions stored into their slots of the key/value pool, in one Triton
kernel.

:meth:`dlm.cache.store.KVPool.write` (the reference) computes each position's row of the flattened slots
(``slot * slot_len + position``: one kernel), then copies the keys and the values into those rows (two more), and
gathers the stored positions first where a step stores only some of its fed positions (three more). At batch 1 a
step's forward replays some 600 kernels from a CUDA graph, and each small one costs a few microseconds whatever it
moves, so those three to six launches per layer were about a sixth of them. Here one program takes one stored
position and a block of its ``kv_heads x head_dim`` columns: it reads the position's slot and canvas position,
then copies the key and the value row. Nothing is computed on the values (loads and stores of the model dtype),
so the pool holds the reference's bits exactly (``tests/models/test_kv_write_kernel.py`` under Triton's CPU
interpreter, ``tests/gpu/test_kv_write_gpu.py`` on a GPU). :func:`applies` says when it is used.
"""

from __future__ import annotations

import contextlib

import torch

from .triton_support import available, interpreted, load

triton, tl = load()  # (None, None) without Triton: then no kernel is used (see applies)

BLOCK = 1024  # columns (kv_heads x head_dim) per program
NUM_WARPS = 4


if triton is not None:

    @triton.jit
    def _kv_write(k_ptr, v_ptr, kd_ptr, vd_ptr, pos_ptr, src_ptr, slot_ptr, slot_len, s_kt, s_kh, s_vt, s_vh, cols,
                  D: tl.constexpr, BLOCK: tl.constexpr, HAS_SRC: tl.constexpr):
        i = tl.program_id(0).to(tl.int64)  # the i-th stored position
        t = tl.load(src_ptr + i) if HAS_SRC else i  # its index among the fed positions
        row = tl.load(slot_ptr + i) * slot_len + tl.load(pos_ptr + t)
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        ok = c < cols
        h, d = (c // D).to(tl.int64), c % D  # (h * s_kh in int64: the source's head stride is T * D)
        tl.store(kd_ptr + row * cols + c, tl.load(k_ptr + t * s_kt + h * s_kh + d, mask=ok), mask=ok)
        tl.store(vd_ptr + row * cols + c, tl.load(v_ptr + t * s_vt + h * s_vh + d, mask=ok), mask=ok)


def applies(k: torch.Tensor, v: torch.Tensor, dest_k: torch.Tensor, dest_v: torch.Tensor, slots: torch.Tensor,
            positions: torch.Tensor, src: torch.Tensor | None = None) -> bool:
    """Whether :func:`write` takes these: k and v (T, kv_heads, head_dim) with contiguous last dimensions, into
    contiguous (slots, slot_len, kv_heads, head_dim) pools, all of one dtype; ``positions`` (T,), ``slots`` and
    ``src`` (W,) contiguous int64 (the kernel reads them as arrays); all on one CUDA device (or CPU tensors under
    Triton's interpreter, for the tests), plain tensors (no subclass), no gradient asked. Slot numbers and
    positions are not checked against the pool's size (the pool checks them on a CPU)."""
    if not available() or k.dim() != 3 or v.shape != k.shape or dest_k.dim() != 4 or dest_v.shape != dest_k.shape:
        return False
    index = (slots, positions) if src is None else (slots, positions, src)
    if any(t.dim() != 1 or t.dtype != torch.int64 or not t.is_contiguous() for t in index):
        return False
    if positions.numel() != k.shape[0] or slots.numel() != (k.shape[0] if src is None else src.numel()):
        return False
    if tuple(dest_k.shape[2:]) != tuple(k.shape[1:]) or len({k.dtype, v.dtype, dest_k.dtype, dest_v.dtype}) != 1:
        return False
    if torch.is_grad_enabled() and (k.requires_grad or v.requires_grad):
        return False
    if any(type(t) is not torch.Tensor for t in (k, v, dest_k, dest_v, *index)):
        return False  # (a tensor subclass, such as a distributed tensor, keeps torch's functions)
    devices = {t.device for t in (k, v, dest_k, dest_v, *index)}
    if len(devices) != 1 or not (k.is_cuda or (k.device.type == "cpu" and interpreted())):
        return False
    cols = k.shape[1] * k.shape[2]
    return (k.stride(-1) == 1 and v.stride(-1) == 1 and dest_k.is_contiguous() and dest_v.is_contiguous()
            and triton.cdiv(cols, BLOCK) <= 65535)


def write(dest_k: torch.Tensor, dest_v: torch.Tensor, slots: torch.Tensor, positions: torch.Tensor,
          k: torch.Tensor, v: torch.Tensor, src: torch.Tensor | None = None) -> None:
    """Store ``k[t]``, ``v[t]`` at ``dest[slots[i], positions[t]]`` for each stored position i, where ``t`` is
    ``src[i]`` (or i without ``src``): slots (W,) long, positions (T,) long, src (W,) long or None, k and v
    (T, kv_heads, head_dim). Check :func:`applies` first; positions are not checked against the slots' length."""
    n = slots.numel()
    if n == 0:
        return
    cols = k.shape[1] * k.shape[2]
    src_arg = src if src is not None else slots  # (unread without HAS_SRC)
    grid = (n, triton.cdiv(cols, BLOCK))
    with torch.cuda.device(k.device) if k.is_cuda else contextlib.nullcontext():
        _kv_write[grid](k, v, dest_k, dest_v, positions, src_arg, slots, dest_k.shape[1], k.stride(0), k.stride(1),
                        v.stride(0), v.stride(1), cols, D=k.shape[2], BLOCK=BLOCK, HAS_SRC=src is not None,
                        num_warps=NUM_WARPS)
