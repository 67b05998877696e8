"""The files of a checkpoint folder, read without trusting them.

JSON files must be UTF-8 objects; an index may only name ``*.safetensors`` files inside the folder; a safetensors
header must describe every tensor with a known dtype, a shape and a byte range, and a tensor is read with plain
file reads into a new CPU tensor (no memory map, no pickle). Anything else is a :class:`CheckpointError` naming the
file. :mod:`dlm.models.loading` builds the model from what these return.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from ..errors import CheckpointError
from .fields import sampling_defaults

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
GENERATION_CONFIG = "generation_config.json"


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file of the checkpoint that must hold an object; CheckpointError naming the file otherwise
    (unreadable, not UTF-8, not JSON, or a list / string / number)."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{path} is not UTF-8 text (byte {exc.start}): not a JSON file") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object ({{...}}), got a {type(data).__name__}")
    return data


def read_generation_config(folder: Path) -> dict[str, Any]:
    """The sampling defaults (top_k, top_p) the checkpoint's ``generation_config.json`` sets, checked; {} when
    there is no such file. Cached per file version: the generate path asks once per request."""
    path = folder / GENERATION_CONFIG
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    return dict(_generation_config(str(path), stamp))


@functools.lru_cache(maxsize=64)
def _generation_config(path: str, stamp: int) -> tuple[tuple[str, Any], ...]:
    return tuple(sampling_defaults(read_json_object(Path(path)), GENERATION_CONFIG).items())


def weight_files(folder: Path) -> dict[str, Path]:
    """Map every weight name to the safetensors file holding it; refuse pickle-only checkpoints."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} is not a valid safetensors index: it needs a 'weight_map' object "
                                  "of weight name -> shard file")
        files = {name: folder / shard_name(index, name, fname) for name, fname in weight_map.items()}
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


def shard_name(index: Path, name: str, fname: Any) -> str:
    """An index entry's shard file, which must be a plain ``*.safetensors`` name inside the checkpoint folder:
    never an absolute path or one climbing out with ``..`` (a hostile index could point at any file)."""
    parts = PurePosixPath(fname.replace("\\", "/")).parts if isinstance(fname, str) else ()
    if not parts or parts[0] == "/" or ".." in parts or PureWindowsPath(fname).drive:
        raise CheckpointError(f"{index}: weight {name!r} points at {fname!r}, outside the checkpoint folder; "
                              "shard entries must be file names inside it")
    if not fname.endswith(".safetensors"):
        raise CheckpointError(f"{index}: weight {name!r} points at {fname!r}, not a .safetensors file")
    return fname


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


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
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a corrupt safetensors header: not a JSON object")
    header.pop("__metadata__", None)
    for name, info in header.items():
        _check_entry(path, name, info)
    return header, 8 + n


def _check_entry(path: Path, name: str, info: Any) -> None:
    """A header entry must be {dtype: known name, shape: [ints >= 0], data_offsets: [begin <= end]}."""
    ok = (isinstance(info, dict) and info.get("dtype") in SAFETENSORS_DTYPES
          and isinstance(info.get("shape"), list) and _ints(info["shape"])
          and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
          and _ints(info["data_offsets"]) and info["data_offsets"][0] <= info["data_offsets"][1])
    if not ok:
        dtype = info.get("dtype") if isinstance(info, dict) else None
        why = f"unsupported dtype {dtype!r}" if isinstance(info, dict) and dtype not in SAFETENSORS_DTYPES else \
            "needs dtype, shape (integers >= 0) and data_offsets [begin, end]"
        raise CheckpointError(f"{path.name}: tensor {name!r} has a corrupt header entry ({why}): {info!r}"[:400])


def _ints(values: list) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


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
