"""CUDA-graph replay of the ragged forward for step layouts that repeat.

A diffusion step at batch 1 launches over a thousand small kernels; on a GPU the launches, not the weights, then
bound the step. :class:`StepGraphs` (enabled with ``dlm.load(..., cuda_graphs=True)``) captures the forward of a
step *layout* (the rows' fed and key lengths, slots and kinds: :meth:`RaggedRows.signature`) the second time it is
seen and replays it afterwards: the in-block steps of a block repeat their layout (the fed block, the canvas
length, the slot), for one request or a batch in lockstep.

Every input of the captured forward lives in a buffer whose address never changes: the input ids, the positions
and the positions that get logits (copied in before each replay), and the key/value pool (allocated once per
engine). Everything the attention derives from the layout alone (which positions are stored where, the padded
scatter indices) is built before the capture; what depends on the positions (where keys are written,
block-causal masks) is computed inside the graph. The eager path and the replay compute the same function; the
first occurrence of a layout always runs eagerly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..models.ragged import RaggedAttention, RaggedRows


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
    """Captures and replays repeated step layouts (see the module doc)."""

    def __init__(self, min_uses: int = 2, max_graphs: int = 16):
        self.min_uses, self.max_graphs = min_uses, max_graphs
        self.entries: dict[tuple, _Entry] = {}
        self.seen: dict[tuple, int] = {}
        self.pool = None
        self.replays = 0

    def forward(self, model, kv_pool, backend: str, rows: RaggedRows, ids: torch.Tensor, positions: torch.Tensor,
                logits_index: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) of the fed ``ids`` (1, T) at ``positions`` (1, T); ``logits_index`` (1, N)."""
        key = (rows.signature(), logits_index.shape[1])
        entry = self.entries.get(key)
        if entry is None:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] < self.min_uses or len(self.entries) >= self.max_graphs:
                attention = RaggedAttention(rows, kv_pool, backend)
                return model(ids, positions, attention=attention, logits_index=logits_index)[0]
            entry = self.entries[key] = self._capture(model, kv_pool, backend, rows, ids, positions, logits_index)
        entry.ids.copy_(ids)
        entry.positions.copy_(positions)
        entry.logits_index.copy_(logits_index)
        entry.replay()
        self.replays += 1
        return entry.out

    def _capture(self, model, kv_pool, backend, rows, ids, positions, logits_index) -> _Entry:
        ids_b, pos_b, li_b = ids.clone(), positions.clone(), logits_index.clone()
        static_rows = dataclasses.replace(rows, positions=pos_b[0], _per_device={})
        attention = RaggedAttention(static_rows, kv_pool, backend)

        def run():
            return model(ids_b, pos_b, attention=attention, logits_index=li_b)[0]

        replay, out = self._make_graph(run)
        return _Entry(replay, ids_b, pos_b, li_b, out, run)

    def _make_graph(self, run):
        """Capture ``run`` in a CUDA graph; return (replay, output buffer). The graph keeps no reference to what
        ``run`` reads: the caller keeps ``run`` alive."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (builds the layout's index tensors too)
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run()
        return graph.replay, out
