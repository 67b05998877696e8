"""Piecewise CUDA graphs on a GPU (skipped without CUDA): real captures into one shared pool, buckets captured
at different steps and replayed in any order, answers equal to the eager engine's bit for bit where the pieces
run on the eager step's own shapes (buckets of one position), and within rounding with padding."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.engine.graphs import StepGraphs
from dlm.engine.pieces import PieceGraphs, pieces_of
from dlm.models.ragged import RaggedAttention, RaggedRows

from ..engine.test_pieces import _configs, _staggered

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["llada", "Dream"])
def gpu_path(request, llada_path, dream_path):
    return llada_path if request.param == "llada" else dream_path


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "window"])
def test_pieces_equal_eager_bit_for_bit(gpu_path, cache):
    """Buckets of one position: every step's pieces run the shapes its eager forward runs. Many buckets are
    captured at different steps into one pool and replayed interleaved; any memory the pool handed to two of them
    wrongly would change answers."""
    lm = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    cfgs = _configs(cache, n=8)
    pieces = PieceGraphs(granule=1, min_uses=1)
    got = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=pieces), max_rows=4)
    want = _staggered(lm, cfgs, None, max_rows=4)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert pieces.captures >= 4 and pieces.replays > 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_padded_pieces_agree_with_eager(gpu_path, dtype):
    """The default buckets (multiples of 64 positions) with the fast path's fused kernels: logits of one forward
    within rounding of the eager forward's; in float32 the answers agree (in bf16 the random tiny model's
    near-ties flip with any change of rounding, as between the fused and the eager functions: not compared)."""
    lm = dlm.load(gpu_path, device="cuda", dtype=dtype)
    g = torch.Generator().manual_seed(0)
    T = 37
    ids = torch.randint(0, lm.model.cfg.vocab_size, (1, T), generator=g).cuda()
    positions = torch.arange(T, device="cuda").unsqueeze(0)
    index = torch.arange(T, device="cuda").unsqueeze(0)
    rows = RaggedRows([0], [T], [T], [-1], [True], [False], [None], positions[0], [0])  # no storage
    pieces = PieceGraphs(min_uses=1)
    with torch.no_grad():
        want = lm.model(ids, positions, attention=RaggedAttention(rows, None), logits_index=index)[0].float()
        for _ in range(2):  # the capture's eager forward, then a replay
            got = pieces.forward(lm.model, None, "loop", rows, ids, positions, index).float()
            tol = 1e-4 if dtype == "float32" else 5e-2
            torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
    assert pieces.captures == 1 and pieces.replays == 1
    if dtype != "float32":
        return
    cfgs = _configs("dual", n=8)
    fast = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=PieceGraphs(min_uses=1)))
    eager = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=False))
    agree = torch.cat([(a == b).flatten() for a, b in zip(fast, eager)]).float().mean()
    assert agree > 0.9, agree


def test_default_engine_uses_pieces_for_staggered_steps(gpu_path):
    """dlm.load's fast path on one GPU: a staggered batch's steps that are not captured whole go through the
    model's shared pieces; answers agree with the reference path (float32: in bf16 the random tiny model's
    near-ties flip with any change of rounding)."""
    lm = dlm.load(gpu_path, device="cuda", dtype="float32")
    ref = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    cfgs = [GenerationConfig(gen_length=32, block_length=8, steps=16, cache="dual", stop_at_eos=False)] * 12
    fast = _staggered(lm, cfgs, None, max_rows=6)
    assert pieces_of(lm.model).replays > 0
    eager = _staggered(ref, cfgs, None, max_rows=6)
    agree = torch.cat([(a == b).flatten() for a, b in zip(fast, eager)]).float().mean()
    assert agree > 0.9, agree


def test_graphs_captured_up_front_equal_graphs_captured_in_steps(gpu_path):
    """Engine.capture_graphs records every bucket before any step, its warm-up forwards without attention; the
    steps then replay graphs that compute what graphs captured during steps compute, bit for bit (same buckets,
    same shapes)."""
    lm = dlm.load(gpu_path, device="cuda", dtype="bfloat16")
    cfgs = _configs("dual", n=8)
    ahead = PieceGraphs(granule=8, max_tokens=256)
    got = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=ahead), capture=True)
    assert ahead.captures == 32 and ahead.replays > 0
    lazy = PieceGraphs(granule=8, max_tokens=256, min_uses=1)
    want = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=lazy))
    assert lazy.captures < 32
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_model_on_another_gpu_than_the_current_one(llada_path):
    """A model on cuda:1 while the thread's current device is cuda:0 (a data-parallel server's replicas): its
    graphs are captured on its own device (whole steps, pieces, and pieces captured up front)."""
    assert torch.cuda.current_device() == 0
    lm = dlm.load(llada_path, device="cuda:1", dtype="float32", fast=False)
    cfgs = _configs("dual", n=8)
    pieces = PieceGraphs(granule=1, max_tokens=128)
    got = _staggered(lm, cfgs, StepGraphs(pieces=pieces), max_rows=4, capture=True)
    want = _staggered(lm, cfgs, None, max_rows=4)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert pieces.replays > 0 and torch.cuda.current_device() == 0


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_mixture_of_experts_through_pieces(tmp_path, dtype):
    """LLaDA2's experts: in bf16 the grouped product has no host synchronisation and is captured (buckets of
    one position: the eager answers bit for bit); in float32 the experts take the sorted path, which reads
    their token counts on the host: the capture fails, a warning says so, and the steps run eagerly."""
    from dlm.testing import write_tiny_checkpoint

    lm = dlm.load(write_tiny_checkpoint(tmp_path, "llada2_moe", seed=7, std=1.0), device="cuda", dtype=dtype,
                  fast=False)
    cfgs = [GenerationConfig(gen_length=16, block_length=4, steps=s, cache="dual", stop_at_eos=False)
            for s in (16, 8, 16, 8, 4, 16)]
    pieces = PieceGraphs(granule=1, min_uses=1)
    if dtype == "bfloat16":
        got = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=pieces))
        assert pieces.failed is None and pieces.replays > 0
    else:
        with pytest.warns(RuntimeWarning, match="piecewise CUDA graphs are off"):
            got = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=pieces))
        assert pieces.failed is not None and not pieces.buckets
    want = _staggered(lm, cfgs, StepGraphs(max_graphs=0, pieces=False))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
