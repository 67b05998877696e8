"""The filter's input features."""

from __future__ import annotations

import torch

from dlm.filter import block_features


def test_confidence_features_ignore_minus_inf():
    feats = block_features(("confidence",), torch.tensor([[float("-inf"), float("nan"), 0.5]]),
                           torch.tensor([[True, True, True]]))
    assert feats[0, 0].tolist() == [0.0, 0.0, 0.5]
