"""Loading and saving checkpoints: config.json + safetensors shards (+ index) + tokenizer, never pickle.

Loading builds the model on the meta device and streams each tensor from the safetensors files straight into
its parameter slot (cast to the target dtype, moved to the target device), so at no point does a second full
copy of the weights exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import CheckpointError
from .base import MODELS, Architecture, SpecialIds
from .files import (
    FLOAT_DTYPES,
    INDEX_FILE,
    read_generation_config,
    read_header,
    read_json_object,
    read_tensor,
    weight_files,
)
from .joined import unjoined_state
from .transformer import ArchConfig, Transformer

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise CheckpointError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; allowed: auto, {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


def read_config(path: str | os.PathLike) -> tuple[Path, dict[str, Any], type[Architecture]]:
    """Check the folder and its config.json; return (folder, config dict, architecture class)."""
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist")
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint path {str(folder)!r} is not a folder (expected a folder with config.json)")
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint folder {str(folder)!r} has no config.json")
    cfg = read_json_object(cfg_file)
    model_type = format_name(cfg)
    if model_type is None:
        raise CheckpointError(f"{cfg_file} has no 'model_type' field; known model types: {', '.join(MODELS.names())}")
    if not isinstance(model_type, str) or model_type not in MODELS:
        raise CheckpointError(
            f"unknown model_type {model_type!r} in {cfg_file}; known model types: {', '.join(MODELS.names())}"
        )
    read_generation_config(folder)  # a broken generation_config.json fails now, not at the first request
    return folder, cfg, MODELS.get(model_type)


def format_name(cfg: dict[str, Any]) -> Any:
    """The registered format of a config.json: one that :meth:`Architecture.claims` it (a format whose config.json
    names another ``model_type``), else its ``model_type`` field (None when absent; not checked here)."""
    claimed = [name for name in MODELS.names() if MODELS.get(name).claims(cfg)]
    if len(claimed) > 1:
        raise CheckpointError(f"config.json is claimed by several registered formats ({', '.join(claimed)}); "
                              "a format's Architecture.claims must single out its own checkpoints")
    return claimed[0] if claimed else cfg.get("model_type")


def _set_tensor(model: nn.Module, target: str | tuple[str, int], tensor: torch.Tensor) -> None:
    """Put ``tensor`` at ``target``: a parameter name, or (name, row) for one row of a stacked parameter (e.g. one
    expert of a layer's stacked experts), allocated on the tensor's device when its first row arrives."""
    name, row = (target, None) if isinstance(target, str) else target
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    if row is None:
        module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
        return
    stacked = module._parameters[attr]
    if stacked.is_meta:
        stacked = nn.Parameter(torch.empty(stacked.shape, dtype=tensor.dtype, device=tensor.device), requires_grad=False)
        module._parameters[attr] = stacked
    with torch.no_grad():
        stacked[row].copy_(tensor)


def _target_shape(params: dict[str, nn.Parameter], target: str | tuple[str, int]) -> tuple[int, ...]:
    """The shape a checkpoint tensor must have to fill ``target`` (a row of a stacked parameter: all but its first
    dimension)."""
    if isinstance(target, str):
        return tuple(params[target].shape)
    return tuple(params[target[0]].shape[1:])


def load_weights(
    model: Transformer, folder: Path, name_map: dict[str, str | tuple[str, int] | None], dtype: torch.dtype,
    device: torch.device,
    place: Callable[[str, torch.Tensor, torch.dtype], torch.Tensor] | None = None,
) -> None:
    """Stream every tensor into ``model`` (built on the meta device), each converted explicitly from its stored
    float type to ``dtype``; names, shapes and dtypes of all of them are checked before the first is read.
    ``place(internal name, CPU tensor, dtype)``, when given, returns what to install instead of the tensor on
    ``device`` (its own device under a device map, this rank's shard under tensor parallelism: dlm.parallel).
    A checkpoint name mapped to None is expected in the files but not read (an expert another rank holds)."""
    files = weight_files(folder)
    _check_names(folder, set(name_map), set(files))
    headers = {shard: read_header(shard) for shard in sorted(set(files.values()))}
    params = dict(model.named_parameters())
    order = sorted((n for n in name_map if name_map[n] is not None), key=lambda n: (str(files[n]), n))
    for name in order:
        _check_weight(files[name], name, headers[files[name]][0].get(name), _target_shape(params, name_map[name]))
    for name in order:
        header, data_start = headers[files[name]]
        tensor = read_tensor(files[name], header[name], data_start)
        target = name_map[name]
        param = target if isinstance(target, str) else target[0]  # a stacked parameter's row is placed like it
        _set_tensor(model, target, place(param, tensor, dtype) if place else tensor.to(device=device, dtype=dtype))
        del tensor
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:  # pragma: no cover - guarded by the name check above
        raise CheckpointError(f"parameters left unloaded: {', '.join(still_meta[:5])}")


def _check_names(folder: Path, expected: set[str], present: set[str]) -> None:
    missing, unexpected = sorted(expected - present), sorted(present - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} weight(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(
                f"unexpected {len(unexpected)} weight(s): {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}"
            )
        raise CheckpointError(f"checkpoint {str(folder)!r} does not match its config.json: " + "; ".join(parts))


def _check_weight(shard: Path, name: str, info: dict[str, Any] | None, shape: tuple[int, ...]) -> None:
    """A weight must be in the shard the index names, stored as a float type (an integer tensor, e.g. of an
    int8 / uint8 quantised export, would be cast value by value into garbage weights), with the config's shape."""
    if info is None:
        raise CheckpointError(f"{INDEX_FILE} puts weight {name!r} in {shard.name}, which does not hold it")
    if info["dtype"] not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{shard.name}: weight {name!r} is stored as {info['dtype']}, not a floating-point type; dlm loads "
            f"float weights only ({', '.join(FLOAT_DTYPES)}) and does not dequantise integer (e.g. int8) exports"
        )
    if tuple(info["shape"]) != shape:
        raise CheckpointError(
            f"weight {name!r} in {shard.name} has shape {list(info['shape'])} but config.json implies {list(shape)}"
        )


def load_tokenizer(folder: Path, arch: type[Architecture]):
    """The folder's tokenizer through transformers, never with remote code: the class ``tokenizer_config.json``
    names (its fast variant when there is one, or the transformers class a remote-code class copies), else
    AutoTokenizer. Naming the class skips AutoTokenizer's model-type lookup, seconds of start-up."""
    tc_file = folder / "tokenizer_config.json"
    tc = read_json_object(tc_file) if tc_file.is_file() else {}
    has_files = any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model"))
    if not has_files:
        raise CheckpointError(
            f"{str(folder)!r} has no tokenizer (tokenizer.json, vocab.json+merges.txt or tokenizer.model); "
            "pass tokenizer=PATH or tokenizer=False to work with token ids only"
        )
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # transformers peeks at config.json and warns about model_type "llada"
    try:
        cls = _tokenizer_class(tc.get("tokenizer_class"), arch)
        if cls is not None:
            return cls.from_pretrained(str(folder))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - re-raised with the folder named
        raise CheckpointError(f"could not load the tokenizer of {str(folder)!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        hf_logging.set_verbosity(level)


def _tokenizer_class(name: Any, arch: type[Architecture]) -> type | None:
    """The transformers tokenizer class called ``name`` (or the one a remote-code class copies), preferring its
    fast variant as AutoTokenizer does; None when transformers has no such tokenizer class."""
    if not isinstance(name, str) or not name.isidentifier():
        return None
    import transformers

    name = arch.tokenizer_fallbacks.get(name, name)
    for candidate in (name.removesuffix("Fast") + "Fast", name):
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerBase):
            return cls
    return None


def build_model(arch: ArchConfig, device: torch.device | str = "meta", dtype: torch.dtype = torch.float32,
                model_class: type[Transformer] = Transformer) -> Transformer:
    """The model with random weights on ``device``; on ``meta`` (shapes only, weights loaded next) without
    running the initialisers, whose first call on meta tensors costs seconds of imports."""
    if str(device) == "meta":
        with torch.device("meta"), _SkipInit():
            return model_class(arch)
    with torch.device(device):
        model = model_class(arch)
    model.to(dtype)
    return model


class _SkipInit(TorchFunctionMode):
    """Turns the initialisers (``torch.nn.init.*`` and the in-place random fills) into no-ops."""

    SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        in_place_init = getattr(func, "__module__", None) == "torch.nn.init" and func.__name__.endswith("_")
        if func in self.SKIPPED or in_place_init:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------------------------- saving
def _checkpoint_tensors(model: Transformer, arch_cls: type[Architecture], cfg: dict[str, Any],
                        dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The model's tensors on the CPU under the format's names; a stacked parameter gives one tensor per row."""
    inverse: dict[str, list[tuple[str, int | None]]] = {}
    for ckpt, target in arch_cls.name_map(model.cfg, cfg).items():
        name, row = (target, None) if isinstance(target, str) else target
        inverse.setdefault(name, []).append((ckpt, row))
    tensors = {}
    for internal, t in unjoined_state(model).items():
        if internal not in inverse:
            raise CheckpointError(f"parameter {internal!r} has no name in the {arch_cls.model_type} format")
        t = t.detach().to("cpu")
        t = t.to(dtype) if dtype is not None else t
        for ckpt, row in inverse[internal]:
            tensors[ckpt] = t.contiguous() if row is None else t[row].clone()
    return tensors


def save_checkpoint(
    model: Transformer,
    arch_cls: type[Architecture] | str,
    ids: SpecialIds,
    folder: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = 15 * 2**20 - 4096,
    tokenizer: Any | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a genuine checkpoint of ``arch_cls``'s format: config.json, safetensors shards below
    ``max_shard_bytes`` each with model.safetensors.index.json, and the tokenizer if given."""
    if isinstance(arch_cls, str):
        arch_cls = MODELS.get(arch_cls)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = arch_cls.build_config(model.cfg, ids, **(extra_config or {}))
    if dtype is not None:
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    tensors = _checkpoint_tensors(model, arch_cls, cfg, dtype)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if nbytes > max_shard_bytes:
            raise CheckpointError(f"tensor {name!r} ({nbytes} bytes) is larger than max_shard_bytes={max_shard_bytes}")
        if size + nbytes > max_shard_bytes and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    for old in folder.glob("model*.safetensors"):
        old.unlink()
    weight_map = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / fname), metadata={"format": "pt"})
        for name, t in shard.items():
            weight_map[name] = fname
            total += t.numel() * t.element_size()
    (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
