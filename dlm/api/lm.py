"""DiffusionLM: a loaded model + tokenizer + special ids, with ``generate``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..config import GenerationConfig
from ..errors import CheckpointError, ConfigError
from ..models.base import Architecture, SpecialIds
from ..models.transformer import ArchConfig, Transformer
from ..outputs import GenerationOutput, StepEvent, merge_outputs

PromptInput = str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]] | torch.Tensor


class DiffusionLM:
    """A masked-diffusion language model ready to generate.

    Attributes:
        model: the :class:`~dlm.models.transformer.Transformer`.
        tokenizer: a transformers tokenizer, or ``None`` (then prompts must be token ids).
        ids: the :class:`SpecialIds` (mask, EOS, pad, stop tokens).
        arch_cls: the checkpoint format (``LLaDA``, ``Dream``, ...).
        logits_shift: 1 when the logit at position i-1 predicts token i (Dream), else 0.
        max_length: the model's context (prompt + answer) in tokens.
        path: the folder it was loaded from, if any.
    """

    def __init__(self, model: Transformer, tokenizer: Any | None, ids: SpecialIds, arch_cls: type[Architecture],
                 max_length: int | None = None, path: str | os.PathLike | None = None, config: dict | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.ids = ids
        self.arch_cls = arch_cls
        self.logits_shift = arch_cls.logits_shift
        self.max_length = max_length or model.cfg.max_position
        self.path = Path(path) if path is not None else None
        self.hf_config = config or {}
        self.cuda_graphs = False  # see dlm.models.graphs; set by load(..., cuda_graphs=True)

    @property
    def arch(self) -> ArchConfig:
        return self.model.cfg

    @property
    def model_type(self) -> str:
        return self.arch_cls.model_type

    @property
    def block_size(self) -> int | None:
        """Block-diffusion models (LLaDA2, SDAR): the block their attention is built on; None: bidirectional."""
        return self.arch_cls.block_size(self.hf_config)

    @property
    def device(self) -> torch.device:
        return self.model.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed.weight.dtype

    def __repr__(self) -> str:
        a = self.arch
        return (f"DiffusionLM({self.model_type}, {a.num_parameters / 1e6:.1f}M params, {a.num_layers} layers, "
                f"d={a.hidden_size}, vocab={a.vocab_size}, {self.dtype}, {self.device})")

    # ----------------------------------------------------------------- prompts
    def encode(self, prompts: PromptInput, chat_template: bool = False) -> list[list[int]]:
        """Token ids of each prompt, checked against this model (see :mod:`dlm.prompts` for what is accepted);
        strings are tokenised, id lists pass through. ConfigError for anything else."""
        from ..prompts import encode

        return encode(prompts, self.tokenizer, vocab_size=self.arch.valid_vocab or self.arch.vocab_size,
                      mask_id=self.ids.mask_id, chat_template=chat_template, min_length=self.logits_shift)

    # ----------------------------------------------------------------- generation
    def generate(
        self,
        prompts: PromptInput,
        config: GenerationConfig | None = None,
        *,
        stream: Callable[[StepEvent], None] | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        **overrides: Any,
    ) -> GenerationOutput:
        """Generate an answer for each prompt.

        Args:
            prompts: a string, a list of strings, a list of token-id lists, or a (B, P) tensor of ids.
            config: a :class:`GenerationConfig`; keyword ``overrides`` replace its fields
                (``model.generate(p, gen_length=64, scheduler="threshold")``).
            stream: called with every :class:`StepEvent` (one per request and step; ``event.tag`` is the prompt's
                index).
            batch_size: at most this many prompts decode at once (continuous batching: a prompt starts as soon as
                another finishes); default: all of them.
            progress: show a progress bar over prompts (default: when ``batch_size`` is smaller than the number of
                prompts).

        Every answer is the one its prompt gets alone (see :class:`dlm.Engine`), so ``batch_size`` changes the
        speed, never the output.
        """
        import time

        t0 = time.perf_counter()
        config = config or GenerationConfig()
        if overrides:
            config = config.replace(**overrides)
        ids = self.encode(prompts, chat_template=config.chat_template)
        if not ids:
            raise ConfigError("the batch of prompts is empty; pass at least one prompt")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        rows = min(batch_size or len(ids), len(ids)) * (2 if config.cfg_scale > 0 else 1)
        from .defaults import effective_config
        from ..engine.build import canvas_length

        length = canvas_length(self, max(len(p) for p in ids), effective_config(self, config))
        engine = self.engine_for(rows, length)
        engine.reset_components()
        requests = [engine.prepare(p, config, tag=i, name=f"prompt {i}") for i, p in enumerate(ids)]
        steps0 = engine.core.steps
        for r in requests:
            engine.enqueue(r)
        show = progress if progress is not None else (batch_size is not None and batch_size < len(ids))
        _run_until_done(engine, requests, stream, show)
        failed = next((r for r in requests if r.error is not None), None)
        if failed is not None:
            raise failed.error
        out = merge_outputs([r.output for r in requests])
        out.steps = engine.core.steps - steps0
        out.timings = {"total": time.perf_counter() - t0}
        return out

    def engine_for(self, rows: int, length: int):
        """An idle :class:`dlm.Engine` with at least ``rows`` rows of ``length`` positions (reused across calls)."""
        from .engine import Engine

        e = getattr(self, "_engine", None)
        # rebuilt when CUDA graphs or the elementwise functions changed since it was built (its captured graphs
        # hold the functions of their capture), or the weights were replaced (their dtype and device are its
        # key/value pool's)
        setting = (bool(self.cuda_graphs), self.model.ops, getattr(self.model, "weights_version", 0))
        if (e is None or e.pending or e.core.max_rows < rows or e.core.slot_len < length
                or getattr(self, "_engine_setting", setting) != setting):
            self._engine = None  # free the old pool first
            e = self._engine = Engine(self, max_rows=rows, max_tokens=rows * length)
            self._engine_setting = setting
        return e


def _run_until_done(engine, requests, stream, show: bool) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(requests), desc="generate", unit="prompt", disable=not show)
    finished = 0
    while not all(r.done for r in requests):
        for event in engine.step():
            if stream is not None:
                stream(event)
                if event.stop_requested and not event.request.done:
                    engine.cancel(event.request)
        now = sum(r.done for r in requests)
        bar.update(now - finished)
        finished = now
    bar.close()


def load(path: str | os.PathLike | None = None, *, dtype: str | torch.dtype | None = "auto",
         device: str | torch.device | None = None, tokenizer: Any = True, attn_backend: str = "sdpa",
         fast: bool = True, cuda_graphs: bool | None = None, fused_kernels: bool | None = None,
         device_map: str | dict | None = None, max_memory: dict | None = None, tensor_parallel: Any = None,
         quantize: str | None = None) -> DiffusionLM:
    """Load a LLaDA- or Dream-format checkpoint folder (config.json + safetensors + tokenizer).

    Args:
        path: the folder. ``None`` loads the bundled ``dlm-tiny`` model.
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        device: ``"cuda"``, ``"cpu"``, ... (default: CUDA when available).
        tokenizer: True loads it from the folder with transformers' AutoTokenizer; a path or tokenizer object
            uses that; False loads none (prompts must then be token ids).
        attn_backend: ``"sdpa"`` (torch) or ``"flash_attn"`` (needs the ``dlm[gpu]`` extra).
        fast: the fast path by default: on one CUDA device (no ``device_map`` or ``tensor_parallel``),
            ``cuda_graphs`` and ``fused_kernels`` left at ``None`` are switched on (fused kernels only where
            Triton is installed); ``fast=False`` leaves both off (the eager reference path). Off on the CPU.
        cuda_graphs: on CUDA, capture repeated step shapes in CUDA graphs and replay them (see
            :mod:`dlm.engine.graphs`); ignored on CPU. ``None``: as ``fast`` decides; True / False override it.
        fused_kernels: fuse the elementwise parts of each layer (RMSNorm, RoPE, SwiGLU) with ``torch.compile``
            (see :mod:`dlm.models.elementwise`); compiled on first use (Triton on CUDA, a C++ compiler on CPU).
            Also joins each layer's q/k/v and gate/up weights so that small CUDA steps run one product per group
            (see :mod:`dlm.models.joined`). Same arithmetic as the eager path up to floating-point rounding.
            ``None``: as ``fast`` decides; True / False override it.
        device_map: spread whole layers over devices, for a model larger than one GPU: ``"auto"`` (balanced over
            the GPUs within ``max_memory``), ``"sequential"``, or a dict ``{"embed": 0, "layers.0": 0, ...}``;
            each weight is streamed straight to its device (see :mod:`dlm.parallel.placement`).
        max_memory: per-device budget of ``device_map``, e.g. ``{0: "20GiB", 1: "20GiB"}``.
        tensor_parallel: split every layer over this many processes launched with torchrun (or pass a
            :class:`dlm.parallel.TensorParallel` for another mode, see :mod:`dlm.parallel.tensor`); every rank
            must run the same generation.
        quantize: ``None`` (weights in ``dtype``) or ``"fp8"``: every linear layer (attention, dense MLP, shared
            experts, an untied head) stored as float8 e4m3 with per-output-channel scales, quantized on its
            device as it is read (see :mod:`dlm.models.fp8`); embeddings, norms, routers and the stacked MoE
            experts stay in ``dtype``. On CUDA with compute capability >= 8.9 and bfloat16, products of up to 128
            rows run a Triton kernel with bf16 activations (W8A16) and larger ones ``torch._scaled_mm``
            (activations quantized per token); elsewhere, the CPU included, it dequantizes each weight before
            its product (half the weight memory, no speed-up). Combines with ``cuda_graphs``,
            ``fused_kernels`` and ``device_map``; ``tensor_parallel`` gives a ConfigError.
    """
    from ..models.loading import parse_dtype, read_config, weight_files

    if path is None:
        from ..assets import default_model_path

        path = default_model_path()
    folder, cfg, arch_cls = read_config(path)
    _check_switches(fast=fast, cuda_graphs=cuda_graphs, fused_kernels=fused_kernels)
    par, device = _placement(device, device_map, max_memory, tensor_parallel, bool(cuda_graphs))
    cuda_graphs, fused_kernels = fast_options(fast, cuda_graphs, fused_kernels, device, par is not None)
    dt = parse_dtype(dtype, device)
    _check_attn_backend(attn_backend)
    arch = arch_cls.parse_config(cfg)
    weight_files(folder)  # fail on missing / pickle-only weights before spending time on the tokenizer
    tok = _tokenizer(tokenizer, folder, arch_cls)
    model = _model_with_weights(folder, cfg, arch_cls, arch, par, dt, device, quantize)
    model.attn_backend = attn_backend
    return set_fast_path(_assembled(model, tok, folder, cfg, arch_cls), cuda_graphs, fused_kernels)


def load_meta(path: str | os.PathLike | None = None, *, tokenizer: Any = True) -> DiffusionLM:
    """The checkpoint's tokenizer, special ids and geometry without its weights (the model on the meta device,
    nothing read from the safetensors files but their names): for a process that prepares prompts and reads
    answers while another one holds the weights (``dlm serve``'s HTTP side). Checks the folder as :func:`load`
    does; ``generate`` cannot run on it."""
    from ..models.loading import build_model, read_config, weight_files

    if path is None:
        from ..assets import default_model_path

        path = default_model_path()
    folder, cfg, arch_cls = read_config(path)
    arch = arch_cls.parse_config(cfg)
    weight_files(folder)
    tok = _tokenizer(tokenizer, folder, arch_cls)
    model = build_model(arch, device="meta", model_class=arch_cls.model_class)
    return _assembled(model, tok, folder, cfg, arch_cls)


def _assembled(model: Transformer, tok, folder: Path, cfg: dict, arch_cls) -> DiffusionLM:
    """The DiffusionLM of a checkpoint folder's model and tokenizer (the vocabulary checked against it)."""
    _check_vocab(tok, model.cfg)
    ids = arch_cls.special_ids(cfg, tok)
    return DiffusionLM(model, tok, ids, arch_cls, max_length=arch_cls.max_length(cfg), path=folder, config=cfg)


def set_fast_path(lm: DiffusionLM, cuda_graphs: bool, fused_kernels: bool) -> DiffusionLM:
    """Switch ``lm``'s CUDA graphs and fused kernels (the elementwise functions, and the joined q/k/v and
    gate/up products of :mod:`dlm.models.joined`) on or off: what :func:`load` does with its resolved options;
    also for models built another way, e.g. random weights."""
    from ..engine.pieces import forget
    from ..models.elementwise import EAGER, fused_ops
    from ..models.joined import join_projections, split_projections
    from ..models.skinny import prepare

    forget(lm.model)  # its piecewise graphs read the weights and functions this may replace
    lm.cuda_graphs = bool(cuda_graphs)
    lm.model.ops = fused_ops((lm.dtype, type(lm.model).__name__, lm.model_type)) if fused_kernels else EAGER
    (join_projections if fused_kernels else split_projections)(lm.model)
    if fused_kernels:
        prepare(lm.model)
    return lm


def _model_with_weights(folder: Path, cfg: dict, arch_cls, arch, par, dt: torch.dtype, device: torch.device,
                        quantize: str | None):
    """The model built on the meta device, then its weights streamed in: placed by the parallel plan ``par``
    (device map / tensor parallel, or None), quantized when asked."""
    from ..models.fp8 import quantizing_place
    from ..models.loading import build_model, load_weights

    model = build_model(arch, device="meta", model_class=arch_cls.model_class)
    place = par.prepare(model, dt) if par is not None else None
    place = quantizing_place(model, quantize, place, device)
    names = arch_cls.name_map(arch, cfg)
    names = par.names(names, model) if par is not None else names
    load_weights(model, folder, names, dt, device, place=place)
    if par is not None:
        par.finish(model)
    return model


def _check_switches(fast, cuda_graphs, fused_kernels) -> None:
    if not isinstance(fast, bool):
        raise ConfigError(f"fast must be True or False, got {fast!r}")
    for name, value in (("cuda_graphs", cuda_graphs), ("fused_kernels", fused_kernels)):
        if value is not None and not isinstance(value, bool):
            raise ConfigError(f"{name} must be True, False or None (as `fast` decides), got {value!r}")


def fast_options(fast: bool, cuda_graphs: bool | None, fused_kernels: bool | None, device: torch.device,
                 parallel: bool) -> tuple[bool, bool]:
    """(cuda_graphs, fused_kernels) with ``None`` resolved: on when ``fast`` and the model runs on one CUDA
    device (``parallel``: a device map or tensor parallelism), fused kernels only where Triton is installed."""
    auto = bool(fast) and device.type == "cuda" and not parallel
    graphs = auto if cuda_graphs is None else cuda_graphs
    fused = (auto and _triton_available()) if fused_kernels is None else fused_kernels
    return graphs, fused


def _triton_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def _check_vocab(tok, arch) -> None:
    if tok is not None and len(tok) > (arch.valid_vocab or arch.vocab_size):
        raise CheckpointError(f"the tokenizer has {len(tok)} tokens but the model's vocabulary has "
                              f"{arch.valid_vocab or arch.vocab_size}")


def _placement(device, device_map, max_memory, tensor_parallel, cuda_graphs):
    """(the parallel loading plan or None, the torch.device the model lives on)."""
    par = None
    if device_map is not None or max_memory is not None or tensor_parallel is not None:
        from ..parallel.load import ParallelLoad

        par = ParallelLoad.create(device=device, device_map=device_map, max_memory=max_memory,
                                  tensor_parallel=tensor_parallel, cuda_graphs=cuda_graphs)
        device = device if par is None else par.device
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return par, torch.device(device)


def _check_attn_backend(attn_backend: str) -> None:
    from ..models.attention import BACKENDS, flash_attn_available

    if attn_backend not in BACKENDS:
        raise ConfigError(f"unknown attn_backend {attn_backend!r}; allowed: {', '.join(BACKENDS)}")
    if attn_backend == "flash_attn" and not flash_attn_available():
        raise ConfigError("attn_backend='flash_attn' needs the flash-attn package and a CUDA device "
                          "(pip install 'dlm[gpu]'); the default 'sdpa' needs nothing extra")


def _tokenizer(tokenizer, folder: Path, arch_cls):
    """``load``'s tokenizer argument resolved: True -> the folder's, a path -> that folder's, an object as is."""
    from ..models.loading import load_tokenizer

    if tokenizer is True:
        return load_tokenizer(folder, arch_cls)
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(Path(tokenizer), arch_cls)
    return None if tokenizer in (False, None) else tokenizer


def from_model(model: Transformer, arch_cls: type[Architecture] | str, ids: SpecialIds,
               tokenizer: Any | None = None) -> DiffusionLM:
    """Wrap an in-memory :class:`Transformer` (e.g. random weights for benchmarks) as a DiffusionLM."""
    from ..models.base import MODELS

    if isinstance(arch_cls, str):
        arch_cls = MODELS.get(arch_cls)
    return DiffusionLM(model, tokenizer, ids, arch_cls)
