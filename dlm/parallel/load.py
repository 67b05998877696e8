"""What ``dlm.load`` does differently under ``device_map=`` or ``tensor_parallel=``: check the arguments, pick
the main device, prepare the meta-built model (infer the map / apply torch's tensor-parallel plan), give the
loader a ``place`` callback, and finish the model once its weights are in (hooks / local shards)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .placement import DeviceMapArg, DevicePlacement, parse_device
from .tensor import TensorParallel

Place = Callable[[str, torch.Tensor, torch.dtype], torch.Tensor]


@dataclass
class ParallelLoad:
    """One parallel load. ``device`` is the main device (the canvas's) once :meth:`prepare` has run."""

    device: torch.device
    device_map: DeviceMapArg | None = None
    max_memory: Mapping[Any, Any] | None = None
    cuda_graphs: bool = False
    tp: TensorParallel | None = None
    placement: DevicePlacement | None = None

    @classmethod
    def create(cls, *, device: str | torch.device | None, device_map: DeviceMapArg | None,
               max_memory: Mapping[Any, Any] | None, tensor_parallel: int | TensorParallel | None,
               cuda_graphs: bool = False) -> "ParallelLoad | None":
        """``None`` when neither is asked for; ConfigError for arguments that do not go together."""
        tp_asked = isinstance(tensor_parallel, TensorParallel) or tensor_parallel not in (None, 1)
        if max_memory is not None and device_map is None:
            raise ConfigError("max_memory is the per-device budget of a device map; pass device_map='auto' with it")
        if device_map is not None and tp_asked:
            raise ConfigError("pass either device_map (layers spread over devices) or tensor_parallel (each layer "
                              "split over processes), not both")
        if device_map is not None:
            if device is not None:
                raise ConfigError(f"pass either device={str(device)!r} or device_map, not both (a device map names "
                                  "the devices itself)")
            return cls(_guess_main_device(device_map, max_memory), device_map, max_memory, bool(cuda_graphs))
        if not tp_asked:
            return None
        if isinstance(tensor_parallel, TensorParallel):
            if device is not None and torch.device(device) != tensor_parallel.device:
                raise ConfigError(f"device={str(device)!r} differs from the tensor-parallel group's device "
                                  f"{tensor_parallel.device}")
            tp = tensor_parallel
        else:
            tp = TensorParallel.init(tensor_parallel, device)
        return cls(tp.device, cuda_graphs=bool(cuda_graphs), tp=tp)

    def prepare(self, model: nn.Module, dtype: torch.dtype) -> Place:
        """Prepare the meta-built ``model``; return the loader's ``place`` callback."""
        if self.tp is not None:
            self.tp.parallelize(model)
            return self.tp.place(model)
        self.placement = DevicePlacement.create(model, self.device_map, self.max_memory, dtype)
        used = {str(d) for d in self.placement.devices.values()}
        if self.cuda_graphs and len(used) > 1:
            raise ConfigError(f"cuda_graphs=True cannot capture a forward that crosses devices ({', '.join(sorted(used))}); "
                              "drop cuda_graphs or keep the model on one device")
        self.device = self.placement.main
        return self.placement.place

    def names(self, name_map: dict, model: nn.Module) -> dict:
        """The loader's name map for this process (under tensor parallelism: without other ranks' experts)."""
        return self.tp.map_names(name_map, model) if self.tp is not None else name_map

    def finish(self, model: nn.Module) -> None:
        if self.tp is not None:
            self.tp.finish(model)
        else:
            self.placement.attach(model)


def _guess_main_device(device_map: DeviceMapArg, max_memory: Mapping[Any, Any] | None) -> torch.device:
    """The main device before the map is known, to choose the ``"auto"`` dtype: a GPU when the map may use one."""
    if isinstance(device_map, Mapping):
        devices = [parse_device(d) for d in device_map.values()]
        return next((d for d in devices if d.type == "cuda"), torch.device("cpu"))
    gpu_budget = max_memory is None or any(str(k) != "cpu" for k in max_memory)
    return torch.device("cuda", 0) if torch.cuda.is_available() and gpu_budget else torch.device("cpu")
