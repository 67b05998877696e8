"""CUDA-graph replay of the model forward for step shapes that repeat.

A diffusion step at batch 1 launches over a thousand small kernels; on a GPU the launches, not the weights,
then bound the step. A :class:`GraphRunner` (one per generation, enabled with ``dlm.load(..., cuda_graphs=True)``)
captures the forward of a step shape the second time it is seen and replays it afterwards. Every input of the
captured forward lives in a buffer whose address never changes: the canvas (updated in place by commits), the
position ids, the fed positions and the positions that get logits (index buffers refreshed before each replay),
the key mask, and the cache policy's key/value storage (allocated once per generation). The eager path and the
replay compute the same function; the first occurrence of a shape always runs eagerly.

Shapes seen once (e.g. the varying widths of the ``delayed`` and ``window`` policies) are never captured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    replay: object  # callable: recompute ``out`` in place from the buffers
    fed: torch.Tensor
    logits_index: torch.Tensor
    key_mask: torch.Tensor | None
    out: torch.Tensor


def _as_index(sel, rows: int, copies: int, device) -> torch.Tensor:
    """A slice or a (B, k) tensor as a (rows, k) index tensor."""
    if isinstance(sel, slice):
        return torch.arange(sel.start, sel.stop, device=device).expand(rows, -1)
    return sel.repeat(copies, 1) if sel.shape[0] != rows else sel


class GraphRunner:
    """Captures and replays the forward of repeated step shapes (see the module doc)."""

    def __init__(self, min_uses: int = 2, max_graphs: int = 8):
        self.min_uses = min_uses
        self.max_graphs = max_graphs
        self.entries: dict[tuple, _Entry] = {}
        self.seen: dict[tuple, int] = {}
        self.pool = None
        self.replays = 0

    def forward(self, model, policy, plan, x, pos, key_mask, length: int, copies: int) -> torch.Tensor:
        rows = x.shape[0]
        fed = _as_index(plan.fed, rows, copies, x.device)
        if isinstance(plan.logits_index, slice):
            index = torch.arange(plan.logits_index.start, plan.logits_index.stop, device=x.device).expand(rows, -1)
        else:
            index = _as_index(plan.logits_index, rows, copies, x.device)
        key = (fed.shape[1], index.shape[1], length, key_mask is None)
        entry = self.entries.get(key)
        if entry is None:
            self.seen[key] = self.seen.get(key, 0) + 1
            if self.seen[key] < self.min_uses or len(self.entries) >= self.max_graphs:
                policy.begin_forward(fed, length, key_mask)
                return model(x.gather(1, fed), pos.gather(1, fed), key_mask=policy.key_mask(), cache=policy,
                             logits_index=index)
            entry = self._capture(model, policy, key, fed, index, x, pos, key_mask, length)
        entry.fed.copy_(fed)
        entry.logits_index.copy_(index)
        if entry.key_mask is not None:
            entry.key_mask.copy_(key_mask)
        policy.begin_forward(entry.fed, length, entry.key_mask)  # keeps the policy's statistics
        entry.replay()
        self.replays += 1
        return entry.out

    def _capture(self, model, policy, key, fed, index, x, pos, key_mask, length) -> _Entry:
        fed_buf, index_buf = fed.clone(), index.clone()
        mask_buf = None if key_mask is None else key_mask.clone()
        stats = (policy.forwards, policy.fed_positions)

        def run():
            policy.begin_forward(fed_buf, length, mask_buf)
            return model(x.gather(1, fed_buf), pos.gather(1, fed_buf), key_mask=policy.key_mask(), cache=policy,
                         logits_index=index_buf)

        replay, out = self._make_graph(run)
        policy.forwards, policy.fed_positions = stats
        entry = _Entry(replay, fed_buf, index_buf, mask_buf, out)
        self.entries[key] = entry
        return entry

    def _make_graph(self, run):
        """Capture ``run`` in a CUDA graph; return (replay, output buffer)."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph, as CUDA graph capture requires
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = run()
        return graph.replay, out
