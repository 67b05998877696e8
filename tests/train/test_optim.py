"""Optimisation settings: the learning-rate schedule and the validation of the settings."""

from __future__ import annotations

import pytest

from dlm.train.optim import TrainConfig, lr_at


def test_schedule():
    cfg = TrainConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, max_steps=40)
    assert lr_at(cfg, 0, 0.0) == pytest.approx(0.1)
    assert lr_at(cfg, 9, 0.0) == pytest.approx(1.0)
    assert lr_at(cfg, 50, 0.5) == pytest.approx(0.55)
    assert lr_at(cfg, 99, 1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="max_steps or max_minutes"):
        TrainConfig()
