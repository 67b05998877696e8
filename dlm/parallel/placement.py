"""Device maps: a model too large for one GPU, split by whole layers over several (``dlm.load(device_map=...)``).

A device map assigns each module of the :class:`~dlm.models.transformer.Transformer` (``embed``, ``layers.N``,
``norm``, ``head``) to a device. ``"auto"``/``"balanced"`` spread the layers evenly over the GPUs within
``max_memory`` (accelerate's ``get_balanced_memory`` + ``infer_auto_device_map``, as transformers'
``device_map="auto"`` does); ``"sequential"`` fills the first GPU before the next. A layer is never split (its
class is ``no_split``), and the final norm and the head always sit with the embedding, on the *main device*:
the engine's canvas lives there, the logits come out there, and only the (B, Q, d) hidden state crosses back
from the last layer.

Each weight is read from its safetensors shard and sent straight to its own device (:meth:`DevicePlacement.place`,
the loader's ``place`` callback), so no device ever holds more than its share. At run time the layers run one after
another on their own devices: a forward pre-hook moves each layer's tensor inputs (hidden states, RoPE tables) to
the layer's device, and a forward hook moves the last layer's output back to the main device. Objects passed
through (the attention/cache) are not moved: they keep each layer's keys/values on that layer's device.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError

STRATEGIES = ("auto", "balanced", "sequential")
DeviceMapArg = str | Mapping[str, Any]


def parse_device(value: Any) -> torch.device:
    """An int (GPU index), ``"cpu"``, ``"cuda:1"`` or a torch.device as a torch.device; ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"device_map value {value!r} is not a device; use a GPU index, 'cuda:N' or 'cpu'")
    if isinstance(value, int):
        value = f"cuda:{value}"
    if value == "disk":
        raise ConfigError("device_map value 'disk' is not supported: dlm keeps every weight in memory "
                          "(raise max_memory or add 'cpu' to it)")
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device_map value {value!r} is not a device; use a GPU index, 'cuda:N' or 'cpu'") from exc
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index or 0)
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device_map names {dev} but {torch.cuda.device_count()} CUDA device(s) are visible")
    elif dev.type != "cpu":
        raise ConfigError(f"device_map value {value!r}: only CUDA devices and 'cpu' are supported")
    return dev


def _budget(max_memory: Mapping[Any, Any]) -> dict[int | str, int]:
    """max_memory as accelerate wants it: GPU indices as ints, ``"cpu"``, sizes in bytes ("20GiB" -> int)."""
    from accelerate.utils import convert_file_size_to_int

    out: dict[int | str, int] = {}
    for key, size in max_memory.items():
        try:
            dev = torch.device(f"cuda:{key}" if isinstance(key, int) or str(key).isdigit() else key)
        except (RuntimeError, TypeError):
            dev = None
        if isinstance(key, bool) or dev is None or dev.type not in ("cuda", "cpu"):
            raise ConfigError(f"max_memory key {key!r} is not a device; use a GPU index, 'cuda:N' or 'cpu'")
        try:
            nbytes = convert_file_size_to_int(size)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"max_memory[{key!r}] = {size!r} is not a size; use bytes or a string like '20GiB'") \
                from exc
        out["cpu" if dev.type == "cpu" else (dev.index or 0)] = nbytes
    return out


def _ordered_view(model: nn.Module) -> nn.Module:
    """A container over ``model``'s children in the order the map fills them: the main-device modules (embedding,
    final norm, head, any other module outside the layers) first, then the layers. Module names are unchanged
    (``layers.3`` stays ``layers.3``)."""
    view = nn.Module()
    children = dict(model.named_children())
    for name in ("embed", "norm", "head", *sorted(children)):
        if name in children and name != "layers" and not hasattr(view, name):
            view.add_module(name, children[name])
    view.add_module("layers", model.layers)
    return view


