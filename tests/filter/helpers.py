"""Filter files for tests: random networks, or networks whose output is a constant."""

from __future__ import annotations

import torch

from dlm.filter import FilterConfig, FilterNet, save_filter


def make_filter(tmp_path, name="f", bias: float | None = None, **config) -> str:
    """A random filter file; ``bias`` sets the output bias (large: accept everything, small: nothing)."""
    torch.manual_seed(0)
    net = FilterNet(FilterConfig(**config))
    if bias is not None:
        with torch.no_grad():
            last = net.net[-1]
            last.weight.zero_()
            last.bias.fill_(bias)
    weights, _ = save_filter(net, tmp_path / f"{name}.safetensors")
    return str(weights)
