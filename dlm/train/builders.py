"""Building and saving the shipped models.

* dlm-tiny: a :class:`dlm.models.Transformer` saved with :func:`dlm.models.save_checkpoint` as a genuine LLaDA
  checkpoint (``model_type`` "llada", OLMo-style fields, LLaDA weight names, bf16 safetensors shards < 15 MiB).
* dlm-tiny-ar: a ``transformers.LlamaForCausalLM`` of the same geometry and tokenizer, saved with
  ``save_pretrained`` (safetensors shards < 15 MiB) so that ``AutoModelForCausalLM`` loads it without remote code.
* dlm-tiny-block: a block-diffusion model of the same geometry and tokenizer in the SDAR format (Qwen3 layout with
  QK-norm, ``model_type`` "sdar", ``block_size`` and ``mask_token_id`` in config.json like SDAR's training config).

Folders are written next to their final place and then swapped in, so a run killed while saving still leaves the
previous complete folder.
"""

from __future__ import annotations

import copy
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
import torch

from ..errors import ConfigError, DlmError
from ..models import ArchConfig, SpecialIds, Transformer, init_weights, save_checkpoint
from .tokenizer import TOKENIZER_FILES, TokenIds

SHARD_BYTES = 14 * 2**20  # below the 15 MiB limit on any file of the bundled models


@dataclass(frozen=True)
class ModelSize:
    """Geometry shared by dlm-tiny and dlm-tiny-ar."""

    d_model: int = 256
    n_layers: int = 8
    n_heads: int = 4
    mlp_hidden: int = 704
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "mlp_hidden", "max_seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            raise ConfigError(f"d_model ({self.d_model}) must split into n_heads ({self.n_heads}) heads of even size")


