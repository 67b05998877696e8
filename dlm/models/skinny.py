"""Matrix products of few rows (a cached step's block at batch 1) through cuBLASLt.

``F.linear`` takes cuBLAS's gemm. For a few dozen rows times LLaDA-8B's attention output and down projections it
picks split-K kernels and a second kernel that adds their parts; cuBLASLt's heuristics, which torch reaches
through ``torch.addmm`` with a one-dimensional bias, pick kernels that read the weights faster (BENCHMARKS.md,
"Products of few rows"). The bias is zeros where the layer has none: adding zero changes no value.

Part of the fused kernels (:mod:`dlm.models.elementwise`'s :class:`Ops`): the reference is ``F.linear``, which
rounds differently (another split of the sum), within the tolerance ``tests/gpu/test_skinny_gpu.py`` checks.
Not taken within a ``TorchFunctionMode`` (the batch-invariant forward tiles ``F.linear`` itself:
:mod:`dlm.engine.numerics`), nor for other dtypes, devices or modules.
"""

from __future__ import annotations

import torch
from torch import nn

from .fp8 import function_mode_active
from .plain import global_hooks, plain_module

#: products of at most this many rows take cuBLASLt (measured faster there; from 1,024 rows on it was slower
#: for some of LLaDA-8B's products)
MAX_ROWS = 64
_ZEROS: dict[tuple, torch.Tensor] = {}


def applies(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether :func:`linear` sends ``x`` through ``module`` by cuBLASLt: a plain ``nn.Linear`` (calling ``addmm``
    instead of the module skips nothing: :mod:`dlm.models.plain`) with bfloat16 or float16 weights on a CUDA
    device, at most :data:`MAX_ROWS` rows, outside any torch function mode but a default-device context (the
    batch-invariant forward's tiling must see ``F.linear``)."""
    w = module.weight if type(module) is nn.Linear else None
    return (w is not None and w.is_cuda and w.dtype in (torch.bfloat16, torch.float16) and x.dtype == w.dtype
            and x.device == w.device and x.dim() >= 2 and 0 < x.numel() // max(x.shape[-1], 1) <= MAX_ROWS
            and plain_module(module) and not global_hooks() and not function_mode_active())


def prepare(model: nn.Module) -> None:
    """Make the zero biases of ``model``'s attention output and down projections (modules named ``o`` and
    ``down``) now, so that CUDA graphs captured before any eager forward take cuBLASLt too."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("o", "down") and type(module) is nn.Linear and module.bias is None:
            _zeros(module.weight.shape[0], module.weight)


def _zeros(n: int, like: torch.Tensor) -> torch.Tensor | None:
    """A cached zero bias of ``n`` entries; None while a CUDA graph is being captured and there is none yet (a
    tensor made during a capture holds no values until the graph replays)."""
    key = (n, like.dtype, like.device)
    z = _ZEROS.get(key)
    if z is None and not (like.is_cuda and torch.cuda.is_current_stream_capturing()):
        z = _ZEROS[key] = torch.zeros(n, dtype=like.dtype, device=like.device)
    return z


def linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``, by cuBLASLt where :func:`applies`."""
    if not applies(module, x):
        return module(x)
    w = module.weight
    bias = module.bias if module.bias is not None else _zeros(w.shape[0], w)
    if bias is None:
        return module(x)
    out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), w.t())
    return out.view(*x.shape[:-1], w.shape[0])