def infer_device_map(model: nn.Module, strategy: str, max_memory: Mapping[Any, Any] | None,
                     dtype: torch.dtype) -> dict[str, int | str]:
    """accelerate's device-map inference on ``model`` (built on the meta device) with weights of ``dtype``:
    module name -> GPU index or ``"cpu"``. Needs no GPU (it only adds up sizes against the budgets)."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown device_map {strategy!r}; allowed: {', '.join(STRATEGIES)} or a dict "
                          "{module name: device}")
    budget = None if max_memory is None else _budget(max_memory)
    view = _ordered_view(model)
    no_split = sorted({type(layer).__name__ for layer in model.layers})
    if strategy != "sequential":
        budget = get_balanced_memory(view, budget, no_split_module_classes=no_split, dtype=dtype)
    raw = infer_auto_device_map(view, max_memory=budget, no_split_module_classes=no_split, dtype=dtype)
    spilled = [name or "the whole model" for name, dev in raw.items() if dev == "disk"]
    if spilled:
        raise ConfigError(f"the model does not fit max_memory={dict(max_memory or {})}: {len(spilled)} module(s) "
                          f"left over ({', '.join(spilled[:3])}{' ...' if len(spilled) > 3 else ''}); raise the "
                          "budgets, add GPUs or add 'cpu' to max_memory")
    return dict(raw)


def param_devices(model: nn.Module, device_map: Mapping[str, Any]) -> dict[str, torch.device]:
    """The device of every parameter under ``device_map`` (longest module-name prefix wins; ``""`` is the whole
    model). ConfigError for a parameter the map does not cover."""
    entries = {name: parse_device(dev) for name, dev in device_map.items()}
    out, uncovered = {}, []
    for pname, _ in model.named_parameters():
        best = None
        for mname in entries:
            covers = mname == "" or pname == mname or pname.startswith(mname + ".")
            if covers and (best is None or len(mname) > len(best)):
                best = mname
        if best is None:
            uncovered.append(pname)
        else:
            out[pname] = entries[best]
    if uncovered:
        raise ConfigError(f"device_map does not place {len(uncovered)} parameter(s): {', '.join(uncovered[:4])}"
                          f"{' ...' if len(uncovered) > 4 else ''}; module names are embed, layers.N, norm, head")
    return out


@dataclass
class DevicePlacement:
    """Where each weight of a model goes, and the hooks that run it there (see the module doc).

    Attributes:
        devices: parameter name -> device.
        main: the device of the embedding, final norm and head (the canvas and the logits live there).
        layers: the device of each layer, in order.
    """

    devices: dict[str, torch.device]
    main: torch.device
    layers: list[torch.device]

    @classmethod
    def create(cls, model: nn.Module, device_map: DeviceMapArg, max_memory: Mapping[Any, Any] | None,
               dtype: torch.dtype) -> "DevicePlacement":
        if isinstance(device_map, str):
            device_map = infer_device_map(model, device_map, max_memory, dtype)
        elif not isinstance(device_map, Mapping):
            raise ConfigError(f"device_map must be one of {', '.join(STRATEGIES)} or a dict {{module name: device}}, "
                              f"got {type(device_map).__name__}")
        devices = param_devices(model, device_map)
        main = devices["embed.weight"]
        off_main = sorted({n.split(".")[0] for n, d in devices.items() if not n.startswith("layers.") and d != main})
        if off_main:
            raise ConfigError(f"device_map puts {' and '.join(off_main)} on another device than embed ({main}); "
                              "dlm keeps every module outside the layers (final norm, head) with the embedding, "
                              "where the canvas lives")
        layers = [cls._layer_device(devices, i, layer) for i, layer in enumerate(model.layers)]
        return cls(devices, main, layers)

    @staticmethod
    def _layer_device(devices: dict[str, torch.device], index: int, layer: nn.Module) -> torch.device:
        found = {devices[f"layers.{index}.{n}"] for n, _ in layer.named_parameters()}
        if len(found) != 1:
            raise ConfigError(f"device_map splits layer {index} over {sorted(map(str, found))}; a layer must sit "
                              "on one device")
        return found.pop()

    @property
    def module_map(self) -> dict[str, torch.device]:
        """The map by module, as accelerate and transformers print it (``hf_device_map``)."""
        out: dict[str, torch.device] = OrderedDict()
        for name, dev in self.devices.items():
            parts = name.split(".")
            out[".".join(parts[:2]) if parts[0] == "layers" else parts[0]] = dev
        return out

    def place(self, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The loader's callback: ``tensor`` (read on the CPU) cast and sent to its own device."""
        return tensor.to(device=self.devices[name], dtype=dtype)

    def attach(self, model: nn.Module) -> None:
        """Install the moving hooks and record the map on the model (``model.device_map``)."""
        for layer, dev in zip(model.layers, self.layers):
            layer.register_forward_pre_hook(_MoveInputs(dev), with_kwargs=True)
        model.layers[-1].register_forward_hook(_MoveOutput(self.main))
        model.device_map = self.module_map


def _move(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor) and value.device != device:
        # non_blocking only towards a GPU: a non-blocking copy into host memory may be read before it lands
        return value.to(device, non_blocking=device.type == "cuda")
    return value


class _MoveInputs:
    """Forward pre-hook: the layer's tensor arguments onto its device (other arguments untouched)."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return tuple(_move(a, self.device) for a in args), {k: _move(v, self.device) for k, v in kwargs.items()}


class _MoveOutput:
    """Forward hook: the last layer's hidden states back onto the main device."""

    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return _move(output, self.device)
