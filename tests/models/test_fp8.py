"""FP8 weights (dlm.models.fp8, dlm.load(..., quantize="fp8")) on the CPU: the quantizers' error bounds, the model
state after load, the quantized model against its float model, and the errors of bad settings. The fast path
(torch._scaled_mm on a GPU) against the reference path: tests/gpu/test_fp8_gpu.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import dlm
from dlm.errors import ConfigError
from dlm.models import fp8
from dlm.models.fp8 import (
    FP8,
    FP8_MAX,
    FP8Linear,
    dequantize_weight,
    quantize_rows,
    quantize_weight,
)
from dlm.testing import write_tiny_checkpoint

from ..conftest import random_prompts

# e4m3: 3 mantissa bits, so rounding to nearest is within half a unit in the last place, 2^-4 of the value, for
# values in the normal range (>= 2^-6 after scaling); below it the spacing is fixed at 2^-9 (half: 2^-10)
REL_BOUND, SUBNORMAL, ABS_BOUND = 2.0**-4, 2.0**-6, 2.0**-10


def check_rounding(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> None:
    """Every element of x (scaled by ``scale``, broadcast per row) is within e4m3's rounding bound of q."""
    scaled = x.double() / scale.double()
    err = (q.double() - scaled).abs()
    normal = scaled.abs() >= SUBNORMAL
    # float32 arithmetic of the scale adds a few float32 ulps to the bound
    assert (err[normal] <= REL_BOUND * scaled.abs()[normal] * (1 + 1e-6)).all()
    assert (err[~normal] <= ABS_BOUND * (1 + 1e-6)).all()


def test_weight_round_trip_within_e4m3_bound():
    g = torch.Generator().manual_seed(0)
    # rows of very different magnitudes, with values spanning 2^-12 .. 1 of their row's largest
    w = torch.randn(64, 96, generator=g) * torch.logspace(-6, 3, 64).unsqueeze(1)
    w *= torch.exp2(-12 * torch.rand(64, 96, generator=g))
    w[5] = 0.0
    q, scale = quantize_weight(w)
    assert q.dtype == FP8 and q.shape == (64, 96) and scale.dtype == torch.float32 and scale.shape == (64,)
    torch.testing.assert_close(scale[torch.arange(64) != 5], w.abs().amax(1)[torch.arange(64) != 5] / FP8_MAX)
    check_rounding(w, q.float(), scale[:, None])
    assert scale[5] == 1.0 and (dequantize_weight(q, scale, torch.float32)[5] == 0).all()
    # the largest element of a row maps to e4m3's largest value (448) and comes back within rounding
    assert (q.float().abs().amax(1)[torch.arange(64) != 5] == FP8_MAX).all()
    deq = dequantize_weight(q, scale, torch.float32)
    assert ((deq - w).abs() <= REL_BOUND * w.abs() + ABS_BOUND * scale[:, None] + 1e-30).all()


def test_weight_quantized_in_chunks_equals_at_once(monkeypatch):
    w = torch.randn(37, 24, generator=torch.Generator().manual_seed(1))
    whole = quantize_weight(w)
    monkeypatch.setattr(fp8, "_CHUNK", 50)  # 2 rows per chunk, and a ragged last one
    chunked = quantize_weight(w)
    assert torch.equal(whole[0].float(), chunked[0].float()) and torch.equal(whole[1], chunked[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_round_trip_within_e4m3_bound(dtype):
    x = (torch.randn(6, 80, generator=torch.Generator().manual_seed(2)) * 30).to(dtype)
    x[2] = 0
    q, scale = quantize_rows(x)
    assert q.dtype == FP8 and q.shape == (6, 80) and scale.dtype == torch.float32 and scale.shape == (6, 1)
    check_rounding(x.float(), q.float(), scale)
    assert (q[2].float() == 0).all()


def scaled_mm_on_cpu() -> bool:
    try:
        a = torch.ones(16, 16).to(FP8)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1), scale_b=torch.ones(1, 16), out_dtype=torch.bfloat16)
        return True
    except (RuntimeError, NotImplementedError, AttributeError):
        return False


