"""Tensor + expert parallelism for the MoE formats (LLaDA2.x with its fused QKV, SDAR-MoE, LLaDA-MoE) over 2 gloo
processes on the CPU: each rank reads half the experts, and the logits and tokens are those of one process."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.errors import ConfigError
from dlm.models.moe import ExpertBank
from dlm.parallel.experts import expert_names, qkv_rows
from dlm.parallel.tensor import TensorParallel

from .group import one_process, outputs, run_group

FORMATS = ("llada2_moe", "sdar_moe", "llada_moe")
PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20]]
CACHES = ("none", "dual")


def config(cache: str) -> dlm.GenerationConfig:
    return dlm.GenerationConfig(gen_length=32, cache=cache, stop_at_eos=False)


def probe_ids() -> torch.Tensor:
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def moe_paths(tmp_path_factory):
    from dlm.testing import write_tiny_checkpoint

    return {mt: write_tiny_checkpoint(tmp_path_factory.mktemp(f"peaky_{mt}"), mt, seed=5, std=1.0) for mt in FORMATS}


def experts(lm) -> list[int]:
    return [layer.moe.experts.gate.shape[0] for layer in lm.model.layers if hasattr(layer, "moe")]


def run_rank(rank: int, world: int, paths: dict) -> dict:
    out = {}
    for mt, path in paths.items():
        lm = dlm.load(path, tensor_parallel=TensorParallel.init(world, "cpu"))
        out.update(outputs(lm, mt, probe_ids(), PROMPTS, {c: config(c) for c in CACHES}), **{mt + "/experts": experts(lm)})
    return out


@pytest.fixture(scope="module")
def tp_results(moe_paths):
    return run_group(run_rank, 2, dict(moe_paths), timeout=300)


@pytest.fixture(scope="module")
def reference(moe_paths):
    return one_process(moe_paths, probe_ids(), PROMPTS, {c: config(c) for c in CACHES}, {"experts": experts})


@pytest.mark.slow
@pytest.mark.parametrize("mt", FORMATS)
def test_each_rank_holds_half_the_experts(tp_results, reference, mt):
    assert reference[mt + "/experts"] and all(n == 8 for n in reference[mt + "/experts"])
    for rank in tp_results:
        assert rank[mt + "/experts"] == [n // 2 for n in reference[mt + "/experts"]]


@pytest.mark.slow
@pytest.mark.parametrize("mt", FORMATS)
def test_logits_and_tokens_match_one_process(tp_results, reference, mt):
    ref = reference[mt + "/logits"]
    finite = torch.isfinite(ref)
    for rank in tp_results:
        got = torch.from_numpy(rank[mt + "/logits"])
        assert torch.equal(torch.isfinite(got), finite)
        # float32 sums in another order (per rank, then across ranks): within 1e-5 of the logits' scale
        torch.testing.assert_close(got[finite], ref[finite], rtol=1e-5, atol=1e-5 * float(ref[finite].abs().max()))
        for cache in CACHES:
            assert torch.equal(torch.from_numpy(rank[f"{mt}/{cache}"]), reference[f"{mt}/{cache}"]), cache
    torch.testing.assert_close(tp_results[0][mt + "/logits"], tp_results[1][mt + "/logits"], rtol=0, atol=0)


def test_a_partial_bank_skips_the_slots_other_ranks_hold():
    """ids of -1 contribute nothing; the kept slots give what the whole bank gives them (both paths)."""
    torch.manual_seed(0)
    full = ExpertBank(4, 8, 6)
    for p in full.parameters():
        torch.nn.init.normal_(p)
    half = ExpertBank(2, 8, 6)
    with torch.no_grad():
        for a, b in zip(half.parameters(), full.parameters()):
            a.copy_(b[2:])
    half.partial = True
    x, ids = torch.randn(5, 8), torch.randint(0, 4, (5, 2))
    weights = torch.rand(5, 2)
    kept = ids >= 2
    want = full(x, ids, torch.where(kept, weights, 0.0))
    for impl in ("sorted",):
        half.impl = impl
        got = half(x, torch.where(kept, ids - 2, -1), weights)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_expert_names_and_qkv_rows():
    names = {f"e{e}.{p}": (f"layers.1.moe.experts.{p}", e) for e in range(4) for p in ("gate", "up", "down")}
    names["other"] = "layers.0.o.weight"
    r1 = expert_names(names, rank=1, size=2, num_experts=4)
    assert r1["e3.up"] == ("layers.1.moe.experts.up", 1) and r1["e1.down"] is None and r1["other"] == "layers.0.o.weight"
    rows = torch.arange(8 * 2).view(8, 2)  # heads 4 (q) + 2 (k) + 2 (v), head_dim 1... as rows
    take = qkv_rows(num_heads=4, num_kv_heads=2, head_dim=1, rank=1, size=2)
    assert take(rows[:, 0]).tolist() == [4, 6, 10, 14]  # q heads 2,3; k head 1; v head 1


def test_experts_must_divide(tmp_path):
    from dlm.models.loading import build_model
    from dlm.testing_block import tiny_block_arch

    model = build_model(tiny_block_arch("sdar_moe", experts=6, kv_heads=4), device="meta")
    with pytest.raises(ConfigError, match="does not divide the model's 6 experts"):
        TensorParallel(size=4, rank=0, device=torch.device("cpu"), mesh=None).check(model)