def padded_vocab(n_tokens: int, multiple: int = 64) -> int:
    """Embedding rows for ``n_tokens`` tokens, rounded up to a multiple (tensor-core friendly)."""
    return -(-n_tokens // multiple) * multiple


def diffusion_arch(size: ModelSize, n_tokens: int) -> ArchConfig:
    return ArchConfig(vocab_size=padded_vocab(n_tokens), valid_vocab=n_tokens, hidden_size=size.d_model,
                      num_layers=size.n_layers, num_heads=size.n_heads, num_kv_heads=size.n_heads,
                      head_dim=size.d_model // size.n_heads, intermediate_size=size.mlp_hidden, norm_eps=size.norm_eps,
                      rope_theta=size.rope_theta, max_position=size.max_seq_len)


def build_diffusion(size: ModelSize, n_tokens: int, seed: int = 0) -> Transformer:
    """dlm-tiny with N(0, 0.02) weights (residual outputs scaled by 1/sqrt(2 n_layers)), float32 on the CPU."""
    model = Transformer(diffusion_arch(size, n_tokens))
    init_weights(model, std=0.02, generator=torch.Generator().manual_seed(seed))
    return model


def load_initial(model: Transformer, folder: str | os.PathLike) -> Transformer:
    """Copy the weights of the checkpoint ``folder`` (read with :func:`dlm.load`, safetensors only) into ``model``,
    whose architecture must be the checkpoint's; raises ConfigError naming what differs."""
    from ..api import load

    try:
        state = load(folder, device="cpu", dtype="float32", tokenizer=False).model.state_dict()
    except DlmError as exc:
        raise ConfigError(f"init_from={str(folder)!r}: {exc}") from None
    own = model.state_dict()
    diff = sorted(k for k in own.keys() | state.keys()
                  if k not in own or k not in state or own[k].shape != state[k].shape)
    if diff:
        shapes = ", ".join(f"{k}: {tuple(own[k].shape) if k in own else '-'} here, "
                           f"{tuple(state[k].shape) if k in state else '-'} there" for k in diff[:4])
        raise ConfigError(f"init_from={str(folder)!r} does not match the model the size options build ({shapes}); "
                          f"give the same --d-model/--n-layers/--n-heads/--mlp-hidden and --tokenizer-from it")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(state[k])
    return model


def build_causal(size: ModelSize, n_tokens: int, ids: TokenIds, seed: int = 0):
    """dlm-tiny-ar: a ``LlamaForCausalLM`` of the same geometry (untied head), float32 on the CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=padded_vocab(n_tokens), hidden_size=size.d_model, intermediate_size=size.mlp_hidden,
        num_hidden_layers=size.n_layers, num_attention_heads=size.n_heads, num_key_value_heads=size.n_heads,
        max_position_embeddings=size.max_seq_len, rms_norm_eps=size.norm_eps, rope_theta=size.rope_theta,
        hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        bos_token_id=ids.bos, eos_token_id=ids.eos, pad_token_id=ids.pad, initializer_range=0.02,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def block_arch(size: ModelSize, n_tokens: int) -> ArchConfig:
    """The SDAR (Qwen3) geometry of dlm-tiny-block: dlm-tiny's sizes, per-head QK-norm, RoPE in the model dtype
    (as SDAR computes it); exactly what :class:`dlm.models.sdar.SDAR` reads back from the saved config.json."""
    return ArchConfig(vocab_size=padded_vocab(n_tokens), hidden_size=size.d_model, num_layers=size.n_layers,
                      num_heads=size.n_heads, num_kv_heads=size.n_heads, head_dim=size.d_model // size.n_heads,
                      intermediate_size=size.mlp_hidden, norm_eps=size.norm_eps, rope_theta=size.rope_theta,
                      max_position=size.max_seq_len, rope_full_precision=False)


def build_block(size: ModelSize, n_tokens: int, seed: int = 0) -> Transformer:
    """dlm-tiny-block (an :class:`~dlm.models.sdar.SDARModel`) initialised like dlm-tiny, float32 on the CPU."""
    from ..models.sdar import SDARModel

    model = SDARModel(block_arch(size, n_tokens))
    init_weights(model, std=0.02, generator=torch.Generator().manual_seed(seed))
    return model


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _swap_in(tmp: Path, final: Path) -> Path:
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _fresh(folder: Path) -> Path:
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def copy_tokenizer(tokenizer_dir: Path, folder: Path) -> None:
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, folder / name)


def save_diffusion(model: Transformer, ids: TokenIds, tokenizer_dir: str | os.PathLike, folder: str | os.PathLike,
                   extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write dlm-tiny (LLaDA format, bf16) + tokenizer (+ extra files such as the model card) into ``folder``."""
    folder = Path(folder)
    tmp = _fresh(folder)
    special = SpecialIds(mask_id=ids.mask, eos_id=ids.eos, pad_id=ids.pad, bos_id=ids.bos)
    save_checkpoint(model, "llada", special, tmp, dtype=torch.bfloat16, max_shard_bytes=SHARD_BYTES,
                    extra_config={"max_sequence_length": model.cfg.max_position})
    copy_tokenizer(Path(tokenizer_dir), tmp)
    _write_extra(tmp, extra_files)
    return _swap_in(tmp, folder)


def save_block(model: Transformer, ids: TokenIds, block_size: int, tokenizer_dir: str | os.PathLike,
               folder: str | os.PathLike, extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write dlm-tiny-block (SDAR format, bf16) + tokenizer (+ extra files) into ``folder``. The tokenizer is
    dlm-tiny's: its mask token ``<|mdm_mask|>`` is declared as the tokenizer's ``mask_token`` (what SDAR's
    ``generate.py`` reads) and as ``mask_token_id`` in config.json (what SDAR's training code and dlm read)."""
    folder = Path(folder)
    tmp = _fresh(folder)
    special = SpecialIds(mask_id=ids.mask, eos_id=ids.eos, pad_id=ids.pad, bos_id=ids.bos)
    save_checkpoint(model, "sdar", special, tmp, dtype=torch.bfloat16, max_shard_bytes=SHARD_BYTES,
                    extra_config={"block_size": block_size, "mask_token_id": ids.mask})
    copy_tokenizer(Path(tokenizer_dir), tmp)
    _write_extra(tmp, extra_files)
    return _swap_in(tmp, folder)


def save_causal(model, tokenizer_dir: str | os.PathLike, folder: str | os.PathLike,
                extra_files: dict[str, str | bytes] | None = None) -> Path:
    """Write dlm-tiny-ar (transformers format, bf16 safetensors shards) + tokenizer (+ extra files)."""
    folder = Path(folder)
    tmp = _fresh(folder)
    bf16 = copy.deepcopy(model).to(device="cpu", dtype=torch.bfloat16)
    bf16.generation_config.do_sample = False
    bf16.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="14MB")
    copy_tokenizer(Path(tokenizer_dir), tmp)
    _write_extra(tmp, extra_files)
    return _swap_in(tmp, folder)


def _write_extra(folder: Path, files: dict[str, str | bytes] | None) -> None:
    for name, content in (files or {}).items():
        path = folder / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
