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
        first = run()
        out = torch.full_like(first, float("nan"))  # like a captured graph, the output is written by replays only
        closure = weakref.ref(run)

        def replay():
            f = closure()
            assert f is not None, "the captured closure (and the index tensors it holds) was freed"
            out.copy_(f())

        return replay, out, first


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


def _decode(lm, graphs, cache="prefix", n=3):
    prompts = random_prompts(lm, n, seed=5, min_len=2, max_len=10)
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache=cache, stop_at_eos=False)
    engine = dlm.Engine(lm, max_rows=n, graphs=graphs)
    reqs = [engine.submit(p, cfg) for p in prompts]
    engine.run()
    return torch.cat([r.output.sequences for r in reqs])


def test_least_recently_used_graphs_are_dropped(tiny):
    """The prefix cache's layout changes at every block: with room for one graph, each block's layout replaces
    the last one, and the answers stay the eager ones."""
    graphs = CpuStepGraphs(max_graphs=1)
    assert torch.equal(_decode(tiny, graphs), _decode(tiny, None))
    assert graphs.captures >= 4 and len(graphs.entries) == 1 and graphs.replays > 0


def test_large_layouts_are_not_captured(tiny):
    graphs = CpuStepGraphs(max_tokens=0)
    assert torch.equal(_decode(tiny, graphs, cache="dual"), _decode(tiny, None, cache="dual"))
    assert graphs.captures == 0 and graphs.replays == 0 and not graphs.entries


