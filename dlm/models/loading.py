"""Loading and saving checkpoints: config.json + safetensors shards (+ index) + tokenizer, never pickle.

Loading builds the model on the meta device and streams each tensor from the safetensors files straight into
its parameter slot (cast to the target dtype, moved to the target device), so at no point does a second full
copy of the weights exist.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from .base import MODELS, Architecture, SpecialIds
from .transformer import ArchConfig, Transformer

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

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
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {exc}") from exc
    model_type = cfg.get("model_type")
    if model_type is None:
        raise CheckpointError(f"{cfg_file} has no 'model_type' field; known model types: {', '.join(MODELS.names())}")
    if model_type not in MODELS:
        raise CheckpointError(
            f"unknown model_type {model_type!r} in {cfg_file}; known model types: {', '.join(MODELS.names())}"
        )
    return folder, cfg, MODELS.get(model_type)


def weight_files(folder: Path) -> dict[str, Path]:
    """Map every weight name to the safetensors file holding it; refuse pickle-only checkpoints."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index} is not a valid safetensors index (needs a 'weight_map'): {exc}") from exc
        files = {name: folder / fname for name, fname in weight_map.items()}
        missing = sorted({str(p.name) for p in files.values() if not p.is_file()})
        if missing:
            raise CheckpointError(f"{index} lists shard(s) that are not in the folder: {', '.join(missing)}")
        return files
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{str(folder)!r} holds only pickle weights ({', '.join(pickles)}); dlm refuses to unpickle them, "
                "because loading a pickle can run arbitrary code. Convert the checkpoint to safetensors on a "
                "machine you trust (e.g. transformers' save_pretrained(..., safe_serialization=True))"
            )
        raise CheckpointError(f"{str(folder)!r} has no *.safetensors weights and no {INDEX_FILE}")
    if len(shards) > 1 and not (folder / SINGLE_FILE).is_file():
        raise CheckpointError(f"{str(folder)!r} has {len(shards)} safetensors shards but no {INDEX_FILE}")
    files: dict[str, Path] = {}
    for shard in shards if len(shards) == 1 else [folder / SINGLE_FILE]:
        for name in read_header(shard)[0]:
            files[name] = shard
    return files


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the offset where its data starts (the format's spec: an 8-byte
    little-endian header size, the header, then the tensors' bytes)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise CheckpointError(f"{path.name} is not a safetensors file (too short)")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > 100 * 2**20:
            raise CheckpointError(f"{path.name} is not a safetensors file (header size {n})")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path.name} has a corrupt safetensors header: {exc}") from exc
    header.pop("__metadata__", None)
    return header, 8 + n


def read_tensor(path: Path, info: dict[str, Any], data_start: int) -> torch.Tensor:
    """Read one tensor with plain file reads straight into a new CPU tensor (no memory map, no pickle), so the
    resident memory of loading is the model plus this one tensor, whatever the shard size."""
    dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
    if dtype is None:
        raise CheckpointError(f"{path.name}: unsupported safetensors dtype {info.get('dtype')!r}")
    begin, end = info["data_offsets"]
    tensor = torch.empty(info["shape"], dtype=dtype)
    nbytes = tensor.numel() * tensor.element_size()
    if end - begin != nbytes:
        raise CheckpointError(f"{path.name}: a tensor's byte range ({end - begin}) does not match its shape/dtype")
    if nbytes:
        buf = memoryview(tensor.view(-1).view(torch.uint8).numpy())
        with open(path, "rb") as f:
            f.seek(data_start + begin)
            if f.readinto(buf) != nbytes:
                raise CheckpointError(f"{path.name} is truncated")
    return tensor


def _set_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    module._parameters[attr] = nn.Parameter(tensor, requires_grad=False)


def load_weights(
    model: Transformer, folder: Path, name_map: dict[str, str], dtype: torch.dtype, device: torch.device
) -> None:
    """Stream every tensor into ``model`` (built on the meta device); check names and shapes first."""
    files = weight_files(folder)
    expected = set(name_map)
    present = set(files)
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
    params = dict(model.named_parameters())
    headers: dict[Path, tuple[dict[str, Any], int]] = {}
    for name in sorted(expected, key=lambda n: (str(files[n]), n)):
        shard = files[name]
        if shard not in headers:
            headers[shard] = read_header(shard)
        header, data_start = headers[shard]
        target = params[name_map[name]]
        shape = tuple(header[name]["shape"])
        if shape != tuple(target.shape):
            raise CheckpointError(
                f"weight {name!r} in {shard.name} has shape {list(shape)} but config.json implies {list(target.shape)}"
            )
        tensor = read_tensor(shard, header[name], data_start)
        _set_tensor(model, name_map[name], tensor.to(device=device, dtype=dtype))
        del tensor
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:  # pragma: no cover - guarded by the name check above
        raise CheckpointError(f"parameters left unloaded: {', '.join(still_meta[:5])}")


def load_tokenizer(folder: Path, arch: type[Architecture]):
    """transformers' AutoTokenizer from the folder, never with remote code."""
    from transformers import AutoTokenizer

    tc_file = folder / "tokenizer_config.json"
    tc = json.loads(tc_file.read_text()) if tc_file.is_file() else {}
    has_files = any((folder / f).is_file() for f in ("tokenizer.json", "vocab.json", "tokenizer.model"))
    if not has_files:
        raise CheckpointError(
            f"{str(folder)!r} has no tokenizer (tokenizer.json, vocab.json+merges.txt or tokenizer.model); "
            "pass tokenizer=PATH or tokenizer=False to work with token ids only"
        )
    cls_name = tc.get("tokenizer_class")
    fallback = arch.tokenizer_fallbacks.get(cls_name) if cls_name else None
    try:
        if fallback is not None:
            import transformers

            cls = getattr(transformers, fallback + "Fast", None) or getattr(transformers, fallback)
            return cls.from_pretrained(str(folder))
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # AutoTokenizer peeks at config.json and warns about model_type "llada"
        try:
            return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        finally:
            hf_logging.set_verbosity(level)
    except Exception as exc:  # noqa: BLE001 - re-raised with the folder named
        raise CheckpointError(f"could not load the tokenizer of {str(folder)!r}: {type(exc).__name__}: {exc}") from exc


def build_model(arch: ArchConfig, device: torch.device | str = "meta", dtype: torch.dtype = torch.float32,
                model_class: type[Transformer] = Transformer) -> Transformer:
    with torch.device(device):
        model = model_class(arch)
    if str(device) != "meta":
        model.to(dtype)
    return model


# --------------------------------------------------------------------------------------------------- saving
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
    inverse = {internal: ckpt for ckpt, internal in arch_cls.name_map(model.cfg, cfg).items()}
    state = model.state_dict()
    tensors = {}
    for internal, t in state.items():
        if internal not in inverse:
            raise CheckpointError(f"parameter {internal!r} has no name in the {arch_cls.model_type} format")
        t = t.detach().to("cpu")
        tensors[inverse[internal]] = (t.to(dtype) if dtype is not None else t).contiguous()
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
