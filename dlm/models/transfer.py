"""Host-to-device copies that do not make the host wait.

A copy from ordinary (pageable) host memory to a GPU makes the host wait until the GPU has finished everything
queued before it: each one stalls the engine's step, which should prepare the next work while the GPU computes.
Through pinned memory the copy is queued like a kernel (the caching host allocator keeps the buffer alive until
the copy has run).
"""

from __future__ import annotations

import torch


def to_device(x, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` (a host tensor, or numbers / nested lists of numbers) on ``device``, without waiting on a GPU."""
    t = x if isinstance(x, torch.Tensor) else torch.tensor(x, dtype=dtype)
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
