"""The fast path by default: how ``dlm.load`` resolves ``fast`` / ``cuda_graphs`` / ``fused_kernels``, checked at the
boundary; the CLI flags that set them. (On CUDA itself: ``tests/gpu/test_gpu.py``.)"""

from __future__ import annotations

import argparse

import pytest
import torch

import dlm
from dlm.api import lm as api_lm
from dlm.api.lm import fast_options
from dlm.cli import add_speed_options, speed_flags, speed_kwargs
from dlm.errors import ConfigError

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


@pytest.mark.parametrize("triton", [True, False])
def test_auto_turns_both_on_for_one_cuda_device(monkeypatch, triton):
    monkeypatch.setattr(api_lm, "_triton_available", lambda: triton)
    assert fast_options(True, None, None, CUDA, parallel=False) == (True, triton)
    assert fast_options(True, None, None, CPU, parallel=False) == (False, False)
    assert fast_options(True, None, None, CUDA, parallel=True) == (False, False)  # device map / tensor parallel
    assert fast_options(False, None, None, CUDA, parallel=False) == (False, False)


def test_explicit_switches_override_auto(monkeypatch):
    monkeypatch.setattr(api_lm, "_triton_available", lambda: True)
    assert fast_options(True, False, None, CUDA, False) == (False, True)
    assert fast_options(True, None, False, CUDA, False) == (True, False)
    assert fast_options(False, True, True, CUDA, False) == (True, True)
    assert fast_options(True, True, True, CPU, False) == (True, True)  # asked for: honoured (graphs ignored on CPU)


def test_load_on_the_cpu_keeps_the_reference_path(llada_path):
    lm = dlm.load(llada_path, device="cpu")
    assert not lm.cuda_graphs and not lm.model.ops.fused
    assert dlm.load(llada_path, device="cpu", fused_kernels=True).model.ops.fused


@pytest.mark.parametrize("kwargs, message", [
    ({"fast": None}, "fast must be True or False, got None"),
    ({"fast": "yes"}, "fast must be True or False, got 'yes'"),
    ({"cuda_graphs": 1}, "cuda_graphs must be True, False or None"),
    ({"fused_kernels": "on"}, "fused_kernels must be True, False or None"),
])
def test_bad_switches_are_named(llada_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        dlm.load(llada_path, device="cpu", **kwargs)


@pytest.mark.parametrize("argv, expected", [
    ([], {"fast": True, "cuda_graphs": None, "fused_kernels": None}),
    (["--no-fast"], {"fast": False, "cuda_graphs": None, "fused_kernels": None}),
    (["--no-fast", "--cuda-graphs"], {"fast": False, "cuda_graphs": True, "fused_kernels": None}),
    (["--no-fused-kernels"], {"fast": True, "cuda_graphs": None, "fused_kernels": False}),
])
def test_cli_flags(argv, expected):
    p = argparse.ArgumentParser()
    add_speed_options(p)
    args = p.parse_args(argv)
    assert speed_kwargs(args) == expected
    assert speed_kwargs(p.parse_args(speed_flags(args))) == expected  # flags handed on reproduce the options


def test_the_cached_engine_follows_the_settings(llada_path):
    """generate's engine is rebuilt when CUDA graphs or the elementwise functions change (captured graphs would
    otherwise replay the functions of their capture)."""
    from dlm.models.elementwise import EAGER, Ops, rms_norm, rope, swiglu

    lm = dlm.load(llada_path, device="cpu")
    first = lm.engine_for(2, 64)
    assert lm.engine_for(2, 64) is first
    lm.model.ops = Ops(rms_norm, rope, swiglu, fused=True)  # another set of functions
    second = lm.engine_for(2, 64)
    assert second is not first and lm.engine_for(2, 64) is second
    lm.model.ops = EAGER
    lm.cuda_graphs = True
    third = lm.engine_for(2, 64)
    assert third is not second
