"""Fused elementwise kernels (``dlm.load(..., fused_kernels=True)``): the torch.compile'd RMSNorm, RoPE, SwiGLU and
residual add + RMSNorm against the eager reference functions, and a whole decode with them against the eager
decode (CPU; the same checks on CUDA are in tests/gpu); the model's loop that adds each layer's MLP output with
the next layer's norm."""

from __future__ import annotations

import shutil

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.models import elementwise as ew
from dlm.models.transformer import plain_layers, rope_cos_sin

from ..conftest import random_prompts

pytestmark = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                reason="torch.compile on a CPU needs a C++ compiler")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_functions_match_eager(dtype):
    g = torch.Generator().manual_seed(0)
    ops = ew.fused_ops()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    for Q in (7, 32):  # dynamic shapes: one compiled graph serves every number of fed positions
        x = torch.randn(2, Q, 64, generator=g).to(dtype)
        w = torch.randn(64, generator=g).to(dtype)
        q = torch.randn(2, 4, Q, 16, generator=g).to(dtype)
        k = torch.randn(2, 2, Q, 16, generator=g).to(dtype)
        cos, sin = rope_cos_sin(torch.arange(Q).expand(2, -1), 16, 10000.0)
        torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), ew.rms_norm(x, w, 1e-6), **tol)
        for full in (True, False):
            for a, b in zip(ops.rope(q, k, cos, sin, full), ew.rope(q, k, cos, sin, full)):
                torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(ops.swiglu(x, x.flip(-1)), ew.swiglu(x, x.flip(-1)), **tol)
        for a, b in zip(ops.add_norm(x, x.flip(-1), w, 1e-6), ew.add_rms_norm(x, x.flip(-1), w, 1e-6)):
            torch.testing.assert_close(a, b, **tol)
    from torch._dynamo.utils import counters

    assert counters["stats"]["unique_graphs"] > 0  # really compiled, not a silent fallback to eager


@pytest.mark.parametrize("name", ["llada", "Dream"])
def test_fused_model_matches_eager(name, llada_path, dream_path, monkeypatch):
    monkeypatch.setattr(ew, "FUSED_MIN_POSITIONS", 0)  # the engine's small steps use the fused functions too
    path = llada_path if name == "llada" else dream_path
    eager = dlm.load(path, device="cpu", dtype="float32")
    fused = dlm.load(path, device="cpu", dtype="float32", fused_kernels=True)
    assert fused.model.ops.fused and not eager.model.ops.fused
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(fused.model(ids), eager.model(ids), rtol=1e-4, atol=1e-4)
    prompts = random_prompts(eager, 4, seed=2)
    cfg = GenerationConfig(gen_length=16, block_length=8, cache="dual", stop_at_eos=False)
    a, b = eager.generate(prompts, cfg).sequences, fused.generate(prompts, cfg).sequences
    assert (a == b).float().mean() > 0.95  # rounding may flip a near-tie, nothing more


def test_each_key_has_its_own_compiled_functions_and_the_limit_falls_back():
    """fused_ops(key): one Ops per key, each with its own code objects (torch.compile's recompile budget is per
    code object); past the budget a call runs the eager function instead of failing."""
    a, b = ew.fused_ops(("test", 1)), ew.fused_ops(("test", 2))
    assert ew.fused_ops(("test", 1)) is a and a is not b
    x, w = torch.randn(3, 8), torch.randn(8)
    # (dynamo's own patch: a monkeypatched setting was gone for every later compile in the process, torch 2.13)
    with torch._dynamo.config.patch(recompile_limit=1):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):  # each dtype a new specialisation
            got = b.rms_norm(x.to(dtype), w.to(dtype), 1e-6)
            torch.testing.assert_close(got, ew.rms_norm(x.to(dtype), w.to(dtype), 1e-6))


def test_load_gives_one_compiled_set_per_dtype_and_architecture(llada_path, dream_path):
    a = dlm.load(llada_path, device="cpu", dtype="float32", fused_kernels=True)
    b = dlm.load(llada_path, device="cpu", dtype="float32", fused_kernels=True)
    c = dlm.load(dream_path, device="cpu", dtype="float32", fused_kernels=True)
    assert a.model.ops is b.model.ops and a.model.ops is not c.model.ops
    assert a.model.ops.rms_norm is not c.model.ops.rms_norm


@pytest.mark.parametrize("name", ["llada", "Dream"])
def test_each_layers_last_add_goes_with_the_next_norm(name, llada_path, dream_path):
    """The model's loop hands each layer's MLP output to the next layer, whose norm adds it (``ops.add_norm``):
    with the eager functions the logits are those of the layers' own forwards (run where a hook sits on a layer)
    bit for bit, and each layer but the first adds twice through ``add_norm``, the others' layers once."""
    lm = dlm.load(llada_path if name == "llada" else dream_path, device="cpu", dtype="float32")
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    calls = []

    def counted(x, y, w, eps):
        calls.append(1)
        return ew.add_rms_norm(x, y, w, eps)

    layers = len(lm.model.layers)
    with torch.no_grad():
        deferred = lm.model(ids)
        lm.model.ops = ew.Ops(ew.rms_norm, ew.rope, ew.swiglu, add_rms_norm=counted)
        assert torch.equal(lm.model(ids), deferred) and len(calls) == 2 * layers - 1
        handle = lm.model.layers[0].register_forward_pre_hook(lambda *a: None)
        try:
            calls.clear()
            assert torch.equal(lm.model(ids), deferred) and len(calls) == layers
        finally:
            handle.remove()


def test_layers_called_as_themselves_where_anything_would_be_skipped(llada_path):
    """The model's loop calls the layers' halves only where nothing is skipped that calling the layers runs:
    forward and backward hooks on a layer or on every module, an instance's own forward, a compiled layer, a
    family's own halves. Each of those gets the per-layer loop, with the same logits."""
    lm = dlm.load(llada_path, device="cpu", dtype="float32")
    model, layer = lm.model, lm.model.layers[1]
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(ids)
    assert plain_layers(model)
    nn_module = torch.nn.modules.module
    handles = [layer.register_full_backward_hook(lambda *a: None), layer.register_forward_hook(lambda *a: None),
               model.register_forward_pre_hook(lambda *a: None), nn_module.register_module_forward_hook(lambda *a: None),
               nn_module.register_module_full_backward_hook(lambda *a: None)]
    for h in handles:
        assert not plain_layers(model)
        h.remove()
    assert plain_layers(model)
    seen = []
    layer.forward = lambda *a, **k: seen.append(1) or type(layer).forward(layer, *a, **k)  # an instance's own
    with torch.no_grad():
        assert not plain_layers(model) and torch.equal(model(ids), want) and len(seen) == 1
    del layer.forward
    layer.after_attention = layer.after_attention  # (an instance attribute: a half of its own)
    assert not plain_layers(model)
    del layer.after_attention
    layer.compile()
    assert not plain_layers(model)
    layer._compiled_call_impl = None
    assert plain_layers(model)
