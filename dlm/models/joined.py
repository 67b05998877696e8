"""Joined projections: a layer's q/k/v products, and its gate/up products, as one matrix product each.

A decode step at batch 1 feeds a few dozen positions, and its matrix products are bound by reading the weights.
cuBLAS reads a 4096 x 4096 weight less efficiently than a 12288 x 4096 one, so the three products q, k, v of a
layer run faster as one product over their stacked weights, and gate/up likewise (measured on an H200 at LLaDA-8B
geometry: the seven products of 32 layers at 32 rows 4.52 -> 4.06 ms, weight floor 3.30 ms; at 256 rows the
joined products were slower, 6.21 -> 6.76 ms: ``python benchmarks/step_profile.py --parts projections``).

:func:`join_projections` stacks the weights of each group into one :class:`JoinedLinear` (the separate modules
are removed; no weight is stored twice). Its forward takes the joined product only on CUDA, for at most
:data:`JOIN_MAX_ROWS` rows, outside any torch function mode (the batch-invariant numerics of
:mod:`dlm.engine.numerics` decide per tile, not per step); otherwise it multiplies by each part's rows of the
stacked weight, a contiguous view, which is the very product the separate module ran (bit for bit).
:func:`split_projections` undoes the join, again without copies; :func:`unjoined_state` gives the state under
the separate names (what :func:`dlm.models.loading.save_checkpoint` writes).

FP8 layers (:mod:`dlm.models.fp8`) of a group join too, as one :class:`JoinedFP8Linear`: their FP8 weights and
scales stacked, one product on whichever FP8 path the layer takes, for any number of rows (for FP8 the joined
products were as fast or faster at every row count measured: ``benchmarks/fp8_gpu.py``).

``dlm.load`` joins them with the fused kernels (``fused_kernels=True``, on by default on one CUDA device).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fp8 import FP8Linear, function_mode_active, select_impl

JOIN_MAX_ROWS = 64  # joined products are used up to this many rows (see the module doc)
GROUPS = {"q_k_v": ("q", "k", "v"), "gate_up": ("gate", "up")}  # a joined module's name -> its parts' names


def use_joined_product(x: torch.Tensor) -> bool:
    """Whether :class:`JoinedLinear` multiplies ``x`` by the stacked weight at once (see the module doc)."""
    rows = x.numel() // max(x.shape[-1], 1)
    return x.is_cuda and rows <= JOIN_MAX_ROWS and not function_mode_active()


class JoinedLinear(nn.Module):
    """The products of ``x`` with several linear layers of the same input (``names``), as a tuple in their
    order."""

    def __init__(self, names: tuple[str, ...], parts: list[nn.Linear]):
        super().__init__()
        self.names = names
        self.sizes = [p.out_features for p in parts]
        grad = parts[0].weight.requires_grad
        _check_biases(parts)
        self.weight = nn.Parameter(_stacked([p.weight for p in parts]), requires_grad=grad)
        has_bias = parts[0].bias is not None
        self.bias = nn.Parameter(_stacked([p.bias for p in parts]), requires_grad=grad) if has_bias else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if use_joined_product(x):
            return F.linear(x, self.weight, self.bias).split(self.sizes, dim=-1)
        return tuple(F.linear(x, w, b) for w, b in zip(self.weight.split(self.sizes), self._biases()))

    def _biases(self) -> list[torch.Tensor | None]:
        return [None] * len(self.sizes) if self.bias is None else list(self.bias.split(self.sizes))

    def parts(self) -> list[nn.Linear]:
        """Separate linear layers over views of the stacked weight (no copy)."""
        out = []
        for w, b in zip(self.weight.split(self.sizes), self._biases()):
            lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
            lin.weight = nn.Parameter(w, requires_grad=self.weight.requires_grad)
            if b is not None:
                lin.bias = nn.Parameter(b, requires_grad=self.weight.requires_grad)
            out.append(lin)
        return out


class JoinedFP8Linear(FP8Linear):
    """FP8 layers of the same input (``names``) as one :class:`~dlm.models.fp8.FP8Linear` over their stacked
    weights, scales and biases; its forward returns the parts' outputs as a tuple in their order."""

    def __init__(self, names: tuple[str, ...], parts: list[FP8Linear]):
        _check_biases(parts)
        super().__init__(parts[0].in_features, sum(p.out_features for p in parts), bias=False, device="meta")
        self.names = names
        self.sizes = [p.out_features for p in parts]
        self.weight = nn.Parameter(_stacked([p.weight for p in parts]), requires_grad=False)
        self.weight_scale = nn.Parameter(_stacked([p.weight_scale for p in parts]), requires_grad=False)
        if parts[0].bias is not None:
            self.bias = nn.Parameter(_stacked([p.bias for p in parts]), requires_grad=False)
        select_impl(self, self.weight.device, parts[0].compute_dtype, parts[0].impl)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return super().forward(x).split(self.sizes, dim=-1)

    def parts(self) -> list[FP8Linear]:
        """Separate FP8 layers over views of the stacked tensors (no copy), on this layer's path."""
        biases = [None] * len(self.sizes) if self.bias is None else self.bias.split(self.sizes)
        out = []
        for w, s, b in zip(self.weight.split(self.sizes), self.weight_scale.split(self.sizes), biases):
            lin = FP8Linear(self.in_features, w.shape[0], bias=False, device="meta")
            lin.weight = nn.Parameter(w, requires_grad=False)
            lin.weight_scale = nn.Parameter(s, requires_grad=False)
            lin.bias = None if b is None else nn.Parameter(b, requires_grad=False)
            select_impl(lin, w.device, self.compute_dtype, self.impl)
            out.append(lin)
        return out


