"""``dlm train-filter`` end to end: collect (or reuse) the data, fit the filter, tune its threshold, write it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import ConfigError
from ...filter import DEFAULT_THRESHOLD, FilterConfig, check_threshold, save_filter
from .collect import collect, collect_parallel, data_fingerprint
from .dataset import FilterData
from .fit import TrainSettings, accept_probabilities, filter_metrics, train
from .prompts import Prompt
from .tune import tune_threshold

GRID = (0.5, 0.7, 0.8, 0.9, 0.95, 0.96, 0.98, 0.99)  # thresholds tried by default when tuning
METHOD = ("Learn2PD (arXiv:2509.25188): MLP over the block's per-position features -> accept logits; labels from "
          "the one-token-per-step low_confidence decode (temperature 0)")


def run(lm, train_prompts: Sequence[Prompt], val_prompts: Sequence[Prompt], out: str | Path,
        features: Sequence[str] = ("confidence", "masked"), hidden: Sequence[int] = (32,), width: int = 32,
        block_length: int = 32, settings: TrainSettings = TrainSettings(), threshold: float | None = None,
        grid: Sequence[float] = GRID, max_disagreement: float = 0.01, batch_size: int = 64,
        data_dir: str | Path | None = None, model_name: str = "", workers: int = 1, model_path: str | None = None,
        arch: str = "local", context: int = 4, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Collect, train, tune and save a filter at ``out`` (.safetensors + .json). With ``data_dir`` the collected
    data is saved there (and reused when already there). ``threshold`` set: no tuning. Returns a summary."""
    log = log or (lambda s: None)
    out = Path(out)
    # every setting is checked before the (long) collection starts
    config = checked_config(out, features, arch, width, context, hidden, threshold, grid, settings, max_disagreement)
    t0 = time.perf_counter()

    def data_for(kind: str, prompts: Sequence[Prompt]) -> FilterData:
        cached = Path(data_dir) / f"{kind}.safetensors" if data_dir is not None else None
        return collected(lm, kind, prompts, cached, block_length, batch_size, workers, model_path, log)

    train_data = data_for("train", train_prompts)
    val_data = data_for("val", val_prompts)
    t_data = time.perf_counter()
    log(f"train: {len(train_data)} block states, {train_data.positions} masked positions "
        f"({int((~train_data.label & train_data.masked).sum())} wrong); val: {len(val_data)} / {val_data.positions}")
    net, history = train(train_data, config, val_data, settings, log=log)
    t_train = time.perf_counter()
    save_filter(net, out, config)
    tuning: list[dict[str, float]] = []
    if threshold is None:
        threshold, tuning = tune_threshold(lm, out, val_prompts, val_data.references, grid=grid,
                                           max_disagreement=max_disagreement, block_length=block_length,
                                           batch_size=batch_size, log=log)
        log(f"tuned threshold: {threshold}")
    prob = accept_probabilities(net, val_data)
    metrics = filter_metrics(prob, val_data, threshold)
    info = {
        "model": model_name, "method": METHOD, "train_prompts": len(train_prompts), "val_prompts": len(val_prompts),
        "train_families": sorted(set(p.family for p in train_prompts)),
        "train_positions": train_data.positions, "val_positions": val_data.positions,
        "parameters": net.num_parameters, "settings": dataclasses.asdict(settings),
        "epochs_run": len(history), "best_val_loss": min(h.get("val_loss", float("inf")) for h in history),
        "val_metrics": metrics, "val_metrics_at_0.96": filter_metrics(prob, val_data, 0.96),
        "threshold_tuning": tuning, "max_disagreement": max_disagreement,
        "seconds": {"data": round(t_data - t0, 1), "train": round(t_train - t_data, 1),
                    "tune": round(time.perf_counter() - t_train, 1)},
    }
    save_filter(net, out, dataclasses.replace(config, threshold=float(threshold), info=info))
    log(f"wrote {out} and {out.with_suffix('.json')} (threshold {threshold}, val false-positive rate "
        f"{metrics['false_positive_rate']:.4f}, false-discovery rate {metrics['false_discovery_rate']:.4f})")
    return {"path": str(out), "threshold": threshold, "history": history, **info}


def checked_config(out: Path, features: Sequence[str], arch: str, width: int, context: int, hidden: Sequence[int],
                   threshold: float | None, grid: Sequence[float], settings: TrainSettings,
                   max_disagreement: float) -> FilterConfig:
    """The filter's config from the settings, every one checked (ConfigError naming the bad value)."""
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must name a .safetensors file (its .json config is written beside it), got {out}")
    try:
        config = FilterConfig(features=tuple(features), arch=arch, width=width, context=context, hidden=tuple(hidden),
                              threshold=threshold if threshold is not None else DEFAULT_THRESHOLD)
        for t in grid:
            check_threshold(t)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if settings.epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {settings.epochs}")
    if not 0 <= max_disagreement <= 1:
        raise ConfigError(f"max_disagreement must be a share in [0, 1], got {max_disagreement}")
    return config


def collected(lm, kind: str, prompts: Sequence[Prompt], cached: Path | None, block_length: int, batch_size: int,
              workers: int, model_path: str | None, log: Callable[[str], None]) -> FilterData:
    """The data of ``prompts``: reused from ``cached`` when it was collected for the same model, prompts and block
    length (its fingerprint), else collected (in ``workers`` processes when more than one) and saved there."""
    fingerprint = data_fingerprint(lm, prompts, block_length)
    if cached is not None and cached.is_file():
        data = FilterData.load(cached)
        if data.fingerprint == fingerprint:
            log(f"{kind} data: reusing {cached}")
            return data
        log(f"{kind} data: {cached} was collected for another model, prompts or block length; collecting anew")
    log(f"{kind} data: decoding {len(prompts)} prompts with the reference")
    if workers > 1:
        data = collect_parallel(model_path, prompts, workers, block_length=block_length, batch_size=batch_size,
                                device=str(lm.device), log=log)
    else:
        data = collect(lm, prompts, block_length=block_length, batch_size=batch_size, log=log)
    data.fingerprint = fingerprint
    if cached is not None:
        data.save(cached)
    return data
