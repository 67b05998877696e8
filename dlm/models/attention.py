"""Attention backends: torch's scaled_dot_product_attention (default) and flash-attn (optional extra).

All attention here is bidirectional. Padding is handled by a key mask only: every query (padding queries
included) attends to the valid keys of its row, so no row is ever fully masked and nothing turns into NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_SDPA_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")  # torch >= 2.5

BACKENDS = ("sdpa", "flash_attn")


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
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
