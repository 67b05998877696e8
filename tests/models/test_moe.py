"""Mixture of experts: routers on hand-built scores, the grouped and sorted expert paths against a per-token loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import dlm
from dlm.errors import ConfigError
from dlm.models.moe import (
    ExpertBank,
    MoEArchConfig,
    route_sigmoid,
    route_softmax,
    set_expert_impl,
)
from dlm.testing import write_tiny_checkpoint

HAS_GROUPED = hasattr(torch, "_grouped_mm")


def moe_cfg(**kw) -> MoEArchConfig:
    fields = dict(vocab_size=16, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=4,
                  intermediate_size=8, norm_eps=1e-6, rope_theta=1e4, max_position=64, num_experts=8,
                  experts_per_token=2, expert_intermediate_size=8, moe_layers=(0,))
    return MoEArchConfig(**{**fields, **kw})


def logit(p: list[float]) -> torch.Tensor:
    p = torch.tensor([p], dtype=torch.float32)
    return torch.log(p) - torch.log1p(-p)


def test_sigmoid_routing_is_limited_to_the_best_groups():
    # groups of 2 experts, scored by the sum of their two best: g0 1.0, g1 1.18, g2 1.1, g3 0.4 -> keep g1, g2;
    # expert 0 has the best single score but its group is dropped
    scores = [0.9, 0.1, 0.6, 0.58, 0.55, 0.55, 0.2, 0.2]
    cfg = moe_cfg(score_function="sigmoid", n_group=4, topk_group=2, routed_scaling_factor=2.5, expert_bias=True)
    w, ids = route_sigmoid(logit(scores), None, cfg)
    assert ids.tolist() == [[2, 3]]
    torch.testing.assert_close(w, torch.tensor([[0.6, 0.58]]) / 1.18 * 2.5)
    # the bias moves the choice (expert 4 over expert 3) but the weights stay the unbiased scores
    bias = torch.zeros(8)
    bias[4] = 0.1
    w, ids = route_sigmoid(logit(scores), bias, cfg)
    assert sorted(ids.tolist()[0]) == [2, 4]
    torch.testing.assert_close(w.sum(), torch.tensor(2.5))
    assert math.isclose(w[0, ids[0].tolist().index(4)].item(), 0.55 / 1.15 * 2.5, rel_tol=1e-6)


def test_softmax_routing_renormalises_only_when_asked():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 3.0, 0.5, 0.1, -2.0]])
    p = torch.softmax(logits, -1)
    w, ids = route_softmax(logits, moe_cfg(norm_topk_prob=True))
    assert ids.tolist() == [[4, 0]]
    torch.testing.assert_close(w, p[:, [4, 0]] / p[:, [4, 0]].sum())
    w, _ = route_softmax(logits, moe_cfg(norm_topk_prob=False))
    torch.testing.assert_close(w, p[:, [4, 0]])


def random_bank(E=6, d=16, inter=8, dtype=torch.float32, device="cpu", seed=0) -> ExpertBank:
    g = torch.Generator().manual_seed(seed)
    bank = ExpertBank(E, d, inter)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return bank.to(device=device, dtype=dtype)


def routed_input(T=11, k=3, E=6, d=16, dtype=torch.float32, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, d, generator=g).to(device=device, dtype=dtype)
    ids = torch.stack([torch.randperm(E - 1, generator=g)[:k] for _ in range(T)])  # expert E-1 gets no token
    w = torch.rand(T, k, generator=g)
    return x, ids.to(device), w.to(device)


def per_token(bank: ExpertBank, x, ids, w) -> torch.Tensor:
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for j, e in enumerate(ids[t].tolist()):
            h = F.silu(bank.gate[e].double() @ x[t].double()) * (bank.up[e].double() @ x[t].double())
            out[t] += w[t, j].double() * (bank.down[e].double() @ h)
    return out


def test_sorted_path_matches_a_per_token_loop():
    bank = random_bank()
    bank.impl = "sorted"
    x, ids, w = routed_input()
    torch.testing.assert_close(bank(x, ids, w).double(), per_token(bank, x, ids, w), rtol=0, atol=1e-5)


@pytest.mark.skipif(not HAS_GROUPED, reason="this torch has no torch._grouped_mm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_path_matches_sorted_on_cpu(dtype):
    bank = random_bank(dtype=dtype)
    x, ids, w = routed_input(dtype=dtype)
    outs = {}
    for impl in ("sorted", "grouped"):
        bank.impl = impl
        outs[impl] = bank(x, ids, w).float()
    atol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(outs["grouped"], outs["sorted"], rtol=0, atol=atol)


@pytest.mark.gpu
def test_grouped_path_matches_sorted_on_cuda_bf16():
    assert HAS_GROUPED, f"torch {torch.__version__} has no torch._grouped_mm"
    bank = random_bank(E=16, d=256, inter=128, dtype=torch.bfloat16, device="cuda")
    x, ids, w = routed_input(T=96, k=4, E=16, d=256, dtype=torch.bfloat16, device="cuda")
    outs = {}
    for impl in ("sorted", "grouped", "auto"):
        bank.impl = impl
        outs[impl] = bank(x, ids, w).float()
    ref = per_token(bank.cpu(), x.cpu(), ids.cpu(), w.cpu()).float()
    assert torch.equal(outs["auto"], outs["grouped"])  # auto takes the grouped path for bf16 on CUDA
    for impl in ("sorted", "grouped"):
        rel = ((outs[impl].cpu() - ref).norm() / ref.norm()).item()
        assert rel < 1e-2, (impl, rel)


@pytest.mark.skipif(not HAS_GROUPED, reason="this torch has no torch._grouped_mm")
@pytest.mark.parametrize("model_type", ["llada2_moe", "sdar_moe"])
def test_whole_model_same_logits_on_both_paths(tmp_path, model_type):
    lm = dlm.load(write_tiny_checkpoint(tmp_path / model_type, model_type, seed=5), device="cpu")
    ids = torch.randint(0, 256, (2, 13), generator=torch.Generator().manual_seed(0))
    set_expert_impl(lm.model, "sorted")
    a = lm.model(ids)
    set_expert_impl(lm.model, "grouped")
    b = lm.model(ids)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_unknown_expert_impl_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="unknown expert implementation 'fast'.*auto, grouped, sorted"):
        set_expert_impl(torch.nn.Linear(2, 2), "fast")
