"""The bidirectional Llama-style transformer behind LLaDA and Dream.

Both architectures are the same computation with different weight names and settings: pre-norm blocks,
RMSNorm in float32, rotate-half RoPE, full (bidirectional) attention through ``scaled_dot_product_attention``,
a SwiGLU MLP and an untied (or tied) head. Each architecture file maps its checkpoint names onto the internal
names used here (``embed``, ``layers.N.{attn_norm,q,k,v,o,mlp_norm,gate,up,down}``, ``norm``, ``head``).

The forward can run on a subset of canvas positions: ``input_ids``/``position_ids`` hold only the fed
positions, and a cache object passed in as an argument supplies the keys/values of the other positions
(``cache.update(layer, k, v)`` returns the keys/values to attend over). Logits are computed only for the
positions in ``logits_index``, which is where most of the time of a diffusion step goes otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import elementwise as ew
from .attention import attend
from .joined import linear_parts
from .plain import global_hooks, plain_module


@dataclass(frozen=True)
class ArchConfig:
    """Geometry and numerics of a model, independent of its checkpoint format.

    ``vocab_size`` is the number of rows of the embedding (and of logits); ids at or above ``valid_vocab``
    exist only as padding of the embedding matrix and get ``-inf`` logits.
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    norm_eps: float
    rope_theta: float
    max_position: int
    valid_vocab: int | None = None
    qkv_bias: bool = False
    out_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    logit_scale: float | None = None  # multiply logits by this (LLaDA scale_logits: 1/sqrt(d))
    embed_scale: float | None = None  # multiply embeddings by this (LLaDA input_emb_norm: sqrt(d))
    rope_full_precision: bool = True  # rotate q/k in float32 (LLaDA) or in the model dtype (Dream/Qwen2)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def num_parameters(self) -> int:
        d, m, v = self.hidden_size, self.intermediate_size, self.vocab_size
        kv = self.num_kv_heads * self.head_dim
        q = self.num_heads * self.head_dim
        per_layer = d * q + 2 * d * kv + q * d + 3 * d * m + 2 * d
        if self.qkv_bias:
            per_layer += q + 2 * kv
        return v * d * (1 if self.tie_embeddings else 2) + self.num_layers * per_layer + d


class KVCache(Protocol):
    """What the dense (padded-batch) attention needs from a cache: per-layer keys/values to attend over and the
    key mask."""

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the fed positions' ``k``/``v`` (B, Hkv, Q, D); return keys/values (B, Hkv, L, D) to attend over."""

    def key_mask(self) -> torch.Tensor | None:
        """(B, L) bool, True where a key may be attended to; ``None`` when every key is valid."""


class Attention(Protocol):
    """How a layer's fresh queries/keys/values become attention outputs. The model calls it once per layer, after
    RoPE; it decides which keys each query sees (a padded batch with a key mask, a ragged batch over a key/value
    pool, a block-causal mask, ...) and stores the keys/values it must keep.

    q: (B, H, Q, D); k, v: (B, Hkv, Q, D) of the fed positions. Returns (B, H, Q, D).
    """

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor: ...


class DenseAttention:
    """Bidirectional attention of a padded batch: every query of a row sees the row's keys where ``key_mask`` is
    True (all of them when it is ``None``). With a ``cache``, the fed keys/values are written into it first and
    the attention runs over what it returns (the whole canvas)."""

    def __init__(self, cache: KVCache | None, key_mask: torch.Tensor | None, backend: str = "sdpa"):
        if key_mask is None and cache is not None:
            key_mask = cache.key_mask()
        if key_mask is not None and key_mask.dtype != torch.bool:
            key_mask = key_mask.bool()
        self.cache, self.key_mask, self.backend = cache, key_mask, backend

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            k, v = self.cache.update(layer, k, v)
        return attend(q, k, v, self.key_mask, backend=self.backend)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back, then scaled by the weight (as LLaDA and Qwen2 do)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ew.rms_norm(x, self.weight, self.eps)


def rope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of rotate-half RoPE in float32. position_ids: (B, Q) -> two (B, 1, Q, head_dim) tensors."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim))
    freqs = position_ids.to(torch.float32).unsqueeze(-1) * inv_freq  # (B, Q, D/2)
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


