"""Logits built to test the temperature-0 candidates kernel (dlm.sampling_kernel) against the reference, shared by
its interpreted CPU test (tests/test_sampling_kernel.py) and its GPU test (tests/gpu/test_sampling_gpu.py)."""

from __future__ import annotations

import torch

from dlm import sampling_kernel
from dlm.sampling import candidates_of_rows, compute_candidates


def compare(seed: int, positions: int, vocab: int, dtype: str, width: int, ban: list[int], never: list[int],
            low: list[int], mode: str, device: str = "cpu") -> dict:
    """Kernel against reference on ``positions`` random rows of ``vocab`` logits (a view of rows ``width`` wide),
    with ties within and across the kernel's tiles, a never-chosen and a banned id holding the largest logit, an
    all-equal row and a NaN row (row 5), read through a repeated, unordered row index."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(positions, width, generator=g) * 4
    logits = wide.to(getattr(torch, dtype))[:, :vocab].to(device)
    top = float(logits.float().max()) + 1
    logits[0, [vocab - 1, 3]] = top  # a tie across tiles (and chunks, past 8,192 ids): the first wins
    logits[1, [7, 9]] = top  # a tie within a tile
    logits[1, [vocab - 2, vocab - 3]] = top  # and later equal ones
    if never:
        logits[2, never[0]] = top + 5  # the never-chosen id is the largest: the next one is chosen
    if ban:
        logits[3, ban[0]] = top + 9  # a banned id is the largest: out of the softmax too
    logits[4, :] = top  # every value equal: the first choosable id
    logits[5, 11] = float("nan")
    rows = torch.randint(0, positions, (3 * positions,), generator=g).to(device)
    kw = dict(mode=mode, ban_ids=tuple(ban), never_ids=tuple(never), low_confidence_ids=tuple(low))
    assert sampling_kernel.applies(logits, rows)
    calls, kernel = [], sampling_kernel.greedy
    sampling_kernel.greedy = lambda *a: calls.append(1) or kernel(*a)
    try:
        strided = torch.stack([rows, rows.flip(0)], 1)[:, 0]  # the same index, a view with a stride of 2
        got = candidates_of_rows(logits, strided, fused=True, **kw)
    finally:
        sampling_kernel.greedy = kernel
    want = compute_candidates(logits[rows], **kw)
    _, _, nan = sampling_kernel.greedy(logits, rows, torch.tensor(ban, dtype=torch.long, device=device),
                                       torch.tensor(never, dtype=torch.long, device=device))
    ok = ~torch.isnan(logits[rows].float()).any(-1)
    finite = ok & torch.isfinite(want.confidence)
    rel = ((got.confidence - want.confidence).abs() / want.confidence.abs().clamp(min=1e-30))[finite]
    return {"tokens_equal": bool((got.tokens == want.tokens)[ok].all()),
            "inf_equal": bool((torch.isinf(got.confidence) == torch.isinf(want.confidence))[ok].all()),
            "max_rel": float(rel.max()) if rel.numel() else 0.0,
            "nan_rows": rows[nan].unique().tolist(), "dtypes": [str(got.tokens.dtype), str(got.confidence.dtype)],
            "kernel": bool(calls)}


# (seed, positions, vocab, dtype, row width, banned ids, never-chosen ids, low-confidence ids, mode)
CASES = [
    (0, 8, 300, "bfloat16", 300, [], [], [], "gumbel"),  # one partial tile, no ids at all
    (1, 8, 5000, "bfloat16", 5100, [17], [33], [], "gumbel"),  # two tiles, the last partial; strided rows
    (2, 9, 8192, "float32", 8192, [5], [8191], [40, 41], "multinomial"),  # exactly two tiles
    (3, 7, 4500, "float16", 4600, [], [12], [12, 13], "categorical"),
    (4, 6, 4096, "bfloat16", 4096, [100, 200], [0, 1], [2], "gumbel"),  # several ids of each kind
    (5, 6, 20000, "bfloat16", 20100, [17], [9000], [5], "gumbel"),  # three chunks of the row, the last partial
    (6, 6, 16384, "bfloat16", 16384, [16383], [8192], [], "categorical"),  # two whole chunks
    (7, 6, 300, "float32", 300, [], [12], [], "categorical"),  # float32 categorical: the reference's rule
]


def check(case: tuple, result: dict) -> None:
    assert result["tokens_equal"], case
    assert result["inf_equal"], case  # low-confidence ids at -inf where the reference has them
    assert result["max_rel"] < 1e-5, (case, result["max_rel"])  # the same terms summed in another order
    assert result["nan_rows"] == [5], case
    assert result["dtypes"] == ["torch.int64", "torch.float32"], case
    assert result["kernel"] == (case[8] != "categorical" or case[3] != "float32"), case
