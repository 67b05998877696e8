"""Batch-invariant numerics on a GPU: a row's result does not depend on the other rows of the batch.

GPU matrix kernels choose their tiling (and split of the reduction) from the shape of the whole product, so the
same row multiplied inside a batch of 1,000 rows or of 30 can round differently; reductions over a row choose
their strategy from the tensor's shape too. :class:`BatchInvariantOps` intercepts the dense operations of the
model (``F.linear``, ``F.rms_norm``) and runs them on fixed-size tiles of ``tile`` rows (the last one padded
with zeros): every row goes through the same kernel on the same shape whatever runs beside it, and rows never
mix inside a kernel. The engine adds the rest: attention per request (``loop``), and candidates and scheduler
decisions computed per request. The approach of "Defeating Nondeterminism in LLM Inference" (2025), without
custom kernels: the cost is the padding of the last tile and more, smaller launches.

On a CPU none of this is needed: float32 products of at least 16 rows already take one kernel whose rows are
independent (the engine pads to 16), which the property tests check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_LINEAR = {F.linear, torch._C._nn.linear}
_RMS_NORM = {F.rms_norm}


def _tiled(fn, x: torch.Tensor, tile: int, *args, **kwargs) -> torch.Tensor:
    """``fn(rows, *args)`` over the rows of ``x`` (..., d) in tiles of ``tile`` rows; same shape as fn(x)."""
    lead, d = x.shape[:-1], x.shape[-1]
    rows = x.reshape(-1, d)
    n = rows.shape[0]
    outs = []
    for start in range(0, n, tile):
        chunk = rows[start : start + tile]
        if chunk.shape[0] < tile:  # the same shape as every other tile: pad with zero rows
            chunk = torch.cat([chunk, chunk.new_zeros(tile - chunk.shape[0], d)])
            outs.append(fn(chunk, *args, **kwargs)[: n - start])
        else:
            outs.append(fn(chunk, *args, **kwargs))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.reshape(*lead, out.shape[-1])


class BatchInvariantOps(TorchFunctionMode):
    """Within this mode, ``F.linear`` and ``F.rms_norm`` run on fixed tiles of ``tile`` rows (see the module doc)."""

    def __init__(self, tile: int = 128):
        super().__init__()
        self.tile = tile

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _LINEAR and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
            return _tiled(func, args[0], self.tile, *args[1:], **kwargs)
        if func in _RMS_NORM and args and isinstance(args[0], torch.Tensor) and args[0].dim() >= 2:
            return _tiled(func, args[0], self.tile, *args[1:], **kwargs)
        return func(*args, **kwargs)


class invariant_forward:
    """Context for one batch-invariant forward of ``model``: the tiled dense operations of
    :class:`BatchInvariantOps`, the eager elementwise functions (compiled ones fuse across rows) and the
    per-expert (sorted) path of mixture-of-experts layers (a grouped product tiles by expert counts, which depend
    on the batch). The model's settings are restored on exit."""

    def __init__(self, model, tile: int = 128):
        self.model, self.mode = model, BatchInvariantOps(tile)

    def __enter__(self):
        from ..models import elementwise as ew

        self.ops = self.model.ops
        self.model.ops = ew.EAGER
        self.banks = [(m, m.impl) for m in self.model.modules() if hasattr(m, "impl") and hasattr(m, "_sorted")]
        for m, _ in self.banks:
            m.impl = "sorted"
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self.model.ops = self.ops
        for m, impl in self.banks:
            m.impl = impl
        return False
