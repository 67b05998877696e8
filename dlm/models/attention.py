"""Attention backends: torch's scaled_dot_product_attention (default) and flash-attn (optional extra).

All attention here is bidirectional. Padding is handled by a key mask only: every query (padding queries
included) attends to the valid keys of its row, so no row is ever fully masked and nothing turns into NaN.
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

_SDPA_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")  # torch >= 2.5

BACKENDS = ("sdpa", "flash_attn")

#: Whether torch's SDPA may pick cuDNN's attention kernel (its first choice on an H200 with torch 2.11). cuDNN
#: builds an execution plan for every new combination of shapes, tens of milliseconds each on an H200 (measured
#: by ``benchmarks/micro_attention.py``), and an engine that batches requests as they come meets new shapes at
#: almost every step; flash and memory-efficient attention start at once. Off by default: :func:`sdpa` then
#: leaves torch the flash, memory-efficient and math kernels. :func:`use_cudnn_attention` sets it.
CUDNN_ATTENTION = False


def use_cudnn_attention(enabled: bool) -> None:
    """Let :func:`sdpa` use cuDNN's attention (torch's own choice of kernel) or not (the default)."""
    global CUDNN_ATTENTION
    CUDNN_ATTENTION = bool(enabled)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
         enable_gqa: bool = False) -> torch.Tensor:
    """``scaled_dot_product_attention`` with cuDNN's kernel left out on a GPU unless :data:`CUDNN_ATTENTION`:
    torch's process-wide backend switch is turned off while calls run and restored after the last one (threads
    share it: :func:`_cudnn_off_enter`). Left alone where the caller turned cuDNN off, or where it is the only
    backend left on (``torch.nn.attention.sdpa_kernel([SDPBackend.CUDNN_ATTENTION])``)."""
    kwargs = {"enable_gqa": True} if enable_gqa else {}
    if CUDNN_ATTENTION or not q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    _cudnn_off_enter()
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)
    finally:
        _cudnn_off_exit()


_SWITCH = threading.Lock()
_cudnn_off = {"calls": 0, "restore": False}  # calls between enter and exit; whether the last one turns cuDNN on


def _cudnn_off_enter() -> None:
    """Turn torch's cuDNN attention switch off, if it is on and another backend is on. Counted, so that overlapping
    calls from several threads (the data-parallel server's engines) restore it once, after the last one."""
    cuda = torch.backends.cuda
    with _SWITCH:
        if _cudnn_off["calls"] == 0:
            others = cuda.flash_sdp_enabled() or cuda.mem_efficient_sdp_enabled() or cuda.math_sdp_enabled()
            _cudnn_off["restore"] = cuda.cudnn_sdp_enabled() and others
            if _cudnn_off["restore"]:
                cuda.enable_cudnn_sdp(False)
        _cudnn_off["calls"] += 1


def _cudnn_off_exit() -> None:
    with _SWITCH:
        _cudnn_off["calls"] -= 1
        if _cudnn_off["calls"] == 0 and _cudnn_off["restore"]:
            torch.backends.cuda.enable_cudnn_sdp(True)
            _cudnn_off["restore"] = False


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def attend(
    q: torch.Tensor,  # (B, H, Q, D)
    k: torch.Tensor,  # (B, Hkv, L, D)
    v: torch.Tensor,  # (B, Hkv, L, D)
    key_mask: torch.Tensor | None,  # (B, L) or (B, Q, L) bool
    backend: str = "sdpa",
) -> torch.Tensor:
    """Attention of the fed queries over the keys where ``key_mask`` is True: (B, L) is the same for every query
    of a row (bidirectional), (B, Q, L) is per query (e.g. block-causal). Returns (B, H, Q, D)."""
    if backend == "flash_attn" and key_mask is None and q.is_cuda:
        from flash_attn import flash_attn_func  # optional dependency: dlm[gpu]

        out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=False)
        return out.transpose(1, 2)
    if key_mask is None:
        mask = None
    elif key_mask.dim() == 2:
        mask = key_mask[:, None, None, :]
    else:
        mask = key_mask[:, None, :, :]
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        if _SDPA_HAS_GQA:
            return sdpa(q, k, v, mask, enable_gqa=True)
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return sdpa(q, k, v, mask)