@pytest.mark.skipif(not scaled_mm_on_cpu(), reason="this torch has no CPU torch._scaled_mm")
def test_scaled_mm_path_is_the_product_of_both_quantized_operands():
    """The fast path's formula (where this torch runs _scaled_mm on the CPU): per-row activation quantization,
    the column-major weight, both scales and the bias, with batch dimensions kept."""
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(48, 64, generator=g), torch.randn(48, generator=g).bfloat16()
    x = torch.randn(2, 5, 64, generator=g).bfloat16()
    q, scale = quantize_weight(w)
    y = fp8.linear_scaled_mm(x, q, scale, b)
    xq, xs = quantize_rows(x.reshape(-1, 64))
    expected = (xq.float() * xs) @ dequantize_weight(q, scale, torch.float32).T + b.float()
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().reshape(-1, 48), expected, rtol=2**-7, atol=1e-2)


# ------------------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def block_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fp8-block")
    return {t: write_tiny_checkpoint(root / t, t, seed=7) for t in ("llada2_moe", "sdar", "sdar_moe", "llada_moe")}


def count(model: nn.Module, cls: type) -> int:
    return sum(type(m) is cls for m in model.modules())


@pytest.mark.parametrize("fmt", ["llada", "Dream", "llada2_moe", "sdar", "sdar_moe", "llada_moe"])
def test_every_linear_becomes_fp8(fmt, llada_path, dream_path, block_paths):
    path = {"llada": llada_path, "Dream": dream_path}.get(fmt) or block_paths[fmt]
    plain, quantized = dlm.load(path, device="cpu"), dlm.load(path, device="cpu", quantize="fp8")
    n_linear = count(plain.model, nn.Linear)
    assert count(quantized.model, FP8Linear) == n_linear and count(quantized.model, nn.Linear) == 0
    if fmt in ("llada", "Dream"):  # q, k, v, o, gate, up, down per layer, and the untied head
        assert n_linear == 7 * plain.arch.num_layers + 1
    assert quantized.model.quantization == "fp8"
    # what stays in the model dtype: embeddings, norms, routers, stacked experts
    for name, p in quantized.model.named_parameters():
        if not name.endswith(("weight", "weight_scale")) or "norm" in name or name.startswith("embed") \
                or ".experts." in name or ".router." in name:
            assert p.dtype == plain.dtype, name


def test_state_after_load_is_fp8_with_float32_scales(llada_path):
    plain = dlm.load(llada_path, device="cpu", dtype="bfloat16")
    lm = dlm.load(llada_path, device="cpu", dtype="bfloat16", quantize="fp8")
    fp8_bytes = bf16_bytes = 0
    for name in fp8.linear_names(plain.model):
        layer, ref = lm.model.get_submodule(name), plain.model.get_submodule(name)
        assert layer.weight.dtype == FP8 and layer.weight.shape == ref.weight.shape
        assert layer.weight_scale.dtype == torch.float32 and layer.weight_scale.shape == (ref.out_features,)
        assert layer.impl == "reference"  # the CPU
        fp8_bytes += layer.weight.nbytes + layer.weight_scale.nbytes
        bf16_bytes += ref.weight.nbytes
    # 1 byte per weight + 4 per output channel, against 2 per weight
    assert 0.5 < fp8_bytes / bf16_bytes <= 0.5 + 2 / plain.arch.hidden_size
    assert not any(p.is_meta for p in lm.model.parameters())
    assert lm.dtype == torch.bfloat16


def dequantized_copy(plain, quantized) -> None:
    """Give ``plain``'s linear layers the weights that ``quantized`` holds, dequantized."""
    with torch.no_grad():
        for name in fp8.linear_names(plain.model):
            layer = quantized.model.get_submodule(name)
            plain.model.get_submodule(name).weight.copy_(dequantize_weight(layer.weight, layer.weight_scale,
                                                                           plain.dtype))


