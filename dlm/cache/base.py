"""The cache interface: which canvas positions a step recomputes (a *policy*; storage is :mod:`dlm.cache.store`).

A cache policy plans the forward passes of ONE request. The engine builds one policy object per request, gives
it the request's geometry once (:meth:`CachePolicy.setup`), and before every step of that request asks
:meth:`CachePolicy.plan` which canvas positions to feed to the model and which of them need logits. The keys
and values of the positions it does not feed come from the request's slot of the engine's key/value pool, where
every earlier forward wrote what it computed (for policies with ``uses_storage``). After the step,
:meth:`CachePolicy.after_step` learns what was committed. Each request keeps its own refresh schedule.

A step that feeds every position is a *refresh*: its logits are bitwise those of the no-cache forward, so a
policy whose ``refresh_every`` is 1 is exact (tested for every policy) unless it shortens its refreshes
(:meth:`CachePolicy.refreshes_whole_canvas`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from ..errors import RegistryError
from ..registry import Configurable, Registry


@dataclass(frozen=True)
class CacheContext:
    """The request a policy plans for: its canvas length (prompt + answer), where the answer starts, and the
    model's logit shift (1 when the logit at position i-1 predicts token i, as in Dream). ``shape_step``: a
    policy whose number of fed positions depends on the data pads it to a multiple of this with copies of a fed
    position (same result, repeated shapes: the engine sets 16 when it replays CUDA graphs, else 1)."""

    canvas_length: int
    answer_start: int
    logits_shift: int
    shape_step: int = 1


Lazy = torch.Tensor | Callable[[], torch.Tensor] | None


class StepInfo:
    """One request's state when its policy plans a step. Tensors are (1, L) over its canvas (L = its length).

    Attributes:
        step: steps this request has taken in the current block (0 at the block's first step).
        block_start, block_end: canvas positions of the active block.
        region_start, region_end: positions that need candidates (their logits come from ``pos - shift``).
        length: canvas positions the model sees (positions at or beyond it are dropped by EoTP, or, for a
            block-diffusion model, lie after the active block).
        exact_prefix: leading positions whose stored keys/values are final and exact (a block-diffusion model's
            finished blocks; 0 for bidirectional models): a refresh need not feed them.
        masked: still-masked positions.
        committed_last: positions committed by the request's previous step.
        confidence: (1, region) confidence of the previous step's candidates, or None at a block start.

    The tensors may be given as zero-argument functions; they are computed the first time they are read, so a
    policy that plans from the geometry alone (``none``, ``prefix``, ``dual``) costs no device work.
    """

    def __init__(self, *, step: int, block_start: int, block_end: int, region_start: int, region_end: int,
                 length: int, masked: Lazy, committed_last: Lazy = None, confidence: Lazy = None,
                 exact_prefix: int = 0):
        self.step, self.length, self.exact_prefix = step, length, exact_prefix
        self.block_start, self.block_end = block_start, block_end
        self.region_start, self.region_end = region_start, region_end
        self._lazy = {"masked": masked, "committed_last": committed_last, "confidence": confidence}

    def _get(self, name: str):
        value = self._lazy[name]
        if callable(value):
            value = self._lazy[name] = value()
        return value

    masked = property(lambda self: self._get("masked"))
    committed_last = property(lambda self: self._get("committed_last"))
    confidence = property(lambda self: self._get("confidence"))


@dataclass
class Plan:
    """Which positions one forward feeds, for one request.

    Attributes:
        fed: canvas positions fed to the model: a ``slice`` or a (1, Q) long tensor.
        logits_index: fed positions whose logits are computed: a ``slice`` or a (1, n) tensor into ``fed``.
        targets: ``None`` when the logits cover the whole region in order; else (1, n) region columns that get
            fresh candidates (the other columns keep the candidates of an earlier step).
        refresh: every position is recomputed (the stored keys/values are exact after this forward).
    """

    fed: slice | torch.Tensor
    logits_index: slice | torch.Tensor
    targets: torch.Tensor | None = None
    refresh: bool = False


class CachePolicy(Configurable):
    """Base class of cache policies. Subclasses define ``Params`` and :meth:`plan`.

    Class attributes:
        exact: the policy's logits always equal the no-cache forward's (only ``none``).
        uses_storage: steps read keys/values of positions they do not feed, so every forward's keys/values are
            written to the request's slot. ``none`` feeds everything and writes nothing.
        geometric: :meth:`plan` reads only the step's geometry (never the tensors of :class:`StepInfo`), so a
            plan can be made before the previous step's results reach the host (the engine's lookahead). Trusted
            only from the class that defines :meth:`plan` or a subclass of it.
    """

    kind: ClassVar[str] = "cache"
    exact: ClassVar[bool] = False
    uses_storage: ClassVar[bool] = True
    geometric: ClassVar[bool] = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ctx: CacheContext | None = None
        self.fed_positions = 0  # statistics: positions fed over the request
        self.forwards = 0

    def setup(self, ctx: CacheContext) -> None:
        """The request's geometry (called once, before its first plan)."""
        self.ctx = ctx

    def refreshes_whole_canvas(self) -> bool:
        """Whether every refresh feeds the whole canvas, so that ``refresh_every=1`` makes the policy exact (what
        the lossless verifiers ask of a cache). ``dual`` with a shortened refresh overrides it."""
        return True

    def count(self, plan: Plan) -> None:
        """Statistics of a planned forward (called by the engine)."""
        self.forwards += 1
        fed = plan.fed
        self.fed_positions += (fed.stop - fed.start) if isinstance(fed, slice) else fed.shape[1]

    # ----------------------------------------------------------------- policy
    def begin_block(self, block_start: int, block_end: int) -> None:
        """A new block starts (the next plan is its first step)."""

    def plan(self, info: StepInfo) -> Plan:
        raise NotImplementedError

    def after_step(self, committed: torch.Tensor) -> None:
        """(1, L) bool: positions committed by the step just taken."""

    # ----------------------------------------------------------------- shared plans
    def full_plan(self, info: StepInfo, shift: int) -> Plan:
        """A refresh: feed the whole (effective) canvas, after the exact prefix for a policy that keeps storage;
        logits for the region's source positions."""
        start = min(info.exact_prefix, info.region_start - shift) if self.uses_storage else 0
        return Plan(slice(start, info.length), slice(info.region_start - shift - start, info.region_end - shift - start),
                    refresh=True)

    @staticmethod
    def indexed_plan(info: StepInfo, shift: int, extra: torch.Tensor) -> Plan:
        """Feed the region's source positions first, then every other position where ``extra`` (1, L) is True."""
        device = extra.device
        src = torch.arange(info.region_start - shift, info.region_end - shift, device=device)
        n = src.numel()
        rest = extra[:, : info.length].clone()
        rest.index_fill_(1, src, False)  # not `rest[:, src] = False`: that copies False to the GPU and waits for it
        order = left_align(rest, src[:1].expand(rest.shape[0], 1))
        fed = torch.cat([src.expand(rest.shape[0], n), order], dim=1)
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
