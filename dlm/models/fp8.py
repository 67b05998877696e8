"""FP8 weights: ``dlm.load(..., quantize="fp8")``.

Every ``nn.Linear`` of the model (q/k/v/o or the fused qkv, gate/up/down, shared experts, the untied LM head)
becomes an :class:`FP8Linear`: its weight W (N, K) stored as float8_e4m3fn Q with one float32 scale per output
channel, ``W[n] ~= Q[n] * scale[n]``, ``scale[n] = max_k |W[n, k]| / 448`` (448 is e4m3fn's largest value; an
all-zero row gets scale 1 and stays exactly zero). The weights take 1 byte per element instead of 2 (bf16), which
halves the weight-read floor of a decode step. What stays in the model dtype: the embedding (a lookup, and the
head when the embeddings are tied), norms, biases, the MoE routers and the stacked experts of MoE layers
(:class:`~dlm.models.moe.ExpertBank`, whose grouped product has no FP8 path here).

Three paths compute ``x @ W.T + b``:

- ``w8a16`` (the default where it runs: CUDA, compute capability >= 8.9, Triton, bf16 activations, K and N
  multiples of 16): products of few rows (the steps of a decode at small batch: up to 32 rows for a product
  that widens, 64 for a square one, :data:`~dlm.models.fp8_kernel.MAX_ROWS` for one that narrows,
  :func:`~dlm.models.fp8_kernel.max_rows`) run :func:`~dlm.models.fp8_kernel.linear_w8a16`, a Triton kernel
  that reads the FP8 weight, converts it to bf16 in registers and multiplies with the unquantized bf16
  activations (float32 sums, the scale applied to the sums). These products are bound by the weight read, which
  FP8 halves. Products of more rows (a cache refresh, a large batch) are bound by arithmetic and take
  ``scaled_mm``; so does every product where Triton is missing or its kernel fails its check at load (a warning
  says so).
- ``scaled_mm`` (same devices): each row (token) of x is quantized to float8_e4m3fn with its own
  float32 scale (``max |x[m]| / 448``), then ``torch._scaled_mm(x_fp8, Q.T, scale_a=(M, 1), scale_b=(1, N),
  bias=b, out_dtype=bf16)`` multiplies with row-wise scales (products of FP8 values accumulated in float32, both
  scales applied to the result) at FP8's tensor-core rate. The activations are quantized by one Triton kernel
  (:mod:`dlm.models.fp8_rows_kernel`, equal to :func:`quantize_rows`), by the function compiled with
  ``torch.compile`` where that kernel fails its check at load, and by the eager function where Triton is missing.
- ``reference``: ``F.linear(x, (Q * scale).to(x.dtype), b)``: the weight dequantized, then the usual product in
  the compute dtype. Used on the CPU (FP8 then saves memory, not time: every call dequantizes), on GPUs older
  than sm 8.9, for shapes the fast paths do not take, and inside a torch function mode (the batch-invariant
  numerics of :mod:`dlm.engine.numerics` tile ``F.linear``, which only this path calls).

So with the default path, a product's rounding depends on how many rows it multiplies (W8A16 up to
:func:`~dlm.models.fp8_kernel.max_rows` rows, W8A8 above), as cuBLAS's depends on the batch shape in bf16;
``batch_invariant=True`` takes the reference path for every product.

``reference`` rounds each dequantized weight to bf16, ``w8a16`` does not (it scales the float32 sums); ``scaled_mm``
also rounds the activations to e4m3 (3 mantissa bits). ``tests/gpu/test_fp8_gpu.py`` checks that the paths agree
within stated tolerances and each kernel against the exact product of its operands,
``tests/models/test_fp8_kernel.py`` runs the W8A16 kernel in Triton's CPU interpreter, and
``tests/models/test_fp8.py`` checks the reference path against the unquantized model.

Quantization streams with loading (:func:`quantizing_place`): each weight is read from its safetensors shard,
sent to its device in its stored precision, quantized there in chunks of rows, and only the FP8 copy is kept,
so the model never exists in bf16 on the device.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from . import fp8_kernel

FP8 = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8).max)  # 448
QUANTIZE = ("fp8",)  # the values of dlm.load(quantize=...) besides None
IMPLS = ("w8a16", "scaled_mm", "reference")
_CHUNK = 1 << 24  # elements quantized at once: bounds the float32 temporaries at load (64 MiB)
_MIN_ROW_SCALE = 1e-12  # an all-zero activation row: any positive scale gives exact zeros

Place = Callable[[str, torch.Tensor, torch.dtype], torch.Tensor]


def check_quantize(value) -> str | None:
    """``None`` or ``"fp8"``; a ConfigError naming anything else and the allowed values."""
    if value is None or (isinstance(value, str) and value in QUANTIZE):
        return value
    raise ConfigError(f"quantize={value!r} is not supported; allowed: None (weights in the model dtype) or "
                      f"{', '.join(map(repr, QUANTIZE))} (float8 e4m3 weights with per-output-channel scales)")


# ------------------------------------------------------------------------------------------------ arithmetic
def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel FP8 of a weight, on its device.

    Args:
        w: (N, K) floating-point weight.

    Returns:
        q: (N, K) float8_e4m3fn; scale: (N,) float32, with ``w ~= q.float() * scale[:, None]``.
    """
    n, k = w.shape
    q = torch.empty((n, k), dtype=FP8, device=w.device)
    scale = torch.empty(n, dtype=torch.float32, device=w.device)
    rows = max(1, _CHUNK // max(k, 1))
    for start in range(0, n, rows):
        chunk = w[start : start + rows].float()
        amax = chunk.abs().amax(dim=1)
        s = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        # amax / s can round a hair above 448, which e4m3fn cannot hold
        q[start : start + rows] = (chunk / s[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
        scale[start : start + rows] = s
    return q, scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, K) weight in ``dtype`` from q (N, K) float8 and scale (N,) float32 (product in float32, one rounding)."""
    return (q.float() * scale[:, None]).to(dtype)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) FP8 of activations: x (M, K) -> (M, K) float8_e4m3fn and (M, 1) float32 scales."""
    amax = x.abs().amax(dim=-1, keepdim=True).float()
    scale = amax.clamp(min=_MIN_ROW_SCALE) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def linear_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
                     ) -> torch.Tensor:
    """x (..., K) -> (..., N): dequantize the weight to x's dtype, then ``F.linear``."""
    return F.linear(x, dequantize_weight(q, scale, x.dtype), bias)


def linear_scaled_mm(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
                     quantize: Callable = quantize_rows) -> torch.Tensor:
    """x (..., K) bf16 -> (..., N) bf16 through ``torch._scaled_mm`` with row-wise scales: the activations
    quantized per row by ``quantize``, the weight q (N, K) read column-major as (K, N), scale (N,) as (1, N)."""
    lead = x.shape[:-1]
    xq, xs = quantize(x.reshape(-1, x.shape[-1]))
    y = torch._scaled_mm(xq, q.t(), scale_a=xs, scale_b=scale.view(1, -1), bias=bias, out_dtype=x.dtype)
    return y.view(*lead, q.shape[0])


# ------------------------------------------------------------------------------------------------ the device
@functools.lru_cache(maxsize=None)
def scaled_mm_works(device: torch.device) -> bool:
    """Whether torch's row-wise scaled FP8 product runs on ``device`` and gives the right numbers: CUDA, compute
    capability >= 8.9, a torch that has it. Tried once per device on a small product (at load, never inside a
    CUDA-graph capture); a failure warns and leaves the reference path."""
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm") or torch.cuda.get_device_capability(device) < (8, 9):
        return False
    try:
        a = torch.full((16, 32), 0.5, device=device).to(FP8)
        b = torch.full((16, 32), 2.0, device=device).to(FP8)
        ones = torch.ones(16, 1, device=device)
        bias = torch.ones(16, device=device, dtype=torch.bfloat16)
        y = torch._scaled_mm(a, b.t(), scale_a=ones, scale_b=ones.view(1, -1), bias=bias, out_dtype=torch.bfloat16)
        ok = bool((y == 33).all())
    except RuntimeError as exc:
        warnings.warn(f"torch._scaled_mm with row-wise scales does not run on {device} (torch {torch.__version__}: "
                      f"{exc}); FP8 weights use the reference path (dequantize, then a product in the model dtype)",
                      stacklevel=2)
        return False
    if not ok:
        warnings.warn(f"torch._scaled_mm gave wrong numbers on {device}; FP8 weights use the reference path",
                      stacklevel=2)
    return ok


@functools.cache
def row_quantizer(device: torch.device) -> Callable:
    """The activation quantizer of the ``scaled_mm`` path on ``device`` (a CUDA device; chosen once, at load): the
    Triton kernel of :mod:`dlm.models.fp8_rows_kernel` (one launch, equal to :func:`quantize_rows`) for what it
    takes, :func:`compiled_quantizer` for the rest (rows that need a copy to be rows); the compiled function for
    everything where the kernel fails its check (a warning says so), the eager one where Triton is missing."""
    from torch.utils._triton import has_triton

    if not has_triton():
        return quantize_rows
    kernel = _row_kernel(device)
    if kernel is None:
        return compiled_quantizer()

    def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return kernel.quantize_rows(x) if kernel.applies(x) else compiled_quantizer()(x)

    return quantize


@functools.cache
def compiled_quantizer() -> Callable:
    """:func:`quantize_rows` compiled with torch.compile (dynamic shapes), or the eager function where the
    compilation fails (a warning says so); built on first use (the eager warm-up run of a step, never a CUDA-graph
    capture, which replays what the warm-up ran)."""
    compiled = torch.compile(quantize_rows, dynamic=True, fullgraph=True)
    try:
        x = torch.randn(3, 32, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(compiled(x)[1], quantize_rows(x)[1])
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: use the eager function
        warnings.warn(f"could not compile the FP8 activation quantizer ({type(exc).__name__}: {exc}); using the "
                      "eager one (more kernels per product)", stacklevel=2)
        return quantize_rows
    return compiled


def _row_kernel(device: torch.device):
    """:mod:`dlm.models.fp8_rows_kernel` if its kernel runs on ``device`` and equals :func:`quantize_rows` there
    (rows of LLaDA-8B's and Dream-7B's widest inputs, with a zero, a NaN and an infinite row), else None with a
    warning."""
    from . import fp8_rows_kernel as kernel

    try:
        for cols in (4096, 18944):
            x = torch.randn(5, cols, device=device, dtype=torch.bfloat16) * 10
            x[1], x[2, 7], x[3, 11] = 0, float("nan"), float("inf")
            (q, s), (q_ref, s_ref) = kernel.quantize_rows(x), quantize_rows(x)
            q_same = (q.view(torch.uint8) == q_ref.view(torch.uint8)) | (q.float().isnan() & q_ref.float().isnan())
            if not (torch.equal(s.nan_to_num(), s_ref.nan_to_num()) and bool(q_same.all())):
                raise ValueError(f"its values differ from quantize_rows' at {cols} columns")
    except Exception as exc:  # noqa: BLE001 - any compiler or launch failure means: do not use the kernel
        warnings.warn(f"the FP8 activation quantizer kernel does not run on {device} ({type(exc).__name__}: "
                      f"{exc}); using the compiled function", stacklevel=2)
        return None
    return kernel


def function_mode_active() -> bool:
    """A torch function mode other than a default-device context is active (e.g. the batch-invariant tiling of
    dlm.engine.numerics): it must see the product as ``F.linear``, so the reference path runs."""
    if not torch._C._is_torch_function_mode_enabled():
        return False
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._device import DeviceContext

    return any(not isinstance(m, DeviceContext) for m in _get_current_function_mode_stack())


# ------------------------------------------------------------------------------------------------ the module
class FP8Linear(nn.Module):
    """``nn.Linear`` with an FP8 weight (see the module doc).

    Attributes:
        weight: (out_features, in_features) float8_e4m3fn.
        weight_scale: (out_features,) float32 per-output-channel scales.
        bias: (out_features,) in the model dtype, or ``None``.
        impl: ``"w8a16"`` or ``"scaled_mm"`` (taken for bf16 inputs outside a torch function mode; ``"w8a16"``
            runs its kernel up to ``w8a16_rows`` rows and ``torch._scaled_mm`` above) or
            ``"reference"``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8, device=device),
                                   requires_grad=False)
        self.weight_scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32, device=device),
                                         requires_grad=False)
        if bias:  # the loader (or from_linear) puts the bias in the model dtype
            self.bias = nn.Parameter(torch.empty(out_features, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.impl = "reference"
        self.compute_dtype: torch.dtype | None = None  # the model dtype, set by select_impl
        self.quantize_rows: Callable = quantize_rows
        self.w8a16_rows = fp8_kernel.max_rows(in_features, out_features)  # (the W8A8 product above)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FP8Linear":
        """The FP8 copy of a loaded ``linear`` (its weight quantized on its device; its bias as it is)."""
        q, scale = quantize_weight(linear.weight.detach())
        out = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        out.weight = nn.Parameter(q, requires_grad=False)
        out.weight_scale = nn.Parameter(scale, requires_grad=False)
        out.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        select_impl(out, q.device, linear.weight.dtype)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features) in x's dtype."""
        if self.impl != "reference" and x.dtype == torch.bfloat16 and not function_mode_active():
            if self.impl == "w8a16" and x.numel() <= self.w8a16_rows * self.in_features:
                return fp8_kernel.linear_w8a16(x, self.weight, self.weight_scale, self.bias)
            return linear_scaled_mm(x, self.weight, self.weight_scale, self.bias, self.quantize_rows)
        return linear_reference(x, self.weight, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"impl={self.impl}")


def select_impl(module: FP8Linear, device: torch.device, dtype: torch.dtype, impl: str | None = None) -> None:
    """The fastest path that runs (or ``impl`` where it runs): the fast paths need a bf16 model on a device with
    row-wise scaled_mm and both dims multiples of 16 (torch._scaled_mm's requirement), ``w8a16`` also the Triton
    kernel; the reference path otherwise."""
    fast = (dtype == torch.bfloat16 and module.in_features % 16 == 0 and module.out_features % 16 == 0
            and scaled_mm_works(device))
    if impl == "reference" or not fast:
        module.impl = "reference"
    elif impl == "scaled_mm" or not fp8_kernel.works(device):
        module.impl = "scaled_mm"
    else:
        module.impl = "w8a16"
    module.compute_dtype = dtype
    module.quantize_rows = row_quantizer(torch.device(device)) if fast else quantize_rows


def set_fp8_impl(model: nn.Module, impl: str) -> int:
    """Force the path of every FP8Linear of ``model``: ``"reference"`` anywhere, ``"scaled_mm"`` or ``"w8a16"``
    where :func:`select_impl` allows it (a ConfigError otherwise). Returns how many layers were set."""
    if impl not in IMPLS:
        raise ConfigError(f"unknown FP8 implementation {impl!r}; allowed: {', '.join(IMPLS)}")
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    for m in layers:
        select_impl(m, m.weight.device, m.compute_dtype, impl)
        if m.impl != impl:
            raise ConfigError(f"FP8 implementation {impl!r} needs a bf16 model on a CUDA device of compute "
                              f"capability >= 8.9 and dims that are multiples of 16"
                              f"{' and Triton' if impl == 'w8a16' else ''}; a {m.in_features}x"
                              f"{m.out_features} layer on {m.weight.device} cannot take it")
    return len(layers)


# ------------------------------------------------------------------------------------------------ the model
def linear_names(model: nn.Module) -> list[str]:
    """Names of every ``nn.Linear`` of ``model`` (the layers FP8 replaces)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def quantize_model(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of an in-memory ``model`` by its :class:`FP8Linear`, one layer at a time (the
    peak is the model plus one layer's FP8 copy). Returns how many were replaced."""
    if getattr(model, "tensor_parallel", None) is not None:
        raise _tensor_parallel_error()
    from .joined import join_projections, split_projections, weights_replaced

    joined = split_projections(model)  # joined q/k/v and gate/up (the fast path's) are quantized as their parts
    names = linear_names(model)
    for name in names:
        _replace(model, name, FP8Linear.from_linear(model.get_submodule(name)))
    weights_replaced(model)
    model.quantization = "fp8"
    if joined:  # and joined again, as FP8 layers
        join_projections(model)
    return len(names)


def quantizing_place(model: nn.Module, quantize, place: Place | None, device: torch.device) -> Place | None:
    """``dlm.load``'s hook: with ``quantize="fp8"``, swap every ``nn.Linear`` of the meta-built ``model`` for a
    meta :class:`FP8Linear` and return the loader's ``place`` callback that quantizes those weights as they
    arrive (see the module doc); ``place`` (a device map's, or ``None``: ``device``) still decides where each
    tensor goes. ``quantize=None`` returns ``place`` unchanged. ConfigError for another value and under tensor
    parallelism."""
    if check_quantize(quantize) is None:
        return place
    if getattr(model, "tensor_parallel", None) is not None:
        raise _tensor_parallel_error()
    targets: dict[str, FP8Linear] = {}
    for name in linear_names(model):
        lin = model.get_submodule(name)
        targets[name + ".weight"] = FP8Linear(lin.in_features, lin.out_features, lin.bias is not None, device="meta")
        _replace(model, name, targets[name + ".weight"])
    model.quantization = quantize

    def put(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        module = targets.get(name)
        # an FP8 weight is quantized from its stored precision (a float32 checkpoint is not rounded to bf16 first)
        to = dtype if module is None else tensor.dtype
        t = place(name, tensor, to) if place is not None else tensor.to(device=device, dtype=to)
        if module is None:
            return t
        q, scale = quantize_weight(t)
        module.weight_scale = nn.Parameter(scale, requires_grad=False)
        select_impl(module, q.device, dtype)
        return q

    return put


def _tensor_parallel_error() -> ConfigError:
    return ConfigError("quantize='fp8' does not combine with tensor_parallel (the sharded layers are torch's "
                       "tensor-parallel nn.Linear); use device_map to spread an FP8 model over GPUs, or load in bf16")


__all__ = ["FP8Linear", "check_quantize", "dequantize_weight", "linear_names", "linear_reference",
           "linear_scaled_mm", "quantize_model", "quantize_rows", "quantize_weight", "quantizing_place",
           "set_fp8_impl"]
