"""Piecewise CUDA graphs: a step's dense parts replayed per number of fed positions, its attention run eagerly.

:class:`~dlm.engine.graphs.StepGraphs` replays a whole step when its layout repeats, as the in-block steps of a
batch in lockstep do. A batch whose requests joined at different steps (continuous batching) seldom repeats a
layout, and its eager steps are bound by the host's launches (about seventy operations per layer) up to a couple
of thousand fed positions. Everything in a layer but the attention acts on each position on its own, so it
depends on the number of fed positions T only, not on the rows. :class:`PieceGraphs` captures, per *bucket* (T
rounded up to a multiple of ``granule``), the forward between attention calls as L + 1 CUDA graphs:

- piece 0: the embedding, RoPE's cos/sin and layer 0 up to its attention;
- piece i (0 < i < L): layer i - 1 after its attention, then layer i up to its attention;
- piece L: layer L - 1 after its attention.

A step copies its ids and positions into static buffers and replays piece 0; each layer's attention then runs
eagerly (a :class:`~dlm.models.ragged.RaggedAttention` reading q/k/v from static buffers and writing its output
into another), followed by the next piece. The final norm, the head and the choice of the positions that get
logits run eagerly after the last piece. The graphs depend on the model and the bucket only (not on the rows, the
key/value pool or the engine), so they are kept per model (:func:`pieces_of`) and shared by its engines.

Padding: the positions from T to the bucket's size are computed too, from whatever earlier steps left in the
buffers (valid ids and positions, finite attention outputs), and nothing reads them: every operation of a piece
acts on each position on its own, and the attention sees the first T positions only. On a GPU the matrix kernels
are chosen by shape, so a product over the bucket's rows may round in bf16 as a batch of that size would; the
engine's answers depend on the batch beside them in the same way (``batch_invariant=True`` is what removes that,
and it runs without graphs).

Memory: the pieces' other outputs (the residual stream between pieces, cos/sin) live in the graphs' private
pool, where a later capture may reuse them once they are dropped. That is safe because the pieces of a bucket
always replay in order with nothing but eager attention between them, and no two buckets run at once. Per bucket
only the graphs are kept; the static buffers (ids, positions, q, k, v, the attention's output, the hidden
states) are allocated once, for ``max_tokens`` positions.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..models.ragged import RaggedAttention, RaggedRows


@dataclass
class _Buffers:
    """Static buffers of ``max_tokens`` positions; a bucket of n positions uses their first n rows."""

    ids: torch.Tensor  # (max,) long
    positions: torch.Tensor  # (max,) long
    q: torch.Tensor  # (max, H, D)
    k: torch.Tensor  # (max, Hkv, D)
    v: torch.Tensor  # (max, Hkv, D)
    attn: torch.Tensor  # (max, H, D): the attention's output
    hidden: torch.Tensor  # (max, d): the last layer's output

    @classmethod
    def build(cls, model, max_tokens: int, device: torch.device) -> _Buffers:
        cfg = model.cfg
        dtype = model.embed.weight.dtype
        kv_heads = model.kv_heads
        heads = cfg.num_heads * kv_heads // cfg.num_kv_heads  # (a shard's heads under tensor parallelism)

        def zeros(*shape, dt=dtype):
            return torch.zeros(max_tokens, *shape, dtype=dt, device=device)

        return cls(zeros(dt=torch.long), zeros(dt=torch.long), zeros(heads, cfg.head_dim),
                   zeros(kv_heads, cfg.head_dim), zeros(kv_heads, cfg.head_dim), zeros(heads, cfg.head_dim),
                   zeros(cfg.hidden_size))

    def qkv(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q (1, H, n, D), k and v (1, Hkv, n, D): views of the first n positions, as the layers return them."""
        return tuple(b[:n].unsqueeze(0).transpose(1, 2) for b in (self.q, self.k, self.v))


