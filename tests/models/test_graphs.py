"""The CUDA-graph runner's buffer logic, on CPU: a stand-in "graph" that recomputes the captured closure into the
same output buffer must give exactly the eager results (so every input really flows through the static
buffers), for every cache policy and both attention backends, with guidance and ragged rows. The real capture
runs in the GPU tests and benchmarks."""

from __future__ import annotations

import weakref

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.engine.graphs import StepGraphs

from ..conftest import random_prompts


class CpuStepGraphs(StepGraphs):
    """Like a CUDA graph, the stand-in holds no reference to the captured closure (a real graph reads the index
    tensors the closure holds by address): a runner that let it go fails here instead of reading freed memory."""

    def _make_graph(self, run):
        out = run()
        closure = weakref.ref(run)

        def replay():
            f = closure()
            assert f is not None, "the captured closure (and the index tensors it holds) was freed"
            out.copy_(f())

        return replay, out


@pytest.mark.parametrize("attention", ["loop", "padded"])
@pytest.mark.parametrize("cache", dlm.cache.names())
def test_replayed_steps_equal_eager(tiny, cache, attention):
    prompts = random_prompts(tiny, 3, seed=13, min_len=1, max_len=12)
    cfg = GenerationConfig(gen_length=24, block_length=8, steps=12, cache=cache, stop_at_eos=False, cfg_scale=0.5)

    def run(graphs):
        engine = dlm.Engine(tiny, max_rows=6, attention=attention, graphs=graphs)
        reqs = [engine.submit(p, cfg) for p in prompts]
        engine.run()
        return torch.cat([r.output.sequences for r in reqs])

    graphs = CpuStepGraphs()
    assert torch.equal(run(graphs), run(None))
    if cache in ("none", "dual", "prefix"):
        assert graphs.replays > 0, "repeated step layouts were not replayed"
