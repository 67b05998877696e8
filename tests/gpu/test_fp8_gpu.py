"""FP8 weights on a GPU (skipped without CUDA): the fast paths (the W8A16 Triton kernel for few rows,
torch._scaled_mm with per-token activation scales for many) against the reference path (dequantize, then
F.linear), and generation with CUDA graphs and fused kernels."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dlm
from dlm.models import fp8, fp8_kernel
from dlm.models.fp8 import FP8Linear

pytestmark = pytest.mark.gpu


def needs_fast_path():
    if not fp8.scaled_mm_works(torch.device("cuda", torch.cuda.current_device())):
        pytest.skip("no row-wise torch._scaled_mm on this GPU (compute capability < 8.9 or an older torch)")


def needs_w8a16():
    needs_fast_path()
    if not fp8_kernel.works(torch.device("cuda", torch.cuda.current_device())):
        pytest.skip("the W8A16 Triton kernel does not run here (no Triton?)")


def default_impl() -> str:
    return "w8a16" if fp8_kernel.works(torch.device("cuda", torch.cuda.current_device())) else "scaled_mm"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize("shape", [(1, 64, 48), (32, 4096, 4096), (1152, 256, 704), (7, 160, 64)])
def test_scaled_mm_is_the_product_of_the_quantized_operands(shape):
    """The kernel computes (x_fp8 * x_scale) @ (w_fp8 * w_scale).T + b up to bf16 output rounding, and the
    fast layer is within e4m3's activation rounding (~2-3% in relative L2) of the reference layer."""
    needs_fast_path()
    m, k, n = shape
    g = torch.Generator(device="cuda").manual_seed(0)
    linear = nn.Linear(k, n, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.normal_(0, 0.02, generator=g)
    layer = FP8Linear.from_linear(linear)
    assert layer.impl == default_impl()
    fp8.select_impl(layer, layer.weight.device, torch.bfloat16, "scaled_mm")
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    y = layer(x)
    xq, xs = fp8.quantize_rows(x)
    exact = (xq.float() * xs) @ fp8.dequantize_weight(layer.weight, layer.weight_scale, torch.float32).T
    exact = exact + layer.bias.float()
    torch.testing.assert_close(y.float(), exact, rtol=2**-7, atol=1e-3 * float(exact.abs().max()))
    assert rel(y, fp8.linear_reference(x, layer.weight, layer.weight_scale, layer.bias)) < 0.05


@pytest.mark.parametrize("shape", [(1, 4096, 4096), (7, 160, 64), (32, 4096, 12288), (33, 18944, 3584),
                                   (64, 3584, 512), (64, 1000, 48)])
def test_w8a16_kernel_is_the_rounded_product_of_its_operands(shape):
    """x @ (Q * scale).T + b with bf16 x, computed with float32 sums on the tensor cores and rounded once: within
    one bf16 step of the float64 product plus float32's summation error (K * 2^-24 of the sum of |terms|), and
    equal to the rounded float64 product almost everywhere."""
    needs_w8a16()
    m, k, n = shape
    g = torch.Generator(device="cuda").manual_seed(1)
    q, scale = fp8.quantize_weight(torch.randn(n, k, device="cuda", generator=g) * 0.02)
    b = torch.randn(n, device="cuda", generator=g).bfloat16()
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    y = fp8_kernel.linear_w8a16(x, q, scale, b)
    exact = x.double() @ q.double().T * scale.double() + b.double()
    terms = x.double().abs() @ q.double().abs().T * scale.double()
    bound = exact.abs() * 2.0**-8 + terms * k * 2.0**-24
    assert bool(((y.double() - exact).abs() <= bound).all())
    assert int((y != exact.bfloat16()).sum()) <= 0.02 * y.numel()


@pytest.mark.parametrize("out_features", [256, 512, 1024])  # narrowing, square, widening
def test_layer_takes_the_kernel_up_to_its_rows_and_scaled_mm_above(out_features):
    needs_w8a16()
    linear = nn.Linear(512, out_features, device="cuda", dtype=torch.bfloat16)
    layer = FP8Linear.from_linear(linear)
    limit = fp8_kernel.max_rows(512, out_features)
    assert layer.impl == "w8a16" and layer.w8a16_rows == limit
    w, s, b = layer.weight, layer.weight_scale, layer.bias
    for shape in ((1, 512), (2, limit // 2, 512), (limit, 512)):
        x = torch.randn(shape, device="cuda").bfloat16()
        assert torch.equal(layer(x), fp8_kernel.linear_w8a16(x, w, s, b))
    x = torch.randn(limit + 1, 512, device="cuda").bfloat16()
    assert torch.equal(layer(x), fp8.linear_scaled_mm(x, w, s, b, layer.quantize_rows))


def same_quantization(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Equal FP8 bits and scales (NaN equal to NaN)."""
    (q1, s1), (q2, s2) = a, b
    qf1, qf2 = q1.float(), q2.float()
    scales = ((s1 == s2) | (s1.isnan() & s2.isnan())).all()
    bits = ((q1.view(torch.uint8) == q2.view(torch.uint8)) | (qf1.isnan() & qf2.isnan())).all()
    return bool(scales and bits)


def special_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (rows, cols) with a huge, a tiny, a negative zero and 448 in its first row and, given enough rows, an
    all-zero row, a NaN and an infinity."""
    first = torch.tensor([3e38, 1e-30, -0.0, 448.0], device=x.device)[: x.shape[1]]
    x[0, : first.numel()] = first.to(x.dtype) if x.dtype != torch.float16 else first.clamp(-6e4, 6e4).half()
    if x.shape[0] > 3:
        x[1] = 0
        x[2, 0] = float("nan")
        x[3, -1] = float("inf")
    return x


@pytest.mark.parametrize("cols", [16, 3584, 4096, 12288, 18944, 40000])
def test_row_quantizer_kernel_equals_eager(cols):
    """The activation quantizer kernel rounds as torch does on a GPU: the same scales and FP8 bits (a NaN equal to
    a NaN), special values included, for rows of several counts, at a stride, with leading dimensions, in each
    floating dtype; and the model's quantizer is the kernel."""
    from dlm.models import fp8_rows_kernel

    needs_fast_path()
    dev = torch.device("cuda", torch.cuda.current_device())
    assert fp8._row_kernel(dev) is fp8_rows_kernel  # its check at load passes (else a warning, the compiled one)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for m in (1, 2, 33, 1152):
            x = special_rows(torch.randn(m, cols, device=dev).to(dtype) * 10)
            assert fp8_rows_kernel.applies(x)
            assert same_quantization(fp8_rows_kernel.quantize_rows(x), fp8.quantize_rows(x)), (dtype, m, cols)
            if dtype == torch.bfloat16:
                assert same_quantization(fp8.row_quantizer(dev)(x), fp8.quantize_rows(x)), (m, cols)
    wide = special_rows(torch.randn(6, cols + 16, device=dev).bfloat16() * 10)
    rows = wide[:, :cols]  # rows at a stride
    assert same_quantization(fp8_rows_kernel.quantize_rows(rows), fp8.quantize_rows(rows))
    lead = torch.randn(2, 3, cols, device=dev).bfloat16() * 10  # leading dimensions
    (q, s), (q_ref, s_ref) = fp8_rows_kernel.quantize_rows(lead), fp8.quantize_rows(lead)
    assert q.shape == lead.shape and s.shape == (2, 3, 1) and same_quantization((q, s), (q_ref, s_ref))


def test_compiled_row_quantizer_is_within_one_step():
    """The fallback where the kernel fails its check: the compiled function, within one e4m3 step."""
    needs_fast_path()
    for m in (1, 33, 1152):
        x = torch.randn(m, 4096, device="cuda").bfloat16() * 10
        x[0] = 0
        (q1, s1), (q2, s2) = fp8.compiled_quantizer()(x), fp8.quantize_rows(x)
        torch.testing.assert_close(s1, s2)
        assert (q1.float() - q2.float()).abs().le(2**-3 * q2.float().abs() + 2**-9).all()  # one e4m3 step


@pytest.fixture(scope="module")
def tiny_fp8():
    """The bundled dlm-tiny (dims multiples of 16: every layer takes the fast path) in bf16, plain and FP8."""
    return (dlm.load(device="cuda", dtype="bfloat16", fast=False),
            dlm.load(device="cuda", dtype="bfloat16", quantize="fp8", fast=False))


def task_prompts(n_per_family: int = 2) -> list[str]:
    from dlm.data import FAMILIES, get_task

    return [e.prompt for f in FAMILIES for e in get_task(f).generate("test", n_per_family, 3)]


@pytest.mark.parametrize("impl", ["w8a16", "scaled_mm"])
def test_fast_model_matches_reference_model(tiny_fp8, impl):
    """Both fast paths against the reference path; the W8A16 kernel (no activation rounding) much closer."""
    needs_w8a16() if impl == "w8a16" else needs_fast_path()
    plain, lm = tiny_fp8
    assert all(m.impl == default_impl() for m in lm.model.modules() if isinstance(m, FP8Linear))
    # canvases as decoding sees them: a task prompt and 16 masked answer positions (CPU stand-in: 2.4% / 2.7%);
    # dlm-tiny's prompts are short, so with "w8a16" every product takes the kernel
    canvases = [torch.tensor([p + [plain.ids.mask_id] * 16], device="cuda") for p in plain.encode(task_prompts(1))]
    assert max(c.shape[1] for c in canvases) <= fp8_kernel.MAX_ROWS
    answer_logits = lambda model: torch.cat([model(c)[0, -16:] for c in canvases])  # noqa: E731
    try:
        fp8.set_fp8_impl(lm.model, impl)
        fast = answer_logits(lm.model)
        fp8.set_fp8_impl(lm.model, "reference")
        ref = answer_logits(lm.model)
    finally:
        fp8.set_fp8_impl(lm.model, default_impl())
    assert rel(fast, ref) < (0.02 if impl == "w8a16" else 0.05)
    assert rel(fast, answer_logits(plain.model)) < 0.08
    assert (fast.argmax(-1) == ref.argmax(-1)).float().mean() > (0.97 if impl == "w8a16" else 0.9)


def test_generate_with_cuda_graphs_and_fused_kernels(tiny_fp8):
    """FP8 with graphs + fused kernels gives (nearly) the answers of FP8 eager and of the bf16 model."""
    plain, eager = tiny_fp8
    lm = dlm.load(device="cuda", dtype="bfloat16", quantize="fp8", cuda_graphs=True, fused_kernels=True)
    prompts = task_prompts()
    cfg = dlm.GenerationConfig(gen_length=32, block_length=32, scheduler="threshold", cache="dual")
    fast = lm.generate(prompts, cfg).texts
    assert lm.generate(prompts, cfg).texts == fast  # replays (graphs captured on the first call) change nothing
    same = lambda a, b: sum(x == y for x, y in zip(a, b)) / len(a)  # noqa: E731
    assert same(fast, eager.generate(prompts, cfg).texts) >= 0.9
    assert same(fast, plain.generate(prompts, cfg).texts) >= 0.8


def test_batch_invariant_engine_takes_the_reference_path(tiny_fp8):
    """With batch_invariant=True the products go through the tiled F.linear: a prompt's answer alone equals its
    answer in a batch."""
    _, lm = tiny_fp8
    prompts = task_prompts()
    cfg = dlm.GenerationConfig(gen_length=32, block_length=32, scheduler="threshold", cache="dual")
    batch = dlm.Engine(lm, max_rows=len(prompts), batch_invariant=True)
    reqs = [batch.submit(p, cfg) for p in prompts]
    batch.run()
    alone = dlm.Engine(lm, max_rows=1, batch_invariant=True)
    for p, r in zip(prompts[:4], reqs):
        a = alone.submit(p, cfg)
        alone.run()
        assert torch.equal(a.output.sequences, r.output.sequences)


def test_load_keeps_the_model_in_fp8_on_the_gpu(tiny_fp8):
    """Weights arrive quantized: the FP8 model's parameters take about 60% of the bf16 model's (the embedding
    stays bf16) and every linear weight is float8 on the GPU."""
    plain, lm = tiny_fp8
    size = lambda m: sum(p.nbytes for p in m.parameters())  # noqa: E731
    assert size(lm.model) < 0.7 * size(plain.model)
    assert all(m.weight.dtype == fp8.FP8 and m.weight.is_cuda for m in lm.model.modules() if isinstance(m, FP8Linear))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_fp8_with_a_device_map_over_two_gpus():
    """The bundled dlm-tiny in FP8 with its layers split over two GPUs: every FP8 layer stays FP8 on its own
    device, and the logits and answers equal the single-GPU FP8 model's (the same kernels, per device)."""
    one = dlm.load(device="cuda:0", dtype="bfloat16", quantize="fp8", fast=False)
    n = one.model.cfg.num_layers
    device_map = {"embed": 0, "norm": 0, "head": 0} | {f"layers.{i}": int(i >= n // 2) for i in range(n)}
    two = dlm.load(device_map=device_map, dtype="bfloat16", quantize="fp8")
    fp8_layers = [m for m in two.model.modules() if isinstance(m, FP8Linear)]
    assert len(fp8_layers) == sum(isinstance(m, FP8Linear) for m in one.model.modules())
    assert {m.weight.device.index for m in fp8_layers} == {0, 1}
    ids = torch.tensor(one.encode(task_prompts(1))[:1], device="cuda:0")
    with torch.no_grad():
        assert torch.equal(one.model(ids).cpu(), two.model(ids).cpu())
    cfg = dlm.GenerationConfig(gen_length=32, block_length=32, cache="dual")
    prompts = task_prompts(1)
    assert two.generate(prompts, cfg).texts == one.generate(prompts, cfg).texts
