"""The key/value write kernel on a GPU (skipped without CUDA): the pool's reference write's bits, at LLaDA-8B's and
Dream-7B's key/value widths, at the position counts of decode steps and refreshes, for all fed positions and a
subset, from the model's transposed layout; and a fused-kernel engine's answers unchanged by it, bit for bit."""

from __future__ import annotations

import pytest
import torch

import dlm
from dlm import GenerationConfig
from dlm.cache.store import KVPool, PoolShape
from dlm.models import kv_write_kernel

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("heads", [32, 4])  # LLaDA-8B, Dream-7B (head_dim 128)
@pytest.mark.parametrize("fed, stored", [(1, None), (32, None), (1024, None), (12288, None), (40, 7), (1152, 1000)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_kernel_stores_the_reference_bits(heads, fed, stored, dtype):
    slots, slot_len = 33, 1152
    g = torch.Generator(device="cuda").manual_seed(fed + heads)
    shape = PoolShape(num_layers=1, num_slots=slots, slot_len=slot_len, kv_heads=heads, head_dim=128)
    ref, got = (KVPool(shape, dtype, [torch.device("cuda")]) for _ in range(2))
    flat = torch.randperm(slots * slot_len, device="cuda", generator=g)[:fed]
    slot, positions = flat // slot_len, flat % slot_len
    src = None if stored is None else torch.randperm(fed, device="cuda", generator=g)[:stored]
    slot = slot if src is None else slot[src]
    k = torch.randn(1, heads, fed, 128, device="cuda", generator=g).to(dtype)[0].transpose(0, 1)
    v = torch.randn(1, fed, heads, 128, device="cuda", generator=g).to(dtype)[0]
    k[0, 0, 0], v[-1, -1, -1] = -0.0, float("nan")
    assert kv_write_kernel.applies(k, v, got.k[0], got.v[0], slot, positions, src)
    ref.write(0, slot, positions, k, v, src=src)
    got.write(0, slot, positions, k, v, src=src, kernel=True)
    bits = torch.int32 if dtype == torch.float32 else torch.int16
    assert torch.equal(got.k[0].view(bits), ref.k[0].view(bits)) and torch.equal(got.v[0].view(bits), ref.v[0].view(bits))


def test_engine_answers_unchanged_by_the_kernel(llada_path, dream_path, monkeypatch):
    """The fast path (CUDA graphs, fused kernels) with and without the write kernel: the same tokens for a batch
    whose requests arrive at different steps (pooled and fresh rows, refreshes and in-block steps)."""
    answers = {}
    for use in (True, False):
        if not use:
            monkeypatch.setattr(kv_write_kernel, "applies", lambda *a: False)
        for path in (llada_path, dream_path):
            lm = dlm.load(path, device="cuda", dtype="bfloat16")
            engine = dlm.Engine(lm, max_rows=4, max_tokens=4 * 96)
            reqs = []
            for i in range(6):
                cfg = GenerationConfig(gen_length=32, block_length=8, steps=16, cache=["dual", "prefix"][i % 2])
                reqs.append(engine.submit([5 + i, 9, 13, 2 + i], cfg))
                engine.step()
            engine.run()
            answers[(use, path)] = [r.output.sequences for r in reqs]
    for path in (llada_path, dream_path):
        assert all(torch.equal(a, b) for a, b in zip(answers[(True, path)], answers[(False, path)]))
