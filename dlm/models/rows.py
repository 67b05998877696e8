"""Row gathers and scatters along dim 0 that move 8-byte words instead of elements.

PyTorch's index kernels (``index_copy_``, ``index_select``, ``t[index]``) run one element per thread: with 2-byte
elements a warp moves 64 bytes at a time, and on an H200 a key/value row copy at 12,288 positions took 2.6x longer
than the same bytes moved as int64 words (``benchmarks/gpu-2026-11-28/``). Viewed as int64 the same bytes move in a
quarter of the elements. Nothing is read as a number, so the result is the element copy's, bit for bit; where a
row's bytes or strides are not whole words the element kernels run as before.

Also the CPU index builders of a step's packed layout (:func:`ranges`, :func:`runs`): a few tensor operations per
step instead of one small tensor per row, which the host otherwise builds while the GPU waits for the step.
"""

from __future__ import annotations

import torch


def _words(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` viewed as int64 words (the last dimension shrinks), or None where its layout does not allow it."""
    if t.dtype == torch.int64:
        return t
    try:
        return t.view(torch.int64)
    except RuntimeError:  # a last dimension of odd bytes, or strides not in whole words
        return None


def copy_rows(dst: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> None:
    """``dst.index_copy_(0, index, src)``, as words where both layouts allow it."""
    dw, sw = (_words(dst), _words(src)) if dst.dtype == src.dtype else (None, None)
    if dw is None or sw is None:  # (index_copy_ also checks the dtypes)
        dst.index_copy_(0, index, src)
    else:
        dw.index_copy_(0, index, sw)


def select_rows(src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``src[index]`` for a 1-D long ``index`` (a new contiguous tensor), as words where the layout allows it."""
    sw = _words(src)
    if sw is None:
        return src[index]
    return sw.index_select(0, index).view(src.dtype)


def ranges(starts: list[int], lengths: list[int]) -> torch.Tensor:
    """``torch.cat([torch.arange(s, s + n) for s, n in zip(starts, lengths)])`` (long, on the CPU) in a few
    operations instead of one tensor per range: the host builds these for every row of every step."""
    if not lengths:
        return torch.empty(0, dtype=torch.long)
    if all(n == lengths[0] for n in lengths):
        return (torch.tensor(starts).unsqueeze(1) + torch.arange(lengths[0])).flatten()
    n = torch.tensor(lengths)
    shift = torch.tensor(starts) - (n.cumsum(0) - n)  # each range's start minus its offset in the result
    total = sum(lengths)
    return torch.arange(total) + shift[_run_of(lengths, total)]


def runs(values: list, lengths: list[int], dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Each of ``values`` repeated its length in ``lengths``, one after the other (on the CPU), as ``dtype``."""
    if len(values) != len(lengths):
        raise ValueError(f"runs: {len(values)} values for {len(lengths)} lengths")
    total = sum(lengths)
    if values and all(v == values[0] for v in values):
        return torch.full((total,), values[0], dtype=dtype)
    if not lengths:
        return torch.empty(0, dtype=dtype)
    if all(n == lengths[0] for n in lengths):
        return torch.tensor(values, dtype=dtype).unsqueeze(1).expand(-1, lengths[0]).reshape(-1)
    return torch.tensor(values, dtype=dtype)[_run_of(lengths, total)]


def _run_of(lengths: list[int], total: int) -> torch.Tensor:
    """(total,) long: for each position of runs of ``lengths`` laid end to end, the index of its run (empty runs
    hold none). A count of the run boundaries at or before each position: a few operations, where CPU
    ``repeat_interleave`` took milliseconds for the 12,288 positions of a static batch's refresh."""
    bounds = torch.tensor(lengths[:-1], dtype=torch.long).cumsum(0)  # where runs 1 .. k-1 start
    step = torch.zeros(total + 1, dtype=torch.long)  # (a boundary at ``total``: empty runs at the end)
    step.index_add_(0, bounds, torch.ones_like(bounds))
    return step[:total].cumsum(0)