def _pieces(model, n: int, bufs: _Buffers) -> list[Callable]:
    """The L + 1 pieces of a forward over the first ``n`` positions of ``bufs``. Each takes the state the one
    before returned (the residual stream x, cos, sin) and returns the next; q/k/v go to the static buffers."""
    layers, ops = model.layers, model.ops
    ids, positions = bufs.ids[:n].unsqueeze(0), bufs.positions[:n].unsqueeze(0)
    attn = bufs.attn[:n].unsqueeze(0).transpose(1, 2)  # (1, H, n, D)
    q_out, k_out, v_out = bufs.qkv(n)

    def to_buffers(qkv) -> None:
        for out, t in zip((q_out, k_out, v_out), qkv):
            out.copy_(t)

    def first():
        x = model.embed_ids(ids)
        cos, sin = model.rope(positions)
        to_buffers(layers[0].before_attention(x, cos, sin, ops))
        return x, cos, sin

    def middle(i: int):
        def piece(x, cos, sin):
            x = layers[i - 1].after_attention(x, attn, ops)
            to_buffers(layers[i].before_attention(x, cos, sin, ops))
            return x, cos, sin
        return piece

    def last(x, cos, sin):
        bufs.hidden[:n].copy_(layers[-1].after_attention(x, attn, ops)[0])
        return ()

    return [first] + [middle(i) for i in range(1, len(layers))] + [last]


@dataclass
class _Bucket:
    replays: list[Callable]  # one per piece, in order
    pieces: list[Callable]  # the captured functions (kept alive with what they read)


