"""Training of the learned filter: the loss goes down, files round-trip, metrics are what they say."""

from __future__ import annotations

import math

import pytest
import torch

from dlm.schedulers.learned_filter import FilterConfig, FilterNet, block_features, load_filter, save_filter, to_windows
from dlm.train import filter as F


def synthetic_data(n: int = 256, length: int = 32, seed: int = 0) -> F.FilterData:
    """Blocks whose masked positions are right exactly when their confidence is above 0.6."""
    g = torch.Generator().manual_seed(seed)
    conf = torch.rand(n, length, generator=g)
    masked = torch.rand(n, length, generator=g) < 0.7
    masked[:, 0] = True
    label = (conf > 0.6) | ~masked
    zeros = torch.zeros(n, dtype=torch.long)
    return F.FilterData(confidence=conf, margin=conf, neg_entropy=conf.log(), masked=masked, label=label,
                        prompt=torch.arange(n), step=zeros, block=zeros, families=["x"] * n,
                        references=[[0]] * n, block_length=length)


@pytest.mark.parametrize("arch,lr,epochs,ratio", [("mlp", 1e-2, 30, 0.95), ("local", 3e-2, 20, 0.3)])
def test_training_reduces_the_loss(arch, lr, epochs, ratio):
    data, val = synthetic_data(seed=0), synthetic_data(seed=1)
    config = FilterConfig(features=("confidence", "masked"), arch=arch, context=2, hidden=(16,))
    net, history = F.train(data, config, val, F.TrainSettings(epochs=epochs, batch_size=32, lr=lr))
    best = min(h["val_loss"] for h in history)
    rate = float(val.label[val.masked].float().mean())
    constant = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))  # the loss of predicting the base rate
    assert best < ratio * history[0]["val_loss"] and best < ratio * constant, (history, constant)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    x, y, w = F.windows(val, config)
    with torch.no_grad():
        assert float(F.bce(net, x, y, w)) == pytest.approx(best, rel=1e-5)  # the best epoch is the one kept
    if arch == "local":  # the per-position rule is exactly what a shared per-position network learns
        m = F.filter_metrics(F.accept_probabilities(net, val), val, 0.5)
        assert m["false_positive_rate"] < 0.05 and m["recall"] > 0.9, m


def test_learn2pd_baseline_has_about_2k_parameters():
    assert FilterNet(FilterConfig(features=("confidence",), width=32, hidden=(32,))).num_parameters == 2112


def test_filter_metrics_by_hand():
    data = synthetic_data(n=1, length=4)
    data.masked = torch.tensor([[True, True, True, False]])
    data.label = torch.tensor([[True, False, False, True]])
    prob = torch.tensor([[0.99, 0.97, 0.5, 0.99]])
    m = F.filter_metrics(prob, data, 0.96)
    # accepted: positions 0 (right) and 1 (wrong); position 3 is committed, not a sample
    assert m["positions"] == 3 and m["wrong"] == 2
    assert m["false_positive_rate"] == 0.5 and m["false_discovery_rate"] == 0.5
    assert m["acceptance"] == pytest.approx(2 / 3) and m["recall"] == 1.0


def test_save_and_load(tmp_path):
    config = FilterConfig(features=("confidence", "masked", "margin"), hidden=(16, 8), threshold=0.9,
                          info={"note": "test"})
    torch.manual_seed(0)
    net = FilterNet(config)
    weights, cfg = save_filter(net, tmp_path / "f.safetensors")
    assert cfg.name == "f.json" and weights.is_file()
    again = load_filter(weights)
    assert again.config == config
    x = torch.rand(5, 3, 32)
    assert torch.equal(net(x), again(x))


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


def test_confidence_features_ignore_minus_inf():
    feats = block_features(("confidence",), torch.tensor([[float("-inf"), float("nan"), 0.5]]),
                           torch.tensor([[True, True, True]]))
    assert feats[0, 0].tolist() == [0.0, 0.0, 0.5]


def test_disagreement_rule_counts_prompts():
    # 3 of 300 answers differ: exactly 1%, within a 1% budget although 1 - 0.99 > 0.01 in floating point
    assert F.within_disagreement({"prompts": 300, "agreement": 297 / 300}, 0.01)
    assert not F.within_disagreement({"prompts": 300, "agreement": 296 / 300}, 0.01)
    assert F.within_disagreement({"prompts": 10, "agreement": 1.0}, 0.0)
    assert not F.within_disagreement({"prompts": 10, "agreement": 0.9}, 0.0)