class Block(nn.Module):
    """One pre-norm layer: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``.

    Subclasses for other families override :meth:`qk_norm` (e.g. Qwen3's per-head RMSNorm of q and k),
    :meth:`mlp` (e.g. a mixture of experts), :meth:`init_qkv` with :meth:`project_qkv` (a fused QKV projection)
    and :meth:`rotate` (partial rotary embeddings); the attention itself is the :class:`Attention` passed in. Head
    counts are read from the projections' outputs, so a tensor-parallel shard of the layer (fewer local heads)
    runs the same code.
    """

    def __init__(self, cfg: ArchConfig, index: int = 0):
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.cfg = cfg
        self.index = index  # layer number: families whose first layers differ (dense before MoE) read it
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.init_qkv(cfg)
        self.o = nn.Linear(cfg.num_heads * hd, d, bias=cfg.out_bias)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        self.init_mlp(cfg)

    def init_qkv(self, cfg: ArchConfig) -> None:
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q = nn.Linear(d, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)

    def init_mlp(self, cfg: ArchConfig) -> None:
        self.gate = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def project_qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hook: normalised hidden states h (B, Q, d) -> q (B, Q, H, D), k and v (B, Q, Hkv, D); separate
        projections here, or joined ones (:mod:`dlm.models.joined`); a checkpoint's fused QKV overrides it."""
        B, Q, _ = h.shape
        hd = self.cfg.head_dim
        q, k, v = linear_parts(self, "q_k_v", h)
        return q.view(B, Q, -1, hd), k.view(B, Q, -1, hd), v.view(B, Q, -1, hd)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               ops: ew.Ops) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook: RoPE of q (B, H, Q, D) and k (B, Hkv, Q, D) with cos/sin from :meth:`Transformer.rope`; all of
        the head here (partial rotary embeddings override it)."""
        return ops.rope(q, k, cos, sin, self.cfg.rope_full_precision)

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor, ops: ew.Ops) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook between the projections and RoPE; q (B, Q, H, D), k (B, Q, Hkv, D). Identity here."""
        return q, k

    def mlp(self, h: torch.Tensor, ops: ew.Ops) -> torch.Tensor:
        """The feed-forward part on normalised hidden states h (B, Q, d): SwiGLU."""
        gate, up = linear_parts(self, "gate_up", h)
        return ops.project(self.down, ops.swiglu(gate, up))

    def forward(
        self,
        x: torch.Tensor,  # (B, Q, d)
        cos: torch.Tensor,
        sin: torch.Tensor,
        layer: int,
        attention: Attention,
        ops: ew.Ops = ew.EAGER,
    ) -> torch.Tensor:
        q, k, v = self.before_attention(x, cos, sin, ops)
        return self.after_attention(x, attention(layer, q, k, v), ops)

    def before_attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ops: ew.Ops
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The layer up to its attention: q (B, H, Q, D), k and v (B, Hkv, Q, D) of hidden states x (B, Q, d).
        Only the attention sees more than one position at a time (piecewise CUDA graphs,
        :mod:`dlm.engine.pieces`, capture the rest per number of positions)."""
        return self.attention_inputs(x, None, cos, sin, ops)[1:]

    def after_attention(self, x: torch.Tensor, a: torch.Tensor, ops: ew.Ops) -> torch.Tensor:
        """The layer after its attention: x (B, Q, d) and the attention's output a (B, H, Q, D) -> the next
        layer's x."""
        x, m = self.attention_outputs(x, a, ops)
        return x + m

    def attention_inputs(self, x: torch.Tensor, pending: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                         ops: ew.Ops) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`before_attention` of the hidden states ``x + pending`` (``pending``: the previous layer's MLP
        output, not added yet, or None): the add and this layer's norm are one function (``ops.add_norm``).
        Returns (the hidden states, q, k, v)."""
        if pending is None:
            h = ops.rms_norm(x, self.attn_norm.weight, self.attn_norm.eps)
        else:
            x, h = ops.add_norm(x, pending, self.attn_norm.weight, self.attn_norm.eps)
        q, k, v = self.project_qkv(h)
        q, k = self.qk_norm(q, k, ops)
        q, k = self.rotate(q.transpose(1, 2), k.transpose(1, 2), cos, sin, ops)
        return x, q, k, v.transpose(1, 2)

    def attention_outputs(self, x: torch.Tensor, a: torch.Tensor, ops: ew.Ops) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`after_attention` without its last add: (the hidden states after the attention's residual add,
        the MLP's output). The next layer adds them (:meth:`attention_inputs`)."""
        B, Q, _ = x.shape
        x, h = ops.add_norm(x, ops.project(self.o, a.transpose(1, 2).reshape(B, Q, -1)), self.mlp_norm.weight,
                            self.mlp_norm.eps)
        return x, self.mlp(h, ops)


_OWN = ("forward", "before_attention", "after_attention")


def plain_layers(model) -> bool:
    """Whether the model's forward may call its layers' halves directly instead of the layers: each layer's
    ``forward`` and halves are :class:`Block`'s own (no family or instance overrides them, no ``compile()``), and
    no hooks sit on the model, its layers or every module (a device map's moving hooks, for one), which calling
    the halves would skip (:mod:`dlm.models.plain`). Then a layer's last add can wait for the next layer's norm
    (:meth:`Block.attention_inputs`), and piecewise CUDA graphs can cut the forward at its attentions. (Checked at
    every eager forward: about 20 us for 32 layers on a CPU core.)"""
    if global_hooks():
        return False
    for cls in {type(layer) for layer in model.layers}:
        if any(getattr(cls, name) is not getattr(Block, name) for name in _OWN):
            return False
    for m in (model, *model.layers):
        if not plain_module(m):
            return False
        if m is not model and ("before_attention" in m.__dict__ or "after_attention" in m.__dict__):
            return False
    return True