class PieceGraphs:
    """Captures and replays the pieces of forwards per bucket of fed positions (see the module doc).

    A bucket is captured at its ``min_uses``-th forward (an earlier one runs as the caller's eager forward,
    :meth:`wants` says no); the capturing forward runs the pieces eagerly first (the step's result) and records
    them after. ``granule``: buckets are multiples of it; ``max_tokens``: the largest forward it takes (larger
    steps are bound by their products, where a replay saves nothing).
    """

    def __init__(self, granule: int = 64, max_tokens: int = 4096, min_uses: int = 2):
        if granule < 1 or max_tokens < granule:
            raise ValueError(f"need 1 <= granule <= max_tokens, got granule={granule}, max_tokens={max_tokens}")
        self.granule, self.max_tokens, self.min_uses = granule, max_tokens, min_uses
        self.buckets: dict[int, _Bucket] = {}
        self.seen: dict[int, int] = {}
        self.bufs: _Buffers | None = None
        # engines of one model in several threads share these buffers: a forward through them is one critical section
        self.lock = threading.Lock()
        self.pool = self.stream = None  # the graphs' memory pool and capture stream
        self.captures = self.replays = 0

    def bucket(self, tokens: int) -> int:
        """The bucket of a forward feeding ``tokens`` positions: rounded up to a multiple of ``granule``."""
        return -(-tokens // self.granule) * self.granule

    def wants(self, tokens: int) -> bool:
        """Whether :meth:`forward` runs a forward of ``tokens`` positions (counts it when it would capture)."""
        if not 0 < tokens <= self.max_tokens:
            return False
        n = self.bucket(tokens)
        if n in self.buckets:
            return True
        self.seen[n] = self.seen.get(n, 0) + 1
        return self.seen[n] >= self.min_uses

    @torch.no_grad()
    def forward(self, model, kv_pool, backend: str, rows: RaggedRows, ids: torch.Tensor, positions: torch.Tensor,
                logits_index: torch.Tensor) -> torch.Tensor:
        """Logits (N, V) of the fed ``ids`` (1, T) at ``positions`` (1, T) for ``logits_index`` (1, N), as the
        model's forward with a :class:`RaggedAttention` gives them; captures the bucket if it is new."""
        with self.lock:
            return self._forward(model, kv_pool, backend, rows, ids, positions, logits_index)

    def _forward(self, model, kv_pool, backend, rows, ids, positions, logits_index) -> torch.Tensor:
        T = ids.shape[1]
        n = self.bucket(T)
        if self.bufs is None:
            self.bufs = _Buffers.build(model, self.max_tokens, ids.device)
        bufs = self.bufs
        bufs.ids[:T].copy_(ids[0])
        bufs.positions[:T].copy_(positions[0])
        attention = RaggedAttention(rows, kv_pool, backend, out=bufs.attn)
        if n in self.buckets:
            replays = self.buckets[n].replays
            self._run(lambda i: replays[i](), len(replays), attention, T)
            self.replays += 1
        else:
            self.buckets[n] = self._capture(model, n, attention, T)
            self.captures += 1
        return model.gather_logits(bufs.hidden[:T].unsqueeze(0), logits_index)[0]

    @torch.no_grad()  # (outside an engine step, which runs without autograd)
    def capture_all(self, model, tokens: int, device: torch.device) -> int:
        """Capture every bucket of up to ``tokens`` positions (at most ``max_tokens``) not captured yet, largest
        first, without a step (a server's start-up); returns how many. The forward before each capture runs
        without attention: its values do not matter, only the kernels it prepares."""
        with self.lock:
            if self.bufs is None:
                self.bufs = _Buffers.build(model, self.max_tokens, device)
            top = self.bucket(min(tokens, self.max_tokens))
            todo = [n for n in range(top, 0, -self.granule) if n not in self.buckets]
            for n in todo:
                self.buckets[n] = self._capture(model, n, None, n)
            self.captures += len(todo)
            return len(todo)

    def _run(self, run_piece: Callable[[int], None], count: int, attention: RaggedAttention | None, T: int) -> None:
        """Piece 0, attention of layer 0, piece 1, ..., piece L: a forward over the buffers, its hidden states
        into ``bufs.hidden`` (``attention=None``: the attention's output buffer is left as it is)."""
        q, k, v = self.bufs.qkv(T)
        for i in range(count):
            run_piece(i)
            if i < count - 1 and attention is not None:
                attention(i, q, k, v)

    def _capture(self, model, n: int, attention: RaggedAttention | None, T: int) -> _Bucket:
        """Run the bucket's pieces eagerly (this step's hidden states), then record them as graphs."""
        pieces = _pieces(model, n, self.bufs)
        self._eager(pieces, attention, T)
        replays, state = [], ()
        for piece in pieces:
            replay, state = self._record(piece, state)
            replays.append(replay)
        return _Bucket(replays, pieces)

    def _eager(self, pieces: list[Callable], attention: RaggedAttention | None, T: int) -> None:
        """The pieces run eagerly, each on the state the one before returned: the warm-up forward before a
        capture, on a side stream (kernels, workspaces and compiled functions are created there)."""
        state = ()

        def run_piece(i: int) -> None:
            nonlocal state
            state = pieces[i](*state)

        with _side_stream(self.bufs.ids.device):
            self._run(run_piece, len(pieces), attention, T)

    def _record(self, piece: Callable, state: tuple) -> tuple[Callable, tuple]:
        """Capture ``piece(*state)`` into a CUDA graph of the shared pool: (its replay, its outputs). (Not
        ``torch.cuda.graph``, which synchronises and empties the allocator's cache at each of a bucket's
        L + 1 captures.)"""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream()
        graph, main = torch.cuda.CUDAGraph(), torch.cuda.current_stream()
        self.stream.wait_stream(main)
        with torch.cuda.stream(self.stream):
            graph.capture_begin(pool=self.pool)
            try:
                out = piece(*state)
            finally:
                graph.capture_end()
        main.wait_stream(self.stream)
        return graph.replay, out


@contextmanager
def _side_stream(device: torch.device) -> Iterator[None]:
    """Within: work runs on a new CUDA stream that starts after, and ends before, the current one's next work
    (nothing on a CPU)."""
    if device.type != "cuda":
        yield
        return
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)


def pieces_of(model) -> PieceGraphs:
    """The model's :class:`PieceGraphs` (created on first use; dropped by :func:`forget` when its weights or
    elementwise functions change, which the captured graphs read by address)."""
    pieces = model.__dict__.get("_piece_graphs")
    if pieces is None or pieces[0] is not model.ops:
        pieces = (model.ops, PieceGraphs())
        model.__dict__["_piece_graphs"] = pieces
    return pieces[1]


def forget(model) -> None:
    """Drop the model's captured pieces (see :func:`pieces_of`)."""
    model.__dict__.pop("_piece_graphs", None)
