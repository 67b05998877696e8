"""Device maps: accelerate's inference splits by whole layers, weights stream to their devices, and a map
generates exactly what the unmapped model does (all-CPU maps here; GPU maps in benchmarks/multi_gpu.py)."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm.errors import ConfigError
from dlm.models.loading import build_model
from dlm.parallel.load import ParallelLoad
from dlm.parallel.placement import DevicePlacement, infer_device_map
from dlm.testing import tiny_arch

from ..conftest import random_prompts

CFG = dlm.GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", stop_at_eos=False)


def meta_model(layers: int = 6):
    return build_model(tiny_arch("llada", layers=layers), device="meta")


def layer_bytes(model) -> int:
    return sum(p.numel() * 4 for p in model.layers[0].parameters())


@pytest.mark.parametrize("device_map", ["auto", "sequential", {"": "cpu"},
                                        {"embed": "cpu", "layers": "cpu", "norm": "cpu", "head": "cpu"}])
def test_cpu_map_generates_like_no_map(peaky_llada, device_map):
    ref_lm = dlm.load(peaky_llada, device="cpu")
    lm = dlm.load(peaky_llada, device_map=device_map, max_memory={"cpu": "1GiB"} if device_map == "auto" else None)
    assert all(p.device.type == "cpu" for p in lm.model.parameters())
    assert set(lm.model.device_map) == {"embed", "norm", "head"} | {f"layers.{i}" for i in range(lm.arch.num_layers)}
    prompts = random_prompts(ref_lm, 3, seed=4)
    assert torch.equal(lm.generate(prompts, CFG).sequences, ref_lm.generate(prompts, CFG).sequences)
    with torch.no_grad():
        ids = torch.tensor(prompts[0]).unsqueeze(0)
        torch.testing.assert_close(lm.model(ids), ref_lm.model(ids), rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ["llada2_moe", "sdar_moe", "llada_moe"])
def test_block_and_moe_families(tmp_path, model_type):
    """Fused QKV, QK-norm and stacked experts (each expert's tensor streamed into its row) load under a map."""
    from dlm.testing import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path, model_type, seed=1)
    ref_lm, lm = dlm.load(path, device="cpu"), dlm.load(path, device_map="auto", max_memory={"cpu": "1GiB"})
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), ref_lm.model(ids), rtol=0, atol=0)
    cfg = dlm.GenerationConfig(gen_length=32)
    assert torch.equal(lm.generate([[1, 2, 3]], cfg).sequences, ref_lm.generate([[1, 2, 3]], cfg).sequences)


@pytest.mark.parametrize("strategy", ["auto", "balanced", "sequential"])
def test_inference_splits_whole_layers(strategy):
    model = meta_model(layers=6)
    per_gpu = 4 * layer_bytes(model)
    raw = infer_device_map(model, strategy, {0: per_gpu, 1: per_gpu}, torch.float32)
    layer_keys = [k for k in raw if k.startswith("layers")]
    assert sorted(layer_keys, key=lambda k: int(k.split(".")[1])) == [f"layers.{i}" for i in range(6)]
    assert raw["embed"] == raw["norm"] == raw["head"] == 0
    devs = [raw[f"layers.{i}"] for i in range(6)]
    assert set(devs) == {0, 1} and devs == sorted(devs)  # in order, on both GPUs


def test_too_small_a_budget_is_an_error():
    model = meta_model()
    small = layer_bytes(model)
    with pytest.raises(ConfigError, match="does not fit max_memory"):
        infer_device_map(model, "sequential", {0: small, 1: small}, torch.float32)


@pytest.fixture
def two_gpus(monkeypatch):
    """Device numbering of a 2-GPU machine (nothing here touches a GPU: only maps are checked)."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_two_gpu_map(two_gpus):
    model = meta_model(layers=4)
    dm = {"embed": 0, "norm": 0, "head": 0, "layers.0": 0, "layers.1": 0, "layers.2": "cuda:1", "layers.3": 1}
    placement = DevicePlacement.create(model, dm, None, torch.bfloat16)
    cuda = [torch.device("cuda", i) for i in (0, 1)]
    assert placement.main == cuda[0]
    assert placement.layers == [cuda[0], cuda[0], cuda[1], cuda[1]]
    assert placement.devices["layers.3.down.weight"] == cuda[1]
    assert placement.module_map["layers.2"] == cuda[1]


@pytest.mark.parametrize("dm, match", [
    ({"": 0, "layers.1.q": 1}, "splits layer 1"),
    ({"": 0, "head": 1}, "head on another device than embed"),
    ({"embed": 0, "norm": 0, "head": 0}, "does not place"),
    ({"": 2}, "2 CUDA device"),
    ({"": "disk"}, "'disk' is not supported"),
    ({"": "tpu"}, "not a device"),
    ({"": True}, "not a device"),
    (["cpu"], "must be one of"),
    ("bogus", "unknown device_map 'bogus'"),
])
def test_bad_maps(two_gpus, dm, match):
    with pytest.raises(ConfigError, match=match):
        DevicePlacement.create(meta_model(layers=2), dm, None, torch.float32)


def test_graphs_need_one_device(two_gpus):
    par = ParallelLoad.create(device=None, device_map={"": 0, "layers.1": 1}, max_memory=None,
                              tensor_parallel=None, cuda_graphs=True)
    with pytest.raises(ConfigError, match="cuda_graphs=True cannot capture"):
        par.prepare(meta_model(layers=2), torch.bfloat16)


def test_argument_errors(peaky_llada):
    with pytest.raises(ConfigError, match="either device='cpu' or device_map"):
        dlm.load(peaky_llada, device="cpu", device_map="auto")
    with pytest.raises(ConfigError, match="max_memory is the per-device budget"):
        dlm.load(peaky_llada, max_memory={"cpu": "1GiB"})
    with pytest.raises(ConfigError, match="max_memory key"):
        dlm.load(peaky_llada, device_map="auto", max_memory={"tpu": "1GiB"})
    with pytest.raises(ConfigError, match="is not a size"):
        dlm.load(peaky_llada, device_map="auto", max_memory={"cpu": "lots"})


def test_streams_each_weight_to_its_device(peaky_llada, monkeypatch):
    """The loader hands every tensor to the map's ``place``, which sends it to its own device."""
    seen = {}
    original = DevicePlacement.place

    def spy(self, name, tensor, dtype):
        seen[name] = self.devices[name]
        return original(self, name, tensor, dtype)

    monkeypatch.setattr(DevicePlacement, "place", spy)
    lm = dlm.load(peaky_llada, device_map={"": "cpu"})
    assert set(seen) == {n for n, _ in lm.model.named_parameters()}