class Transformer(nn.Module):
    """Bidirectional transformer over (a subset of) the canvas.

    Args of :meth:`forward`:
        input_ids: (B, Q) token ids of the fed positions.
        position_ids: (B, Q) RoPE positions of the fed positions (padding-aware: cumsum(mask) - 1).
        key_mask: (B, L) bool, True for keys that may be attended to. Without a cache, L == Q.
            With a cache, the cache's own key mask is used when this is ``None``.
        cache: an object with ``update(layer, k, v)``; ``None`` means the fed positions are the whole canvas.
        logits_index: which fed positions get logits: ``None`` (all), a ``slice`` or a (B, n) index tensor.
        ops: the elementwise functions (:class:`~dlm.models.elementwise.Ops`); ``None``: the model's ``ops``.

    Returns:
        (B, n, vocab_size) logits in the model dtype.
    """

    block_class: type[Block] = Block  # a family with other layers (QK-norm, experts) subclasses and swaps it

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(self.block_class(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.attn_backend = "sdpa"
        # key/value heads this process computes: all of them, or its shard under tensor parallelism
        self.kv_heads = cfg.num_kv_heads
        self.ops: ew.Ops = ew.EAGER  # ew.fused_ops() with dlm.load(..., fused_kernels=True)
        # bumped by what replaces weight tensors in place of others (weights_replaced): CUDA graphs read weights
        # by address, so graphs captured before must not replay after
        self.weights_version = 0

    def _apply(self, *args, **kwargs):
        """``to``, ``cuda``, ``half``, ... (every conversion of the parameters goes through here) give the weights
        new tensors: graphs captured before must not replay over the old ones (also when the conversion fails
        part-way, having replaced some)."""
        try:
            return super()._apply(*args, **kwargs)
        finally:
            self.weights_version = getattr(self, "weights_version", 0) + 1

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """A state dict loaded with ``assign=True`` (into this model or a module holding it) makes its tensors
        the weights (new addresses), which graphs captured before must not replay over. Copies into the existing
        tensors keep the addresses: graphs read the new values."""
        if local_metadata.get("assign_to_params_buffers", False):
            self.weights_version += 1  # (before the tensors are replaced: a load that fails part-way counts)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def rope(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin (B, 1, Q, D) of the fed positions (B, Q); a family with partial rotary embeddings overrides it."""
        return rope_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)

    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.cfg.tie_embeddings else self.head.weight

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        *,
        attention: Attention | None = None,
        ops: ew.Ops | None = None,
    ) -> torch.Tensor:
        """(B, Q, d) hidden states of the fed positions. ``attention`` decides what each query sees; without it,
        a :class:`DenseAttention` over ``cache`` (or the fed positions) with ``key_mask``. ``ops``: the
        elementwise functions (default: the model's)."""
        if attention is None:
            attention = DenseAttention(cache, key_mask, self.attn_backend)
        ops = self.ops if ops is None else ops
        x = self.embed_ids(input_ids)
        cos, sin = self.rope(position_ids)
        if not plain_layers(self):
            for i, layer in enumerate(self.layers):
                x = layer(x, cos, sin, i, attention, ops)
            return x
        pending = None  # each layer's MLP output, added to x with the next layer's norm (the same values)
        for i, layer in enumerate(self.layers):
            x, q, k, v = layer.attention_inputs(x, pending, cos, sin, ops)
            x, pending = layer.attention_outputs(x, attention(i, q, k, v), ops)
        return x if pending is None else x + pending

    def embed_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, Q) ids -> (B, Q, d) input hidden states (the embedding, scaled where the family scales it)."""
        x = self.embed(input_ids)
        if self.cfg.embed_scale is not None:
            x = x * self.cfg.embed_scale
        return x

    def gather_logits(self, hidden: torch.Tensor, logits_index: torch.Tensor | slice | None) -> torch.Tensor:
        """Logits of the positions ``logits_index`` (see :meth:`forward`) of hidden states (B, Q, d)."""
        if isinstance(logits_index, slice):
            hidden = hidden[:, logits_index]
        elif logits_index is not None:
            hidden = hidden.gather(1, logits_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self.logits(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + head on (B, n, d) hidden states."""
        cfg = self.cfg
        h = self.norm(hidden)
        # an untied head runs as its module, which may be a quantized linear (dlm.models.fp8)
        out = F.linear(h, self.embed.weight) if cfg.tie_embeddings else self.head(h)
        if cfg.logit_scale is not None:
            out = out * cfg.logit_scale
        if cfg.valid_vocab is not None and cfg.valid_vocab < cfg.vocab_size:
            out[..., cfg.valid_vocab :] = float("-inf")
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        logits_index: torch.Tensor | slice | None = None,
        *,
        attention: Attention | None = None,
        ops: ew.Ops | None = None,
    ) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        h = self.hidden_states(input_ids, position_ids, key_mask, cache, attention=attention, ops=ops)
        return self.gather_logits(h, logits_index)


def init_weights(model: Transformer, std: float = 0.02, generator: torch.Generator | None = None) -> None:
    """Normal(0, std) init of every matrix, ones for norms, zeros for biases; residual outputs scaled down."""
    n = model.cfg.num_layers
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                s = std / math.sqrt(2 * n) if name.endswith((".o.weight", ".down.weight")) else std
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float32) * s)