def test_the_capturing_step_costs_one_forward(tiny, monkeypatch):
    """The step that captures a layout returns its warm-up forward's logits: it runs the model once, like an
    eager step (the stand-in's replays run it once each, a real graph's none)."""
    class Counting(CpuStepGraphs):
        steps = 0

        def forward(self, *args):
            self.steps += 1
            return super().forward(*args)

    graphs, calls = Counting(), []
    forward = type(tiny.model).forward
    monkeypatch.setattr(type(tiny.model), "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    _decode(tiny, graphs, cache="dual", n=1)
    assert graphs.captures >= 1 and graphs.replays >= 1
    assert len(calls) == graphs.steps


def _captures(keys, replayed=True, **kw):
    """Which steps of a sequence of layouts capture (the decisions alone, no forward); a captured layout that
    comes again counts as a replay when ``replayed``."""
    graphs, out, captured = StepGraphs(**kw), [], set()
    for key in keys:
        if key in captured and replayed:
            graphs._count(replay=True)
            out.append(False)
            continue
        capture = graphs._should_capture(key, 10)
        if capture:
            captured.add(key)
            graphs._count(replay=False)
        out.append(capture)
    return out


def test_when_a_layout_is_captured():
    assert _captures("AAB") == [False, True, False]  # at its second occurrence
    assert _captures("ABAB") == [False, False, True, True]
    assert _captures("ABCDEFGH") == [False] * 8  # every layout new (a staggered batch): nothing captured
    assert _captures("AAAA", max_tokens=5) == [False] * 4  # too large to gain from a graph
    # captures that are never replayed: after four, a layout needs backoff_uses occurrences
    assert _captures("AABBCCDDEEEE", replayed=False, backoff_uses=4) == [False, True] * 4 + [False] * 3 + [True]
    graphs = StepGraphs()
    graphs.recent = [10, 20]
    assert graphs.uses_needed() == 2
    graphs.recent = [10, 19]
    assert graphs.uses_needed() == 8


def test_large_layouts_are_captured_only_when_they_repeat_step_after_step():
    """Above repeat_tokens positions a layout is captured at a consecutive repeat (a batch in lockstep), never when
    it comes back after other layouts (a staggered batch's cycle of refreshing rows); small layouts as before."""
    def decisions(keys, tokens):
        graphs, out, last = StepGraphs(repeat_tokens=100), [], None
        for key in keys:
            out.append(graphs._should_capture(key, tokens, key == last))
            last = key
        return out

    assert decisions("ABABABAB", 101) == [False] * 8
    assert decisions("ABAABB", 101) == [False, False, False, True, False, True]
    assert decisions("ABAB", 100) == [False, False, True, True]  # at the limit: the count alone decides


def test_the_runner_tracks_the_previous_layout(tiny):
    """The runner tells the policy whether a step repeats the previous step's layout: a lockstep decode captures
    its in-block layout with repeat_tokens at 0 (every layout counts as large), and each decision saw the truth."""
    class Recording(CpuStepGraphs):
        def forward(self, model, kv_pool, backend, rows, ids, positions, logits_index):
            self.keys.append((rows.signature(), logits_index.shape[1], model.ops))
            return super().forward(model, kv_pool, backend, rows, ids, positions, logits_index)

        def _should_capture(self, key, tokens, repeated=True):
            self.asked.append((len(self.keys) - 1, repeated))
            return super()._should_capture(key, tokens, repeated)

    graphs = Recording(repeat_tokens=0)
    graphs.keys, graphs.asked = [], []
    assert torch.equal(_decode(tiny, graphs, cache="dual"), _decode(tiny, None, cache="dual"))
    assert graphs.captures >= 1 and graphs.replays > 0
    keys = graphs.keys
    assert graphs.asked and all(rep == (i > 0 and keys[i] == keys[i - 1]) for i, rep in graphs.asked)
    assert any(not rep for _, rep in graphs.asked) and any(rep for _, rep in graphs.asked)


@pytest.mark.parametrize("with_small", [False, True])
def test_small_eager_steps_run_the_eager_elementwise_functions(tiny, monkeypatch, with_small):
    """Fused ops are used by eager forwards from FUSED_MIN_POSITIONS fed positions on (and inside graphs);
    smaller eager steps run the fused ops' ``small`` set (the eager functions when it has none), and the model
    keeps its fused ops afterwards."""
    from dlm.models import elementwise as ew

    calls = {"fused": 0, "small": 0}

    def counting(fn, kind):
        def wrapped(*a, **k):
            calls[kind] += 1
            return fn(*a, **k)
        return wrapped

    small_ops = ew.Ops(*(counting(f, "small") for f in (ew.rms_norm, ew.rope, ew.swiglu))) if with_small else None
    fake = ew.Ops(*(counting(f, "fused") for f in (ew.rms_norm, ew.rope, ew.swiglu)), fused=True, small=small_ops)
    monkeypatch.setattr(tiny.model, "ops", fake)
    prompts = random_prompts(tiny, 2, seed=3, min_len=2, max_len=8)
    cfg = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", stop_at_eos=False)
    monkeypatch.setattr(ew, "FUSED_MIN_POSITIONS", 10**9)
    small = tiny.generate(prompts, cfg).sequences
    assert calls["fused"] == 0 and (calls["small"] > 0) == with_small and tiny.model.ops is fake
    monkeypatch.setattr(ew, "FUSED_MIN_POSITIONS", 0)
    calls["small"] = 0
    assert torch.equal(tiny.generate(prompts, cfg).sequences, small)  # same functions, other wrappers
    assert calls["fused"] > 0 and calls["small"] == 0 and tiny.model.ops is fake


def test_fused_ops_small_set_is_eager_with_the_rope_kernel():
    """The fused ops' set for small eager forwards: the eager RMSNorm and SwiGLU, and RoPE that equals the eager
    function (the Triton kernel where it applies: bf16 on a GPU; here on a CPU the eager function itself)."""
    from dlm.models import elementwise as ew

    small = ew.fused_ops(("test small set",)).small
    assert small.rms_norm is ew.rms_norm and small.swiglu is ew.swiglu and not small.fused
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 4, 6, 8, generator=g), torch.randn(1, 2, 6, 8, generator=g)
    cos, sin = torch.randn(1, 1, 6, 8, generator=g), torch.randn(1, 1, 6, 8, generator=g)
    for full in (True, False):
        for a, b in zip(small.rope(q, k, cos, sin, full), ew.rope(q, k, cos, sin, full)):
            assert torch.equal(a, b)


def test_other_elementwise_functions_capture_their_own_graphs(tiny, monkeypatch):
    from dlm.models import elementwise as ew

    graphs = CpuStepGraphs()
    cfg = GenerationConfig(gen_length=16, block_length=8, steps=8, cache="dual", stop_at_eos=False)
    prompts = random_prompts(tiny, 2, seed=9, min_len=2, max_len=8)

    def run():
        engine = dlm.Engine(tiny, max_rows=2, graphs=graphs)
        reqs = [engine.submit(p, cfg) for p in prompts]
        engine.run()
        return torch.cat([r.output.sequences for r in reqs])

    first = run()
    captured = graphs.captures
    assert captured > 0
    monkeypatch.setattr(tiny.model, "ops", ew.Ops(ew.rms_norm, ew.rope, ew.swiglu, fused=True))
    assert torch.equal(run(), first)
    assert graphs.captures > captured  # not the replays of graphs captured with the other functions


