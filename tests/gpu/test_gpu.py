"""GPU checks (skipped without CUDA): device placement, dtypes, CUDA-graph replay equal to eager, exact caches."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig

from ..conftest import random_prompts

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", params=["llada", "Dream"])
def gpu_path(request, llada_path, dream_path):
    return llada_path if request.param == "llada" else dream_path


def test_generate_on_gpu_matches_cpu_fp32(gpu_path):
    cpu = dlm.load(gpu_path, device="cpu", dtype="float32")
    gpu = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    prompts = random_prompts(cpu, 3, seed=1)
    cfg = GenerationConfig(gen_length=16, block_length=8, stop_at_eos=False)
    a, b = cpu.generate(prompts, cfg).sequences, gpu.generate(prompts, cfg).sequences
    assert (a == b).float().mean() > 0.9  # different kernels; near-ties may flip a token


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "delayed", "window"])
def test_cuda_graphs_equal_eager(gpu_path, cache):
    """Whole-step graphs, and pieces in buckets of one position (the eager step's own shapes), give the eager
    answers bit for bit (the default buckets pad: tests/gpu/test_pieces_gpu.py)."""
    from dlm.engine.graphs import StepGraphs
    from dlm.engine.pieces import PieceGraphs

    lm = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    prompts = random_prompts(lm, 4, seed=2, min_len=1, max_len=12)
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache=cache, stop_at_eos=False)
    eager = lm.generate(prompts, cfg).sequences
    engine = dlm.Engine(lm, max_rows=4, graphs=StepGraphs(pieces=PieceGraphs(granule=1)))
    reqs = [engine.submit(p, cfg) for p in prompts]
    engine.run()
    assert torch.equal(eager, torch.cat([r.output.sequences for r in reqs]))


@pytest.mark.parametrize("whole_steps", [16, 0], ids=["whole-step-graphs", "pieces-only"])
def test_graphs_follow_converted_weights(gpu_path, whole_steps):
    """CUDA graphs read the weights by address: after model.to(...) (new tensors, the old ones overwritten) the
    whole-step graphs and the pieces capture again instead of replaying over the old ones, and give the eager
    answers."""
    from dlm.engine.graphs import StepGraphs
    from dlm.engine.pieces import PieceGraphs

    lm = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    prompts = random_prompts(lm, 4, seed=7, min_len=1, max_len=12)
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache="dual", stop_at_eos=False)
    eager = lm.generate(prompts, cfg).sequences
    pieces = PieceGraphs(granule=1)
    engine = dlm.Engine(lm, max_rows=4, graphs=StepGraphs(max_graphs=whole_steps, pieces=pieces))

    def decode():
        reqs = [engine.submit(p, cfg) for p in prompts]
        engine.run()
        return torch.cat([r.output.sequences for r in reqs])

    assert torch.equal(decode(), eager)
    old = [p.data for p in lm.model.parameters()]  # kept alive, so the new tensors get new addresses
    lm.model.to(torch.float64).to(torch.float32)  # the same values in new tensors
    for t in old:
        t.fill_(float("nan"))  # what a replay over the old addresses would read
    replays = pieces.replays
    assert torch.equal(decode(), eager)
    assert whole_steps or pieces.replays > replays  # (pieces-only: the second decode ran through them)


def test_exact_caches_on_gpu(gpu_path):
    lm = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    prompts = random_prompts(lm, 3, seed=3)
    base = GenerationConfig(gen_length=16, block_length=8, stop_at_eos=False)
    ref = lm.generate(prompts, base).sequences
    for cache in ("prefix", "dual", "delayed", "window"):
        assert torch.equal(lm.generate(prompts, base.replace(cache=cache, cache_kwargs={"refresh_every": 1})).sequences, ref)


def test_bf16_runs(gpu_path):
    lm = dlm.load(gpu_path, device="cuda", dtype="bfloat16", cuda_graphs=True)
    out = lm.generate(random_prompts(lm, 2, seed=4), GenerationConfig(gen_length=16, block_length=8, cache="dual"))
    assert out.sequences.shape == (2, 16) and out.sequences.device.type == "cpu"



def test_fused_kernels_match_eager(gpu_path):
    from dlm.models import elementwise as ew
    from dlm.models.transformer import rope_cos_sin

    torch.manual_seed(0)
    ops = ew.fused_ops()
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 7, 64, device="cuda", dtype=dtype)
        w = torch.randn(64, device="cuda", dtype=dtype)
        q = torch.randn(2, 4, 7, 16, device="cuda", dtype=dtype)
        k = torch.randn(2, 2, 7, 16, device="cuda", dtype=dtype)
        cos, sin = rope_cos_sin(torch.arange(7, device="cuda").expand(2, -1), 16, 10000.0)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), ew.rms_norm(x, w, 1e-6), **tol)
        for full in (True, False):
            for a, b in zip(ops.rope(q, k, cos, sin, full), ew.rope(q, k, cos, sin, full)):
                torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(ops.swiglu(x, x), ew.swiglu(x, x), **tol)
    prompts = random_prompts(dlm.load(gpu_path, device="cpu"), 3, seed=5)
    cfg = GenerationConfig(gen_length=16, block_length=8, cache="dual", stop_at_eos=False)
    eager = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False).generate(prompts, cfg).sequences
    lm = dlm.load(gpu_path, device="cuda", dtype="float32", fused_kernels=True, cuda_graphs=True)
    assert lm.model.ops.fused
    assert (lm.generate(prompts, cfg).sequences == eager).float().mean() > 0.9


def test_fast_path_is_the_default_on_cuda(gpu_path):
    """dlm.load on one CUDA device turns on CUDA graphs and the fused kernels; fast=False and the per-option
    switches give the reference path; answers agree (fused kernels round differently, and so may the piecewise
    graphs' padded products)."""
    fast = dlm.load(gpu_path, device="cuda", dtype="float32")
    assert fast.cuda_graphs and fast.model.ops.fused
    ref = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    assert not ref.cuda_graphs and not ref.model.ops.fused
    only = dlm.load(gpu_path, device="cuda", dtype="float32", fused_kernels=False)
    assert only.cuda_graphs and not only.model.ops.fused
    prompts = random_prompts(ref, 3, seed=6, min_len=1, max_len=12)
    for cache in ("none", "prefix", "dual"):
        cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache=cache, stop_at_eos=False)
        assert (only.generate(prompts, cfg).sequences == ref.generate(prompts, cfg).sequences).float().mean() > 0.9
        assert (fast.generate(prompts, cfg).sequences == ref.generate(prompts, cfg).sequences).float().mean() > 0.9


def test_joined_projections_on_cuda(gpu_path):
    """The fast path joins q/k/v and gate/up; on CUDA small steps take the joined product: logits within float32
    rounding of the separate products, answers agree, and larger steps multiply by the parts."""
    from dlm.models import joined

    lm = dlm.load(gpu_path, device="cuda", dtype="float32")
    assert hasattr(lm.model.layers[0], "q_k_v")
    ref = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    ids = torch.tensor(random_prompts(ref, 2, seed=3, min_len=16, max_len=16), device="cuda")
    assert joined.use_joined_product(torch.zeros(32, 8, device="cuda"))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids), ref.model(ids), rtol=1e-4, atol=1e-4)
    prompts = random_prompts(ref, 4, seed=8, min_len=1, max_len=12)
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache="dual", stop_at_eos=False)
    assert (lm.generate(prompts, cfg).sequences == ref.generate(prompts, cfg).sequences).float().mean() > 0.9


