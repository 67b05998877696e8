"""The CUDA-graph runner's buffer logic, on CPU: a stand-in "graph" that recomputes the captured closure into
the same output buffer must give exactly the eager results (so every input really flows through the static
buffers), for every cache policy, with CFG and padding. The real capture runs in the GPU tests/benchmarks."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.models.graphs import GraphRunner

from ..conftest import random_prompts


class CpuGraphRunner(GraphRunner):
    def _make_graph(self, run):
        out = run()

        def replay():
            out.copy_(run())

        return replay, out


@pytest.mark.parametrize("cache", dlm.cache.names())
def test_replayed_steps_equal_eager(tiny, cache, monkeypatch):
    prompts = random_prompts(tiny, 3, seed=13, min_len=1, max_len=12)
    cfg = GenerationConfig(gen_length=24, block_length=8, steps=12, cache=cache, stop_at_eos=False, cfg_scale=0.5)
    eager = tiny.generate(prompts, cfg)
    runners = []

    def factory():
        runners.append(CpuGraphRunner())
        return runners[-1]

    monkeypatch.setattr(tiny, "graph_runner_factory", factory, raising=False)
    graphed = tiny.generate(prompts, cfg)
    monkeypatch.setattr(tiny, "graph_runner_factory", None)
    assert torch.equal(graphed.sequences, eager.sequences)
    if cache in ("none", "dual", "prefix"):
        assert runners[0].replays > 0, "repeated step shapes were not replayed"
