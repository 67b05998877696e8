"""Tensor parallelism: each layer's attention heads and MLP columns split over the processes of a torchrun launch.

``dlm.load(path, tensor_parallel=N)`` in each of N processes started by ``torchrun --nproc-per-node N``:

- q/k/v and gate/up are column-parallel (each rank computes ``heads / N`` query heads, ``kv_heads / N`` key/value
  heads and ``intermediate / N`` MLP columns), o and down are row-parallel (each rank multiplies its slice and the
  partial sums are all-reduced). The layout comes from torch's tensor-parallel API: ``parallelize_module`` with
  ``ColwiseParallel`` / ``RowwiseParallel`` on the meta-built model turns those weights into DTensors, and each
  rank reads its own slice of every weight from the checkpoint (:meth:`TensorParallel.place`).
- The embedding, norms and head are replicated, so every rank ends with the same logits.
- In ``local`` mode, fused QKV projections and MoE feed-forwards (LLaDA2.x, SDAR-MoE) are split too, the experts
  over the ranks (expert parallelism): :mod:`dlm.parallel.experts`.
- ``model.kv_heads`` is the local key/value head count (the engine sizes its key/value storage from it); the layer
  reads head counts from the projections' outputs, so a shard runs the layer's own code.

Two ways to run the sharded layers (``mode``): ``"local"`` (default) swaps the DTensor weights for their local
shards and all-reduces the row-parallel outputs with one ``all_reduce`` each (two per layer), which is what a
decode step at batch 1 can afford; ``"dtensor"`` keeps torch's DTensor execution (the same arithmetic, with
DTensor's per-operation dispatch on the host).

Every rank must run the same generation (same prompts, same config): the ranks then make the same decisions
because their logits are identical after each all-reduce. Unseeded generation draws its seed from torch's default
generator, which :func:`init` seeds identically on every rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

COLWISE = ("q", "k", "v", "gate", "up")
ROWWISE = ("o", "down")
MODES = ("local", "dtensor")


@dataclass
class TensorParallel:
    """This process's part of a tensor-parallel group: its rank, the group size, its device and the device mesh."""

    size: int
    rank: int
    device: torch.device
    mesh: object  # torch.distributed.device_mesh.DeviceMesh
    mode: str = "local"

    # ----------------------------------------------------------------- setup
    @classmethod
    def init(cls, size: int, device: str | torch.device | None = None, mode: str = "local") -> "TensorParallel":
        """Join the process group of a torchrun launch (started here from its environment variables when not
        already initialised); check it has ``size`` processes; seed torch's default generator like rank 0's."""
        from torch.distributed.device_mesh import init_device_mesh

        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"tensor_parallel must be a positive number of processes, got {size!r}")
        if mode not in MODES:
            raise ConfigError(f"unknown tensor-parallel mode {mode!r}; allowed: {', '.join(MODES)}")
        dev = _local_device(device)
        if not dist.is_initialized():
            if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
                raise ConfigError(f"tensor_parallel={size} needs {size} processes in a process group: launch with "
                                  f"`torchrun --nproc-per-node {size} your_script.py` (every process calls "
                                  "dlm.load with the same arguments)")
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        world = dist.get_world_size()
        if world != size:
            raise ConfigError(f"tensor_parallel={size} but the process group has {world} processes; launch "
                              f"{size} (torchrun --nproc-per-node {size})")
        mesh = init_device_mesh(dev.type, (size,))
        _agree_on_seed(dev)
        return cls(size, dist.get_rank(), dev, mesh, mode)

    def check(self, model: nn.Module) -> None:
        """ConfigError unless heads, key/value heads, MLP columns and experts divide evenly, and every layer has
        projections this mode can split (fused QKV and experts: ``local`` mode only)."""
        cfg = model.cfg
        sizes = [("attention heads", cfg.num_heads), ("key/value heads", cfg.num_kv_heads),
                 ("MLP columns", cfg.intermediate_size)]
        if getattr(cfg, "num_experts", 0):
            sizes += [("experts", cfg.num_experts), ("shared-expert columns", cfg.shared_intermediate_size or 0)]
        for what, n in sizes:
            if n % self.size:
                raise ConfigError(f"tensor_parallel={self.size} does not divide the model's {n} {what}; use a "
                                  "divisor of it")
        for i, layer in enumerate(model.layers):
            problem = _unsplittable(layer, self.mode)
            if problem:
                raise ConfigError(f"tensor parallelism cannot split layer {i} ({type(layer).__name__}): {problem}")

    # ----------------------------------------------------------------- sharding
    def parallelize(self, model: nn.Module) -> None:
        """Turn the separate projections of every layer of the meta-built ``model`` into DTensors (torch's plan);
        fused QKV projections and experts get this rank's slicers and local experts (:mod:`.experts`)."""
        from torch.distributed.tensor.parallel import (
            ColwiseParallel,
            RowwiseParallel,
            parallelize_module,
        )

        from .experts import layer_slicers, localize_experts

        self.check(model)
        self.slicers = {}
        for i, layer in enumerate(model.layers):
            plan = {n: ColwiseParallel() for n in COLWISE if isinstance(getattr(layer, n, None), nn.Linear)}
            plan.update({n: RowwiseParallel() for n in ROWWISE if isinstance(getattr(layer, n, None), nn.Linear)})
            parallelize_module(layer, self.mesh, plan, src_data_rank=None)
            self.slicers.update(layer_slicers(layer, f"layers.{i}.", self.rank, self.size))
            if hasattr(layer, "moe"):
                localize_experts(layer, self.size)
        model.kv_heads = model.cfg.num_kv_heads // self.size
        model.tensor_parallel = self

    def map_names(self, name_map: dict, model: nn.Module) -> dict:
        """The loader's name map for this rank: experts other ranks hold are not read."""
        from .experts import expert_names

        experts = getattr(model.cfg, "num_experts", 0)
        return expert_names(name_map, self.rank, self.size, experts) if experts else name_map

    def place(self, model: nn.Module):
        """The loader's callback for ``model``: each weight (full, on the CPU) becomes this rank's shard of it,
        cast and on this rank's device; replicated weights are copied whole."""
        from torch.distributed.tensor import DTensor, Shard

        params = dict(model.named_parameters())
        slicers = getattr(self, "slicers", {})

        def place(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
            target = params[name]
            if name in slicers:
                return slicers[name](tensor).to(device=self.device, dtype=dtype).contiguous()
            if not isinstance(target, DTensor):
                return tensor.to(device=self.device, dtype=dtype)
            local = tensor
            for placement in target.placements:
                if isinstance(placement, Shard):
                    n = tensor.shape[placement.dim] // self.size
                    local = local.narrow(placement.dim, self.rank * n, n)
            expected = tuple(target.to_local().shape)
            if tuple(local.shape) != expected:  # pragma: no cover - guarded by check()
                raise ConfigError(f"shard of {name} has shape {tuple(local.shape)}, torch's plan says {expected}")
            local = local.to(device=self.device, dtype=dtype).contiguous()
            return DTensor.from_local(local, self.mesh, target.placements, run_check=False, shape=target.shape,
                                      stride=target.stride())

        return place

    def finish(self, model: nn.Module) -> None:
        """After loading: in ``local`` mode, run the shards as plain tensors (see the module doc), and each MoE as
        this rank's experts plus one all-reduce."""
        from .experts import ExpertParallelMoE

        if self.mode != "local":
            return
        group = self.mesh.get_group()
        for layer in model.layers:
            for name in COLWISE:
                if isinstance(getattr(layer, name, None), nn.Linear):
                    setattr(layer, name, _local_linear(getattr(layer, name)))
            for name in ROWWISE:
                if isinstance(getattr(layer, name, None), nn.Linear):
                    setattr(layer, name, RowParallelLinear.from_sharded(getattr(layer, name), group))
            if hasattr(layer, "moe"):
                first = self.rank * layer.moe.experts.gate.shape[0]
                layer.moe = ExpertParallelMoE(layer.moe, first, group)


def _unsplittable(layer: nn.Module, mode: str) -> str | None:
    """Why ``layer`` cannot be split in ``mode``, or None."""
    has = lambda n: isinstance(getattr(layer, n, None), nn.Linear)
    fused, moe = has("qkv"), hasattr(layer, "moe")
    if not (fused or all(has(n) for n in ("q", "k", "v"))) or not has("o"):
        return "it has neither separate q/k/v nor a fused qkv projection with an o projection"
    if not moe and not (all(has(n) for n in ("gate", "up", "down")) and type(layer).mlp in _known_mlps()):
        return "its feed-forward is neither a dense SwiGLU nor an MoE"
    if mode != "local" and (fused or moe):
        what = "a fused QKV projection" if fused else "experts"
        return f"it has {what}, which only mode='local' splits (expert parallelism); use the default mode"
    return None


def _known_mlps():
    from ..models.moe import MoEBlockMixin
    from ..models.transformer import Block

    return (Block.mlp, MoEBlockMixin.mlp)


def _local_device(device: str | torch.device | None) -> torch.device:
    """This rank's device: the given one, else ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if device is not None:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    elif torch.cuda.is_available():
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        dev = torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def _agree_on_seed(device: torch.device) -> None:
    """Seed torch's default generator with rank 0's next draw, so unseeded generation picks the same seed on
    every rank (a rank that sampled differently would commit different tokens and desynchronise the group)."""
    seed = torch.randint(0, 2**62, (1,), dtype=torch.long).to(device)
    dist.broadcast(seed, src=0)
    torch.manual_seed(int(seed.item()))


def _local_linear(module: nn.Linear) -> nn.Linear:
    """A plain nn.Linear holding this rank's shard of a column-parallel DTensor linear."""
    weight = module.weight.to_local()
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=module.bias is not None, device="meta")
    out.weight = nn.Parameter(weight, requires_grad=False)
    if module.bias is not None:
        out.bias = nn.Parameter(module.bias.to_local(), requires_grad=False)
    return out


class RowParallelLinear(nn.Module):
    """This rank's input columns of a row-parallel linear: ``all_reduce(x_local @ W_local^T) + bias``.

    x: (..., in_features / N) -> (..., out_features), identical on every rank."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group = group

    @classmethod
    def from_sharded(cls, module: nn.Linear, group) -> "RowParallelLinear":
        bias = None if module.bias is None else module.bias.full_tensor()
        return cls(module.weight.to_local(), bias, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        dist.all_reduce(y, group=self.group)
        return y if self.bias is None else y + self.bias
