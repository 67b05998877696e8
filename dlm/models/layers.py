"""Pieces shared by the block-diffusion families (LLaDA2.x, SDAR/TraDo): per-head QK-norm, the block-causal mask
and the check of config fields whose other values dlm does not implement.

Both families normalise every head of q and k with an RMSNorm over the head dimension before RoPE (Qwen3's
``q_norm``/``k_norm``, Ling's ``query_layernorm``/``key_layernorm``), and both attend block-causally: a position sees
every key of its own block (bidirectional inside a block) and of all earlier blocks, never a later block.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CheckpointError
from . import elementwise as ew
from .transformer import ArchConfig, Block, RMSNorm


class QKNormBlock(Block):
    """A :class:`Block` with an RMSNorm (weight of size head_dim) on each head of q and of k, before RoPE."""

    def __init__(self, cfg: ArchConfig, index: int = 0):
        super().__init__(cfg, index)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps)

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor, ops: ew.Ops) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, Q, H, D), k (B, Q, Hkv, D): RMSNorm over D in float32, cast back, times the weight."""
        return (ops.rms_norm(q, self.q_norm.weight, self.q_norm.eps),
                ops.rms_norm(k, self.k_norm.weight, self.k_norm.eps))


def block_causal_mask(query_pos: torch.Tensor, key_pos: torch.Tensor, key_valid: torch.Tensor | None,
                      block_size: int) -> torch.Tensor:
    """Which keys each query may see under block-causal attention.

    Blocks are counted from each row's first real token: position p is in block ``p // block_size``, where p is the
    padding-aware position id (0 at the first real token), so left padding never shifts block boundaries.

    Args:
        query_pos: (B, Q) position ids of the queries.
        key_pos: (B, L) position ids of the keys.
        key_valid: (B, L) bool, False for padding keys; ``None`` when every key is real.
        block_size: tokens per block.

    Returns:
        (B, Q, L) bool, True where query q may attend to key l (``DenseAttention``'s per-query key mask).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    q_block = torch.div(query_pos, block_size, rounding_mode="floor")
    k_block = torch.div(key_pos, block_size, rounding_mode="floor")
    mask = k_block[:, None, :] <= q_block[:, :, None]
    if key_valid is not None:
        mask = mask & key_valid[:, None, :].bool()
    return mask


def check_supported(cfg: dict[str, Any], model_type: str, allowed: dict[str, tuple[Any, ...]]) -> None:
    """Fields whose other values dlm does not implement: a CheckpointError naming config.json, the field, its value
    and the supported ones. A missing field reads as the first allowed value (the format's default)."""
    for key, values in allowed.items():
        value = cfg.get(key, values[0])
        if type(value) is not type(values[0]) or value not in values:
            raise CheckpointError(f"config.json field {key!r}={value!r} of a {model_type!r} checkpoint is not "
                                  f"supported (supported: {', '.join(map(repr, values))})")


def embedding_names(embed: str, arch: ArchConfig) -> dict[str, str]:
    """Name map of the embedding, final norm and (untied) head of a Hugging Face style checkpoint."""
    names = {embed: "embed.weight", "model.norm.weight": "norm.weight"}
    if not arch.tie_embeddings:
        names["lm_head.weight"] = "head.weight"
    return names


def make_config(config_cls: type[ArchConfig], **fields: Any) -> ArchConfig:
    """``config_cls(**fields)`` read from a checkpoint; its consistency errors (heads not a multiple of the key/value
    heads, an odd head size, ...) become CheckpointErrors naming config.json."""
    try:
        return config_cls(**fields)
    except ValueError as exc:
        raise CheckpointError(f"config.json describes a model that cannot be built: {exc}") from exc