@pytest.mark.parametrize("lookahead", [False, True])
def test_one_synchronisation_per_step(gpu_path, monkeypatch, lookahead):
    """With `dual` the host waits for the GPU once per step (the step's one transfer: a wait for its CUDA event),
    plus once per finished request (its output): any other synchronising operation would leave the GPU idle
    while the host works. (Policies whose step width depends on the data, `window` and `delayed`, read that
    width on the host once more per step.)"""
    import traceback
    import warnings

    lm = dlm.load(gpu_path, device="cuda", dtype="bfloat16")
    cfg = GenerationConfig(gen_length=64, block_length=32, steps=16, cache="dual", stop_at_eos=False)
    prompts = random_prompts(lm, 2, seed=4, min_len=8, max_len=8)
    engine = dlm.Engine(lm, max_rows=2, max_tokens=2 * 80, lookahead=lookahead)

    def generate():
        reqs = [engine.submit(p, cfg) for p in prompts]
        engine.run()
        return reqs[0].output

    generate()
    sites = []
    waits = []
    event_wait = torch.cuda.Event.synchronize
    monkeypatch.setattr(torch.cuda.Event, "synchronize", lambda self: (waits.append(1), event_wait(self))[1])

    def record(message, *args, **kwargs):
        if "called a synchronizing CUDA operation" not in str(message):  # not e.g. the mode's own warnings
            return
        stack = traceback.extract_stack()[:-1]
        frames = [f for f in stack if "/dlm/" in f.filename]
        # outside dlm's code: where it was, to say what synchronised
        sites.append(frames[-1].name if frames else " < ".join(f"{f.filename}:{f.lineno}" for f in stack[::-1][:6]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode(1)
        try:
            out = generate()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert set(sites) <= {"_output"}, sites
    assert len(waits) == out.steps
    assert (engine.core.lookahead_used > 0) == lookahead


def test_capture_returns_the_warm_up_logits(gpu_path):
    """The step that captures a layout returns its eager warm-up's logits; with room for one graph the prefix
    cache's per-block layouts replace each other; answers equal eager ones."""
    from dlm.engine.graphs import StepGraphs

    lm = dlm.load(gpu_path, device="cuda", dtype="float32", fast=False)
    prompts = random_prompts(lm, 3, seed=7, min_len=1, max_len=12)
    cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache="prefix", stop_at_eos=False)

    def run(graphs):
        engine = dlm.Engine(lm, max_rows=3, graphs=graphs)
        reqs = [engine.submit(p, cfg) for p in prompts]
        engine.run()
        return torch.cat([r.output.sequences for r in reqs])

    graphs = StepGraphs(max_graphs=1, pieces=False)
    assert torch.equal(run(graphs), run(None))
    assert graphs.captures >= 4 and graphs.replays > 0 and len(graphs.entries) == 1
