"""Tensor parallelism over 2 gloo processes on the CPU: logits within float32 rounding of one process, the same
tokens, every rank the same answer, both execution modes, both formats (Dream has GQA and q/k/v biases)."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.errors import ConfigError
from dlm.models.joined import join_projections
from dlm.parallel.tensor import TensorParallel

from .group import one_process, run_group

PROMPTS = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15], [16, 17, 18, 19, 20]]
CACHES = ("none", "dual")


def config(cache: str) -> dlm.GenerationConfig:
    return dlm.GenerationConfig(gen_length=16, block_length=8, steps=8, cache=cache, stop_at_eos=False)


def probe_ids() -> torch.Tensor:
    return torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))


def engine_sizes_kv_from_config() -> bool:
    """Whether the engine still allocates key/value storage for every head rather than ``model.kv_heads``."""
    import inspect

    from dlm import engine

    return "num_kv_heads=arch.num_kv_heads" in inspect.getsource(engine)


def run_rank(rank: int, world: int, paths: dict) -> dict:
    torch.manual_seed(1000 + rank)  # ranks whose default generators differ (loading must make them agree)
    out = {}
    for mt, path in paths.items():
        for mode in ("local", "dtensor"):
            tp = TensorParallel.init(world, "cpu", mode=mode)
            lm = dlm.load(path, tensor_parallel=tp)
            key = f"{mt}/{mode}"
            out[key + "/kv_heads"] = lm.model.kv_heads
            with torch.no_grad():
                out[key + "/logits"] = lm.model(probe_ids()).float()
            # unseeded sampling: the ranks must still draw the same seed
            out[key + "/sampled"] = lm.generate(PROMPTS, config("none").replace(temperature=1.0, seed=None)).sequences
            for cache in CACHES:
                try:
                    out[f"{key}/{cache}"] = lm.generate(PROMPTS, config(cache)).sequences
                except Exception as exc:  # noqa: BLE001 - compared (and reported) in the parent
                    out[f"{key}/{cache}"] = f"{type(exc).__name__}: {exc}"
            # the fast path's joined projections: never over DTensor weights or the plan's hooked layers
            out[key + "/joined"] = join_projections(lm.model)
            with torch.no_grad():
                out[key + "/logits_joined"] = lm.model(probe_ids()).float()
    return out


@pytest.fixture(scope="module")
def tp_results(peaky_paths):
    return run_group(run_rank, 2, dict(peaky_paths), timeout=300)


@pytest.fixture(scope="module")
def reference(peaky_paths):
    return one_process(peaky_paths, probe_ids(), PROMPTS, {c: config(c) for c in CACHES},
                       {"kv_heads": lambda lm: lm.model.kv_heads})


@pytest.mark.slow
@pytest.mark.parametrize("mt", ["llada", "Dream"])
@pytest.mark.parametrize("mode", ["local", "dtensor"])
def test_logits_match_one_process(tp_results, reference, mt, mode):
    ref = reference[mt + "/logits"]
    finite = torch.isfinite(ref)
    for rank in tp_results:
        got = torch.from_numpy(rank[f"{mt}/{mode}/logits"])
        assert torch.equal(torch.isfinite(got), finite)
        torch.testing.assert_close(got[finite], ref[finite], rtol=1e-5, atol=1e-4)
    # the all-reduce hands every rank the same sums, so the ranks agree bitwise
    torch.testing.assert_close(tp_results[0][f"{mt}/{mode}/logits"], tp_results[1][f"{mt}/{mode}/logits"],
                               rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("mt", ["llada", "Dream"])
@pytest.mark.parametrize("mode", ["local", "dtensor"])
@pytest.mark.parametrize("cache", CACHES)
def test_tokens_match_one_process(tp_results, reference, mt, mode, cache, request):
    if cache == "dual" and mt == "llada" and engine_sizes_kv_from_config():
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "the engine of this revision sizes its key/value storage from cfg.num_kv_heads instead of the local "
            "model.kv_heads (Dream's 2 -> 1 heads happen to broadcast); passes once it reads model.kv_heads")))
    for rank in tp_results:
        got = rank[f"{mt}/{mode}/{cache}"]
        assert not isinstance(got, str), got
        assert torch.equal(torch.from_numpy(got), reference[f"{mt}/{cache}"])


@pytest.mark.slow
@pytest.mark.parametrize("key", ["llada/local", "llada/dtensor", "Dream/local", "Dream/dtensor"])
def test_joined_projections_leave_tensor_parallel_layers_alone(tp_results, key):
    """Joining the local shards of plain layers is exact (on the CPU the parts' products run); DTensor layers,
    whose plan hooks the modules, are not joined."""
    for rank in tp_results:
        if key.endswith("dtensor"):
            assert rank[key + "/joined"] == 0
        assert torch.equal(torch.as_tensor(rank[key + "/logits_joined"]), torch.as_tensor(rank[key + "/logits"]))


@pytest.mark.slow
@pytest.mark.parametrize("key", ["llada/local", "llada/dtensor", "Dream/local"])
def test_ranks_agree_on_unseeded_sampling(tp_results, key):
    assert (tp_results[0][key + "/sampled"] == tp_results[1][key + "/sampled"]).all()


@pytest.mark.slow
@pytest.mark.parametrize("mt", ["llada", "Dream"])
def test_local_kv_heads(tp_results, reference, mt):
    for rank in tp_results:
        assert rank[f"{mt}/local/kv_heads"] * 2 == reference[mt + "/kv_heads"]


def test_needs_a_process_group(peaky_llada, monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node 2"):
        dlm.load(peaky_llada, device="cpu", tensor_parallel=2)


@pytest.mark.parametrize("bad", [0, -2, "2", 1.5])
def test_bad_sizes(peaky_llada, bad):
    with pytest.raises(ConfigError, match="tensor_parallel"):
        dlm.load(peaky_llada, device="cpu", tensor_parallel=bad)


def test_sizes_must_divide_heads(peaky_llada):
    from dlm.models.loading import build_model, read_config

    _, cfg, arch_cls = read_config(peaky_llada)
    model = build_model(arch_cls.parse_config(cfg), device="meta")
    with pytest.raises(ConfigError, match="does not divide the model's 4 attention heads"):
        TensorParallel(size=3, rank=0, device=torch.device("cpu"), mesh=None).check(model)


@pytest.mark.parametrize("model_type, match", [("llada2_moe", "it has a fused QKV projection, which only "
                                                              "mode='local' splits"),
                                               ("sdar_moe", "it has experts, which only mode='local' splits")])
def test_dtensor_mode_refuses_fused_qkv_and_experts(tmp_path, model_type, match):
    from dlm.models.loading import build_model, read_config
    from dlm.testing import write_tiny_checkpoint

    _, cfg, arch_cls = read_config(write_tiny_checkpoint(tmp_path, model_type, seed=1))
    model = build_model(arch_cls.parse_config(cfg), device="meta", model_class=arch_cls.model_class)
    TensorParallel(size=2, rank=0, device=torch.device("cpu"), mesh=None).check(model)  # local mode splits them
    with pytest.raises(ConfigError, match=match):
        TensorParallel(size=2, rank=0, device=torch.device("cpu"), mesh=None, mode="dtensor").check(model)



def test_not_with_a_device_map(peaky_llada):
    with pytest.raises(ConfigError, match="not both"):
        dlm.load(peaky_llada, device_map="auto", tensor_parallel=2)


def wrong_size_rank(rank: int, world: int, path) -> str:
    try:
        dlm.load(path, device="cpu", tensor_parallel=world + 2)
    except ConfigError as exc:
        return str(exc)
    return "no error"


@pytest.mark.slow
def test_group_size_must_match(peaky_llada):
    for message in run_group(wrong_size_rank, 2, peaky_llada, timeout=120):
        assert "tensor_parallel=4 but the process group has 2 processes" in message
