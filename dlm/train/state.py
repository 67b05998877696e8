"""The resumable state of a training run: model weights, AdamW moments and step counts, the sampling generator and
the loop's counters, as safetensors + JSON (never pickle), written to a temporary folder and then renamed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError


def save_state(state_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
               generator: torch.Generator) -> None:
    """Model, optimizer moments and loop counters (``meta``) into ``state_dir`` (replaced whole, never half)."""
    tmp = state_dir.with_name(state_dir.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    names = {id(p): n for n, p in model.named_parameters()}
    save_file({n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters()},
              str(tmp / "model.safetensors"))
    moments: dict[str, torch.Tensor] = {}
    steps: dict[str, float] = {}
    for p, st in optimizer.state.items():
        n = names[id(p)]
        for key in ("exp_avg", "exp_avg_sq"):
            moments[f"{n}.{key}"] = st[key].detach().float().cpu().contiguous()
        steps[n] = float(st["step"])
    moments["__generator__"] = generator.get_state().cpu()
    save_file(moments, str(tmp / "optimizer.safetensors"))
    (tmp / "trainer.json").write_text(json.dumps({**meta, "adam_steps": steps}, indent=1))
    if state_dir.exists():
        shutil.rmtree(state_dir)
    os.replace(tmp, state_dir)


def load_state(state_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Restore what :func:`save_state` wrote into ``model``, ``optimizer`` and ``generator``; return the meta."""
    meta = json.loads((state_dir / "trainer.json").read_text())
    weights = load_file(str(state_dir / "model.safetensors"))
    params = dict(model.named_parameters())
    if set(weights) != set(params):
        raise ConfigError(f"the training state in {state_dir} does not match the model ({len(weights)} saved "
                          f"tensors vs {len(params)} parameters); resume with the settings that wrote it")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    moments = load_file(str(state_dir / "optimizer.safetensors"))
    step_device = device if device.type == "cuda" else "cpu"  # fused AdamW keeps steps on the GPU
    for n, p in params.items():
        if f"{n}.exp_avg" in moments:
            optimizer.state[p] = {
                "step": torch.tensor(meta["adam_steps"][n], dtype=torch.float32, device=step_device),
                "exp_avg": moments[f"{n}.exp_avg"].to(device),
                "exp_avg_sq": moments[f"{n}.exp_avg_sq"].to(device),
            }
    generator.set_state(moments["__generator__"].to(torch.uint8))
    return meta
