"""Piecewise CUDA graphs' buffer logic, on CPU: a stand-in "graph" that recomputes its piece into the tensors it
returned at capture (NaN until then, and a capture changes nothing) must give exactly the eager answers, so every
value really flows through the static buffers and the pieces' states, for every cache policy, both attention
backends, staggered arrivals, guidance, padding and the block-diffusion families. The real capture runs in the GPU
tests and benchmarks."""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.api.lm import set_fast_path
from dlm.engine.graphs import StepGraphs
from dlm.engine.pieces import PieceGraphs, pieces_of
from dlm.testing import write_tiny_checkpoint

from ..conftest import random_prompts


class CpuPieceGraphs(PieceGraphs):
    """Like a CUDA graph, a recorded piece runs nothing at capture, returns outputs that hold garbage (NaN) until
    its first replay, and holds no reference to its piece (a graph reads what the piece's closure holds by
    address): a runner that let the pieces go fails here instead of reading freed memory."""

    def _record(self, piece, state):
        assert not torch.is_grad_enabled(), "a capture under autograd keeps every intermediate alive"
        buffers = [getattr(self.bufs, f.name) for f in dataclasses.fields(self.bufs)]
        saved = [b.clone() for b in buffers]
        out = piece(*state)  # (for the outputs' shapes; the buffers it wrote are put back)
        for b, s in zip(buffers, saved):
            b.copy_(s)
        out = tuple(torch.full_like(t, float("nan")) for t in out)
        ref = weakref.ref(piece)

        def replay():
            f = ref()
            assert f is not None, "a captured piece (and what it reads) was freed"
            for o, r in zip(out, f(*state)):
                o.copy_(r)

        return replay, out

    # a CUDA graph reads the weights at the addresses of its capture: so does this stand-in, which fails a replay
    # over weights that were replaced since
    def _capture(self, model, n, attention, T):
        self.captured_over = {**getattr(self, "captured_over", {}), n: _weight_addresses(model)}
        return super()._capture(model, n, attention, T)

    def _forward(self, model, kv_pool, backend, rows, ids, positions, logits_index):
        n = self.bucket(ids.shape[1])
        assert n not in self.buckets or self.captured_over[n] == _weight_addresses(model), \
            "a piece replayed over replaced weights"
        return super()._forward(model, kv_pool, backend, rows, ids, positions, logits_index)


def _weight_addresses(model) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in model.parameters())


def _staggered(lm, cfgs, graphs, attention="padded", max_rows=4, seed=3, capture=False):
    """Requests arriving one per step into ``max_rows`` rows (``capture``: the graphs captured first); their
    answers."""
    prompts = random_prompts(lm, len(cfgs), seed=seed, min_len=1, max_len=14)
    engine = dlm.Engine(lm, max_rows=max_rows, attention=attention, graphs=graphs)
    if capture:
        assert engine.capture_graphs() > 0
    todo, reqs = list(zip(prompts, cfgs)), []
    while todo or engine.pending:
        if todo:
            reqs.append(engine.submit(*todo.pop(0)))
        engine.step()
    return [r.output.sequences for r in reqs]


def _pieces_only(granule=8, **kw) -> tuple[StepGraphs, PieceGraphs]:
    """A runner that captures no step whole: every step it runs goes through the pieces once its size has come."""
    pieces = CpuPieceGraphs(granule=granule, **kw)
    return StepGraphs(max_graphs=0, pieces=pieces), pieces