def test_window_steps_repeat_their_shapes(tiny):
    """The ``window`` cache feeds a data-dependent number of positions with a data-dependent number of logits;
    padded when the engine has graphs (the fed positions by the policy, the logits by the engine), its in-block
    steps repeat their layout and are replayed at batch 1, with the eager answer."""
    prompt = random_prompts(tiny, 1, seed=3, min_len=8, max_len=8)
    cfg = GenerationConfig(gen_length=64, block_length=32, steps=64, cache="window", stop_at_eos=False)

    def run(graphs):
        engine = dlm.Engine(tiny, max_rows=1, graphs=graphs)
        req = engine.submit(prompt[0], cfg)
        engine.run()
        return req.output.sequences

    graphs = CpuStepGraphs()
    assert torch.equal(run(graphs), run(None))
    assert graphs.replays >= 20 and graphs.replays > 2 * graphs.captures


def test_graphs_are_not_replayed_over_replaced_weights(tiny):
    """Graphs read the weights by address: joining, splitting or quantizing the projections replaces weight
    tensors and bumps the model's weights_version, so layouts captured before are captured again (never
    replayed over freed memory), and the model's piecewise graphs are new ones."""
    from dlm.engine.pieces import pieces_of
    from dlm.models.joined import join_projections, split_projections

    graphs = CpuStepGraphs()
    before = _decode(tiny, graphs, cache="dual")
    version, pieces = tiny.model.weights_version, pieces_of(tiny.model)
    old_keys = set(graphs.entries)
    assert old_keys and all(k[3] == version for k in old_keys)
    try:
        assert join_projections(tiny.model) > 0 and tiny.model.weights_version == version + 1
        assert pieces_of(tiny.model) is not pieces
        captures = graphs.captures
        assert torch.equal(_decode(tiny, graphs, cache="dual"), before)
        assert graphs.captures > captures and all(k[3] == version + 1 for k in graphs.entries)  # the old dropped
    finally:
        assert split_projections(tiny.model) > 0
    assert tiny.model.weights_version == version + 2


def test_converting_or_assigning_weights_bumps_the_weights_version(llada_path):
    """model.to(...) and load_state_dict(assign=True) give the weights new tensors: layouts captured before are
    captured again, and the answers stay the eager ones; a copy into the existing tensors keeps the version."""
    lm = dlm.load(llada_path, device="cpu")
    graphs = CpuStepGraphs()
    before = _decode(lm, graphs, cache="dual")
    version = lm.model.weights_version
    lm.model.double()
    lm.model.float()  # (float64 and back: the same values in new tensors)
    assert lm.model.weights_version == version + 2
    captures = graphs.captures
    assert torch.equal(_decode(lm, graphs, cache="dual"), before) and graphs.captures > captures
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    lm.model.load_state_dict(state)  # copied in place: same addresses
    assert lm.model.weights_version == version + 2
    lm.model.load_state_dict(state, assign=True)
    assert lm.model.weights_version == version + 3
    captures = graphs.captures
    assert torch.equal(_decode(lm, graphs, cache="dual"), before) and graphs.captures > captures


def test_failed_or_nested_weight_replacements_bump_the_version(llada_path):
    """A load that fails part-way has replaced tensors already, and a module holding the model loads into it
    through the model's _load_from_state_dict: both count."""
    lm = dlm.load(llada_path, device="cpu")
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    bad = dict(state)
    bad["norm.weight"] = torch.zeros(3)  # a shape that does not fit
    version = lm.model.weights_version
    with pytest.raises(RuntimeError, match="size mismatch"):
        lm.model.load_state_dict(bad, strict=False, assign=True)
    assert lm.model.weights_version == version + 1
    holder = torch.nn.ModuleDict({"lm": lm.model})
    holder.load_state_dict({f"lm.{k}": v for k, v in state.items()}, assign=True)
    assert lm.model.weights_version == version + 2


def test_an_engine_refuses_a_converted_model(llada_path):
    """Its key/value storage has the model's dtype of when it was built: a clear error, not one from deep inside
    torch; generate builds a new engine for the converted model."""
    lm = dlm.load(llada_path, device="cpu")
    cfg = GenerationConfig(gen_length=8, block_length=8)
    engine = dlm.Engine(lm, max_rows=2)
    lm.generate([[5, 6]], cfg)
    lm.model.double()
    engine.submit([5, 6], cfg)
    with pytest.raises(dlm.errors.ConfigError, match=r"now torch.float64 on cpu, but this engine was built for "
                                                      r"torch.float32 on cpu .* build a new dlm.Engine"):
        engine.step()
    assert lm.generate([[5, 6]], cfg).sequences.shape == (1, 8)


def test_quantizing_bumps_the_weights_version(llada_path):
    from dlm.models.fp8 import quantize_model

    lm = dlm.load(llada_path, device="cpu")
    version = lm.model.weights_version
    assert quantize_model(lm.model) > 0 and lm.model.weights_version > version
