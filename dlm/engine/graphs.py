"""CUDA-graph replay of the ragged forward for step layouts that repeat.

A diffusion step at batch 1 launches over a thousand small kernels; on a GPU the launches, not the weights, then
bound the step. :class:`StepGraphs` (on by default on one CUDA device, see :func:`dlm.load`) captures the forward
of a step *layout* (the rows' fed and key lengths, slots and kinds: :meth:`RaggedRows.signature`) the second time
it comes (later if recent captures were seldom replayed) and replays it afterwards: the in-block steps of a block
repeat their layout (the fed block, the canvas length, the slot), for one request or a batch in lockstep.

Every input of the captured forward lives in a buffer whose address never changes: the input ids, the positions
and the positions that get logits (copied in before each replay), and the key/value pool (allocated once per
engine). Everything the attention derives from the layout alone (which positions are stored where, the padded
scatter indices) is built before the capture; what depends on the positions (where keys are written,
block-causal masks) is computed inside the graph. The eager path and the replay compute the same function; the
first occurrence of a layout always runs eagerly.

A step that is not captured whole (a layout seen too seldom, a large layout that does not repeat step after step,
as in a batch whose requests arrived at different steps) runs through the model's piecewise graphs
(:mod:`dlm.engine.pieces`: everything but the attention, replayed per number of fed positions) once its size has
come before, else eagerly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..models.ragged import RaggedAttention, RaggedRows, eager_forward
from .pieces import PieceGraphs, on_device, pieces_of, side_stream, supports


@dataclass
class _Entry:
    replay: object  # callable: recompute ``out`` in place from the buffers
    ids: torch.Tensor
    positions: torch.Tensor
    logits_index: torch.Tensor
    out: torch.Tensor
    # the captured closure: it holds the layout's index tensors (built before the capture, outside the graph's
    # memory pool), which the graph reads by address at every replay; freed, the replays read garbage indices
    run: object


class StepGraphs:
    """Captures and replays repeated step layouts (see the module doc).

    When a layout is captured: at its ``min_uses``-th occurrence while captures pay off (the recent ones were
    replayed at least twice each on average: the in-block steps of a block repeat their layout, and a block's
    refresh comes back at the next block), else at its ``backoff_uses``-th (layouts that rarely come back, as a
    staggered batch's do: a capture costs host time that only replays repay). Until then
    it runs eagerly. ``max_graphs``: graphs kept at once; capturing one more drops the least recently replayed
    (the ``prefix`` cache's layouts change at every block, so old ones never come back). ``max_tokens``: layouts feeding more positions than this are never
    captured: such a step is bound by its matrix products, not by the host's launches, so a graph saves nothing
    and its capture would cost. ``repeat_tokens``: layouts feeding more positions than this are captured only
    when a step repeats the previous step's layout (a batch in lockstep, whose in-block steps replay it many
    times): at that size a replay saves little and a capture costs most of a step (measured on an H200 at
    LLaDA-8B geometry, 2,432 positions: 67.0 ms replayed, 69.9 eager, 117.1 capturing), while the layouts of a
    batch whose requests arrived at different steps come back every block but never twice in a row. The step
    that captures returns the result of its warm-up forward, so capturing costs one eager forward plus the
    recording, not a forward more. ``pieces``: what runs the steps it does not capture whole (see
    :meth:`pieces_for`): the model's shared :class:`~dlm.engine.pieces.PieceGraphs` (True), given ones, or
    none (False: those steps run eagerly).
    """

    def __init__(self, min_uses: int = 2, backoff_uses: int = 8, max_graphs: int = 16, max_tokens: int = 4096,
                 repeat_tokens: int = 2048, pieces: PieceGraphs | bool = True):
        self.min_uses, self.backoff_uses = min_uses, backoff_uses
        self.pieces = pieces
        self.max_graphs, self.max_tokens, self.repeat_tokens = max_graphs, max_tokens, repeat_tokens
        self.last_key: tuple | None = None  # the previous step's layout
        self.entries: dict[tuple, _Entry] = {}  # in order of last use (the first is evicted first)
        self.seen: dict[tuple, int] = {}
        self.recent = [0, 0]  # captures and replays, halved every 64 captures (the payoff of recent captures)
        self.pool = self.stream = self.side = None  # memory pool, capture and warm-up streams (the model's device)
        self.weights_version: int | None = None  # the model's at the last step (its graphs are of this one)
        self.replays = 0
        self.captures = 0

    def forward(self, model, kv_pool, backend: str, rows: RaggedRows, ids: torch.Tensor, positions: torch.Tensor,
                logits_index: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) of the fed ``ids`` (1, T) at ``positions`` (1, T); ``logits_index`` (1, N)."""
        with on_device(ids.device):
            return self._forward(model, kv_pool, backend, rows, ids, positions, logits_index)

    def _forward(self, model, kv_pool, backend, rows, ids, positions, logits_index) -> torch.Tensor:
        # a graph replays the functions it captured, over the weights it captured
        key = (rows.signature(), logits_index.shape[1], model.ops, getattr(model, "weights_version", 0))
        self._drop_stale(key[3])
        kind = self.decide(key, ids.shape[1])
        if kind == "eager":
            pieces = self.pieces_for(model)
            if pieces is not None and pieces.wants(ids.shape[1]):
                return pieces.forward(model, kv_pool, backend, rows, ids, positions, logits_index)
            return eager_forward(model, kv_pool, backend, rows, ids, positions, logits_index)
        if kind == "capture":
            entry, first = self._capture(model, kv_pool, backend, rows, ids, positions, logits_index)
            self.entries[key] = entry
            return first
        entry = self.entries[key]
        entry.ids.copy_(ids)
        entry.positions.copy_(positions)
        entry.logits_index.copy_(logits_index)
        entry.replay()
        return entry.out

    def _drop_stale(self, version: int) -> None:
        """Drop the graphs captured over weights the model no longer has (another ``weights_version``): they can
        never replay, and they hold memory of the graph pool. (One comparison per step.)"""
        if version != self.weights_version:
            self.entries = {k: e for k, e in self.entries.items() if k[3] == version}
            self._release_pool_if_unused()
            self.weights_version = version

    def _release_pool_if_unused(self) -> None:
        """With no graph left, the next capture takes a new memory pool: the caching allocator frees a private
        pool once its last graph is gone, and capturing into it again fails an internal assertion."""
        if not self.entries:
            self.pool = None

    def pieces_for(self, model) -> PieceGraphs | None:
        """What runs the steps this runner does not capture whole: the model's shared piecewise graphs
        (``pieces=True``, a model on a CUDA device), the given ones, or nothing (``False``)."""
        if self.pieces is True:
            return pieces_of(model) if model.embed.weight.is_cuda else None
        return self.pieces if self.pieces and supports(model) else None

    def decide(self, key: tuple, tokens: int) -> str:
        """What the step of layout ``key`` feeding ``tokens`` positions does: ``"replay"`` its graph (now the
        most recently used), ``"capture"`` one (room made for it: the caller stores the entry) or run
        ``"eager"``; counts the captures and replays."""
        repeated, self.last_key = key == self.last_key, key
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)  # now the most recently used
            self._count(replay=True)
            return "replay"
        if not self._should_capture(key, tokens, repeated):
            return "eager"
        while len(self.entries) >= self.max_graphs:
            self.entries.pop(next(iter(self.entries)))
        self._release_pool_if_unused()
        self._count(replay=False)
        return "capture"

    def _should_capture(self, key: tuple, tokens: int, repeated: bool = True) -> bool:
        """Whether to capture a layout not captured yet; ``repeated``: the previous step had the same layout."""
        if tokens > self.max_tokens or self.max_graphs < 1:
            return False
        if len(self.seen) > 64 * max(self.max_graphs, 1):  # layouts of requests long gone: start counting afresh
            self.seen.clear()
        self.seen[key] = self.seen.get(key, 0) + 1
        if tokens > self.repeat_tokens and not repeated:
            return False
        return self.seen[key] >= self.uses_needed()

    def uses_needed(self) -> int:
        """Occurrences of a layout before it is captured (see the class doc)."""
        captures, replays = self.recent
        return self.min_uses if captures < 4 or replays >= 2 * captures else self.backoff_uses

    def _count(self, replay: bool) -> None:
        """One more capture or replay, in all and in the recent window."""
        if replay:
            self.replays += 1
        else:
            self.captures += 1
        self.recent[int(replay)] += 1
        if self.recent[0] >= 64:
            self.recent = [self.recent[0] // 2, self.recent[1] // 2]

    def _capture(self, model, kv_pool, backend, rows, ids, positions, logits_index) -> tuple[_Entry, torch.Tensor]:
        """The layout's graph entry and this step's logits (from the eager warm-up forward)."""
        ids_b, pos_b, li_b = ids.clone(), positions.clone(), logits_index.clone()
        static_rows = dataclasses.replace(rows, positions=pos_b[0], _per_device={})
        attention = RaggedAttention(static_rows, kv_pool, backend, kernels=model.ops.fused)

        def run():
            return model(ids_b, pos_b, attention=attention, logits_index=li_b)[0]

        replay, out, first = self._make_graph(run)
        return _Entry(replay, ids_b, pos_b, li_b, out, run), first

    def _make_graph(self, run):
        """Capture ``run`` in a CUDA graph; return (replay, output buffer, the logits of one eager run). The
        graph keeps no reference to what ``run`` reads: the caller keeps ``run`` alive."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        if self.side is None:  # one warm-up stream: the warm-ups reuse each other's cached memory
            self.side = torch.cuda.Stream()  # (on the model's device: forward runs under on_device)
        with side_stream(self.side):  # warm-up outside the graph (builds the layout's index tensors too)
            first = run()
        first.record_stream(torch.cuda.current_stream())  # allocated on the side stream, read on the main one
        graph = torch.cuda.CUDAGraph()
        if self.stream is None:  # (torch's default capture stream is on whichever device made it first)
            self.stream = torch.cuda.Stream(first.device)
        with torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"):
            out = run()  # (thread-local capture errors: other engines' threads may allocate meanwhile)
        return graph.replay, out, first
