"""Operands built to test the split-key attention kernel (dlm.models.attention_kernel) against attention in
float64, shared by its interpreted CPU test (tests/models/test_attention_kernel.py) and its GPU test
(tests/gpu/test_attention_gpu.py)."""

from __future__ import annotations

import torch

from dlm.models import attention_kernel


def compare(seed: int, rows: int, heads: int, kv_heads: int, queries: int, keys: int, dim: int, dtype: str,
            masked: bool, target_programs: int | None = None, device: str = "cpu") -> dict:
    """The kernel on pool-like operands (keys and values token-major views of a larger slot pool, queries a view of
    packed projections) against softmax attention in float64 over the same rounded inputs; with ``masked``, each row
    attends over a prefix of its keys of its own length (the padded layout's key mask)."""
    g = torch.Generator().manual_seed(seed)
    dt = getattr(torch, dtype)
    slot_len = keys + 7
    pool_k = (torch.randn(rows + 1, slot_len, kv_heads, dim, generator=g) * 2).to(dt)
    pool_v = torch.randn(rows + 1, slot_len, kv_heads, dim, generator=g).to(dt)
    k = pool_k[1:, :keys].transpose(1, 2).to(device)  # (R, Hkv, L, D), strided as the pool's view
    v = pool_v[1:, :keys].transpose(1, 2).to(device)
    packed = torch.randn(rows, queries, heads + 3, dim, generator=g).to(dt)
    q = packed[:, :, :heads].transpose(1, 2).to(device)  # (R, H, Q, D), token-major
    mask = None
    if masked:
        lengths = torch.randint(1, keys + 1, (rows,), generator=g)
        lengths[0] = keys
        keep = torch.arange(keys)[None, :] < lengths[:, None]
        mask = keep[:, None, None, :].to(device)
        # what released slots may hold past a row's length: never read into the output
        pool_k[1:, :keys][~keep] = float("nan")
        pool_v[1:, :keys][~keep] = float("nan")
        k, v = pool_k[1:, :keys].transpose(1, 2).to(device), pool_v[1:, :keys].transpose(1, 2).to(device)
    default = attention_kernel.TARGET_PROGRAMS
    attention_kernel.TARGET_PROGRAMS = target_programs or default
    try:
        assert attention_kernel.applies(q, k, v, mask)
        got = attention_kernel.attend(q, k, v, mask)
        splits = attention_kernel.plan(q, k)[2]
    finally:
        attention_kernel.TARGET_PROGRAMS = default
    groups = heads // kv_heads
    q64 = q.double().cpu()
    k64, v64 = (t.double().cpu().nan_to_num(0.0).repeat_interleave(groups, 1) for t in (k, v))
    s = q64 @ k64.transpose(-1, -2) / dim ** 0.5
    if mask is not None:
        s = s.masked_fill(~mask.cpu(), float("-inf"))
    want = torch.softmax(s, -1) @ v64
    err = (got.double().cpu() - want).abs()
    scale = want.abs().amax() + 1e-6
    return {"shape": list(got.shape), "dtype": str(got.dtype), "max_err_rel": float(err.max() / scale),
            "mean_err_rel": float(err.mean() / scale), "token_major": got.transpose(1, 2).is_contiguous(),
            "splits": splits}


# (seed, rows, heads, kv heads, queries, keys, head dim, dtype, masked, target programs; then the splits)
CASES = [
    (0, 1, 4, 4, 32, 300, 128, "bfloat16", False, None, 5),  # batch 1: the keys split, a partial last tile
    (1, 3, 4, 2, 8, 130, 64, "float16", True, None, 3),  # grouped heads folded, ragged lengths
    (2, 2, 6, 1, 20, 200, 64, "bfloat16", True, 1, 1),  # one split: the kernel's own normalised output
    (3, 2, 8, 2, 24, 97, 128, "bfloat16", False, 1, 1),  # 96 folded queries: two query tiles
    (4, 2, 4, 1, 16, 600, 64, "bfloat16", True, 8, 4),  # splits of three tiles each, the last partial
]


def check(case: tuple, result: dict) -> None:
    rows, heads, queries, dim = case[1], case[2], case[4], case[6]
    assert result["splits"] == case[10], case
    assert result["shape"] == [rows, heads, queries, dim], case
    assert result["dtype"] == f"torch.{case[7]}", case
    assert result["token_major"], case
    assert result["max_err_rel"] < 2e-2, (case, result)  # probabilities and output rounded to 8 or 11 bits
    assert result["mean_err_rel"] < 2e-3, (case, result)
