"""Batched causal verification: ONE forward of the causal model for every request verifying in a step, each over
its own keys/values, with rollback.

:class:`CausalKV` keeps the causal model's keys/values in preallocated slots (one per engine slot): request r's
first ``cached[r]`` positions are valid. A verification round feeds each request its tokens not yet cached (the
last decided token, or the whole prompt the first time) followed by its draft, at their true positions; the
keys/values of those positions are written at the row's own offsets and every query attends causally over its
row's slot through an explicit 4-D mask, so rows of different lengths share one forward without copying any
cache. Rolling back the rejected part of a draft is setting ``cached[r]`` back: those positions are overwritten
by the next round before anything reads them.

It implements the ``update`` method transformers' attention layers call on a cache object (the current Cache API:
the cache is passed as ``cache=`` where the model takes it, else ``past_key_values=``).

On a CPU, the padded shapes are rounded (queries to multiples of 16, keys to multiples of 512) so that a row's
arithmetic does not depend on the other rows: float32 kernels choose their blocking from these sizes.
"""

from __future__ import annotations

import inspect

import torch

from ..models.transfer import to_device

try:  # transformers' base class, so that models that check isinstance(cache, Cache) accept this one
    from transformers.cache_utils import Cache as _CacheBase
except ImportError:  # pragma: no cover
    _CacheBase = object


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


class CausalKV(_CacheBase):
    """Keys/values of the causal model in ``num_slots`` slots of ``max_len`` positions (allocated per layer on first
    use, from the shapes the model writes)."""

    is_compileable = False

    def __init__(self, num_slots: int, max_len: int, device: torch.device):  # noqa: D107 - no base __init__ call
        self.num_slots, self.max_len, self.device = num_slots, max_len, device
        self.layers: list = []  # what transformers reads to find full-attention layers (none special here)
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.cached = [0] * num_slots
        self._round = None  # the current forward's layout (set by forward())

    # ----------------------------------------------------------------- what transformers calls
    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        """Write the fed positions' keys/values at each row's own offsets; return the rows' slots to attend."""
        if layer_idx not in self.k:
            _, H, _, D = key_states.shape
            self.k[layer_idx] = torch.zeros(self.num_slots, H, self.max_len, D, dtype=key_states.dtype,
                                            device=key_states.device)
            self.v[layer_idx] = torch.zeros_like(self.k[layer_idx])
        rnd = self._round
        k, v = self.k[layer_idx], self.v[layer_idx]
        k[rnd.w_slot, :, rnd.w_pos] = key_states[rnd.w_row, :, rnd.w_col]
        v[rnd.w_slot, :, rnd.w_pos] = value_states[rnd.w_row, :, rnd.w_col]
        return k[rnd.lo : rnd.hi, :, : rnd.keys], v[rnd.lo : rnd.hi, :, : rnd.keys]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self._round is None else self._round.keys

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_len

    # ----------------------------------------------------------------- one batched forward
    def forward(self, model, slots: list[int], tokens: list[list[int]], pad_id: int, exact_shapes: bool):
        """Feed ``tokens[i]`` to the row of ``slots[i]`` after its cached positions; returns (rows, n, V) logits,
        row i's at index ``slots[i] - min(slots)``, positions 0 .. len(tokens[i]) - 1. The fed positions become
        cached only when :meth:`keep` says so."""
        rnd = _Round.build(self, slots, tokens, exact_shapes, pad_id)
        self._round = rnd
        kwargs = {_cache_argument(model): self, "use_cache": True}
        try:
            out = model(input_ids=rnd.ids, position_ids=rnd.pos, attention_mask=rnd.mask(model.dtype),
                        **kwargs)
        finally:
            self._round = None
        return out.logits

    def keep(self, slot: int, length: int) -> None:
        """Row ``slot``'s valid keys/values are now its first ``length`` positions (the rest is rolled back)."""
        self.cached[slot] = length

    def reset(self, slot: int) -> None:
        self.cached[slot] = 0


class _Round:
    """The layout of one batched forward: rows = the contiguous range of slots ``lo .. hi - 1``."""

    @classmethod
    def build(cls, kv: CausalKV, slots: list[int], tokens: list[list[int]], exact_shapes: bool,
              pad_id: int) -> "_Round":
        """The layout, its input ids and positions and where its keys/values go, built as host lists and moved
        to the device in two copies."""
        r = cls()
        r.lo, r.hi = min(slots), max(slots) + 1
        r.rows = r.hi - r.lo
        n = max(len(t) for t in tokens)
        keys = max(kv.cached[s] + len(t) for s, t in zip(slots, tokens))
        r.queries = Q = _round_up(n, 16) if exact_shapes else n
        r.keys = min(_round_up(keys, 512), kv.max_len) if exact_shapes else keys
        if keys > kv.max_len:
            raise ValueError(f"the causal verifier's context ({kv.max_len}) is too short for {keys} positions")
        ids, pos = [[pad_id] * Q for _ in range(r.rows)], [[0] * Q for _ in range(r.rows)]
        limit = [[1] * Q for _ in range(r.rows)]  # keys each query sees: positions < limit
        w_row, w_col, w_slot, w_pos = [], [], [], []
        for s, t in zip(slots, tokens):
            c, m, row = kv.cached[s], len(t), s - r.lo
            ids[row][:m] = t
            pos[row][:m] = range(c, c + m)
            limit[row][:m] = range(c + 1, c + m + 1)
            w_row += [row] * m
            w_col += range(m)
            w_slot += [s] * m
            w_pos += range(c, c + m)
        r.ids, r.pos, r.limit = to_device(torch.tensor([ids, pos, limit]), kv.device).unbind(0)
        r.w_row, r.w_col, r.w_slot, r.w_pos = to_device(torch.tensor([w_row, w_col, w_slot, w_pos]),
                                                        kv.device).unbind(0)
        return r

    def mask(self, dtype: torch.dtype) -> torch.Tensor:
        """(rows, 1, queries, keys) additive mask: 0 where a query may attend, the dtype's minimum elsewhere."""
        allowed = torch.arange(self.keys, device=self.limit.device) < self.limit.unsqueeze(-1)
        zero = torch.zeros((), dtype=dtype, device=self.limit.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min).unsqueeze(1)


def _cache_argument(model) -> str:
    """The name the model's forward takes its cache by (``cache`` in current transformers)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