def test_fp8_model_computes_its_dequantized_model(tiny):
    """The reference path is exactly the float model with each weight replaced by its dequantized FP8 copy."""
    quantized = dlm.load(tiny.path, device="cpu", quantize="fp8")
    plain = dlm.load(tiny.path, device="cpu")
    dequantized_copy(plain, quantized)
    ids = torch.tensor(random_prompts(tiny, 3, seed=4, min_len=10, max_len=10))
    assert torch.equal(quantized.model(ids), plain.model(ids))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_logits_near_the_float_model(tiny, dtype):
    """Random tiny models (weights of std 0.2) amplify errors layer by layer: the FP8 model's logits stay within
    25% of the float model's in relative L2 norm (about 2.5% per weight matrix, measured 15%), and the argmax
    agrees at most positions. The trained dlm-tiny is checked more tightly below."""
    plain = dlm.load(tiny.path, device="cpu", dtype=dtype)
    quantized = dlm.load(tiny.path, device="cpu", dtype=dtype, quantize="fp8")
    ids = torch.tensor(random_prompts(tiny, 4, seed=5, min_len=24, max_len=24))
    vocab = tiny.arch.valid_vocab or tiny.arch.vocab_size
    a, b = plain.model(ids)[..., :vocab].float(), quantized.model(ids)[..., :vocab].float()
    assert (a - b).norm() / a.norm() < 0.25
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.6


@pytest.mark.slow
def test_bundled_model_answers_like_bf16():
    """dlm-tiny (trained): logits within 5% (measured 2%) and the same answers to one task of each family."""
    from dlm.data import FAMILIES, get_task

    plain, quantized = dlm.load(device="cpu"), dlm.load(device="cpu", quantize="fp8")
    prompts = [get_task(f).generate("test", 1, 0)[0].prompt for f in FAMILIES]
    ids = torch.tensor(plain.encode(prompts[:1]))
    a, b = plain.model(ids), quantized.model(ids)
    assert (a - b).norm() / a.norm() < 0.05
    cfg = dlm.GenerationConfig(gen_length=32, block_length=32)
    assert quantized.generate(prompts, cfg).texts == plain.generate(prompts, cfg).texts


def test_generate_and_device_map(llada_path):
    """Generation runs on the FP8 model; a CPU device map streams the same weights (same logits); cuda_graphs
    is accepted (ignored on the CPU)."""
    lm = dlm.load(llada_path, device="cpu", quantize="fp8", cuda_graphs=True)
    mapped = dlm.load(llada_path, device_map={"": "cpu"}, quantize="fp8")
    assert count(mapped.model, FP8Linear) == count(lm.model, FP8Linear)
    ids = torch.tensor(random_prompts(lm, 2, seed=6, min_len=8, max_len=8))
    assert torch.equal(lm.model(ids), mapped.model(ids))
    prompts = random_prompts(lm, 3, seed=7)
    cfg = dlm.GenerationConfig(gen_length=16, block_length=8, cache="dual", stop_at_eos=False)
    out = lm.generate(prompts, cfg)
    assert out.sequences.shape == (3, 16)
    assert torch.equal(mapped.generate(prompts, cfg).sequences, out.sequences)


def test_quantize_model_in_memory_equals_load(llada_path):
    plain = dlm.load(llada_path, device="cpu")
    loaded = dlm.load(llada_path, device="cpu", quantize="fp8")
    assert fp8.quantize_model(plain.model) == count(loaded.model, FP8Linear)
    ids = torch.tensor(random_prompts(plain, 2, seed=8, min_len=6, max_len=6))
    assert torch.equal(plain.model(ids), loaded.model(ids))