def _configs(cache, n=6):
    return [GenerationConfig(gen_length=16, block_length=8, steps=s, cache=cache, stop_at_eos=False,
                             cfg_scale=0.5 if i % 3 == 0 else 0.0) for i, s in enumerate([16, 8] * (n // 2))]


@pytest.mark.parametrize("attention", ["loop", "padded"])
@pytest.mark.parametrize("cache", dlm.cache.names())
def test_piecewise_steps_equal_eager(tiny, cache, attention):
    cfgs = _configs(cache)
    graphs, pieces = _pieces_only()
    got = _staggered(tiny, cfgs, graphs, attention)
    want = _staggered(tiny, cfgs, None, attention)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert pieces.captures > 0 and pieces.replays > 0


@pytest.mark.parametrize("granule", [1, 5, 64])
def test_padding_changes_nothing(tiny, granule):
    """Buckets of one position (no padding), of five (ragged padding) and of 64 (mostly padding) give the eager
    answers; the padded positions hold what earlier steps left (here: made large on purpose)."""
    cfgs = _configs("dual")
    graphs, pieces = _pieces_only(granule=granule, min_uses=1)
    want = _staggered(tiny, cfgs, None)
    assert all(torch.equal(a, b) for a, b in zip(_staggered(tiny, cfgs, graphs), want))
    for buf in (pieces.bufs.attn, pieces.bufs.q, pieces.bufs.k, pieces.bufs.v, pieces.bufs.hidden):
        buf.fill_(1e4)
    assert all(torch.equal(a, b) for a, b in zip(_staggered(tiny, cfgs, graphs), want))
    assert pieces.captures > 0 and pieces.replays > 0


def test_given_pieces_follow_replaced_weights(llada_path):
    """Pieces handed to the runner (not the model's own) drop their buckets when the model's weights are
    replaced (model.to(...)): they capture again instead of replaying over the old addresses."""
    lm = dlm.load(llada_path, device="cpu")
    cfgs = _configs("dual")
    graphs, pieces = _pieces_only()
    want = _staggered(lm, cfgs, None)
    assert all(torch.equal(a, b) for a, b in zip(_staggered(lm, cfgs, graphs), want))
    captures = pieces.captures
    old = [p.data for p in lm.model.parameters()]  # kept alive: the new tensors get new addresses
    lm.model.double().float()
    assert all(torch.equal(a, b) for a, b in zip(_staggered(lm, cfgs, graphs), want))
    assert pieces.captures > captures and pieces.weights_version == lm.model.weights_version
    del old


@pytest.fixture(scope="module", params=["llada2_moe", "sdar"])
def block_lm(request, tmp_path_factory):
    path = write_tiny_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=7, std=1.0)
    return dlm.load(path, device="cpu")


def test_block_families_through_pieces(block_lm):
    """Block-causal attention (masks computed from the positions), qk-norm and mixtures of experts."""
    cfgs = [GenerationConfig(gen_length=16, block_length=4, steps=s, cache=c, stop_at_eos=False)
            for s, c in [(16, "dual"), (8, "prefix"), (16, "none"), (8, "dual")]]
    graphs, pieces = _pieces_only(granule=4)
    want = _staggered(block_lm, cfgs, None)
    assert all(torch.equal(a, b) for a, b in zip(_staggered(block_lm, cfgs, graphs), want))
    assert pieces.replays > 0


def test_whole_step_graphs_and_pieces_together(tiny):
    """Layouts that repeat are captured whole and replayed; the others go through the pieces."""
    from ..models.test_graphs import CpuStepGraphs

    pieces = CpuPieceGraphs(granule=8)
    graphs = CpuStepGraphs(pieces=pieces)
    cfgs = _configs("dual", n=8)
    want = _staggered(tiny, cfgs, None, max_rows=3)
    assert all(torch.equal(a, b) for a, b in zip(_staggered(tiny, cfgs, graphs, max_rows=3), want))
    assert graphs.replays > 0 and pieces.replays > 0


def test_graphs_captured_before_the_first_step(tiny):
    """Engine.capture_graphs captures every bucket up front (without a step: no attention, no storage touched);
    the steps then only replay, and the answers are the eager ones."""
    pieces = CpuPieceGraphs(granule=8, max_tokens=128)
    cfgs = _configs("dual")
    got = _staggered(tiny, cfgs, StepGraphs(max_graphs=0, pieces=pieces), capture=True)
    assert pieces.captures == 16 and sorted(pieces.buckets) == list(range(8, 129, 8))
    assert pieces.replays > 0
    assert all(torch.equal(a, b) for a, b in zip(got, _staggered(tiny, cfgs, None)))
    engine = dlm.Engine(tiny, max_rows=2, graphs=StepGraphs(pieces=pieces))
    assert engine.capture_graphs() == 0  # all there already
    assert dlm.Engine(tiny, max_rows=2).capture_graphs() == 0  # a CPU model: no CUDA graphs
    for bad in (0, -3, 2.5, True, "64"):
        with pytest.raises(dlm.errors.ConfigError, match="tokens must be a positive int"):
            engine.capture_graphs(bad)


def test_buckets_and_when_they_are_captured():
    pieces = PieceGraphs(granule=64, max_tokens=256, min_uses=2)
    assert [pieces.bucket(t) for t in (1, 63, 64, 65, 256)] == [64, 64, 64, 128, 256]
    assert [pieces.wants(t) for t in (10, 300, 0, 20, 70)] == [False, False, False, True, False]
    pieces.buckets[128] = object()  # a captured bucket is used from then on
    assert pieces.wants(100)
    with pytest.raises(ValueError, match="granule"):
        PieceGraphs(granule=0)
    with pytest.raises(ValueError, match="max_tokens"):
        PieceGraphs(granule=64, max_tokens=32)


def test_the_models_pieces_per_set_of_functions_dropped_when_its_weights_change(tiny):
    """The captured pieces read the weights and elementwise functions by address: each set of functions has its
    own (a forward that passes another set replaces nothing), and switching the fast path (which joins or splits
    the projections) gives the model new ones."""
    from dlm.models import elementwise as ew

    first = pieces_of(tiny.model)
    assert pieces_of(tiny.model) is first and first.ops is tiny.model.ops
    ops = tiny.model.ops
    try:
        tiny.model.ops = ew.Ops(ew.rms_norm, ew.rope, ew.swiglu, fused=True)
        other = pieces_of(tiny.model)
        assert other is not first and other.ops is tiny.model.ops
    finally:
        tiny.model.ops = ops
    assert pieces_of(tiny.model) is first
    set_fast_path(tiny, False, False)
    assert pieces_of(tiny.model) is not first


def test_models_with_hooks_run_without_pieces(tiny):
    """The pieces call the layers' halves directly: a model with forward hooks (e.g. a device map's) or a layer
    whose forward is its own gets none, and its steps run eagerly."""
    pieces = CpuPieceGraphs()
    handle = tiny.model.layers[0].register_forward_hook(lambda *a: None)
    try:
        assert pieces_of(tiny.model) is None
        assert StepGraphs(pieces=pieces).pieces_for(tiny.model) is None
    finally:
        handle.remove()
    assert StepGraphs(pieces=pieces).pieces_for(tiny.model) is pieces


class FailingPieceGraphs(CpuPieceGraphs):
    """Recording fails at the third piece, as it does on a GPU for a forward that reads values on the host."""

    def _record(self, piece, state):
        self.recorded = getattr(self, "recorded", 0) + 1
        if self.recorded == 3:
            raise RuntimeError("operation not permitted when stream is capturing")
        return super()._record(piece, state)


def test_a_failed_capture_leaves_the_model_eager(tiny):
    """The capturing step still returns its eager forward's result; a warning names the reason, nothing more is
    captured, and every later step runs eagerly; the answers are the eager ones."""
    cfgs = _configs("dual")
    pieces = FailingPieceGraphs(granule=8, min_uses=1)
    with pytest.warns(RuntimeWarning, match="piecewise CUDA graphs are off.*operation not permitted"):
        got = _staggered(tiny, cfgs, StepGraphs(max_graphs=0, pieces=pieces))
    assert all(torch.equal(a, b) for a, b in zip(got, _staggered(tiny, cfgs, None)))
    assert pieces.failed.startswith("RuntimeError") and not pieces.buckets and pieces.replays == 0
    assert not pieces.wants(8) and pieces.recorded == 3
    up_front = FailingPieceGraphs(granule=8, max_tokens=64)
    engine = dlm.Engine(tiny, max_rows=2, graphs=StepGraphs(pieces=up_front))
    with pytest.warns(RuntimeWarning, match="piecewise CUDA graphs are off"):
        assert engine.capture_graphs() == 0
    assert up_front.recorded == 3 and not up_front.buckets


def test_cpu_models_run_without_pieces(tiny):
    assert StepGraphs().pieces_for(tiny.model) is None
    pieces = CpuPieceGraphs()
    assert StepGraphs(pieces=pieces).pieces_for(tiny.model) is pieces
    assert StepGraphs(pieces=False).pieces_for(tiny.model) is None


def test_engines_in_two_threads_share_the_pieces_safely(tiny):
    """Two engines of one model stepping in two threads share its pieces (and their static buffers): a
    forward through them is one critical section, so neither reads the other's values."""
    import threading

    pieces = CpuPieceGraphs(granule=8, min_uses=1)
    cfgs = _configs("dual", n=8)
    want = [_staggered(tiny, cfgs, None, seed=s) for s in (3, 4)]
    got = [None, None]

    def run(i, seed):
        got[i] = _staggered(tiny, cfgs, StepGraphs(max_graphs=0, pieces=pieces), seed=seed)

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate((3, 4))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for g, w in zip(got, want):
        assert g is not None and all(torch.equal(a, b) for a, b in zip(g, w))
    assert pieces.replays > 0