JOINED = (JoinedLinear, JoinedFP8Linear)


def _check_biases(parts: list[nn.Module]) -> None:
    if len({p.bias is None for p in parts}) > 1:
        raise ValueError("joined projections need a bias on every part or on none")


def _hooked(mods: list[nn.Module]) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in mods)


def _stacked(parts: list[torch.Tensor]) -> torch.Tensor:
    """The parts stacked along the first dimension. Parts that lie one after the other in one storage (a group
    split by :func:`split_projections`) give a view of it, so a split then a join moves no weight: a CUDA graph
    captured before the split still reads live memory."""
    storage = parts[0].untyped_storage()
    offset = parts[0].storage_offset()
    for p in parts:
        if (p.untyped_storage().data_ptr() != storage.data_ptr() or not p.is_contiguous()
                or p.storage_offset() != offset):
            return torch.cat([t.detach() for t in parts])
        offset += p.numel()
    first = parts[0]
    shape = (sum(p.shape[0] for p in parts), *first.shape[1:])
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, first.storage_offset(), shape)


def _joinable(mods: list) -> bool:
    """Plain linear layers of one dtype and device, with ordinary tensors as weights and no hooks: a quantized
    layer, a tensor-parallel layer (DTensor weights, hooks of its plan) or a hooked one keeps its own products."""
    if not all(type(m) is nn.Linear for m in mods) or _hooked(mods):
        return False
    w = [m.weight for m in mods]
    return (all(type(t.data) is torch.Tensor for t in w) and not any(t.is_meta for t in w)
            and len({(t.dtype, t.device, t.shape[1]) for t in w}) == 1 and len({m.bias is None for m in mods}) == 1)


def _fp8_joinable(mods: list) -> bool:
    """FP8 layers (exactly :class:`~dlm.models.fp8.FP8Linear`) of one input size, device, path and compute
    dtype, without hooks, with a bias on every part or on none."""
    if not all(type(m) is FP8Linear for m in mods) or _hooked(mods):
        return False
    return (not any(m.weight.is_meta for m in mods) and len({m.bias is None for m in mods}) == 1
            and len({(m.in_features, m.weight.device, m.impl, m.compute_dtype) for m in mods}) == 1)


def weights_replaced(model: nn.Module) -> None:
    """Record that ``model``'s weight tensors were replaced by others (joined, split, quantized): CUDA graphs
    captured before read the old ones by address (see ``Transformer.weights_version``)."""
    model.weights_version = getattr(model, "weights_version", 0) + 1


def join_projections(model: nn.Module) -> int:
    """Join q/k/v and gate/up of every layer of ``model.layers`` where they are plain ``nn.Linear`` layers of one
    dtype and device, or FP8 layers alike; returns the number of groups joined (0 when already joined)."""
    joined = 0
    for layer in model.layers:
        for key, names in GROUPS.items():
            mods = [layer._modules.get(n) for n in names]
            cls = JoinedLinear if _joinable(mods) else JoinedFP8Linear if _fp8_joinable(mods) else None
            if cls is None:
                continue
            with torch.no_grad():
                layer.add_module(key, cls(names, mods))
            for n in names:
                delattr(layer, n)
            joined += 1
    if joined:
        weights_replaced(model)
    return joined


def split_projections(model: nn.Module) -> int:
    """Undo :func:`join_projections` (views, no copies); returns the number of groups split."""
    split = 0
    for layer in model.layers:
        for key in GROUPS:
            group = layer._modules.get(key)
            if not isinstance(group, JOINED):
                continue
            for n, lin in zip(group.names, group.parts()):
                layer.add_module(n, lin)
            delattr(layer, key)
            split += 1
    if split:
        weights_replaced(model)
    return split


def unjoined_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every joined group under its separate layers' names (views, no copies): what
    a checkpoint of the model holds."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if not isinstance(module, JOINED):
            continue
        parent = name.rpartition(".")[0]
        for leaf in ("weight", "bias", "weight_scale"):
            t = state.pop(f"{name}.{leaf}", None)
            if t is None:
                continue
            for part, piece in zip(module.names, t.split(module.sizes)):
                state[f"{parent}.{part}.{leaf}" if parent else f"{part}.{leaf}"] = piece
    return state


def linear_parts(layer: nn.Module, group: str, h: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``h`` through the linear layers of ``layer`` that :data:`GROUPS` names ``group``: one
    :class:`JoinedLinear` or :class:`JoinedFP8Linear` when they were joined."""
    joined = layer._modules.get(group)
    if joined is not None:
        return joined(h)
    return tuple(getattr(layer, n)(h) for n in GROUPS[group])
