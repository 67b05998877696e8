"""Fitting the learned filter: the loss goes down, the best epoch is kept, metrics are what they say."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.filter import FilterConfig
from dlm.train.filter import dataset, fit


def synthetic_data(n: int = 256, length: int = 32, seed: int = 0) -> dataset.FilterData:
    """Blocks whose masked positions are right exactly when their confidence is above 0.6."""
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(n, length, generator=g)
    masked = torch.rand(n, length, generator=g) < 0.7
    masked[:, 0] = True
    label = (conf > 0.6) | ~masked
    zeros = torch.zeros(n, dtype=torch.long)
    return dataset.FilterData(confidence=conf, margin=conf, neg_entropy=conf.log(), masked=masked, label=label,
                        prompt=torch.arange(n), step=zeros, block=zeros, families=["x"] * n,
                        references=[[0]] * n, block_length=length)


@pytest.mark.parametrize("arch,lr,epochs,ratio", [("mlp", 1e-2, 30, 0.95), ("local", 3e-2, 20, 0.3)])
def test_training_reduces_the_loss(arch, lr, epochs, ratio):
    data, val = synthetic_data(seed=0), synthetic_data(seed=1)
    config = FilterConfig(features=("confidence", "masked"), arch=arch, context=2, hidden=(16,))
    net, history = fit.train(data, config, val, fit.TrainSettings(epochs=epochs, batch_size=32, lr=lr))
    best = min(h["val_loss"] for h in history)
    rate = float(val.label[val.masked].float().mean())
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))  # the loss of predicting the base rate
    assert best < ratio * history[0]["val_loss"] and best < ratio * constant, (history, constant)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    x, y, w = fit.windows(val, config)
    with torch.no_grad():
        assert float(fit.bce(net, x, y, w)) == pytest.approx(best, rel=1e-5)  # the best epoch is the one kept
    if arch == "local":  # the per-position rule is exactly what a shared per-position network learns
        m = fit.filter_metrics(fit.accept_probabilities(net, val), val, 0.5)
        assert m["false_positive_rate"] < 0.05 and m["recall"] > 0.9, m


def test_filter_metrics_by_hand():
    data = synthetic_data(n=1, length=4)
    data.masked = torch.tensor([[True, True, True, False]])
    data.label = torch.tensor([[True, False, False, True]])
    prob = torch.tensor([[0.99, 0.97, 0.5, 0.99]])
    m = fit.filter_metrics(prob, data, 0.96)
    # accepted: positions 0 (right) and 1 (wrong); position 3 is committed, not a sample
    assert m["positions"] == 3 and m["wrong"] == 2
    assert m["false_positive_rate"] == 0.5 and m["false_discovery_rate"] == 0.5
    assert m["acceptance"] == pytest.approx(2 / 3) and m["recall"] == 1.0
