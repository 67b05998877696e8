"""Filter files: ``NAME.safetensors`` (the network's tensors, float32) and ``NAME.json`` beside it (format,
features, architecture and sizes, the recommended threshold, how it was trained). Never pickle.

Reading checks everything a file could get wrong (its config, then the tensors' names, shapes, dtypes from the
header before anything is built, then finite values) and raises :class:`~dlm.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import ConfigError
from .config import FILE_STEM, FORMAT, FilterConfig
from .network import FilterNet, expected_tensors


def default_filter_path() -> Path:
    """The filter shipped for the bundled dlm-tiny: ``dlm/assets/dlm-tiny/learned_filter.safetensors``, or
    ``dlm/assets/learned_filter/learned_filter.safetensors`` while the model folder does not hold one."""
    from ..assets import ASSETS

    candidates = [ASSETS / "dlm-tiny" / f"{FILE_STEM}.safetensors", ASSETS / FILE_STEM / f"{FILE_STEM}.safetensors"]
    return next((p for p in candidates if p.is_file()), candidates[0])


def resolve_path(path: str | Path | None) -> tuple[Path, Path]:
    """(weights file, config file) of a filter ``path`` (see the scheduler's ``path`` parameter); not checked."""
    if path is None:
        weights = default_filter_path()
    else:
        weights = Path(path).expanduser()
        if weights.is_dir():
            weights = weights / f"{FILE_STEM}.safetensors"
        elif weights.suffix == ".json":
            weights = weights.with_suffix(".safetensors")
    return weights, weights.with_suffix(".json")


def read_config(path: str | Path | None) -> FilterConfig:
    """The :class:`FilterConfig` of the filter at ``path``; ConfigError naming the file when it is unusable."""
    weights, cfg_file = resolve_path(path)
    what = "the default learned filter (shipped with the bundled dlm-tiny)" if path is None else "learned filter"
    if not weights.is_file():
        hint = ("train one with `dlm train-filter --model PATH --out FILE.safetensors` and pass path=FILE"
                if path is None else "pass the .safetensors file written by `dlm train-filter` (or its folder)")
        raise ConfigError(f"{what}: no filter file at {weights}; {hint}")
    if not cfg_file.is_file():
        raise ConfigError(f"{what} {weights}: its config {cfg_file} is missing (a filter is NAME.safetensors + "
                          "NAME.json, both written by `dlm train-filter`)")
    try:
        data = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{what} config {cfg_file} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{what} config {cfg_file} must hold a JSON object, got {type(data).__name__}")
    try:
        return FilterConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} config {cfg_file}: {exc}") from exc


def load_filter(path: str | Path | None) -> FilterNet:
    """The filter at ``path`` (see :func:`resolve_path`), checked against its config; ConfigError when the file
    is missing, not safetensors, or its tensors do not match the config (names, shapes from the feature count,
    width / context and hidden sizes, floating-point dtypes, finite values). The header is checked before anything
    is built."""
    config = read_config(path)
    weights, cfg_file = resolve_path(path)
    expected = expected_tensors(config)
    shapes, dtypes = _read_header(weights)
    if expected != shapes:
        inputs = (f"width = {len(config.features) * config.width}" if config.arch == "mlp"
                  else f"(2 x context + 1) = {len(config.features) * (2 * config.context + 1)}")
        raise ConfigError(
            f"learned filter {weights} does not match its config {cfg_file} (features {list(config.features)}, arch "
            f"{config.arch}, width {config.width}, context {config.context}, hidden {list(config.hidden)}): expected "
            f"tensors {expected}, the file holds {shapes}; the input size is len(features) x {inputs}")
    bad = {k: t for k, t in dtypes.items() if t not in ("F32", "F16", "BF16", "F64")}
    if bad:
        raise ConfigError(f"learned filter {weights}: tensors must be floating point, got {bad}")
    tensors = _read_tensors(weights, list(expected))
    _check_finite(tensors, f"learned filter {weights}")
    net = FilterNet(config)
    net.load_state_dict(tensors)
    return net.eval()


def _unreadable(weights: Path, exc: Exception) -> ConfigError:
    return ConfigError(f"learned filter {weights} is not a readable safetensors file ({exc}); a filter is "
                       "NAME.safetensors + NAME.json as written by `dlm train-filter` (pickle is never read)")


def _read_header(weights: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes and dtypes of every tensor of the file, from its header (no tensor is read)."""
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            slices = {k: f.get_slice(k) for k in f.keys()}
            return ({k: tuple(s.get_shape()) for k, s in slices.items()},
                    {k: s.get_dtype() for k, s in slices.items()})
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(weights, exc) from exc


def _read_tensors(weights: Path, names: list[str]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(weights), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k).float() for k in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise _unreadable(weights, exc) from exc


def _check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """A NaN or infinite weight makes every accept probability NaN, and a NaN never passes the threshold: the
    filter would silently accept nothing (the plain ``low_confidence`` decode, without the speed-up)."""
    bad = sorted(k for k, t in tensors.items() if not bool(torch.isfinite(t).all()))
    if bad:
        raise ConfigError(f"{what}: tensor(s) {', '.join(bad)} hold NaN or infinite values; train the filter again "
                          "(`dlm train-filter`) or restore the file")


def save_filter(net: FilterNet, path: str | Path, config: FilterConfig | None = None) -> tuple[Path, Path]:
    """Write ``net`` as ``path`` (.safetensors) + its JSON config beside it; returns both paths."""
    config = config or net.config
    weights = Path(path)
    if weights.suffix != ".safetensors":
        raise ConfigError(f"a filter file must end with .safetensors, got {weights}")
    _check_finite(net.state_dict(), f"the filter to write to {weights}")
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}, str(weights),
              metadata={"format": FORMAT})
    cfg_file = weights.with_suffix(".json")
    cfg_file.write_text(config.to_json() + "\n")
    return weights, cfg_file


_CACHE: dict[tuple, FilterNet] = {}
_CACHE_LOCK = threading.Lock()


def cached_filter(path: str | Path | None, device: torch.device) -> FilterNet:
    """:func:`load_filter`, memoised per (file, its size and modification time, device)."""
    weights, cfg_file = resolve_path(path)
    try:
        key = (str(weights.resolve()), weights.stat().st_mtime_ns, weights.stat().st_size,
               cfg_file.stat().st_mtime_ns, str(device))
    except OSError:
        key = None
    if key is not None:
        with _CACHE_LOCK:
            net = _CACHE.get(key)
        if net is not None:
            return net
    net = load_filter(path).to(device)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = net
    return net
