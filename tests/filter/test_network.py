"""The filter network and its inputs: sizes, windows and padding."""

from __future__ import annotations

import pytest
import torch

from dlm.filter import FilterConfig, FilterNet, block_features, to_windows


def test_learn2pd_baseline_has_about_2k_parameters():
    assert FilterNet(FilterConfig(features=("confidence",), width=32, hidden=(32,))).num_parameters == 2112


def test_windows_pad_and_split():
    config = FilterConfig(features=("confidence", "masked"), width=4, hidden=(8,))
    conf = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    masked = torch.tensor([[True, False, True, True, True, True]])
    feats = block_features(config.features, conf, masked)
    assert feats[0, 0].tolist() == pytest.approx([0.1, 1.0, 0.3, 0.4, 0.5, 0.6])  # committed reads as certain
    w, n = to_windows(feats, config)
    assert n == 6 and w.shape == (2, 2, 4)
    # the second window is positions 4, 5 and two committed-looking pads
    assert w[1, 0].tolist() == pytest.approx([0.5, 0.6, 1.0, 1.0]) and w[1, 1].tolist() == [1, 1, 0, 0]
    torch.manual_seed(0)
    net = FilterNet(config)
    p = net.accept_probability(feats)
    assert p.shape == (1, 6)
    assert torch.allclose(p[0, 4:], torch.sigmoid(net(w[1:2]))[0, :2])
