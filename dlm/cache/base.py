"""The cache interface: which canvas positions a step recomputes, and the keys/values of the others.

A cache policy is an object the engine passes explicitly into the model's forward; nothing is attached to
modules. It owns per-layer key/value storage laid out like the canvas, (rows, kv_heads, L, head_dim),
allocated once per generation in :meth:`CachePolicy.setup`. Each step the engine asks :meth:`CachePolicy.plan`
which positions to feed; during the forward every layer calls :meth:`CachePolicy.update` with the fed
positions' fresh keys/values, which are written into the storage at their canvas positions, and gets back the
keys/values of the whole canvas to attend over: fresh where fed, cached elsewhere. After the step,
:meth:`CachePolicy.after_step` learns what was committed.

A step that feeds every position is a *refresh*: it rewrites the whole storage, and its logits are bitwise those
of the no-cache forward. A policy whose ``refresh_every`` is 1 is therefore exact (tested for every policy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import RegistryError
from ..registry import Configurable, Registry


@dataclass(frozen=True)
class CacheContext:
    """What a policy needs to allocate its storage for one generation.

    ``rows`` counts model rows: the batch size, doubled under classifier-free guidance (``copies`` == 2).
    """

    rows: int
    copies: int
    canvas_length: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    answer_start: int
    logits_shift: int


@dataclass
class StepInfo:
    """The engine's state when it asks for a plan (tensors are (B, L) over the canvas, B without CFG copies).

    Attributes:
        step: forward passes so far in this block; 0 is the block's first step.
        global_step: forward passes so far in this generation.
        block_start, block_end: the active block.
        region_start, region_end: positions that need candidates (their logits come from ``pos - shift``).
        masked: still-masked positions.
        committed_last: positions committed by the previous step.
        length: effective canvas length (positions at or beyond it are dropped, see EoTP).
        confidence: (B, region) confidence of the previous step's candidates, or None at a block start.
    """

    step: int
    global_step: int
    block_start: int
    block_end: int
    region_start: int
    region_end: int
    masked: torch.Tensor
    committed_last: torch.Tensor
    length: int
    confidence: torch.Tensor | None = None


@dataclass
class Plan:
    """Which positions one forward feeds.

    Attributes:
        fed: canvas positions fed to the model: a ``slice`` (the same for every row) or a (B, Q) long tensor.
        logits_index: fed positions whose logits are computed: a ``slice`` or a (B, n) tensor into ``fed``.
        targets: ``None`` when the logits cover the whole region in order; else (B, n) region columns that get
            fresh candidates (the other columns keep the candidates of an earlier step).
        refresh: every position is recomputed (the storage is exact after this forward).
    """

    fed: slice | torch.Tensor
    logits_index: slice | torch.Tensor
    targets: torch.Tensor | None = None
    refresh: bool = False


class CachePolicy(Configurable):
    """Base class of cache policies. Subclasses define ``Params`` and :meth:`plan`.

    Class attributes:
        exact: the policy's logits always equal the no-cache forward's (only ``none``).
    """

    kind: ClassVar[str] = "cache"
    exact: ClassVar[bool] = False
    uses_storage: ClassVar[bool] = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ctx: CacheContext | None = None
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self._fed: slice | torch.Tensor | None = None
        self._length = 0
        self._key_mask: torch.Tensor | None = None
        self.fed_positions = 0  # statistics: positions fed over the generation (per row)
        self.forwards = 0

    # ----------------------------------------------------------------- storage
    def setup(self, ctx: CacheContext) -> None:
        """Allocate the storage for one generation (called once, before the first step)."""
        self.ctx = ctx
        if self.uses_storage:
            shape = (ctx.rows, ctx.num_kv_heads, ctx.canvas_length, ctx.head_dim)
            self.k = [torch.zeros(shape, dtype=ctx.dtype, device=ctx.device) for _ in range(ctx.num_layers)]
            self.v = [torch.zeros(shape, dtype=ctx.dtype, device=ctx.device) for _ in range(ctx.num_layers)]

    def storage_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def storage_pointers(self) -> list[int]:
        return [t.data_ptr() for t in self.k + self.v]

    def begin_forward(self, fed: slice | torch.Tensor, length: int, key_mask: torch.Tensor | None) -> None:
        """Called by the engine right before the forward: the fed positions ((rows, Q) when a tensor), the
        effective canvas length and the (rows, L) key mask."""
        self._fed = fed
        self._length = length
        self._key_mask = None if key_mask is None else key_mask[:, :length]
        self.forwards += 1
        self.fed_positions += (fed.stop - fed.start) if isinstance(fed, slice) else fed.shape[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the fed positions' k/v (rows, Hkv, Q, D) into the storage; return (rows, Hkv, length, D)."""
        fed = self._fed
        if not self.uses_storage:
            return k, v
        ks, vs = self.k[layer], self.v[layer]
        if isinstance(fed, slice):
            ks[:, :, fed] = k
            vs[:, :, fed] = v
        else:
            idx = fed[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            ks.scatter_(2, idx, k)
            vs.scatter_(2, idx, v)
        return ks[:, :, : self._length], vs[:, :, : self._length]

    def key_mask(self) -> torch.Tensor | None:
        return self._key_mask

    # ----------------------------------------------------------------- policy
    def begin_block(self, block_start: int, block_end: int) -> None:
        """A new block starts (the next plan is its first step)."""

    def plan(self, info: StepInfo) -> Plan:
        raise NotImplementedError

    def after_step(self, committed: torch.Tensor) -> None:
        """(B, L) bool: positions committed by the step just taken."""

    # ----------------------------------------------------------------- shared plans
    @staticmethod
    def full_plan(info: StepInfo, shift: int) -> Plan:
        """Feed the whole (effective) canvas; logits for the region's source positions."""
        return Plan(slice(0, info.length), slice(info.region_start - shift, info.region_end - shift), refresh=True)

    @staticmethod
    def indexed_plan(info: StepInfo, shift: int, extra: torch.Tensor) -> Plan:
        """Feed the region's source positions first, then every other position where ``extra`` (B, L) is True.

        Rows feeding fewer positions are padded by repeating their first fed position (recomputing a position
        twice writes the same keys/values twice).
        """
        B = extra.shape[0]
        device = extra.device
        src = torch.arange(info.region_start - shift, info.region_end - shift, device=device)
        n = src.numel()
        rest = extra[:, : info.length].clone()
        rest[:, src] = False
        order = left_align(rest, src[:1].expand(B, 1))
        fed = torch.cat([src.expand(B, n), order], dim=1)
        return Plan(fed, slice(0, n))

    def refresh_due(self, info: StepInfo, every: int | None) -> bool:
        """Block starts always refresh; ``every`` k > 0 also refreshes every k-th step of a block."""
        return info.step == 0 or (every is not None and every > 0 and info.step % every == 0)


def left_align(mask: torch.Tensor, pad: torch.Tensor, min_width: int = 0) -> torch.Tensor:
    """Column indices of the True entries of each row of ``mask`` (B, L), left-aligned, in increasing order;
    rows with fewer entries are padded with ``pad`` (B, 1). Width: the largest count (at least ``min_width``)."""
    counts = mask.sum(1)
    width = max(int(counts.max()) if mask.shape[0] else 0, min_width)
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    valid = torch.arange(width, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    return torch.where(valid, order, pad.expand_as(order))


def check_cache_class(cls: type) -> None:
    import dataclasses

    if not (isinstance(cls, type) and issubclass(cls, CachePolicy)):
        raise RegistryError(f"{cls!r} is not a subclass of dlm.cache.CachePolicy")
    if cls.plan is CachePolicy.plan:
        raise RegistryError(f"cache class {cls.__name__} does not implement plan()")
    try:
        inst = cls()
        again = cls(**json.loads(json.dumps(inst.config())))
    except Exception as exc:  # noqa: BLE001
        raise RegistryError(f"cache class {cls.__name__} failed the config round-trip: {exc}") from exc
    if again.config() != inst.config() or not dataclasses.is_dataclass(cls.Params):
        raise RegistryError(f"cache class {cls.__name__}: config changed across a JSON round-trip")


CACHES: Registry = Registry("cache", group="dlm.caches", check=check_cache_class)


def register_cache(name: str, *, override: bool = False):
    """Class decorator registering a :class:`CachePolicy` under ``name``."""
    return CACHES.register(name, override=override)


def get(name: str) -> type[CachePolicy]:
    return CACHES.get(name)


def create(name: str, kwargs: dict[str, Any] | None = None) -> CachePolicy:
    return get(name)(**(kwargs or {}))


def names() -> list[str]:
    return CACHES.names()