def test_a_function_mode_sees_the_product_as_f_linear():
    """Inside a torch function mode (the batch-invariant tiling intercepts F.linear) the layer takes the reference
    path even where the fast one is set; a default-device context does not count."""
    from torch.overrides import TorchFunctionMode

    seen = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    linear = nn.Linear(32, 16).bfloat16()
    layer = FP8Linear.from_linear(linear)
    layer.impl = "scaled_mm"  # as on a GPU; the mode must still route around it
    x = torch.randn(3, 32).bfloat16()
    with Spy():
        y = layer(x)
    assert torch.nn.functional.linear in seen and torch._scaled_mm not in seen
    torch.testing.assert_close(y, fp8.linear_reference(x, layer.weight, layer.weight_scale, layer.bias))
    with torch.device("cpu"):
        assert not fp8.function_mode_active()
    with Spy():
        assert fp8.function_mode_active()


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("value", ["int8", "FP8", "e4m3", True, 8, ""])
def test_bad_quantize_values_name_the_value_and_the_allowed_ones(llada_path, value):
    with pytest.raises(ConfigError, match=r"quantize=.*allowed: None .* 'fp8'") as info:
        dlm.load(llada_path, device="cpu", quantize=value)
    assert repr(value) in str(info.value)


def test_set_fp8_impl_checks_its_argument(llada):
    lm = dlm.load(llada.path, device="cpu", quantize="fp8")
    with pytest.raises(ConfigError, match="unknown FP8 implementation 'fast'; allowed: w8a16, scaled_mm, reference"):
        fp8.set_fp8_impl(lm.model, "fast")
    with pytest.raises(ConfigError, match="'scaled_mm' needs a bf16 model on a CUDA device"):
        fp8.set_fp8_impl(lm.model, "scaled_mm")
    with pytest.raises(ConfigError, match="'w8a16' needs a bf16 model on a CUDA device .* and Triton"):
        fp8.set_fp8_impl(lm.model, "w8a16")
    assert fp8.set_fp8_impl(lm.model, "reference") == count(lm.model, FP8Linear)


def test_tensor_parallel_is_a_config_error(llada):
    from dlm.models.loading import build_model

    model = build_model(llada.arch, device="meta")
    model.tensor_parallel = object()  # what TensorParallel.parallelize records on the model
    with pytest.raises(ConfigError, match="quantize='fp8' does not combine with tensor_parallel"):
        fp8.quantizing_place(model, "fp8", None, torch.device("cpu"))
    assert fp8.quantizing_place(model, None, None, torch.device("cpu")) is None  # nothing asked, nothing checked


# ------------------------------------------------------------------------------------------------ front ends
def test_generate_cli_quantize_option(llada_path, monkeypatch, capsys):
    from dlm import cli

    loaded = []
    real_load = dlm.api.load
    monkeypatch.setattr(dlm.api, "load", lambda *a, **kw: loaded.append(kw) or real_load(*a, **kw))
    assert cli.main(["generate", "--model", str(llada_path), "hi", "--json", "--device", "cpu", "--quantize", "fp8",
                     "--gen-length", "8", "--block-length", "8"]) == 0
    assert loaded[-1]["quantize"] == "fp8" and len(json.loads(capsys.readouterr().out)["tokens"]) == 8
    with pytest.raises(SystemExit):  # argparse lists the choices
        cli.main(["generate", "--model", str(llada_path), "hi", "--quantize", "int8"])
    err = capsys.readouterr().err
    assert "--quantize: invalid choice: 'int8'" in err and "fp8" in err.rsplit("choose from", 1)[1]


def test_eval_model_arg_is_checked_before_loading():
    from dlm.eval.args import parse_model_args

    assert parse_model_args({"quantize": "fp8"}).load["quantize"] == "fp8"
    assert "quantize" not in parse_model_args({"quantize": "none"}).load  # dlm.load's default
    with pytest.raises(ConfigError, match="quantize='int4' is not supported"):
        parse_model_args({"quantize": "int4"})


def test_serve_random_weights_quantized():
    from argparse import Namespace

    from dlm.serve.cli import load_model

    args = Namespace(random_weights="llada-tiny", dtype="auto", quantize="fp8", fast=True, cuda_graphs=None,
                     fused_kernels=None)
    lm = load_model(args, torch.device("cpu"))
    assert count(lm.model, FP8Linear) == 7 * lm.arch.num_layers + 1 and lm.model.quantization == "fp8"
