"""``dlm.models.attention.sdpa``: torch's SDPA with cuDNN's attention left out on a GPU unless asked for, torch's
backend switch restored after every call (its GPU behaviour, the kernels it picks, in tests/gpu/test_attention_gpu.py)."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

from dlm.models import attention


class _OnGpu:
    """Stands for a CUDA tensor: the only attribute ``sdpa`` reads before calling SDPA."""

    is_cuda = True


@pytest.fixture
def seen(monkeypatch):
    """SDPA replaced by a recorder of whether cuDNN's attention was enabled when it ran."""
    calls = []

    def fake(q, k, v, attn_mask=None, **kw):
        calls.append(torch.backends.cuda.cudnn_sdp_enabled())
        if isinstance(k, Exception):
            raise k
        return "out"

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", fake)
    cuda = torch.backends.cuda
    switches = [(cuda.enable_flash_sdp, cuda.flash_sdp_enabled()), (cuda.enable_math_sdp, cuda.math_sdp_enabled()),
                (cuda.enable_mem_efficient_sdp, cuda.mem_efficient_sdp_enabled())]
    cuda.enable_cudnn_sdp(True)
    yield calls
    attention.use_cudnn_attention(False)
    cuda.enable_cudnn_sdp(True)
    for enable, was in switches:
        enable(was)


def test_gpu_call_runs_without_cudnn_and_restores_the_switch(seen):
    assert attention.sdpa(_OnGpu(), None, None) == "out"
    assert seen == [False]
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_switch_restored_when_sdpa_raises(seen):
    with pytest.raises(RuntimeError, match="bad shapes"):
        attention.sdpa(_OnGpu(), RuntimeError("bad shapes"), None)
    assert seen == [False]
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_use_cudnn_attention_leaves_torch_its_choice(seen):
    attention.use_cudnn_attention(True)
    attention.sdpa(_OnGpu(), None, None)
    assert seen == [True]


def test_switch_left_off_when_the_user_turned_cudnn_off(seen):
    torch.backends.cuda.enable_cudnn_sdp(False)
    attention.sdpa(_OnGpu(), None, None)
    assert seen == [False]
    assert not torch.backends.cuda.cudnn_sdp_enabled()  # not turned on behind the user's back


def test_switch_left_on_where_cudnn_is_the_only_backend(seen):
    """As inside ``sdpa_kernel([SDPBackend.CUDNN_ATTENTION])``: turning cuDNN off would leave no kernel."""
    cuda = torch.backends.cuda
    for enable in (cuda.enable_flash_sdp, cuda.enable_math_sdp, cuda.enable_mem_efficient_sdp):
        enable(False)
    attention.sdpa(_OnGpu(), None, None)
    assert seen == [True]


def test_overlapping_calls_restore_the_switch_after_the_last(seen, monkeypatch):
    """Two threads (the data-parallel server's engines) whose calls overlap, the first to start ending first:
    cuDNN stays off while the other still runs, and is on again after both."""
    first_inside, go, first_done = threading.Event(), threading.Event(), threading.Event()
    during = []

    def slow(q, k, v, attn_mask=None, **kw):
        if k == "first":
            first_inside.set()
            go.wait(timeout=10)
        else:  # the second call: still running after the first one has ended
            go.set()
            first_done.wait(timeout=10)
        during.append(torch.backends.cuda.cudnn_sdp_enabled())
        return "out"

    def first_call():
        attention.sdpa(_OnGpu(), "first", None)
        first_done.set()

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", slow)
    thread = threading.Thread(target=first_call)
    thread.start()
    assert first_inside.wait(timeout=10)
    attention.sdpa(_OnGpu(), "second", None)
    thread.join(timeout=10)
    assert during == [False, False]
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_cpu_call_equals_torch_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g) for _ in range(3))
    mask = torch.rand(2, 1, 1, 5, generator=g) > 0.3
    mask[..., 0] = True
    assert torch.equal(attention.sdpa(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    kv = k[:, :2], v[:, :2]
    assert torch.equal(attention.sdpa(q, *kv, enable_gqa=True),
                       F.scaled_dot_product_attention(q, *kv, enable_gqa=True))
