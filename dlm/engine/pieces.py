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
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass

import torch

from ..models.elementwise import ops_for_positions
from ..models.ragged import RaggedAttention, RaggedRows
from ..models.transformer import plain_layers


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


def _pieces(model, n: int, bufs: _Buffers, ops) -> list[Callable]:
    """The L + 1 pieces of a forward over the first ``n`` positions of ``bufs`` with the elementwise functions
    ``ops``. Each takes the state the one before returned (the residual stream x, cos, sin) and returns the
    next; q/k/v go to the static buffers."""
    layers = model.layers
    ids, positions = bufs.ids[:n].unsqueeze(0), bufs.positions[:n].unsqueeze(0)
    attn = bufs.attn[:n].unsqueeze(0).transpose(1, 2)  # (1, H, n, D)
    q_out, k_out, v_out = bufs.qkv(n)

    def to_buffers(qkv) -> None:
        for out, t in zip((q_out, k_out, v_out), qkv):
            out.copy_(t)

    def first():
        x = model.embed_ids(ids)
        cos, sin = model.rope(positions)
        x, *qkv = layers[0].attention_inputs(x, None, cos, sin, ops)
        to_buffers(qkv)
        return x, cos, sin

    def middle(i: int):
        def piece(x, cos, sin):  # (the previous layer's last add goes with this layer's norm, as in the model)
            x, *qkv = layers[i].attention_inputs(*layers[i - 1].attention_outputs(x, attn, ops), cos, sin, ops)
            to_buffers(qkv)
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
    steps are bound by their products, where a replay saves nothing); ``ops``: the elementwise functions the
    pieces call (default: the model's at the first capture). If a capture fails (a model whose forward reads
    values on the host, e.g. a mixture of experts on its ``sorted`` path), a warning says so and every later
    step runs eagerly (:attr:`failed` holds the reason).
    """

    def __init__(self, granule: int = 64, max_tokens: int = 4096, min_uses: int = 2, ops=None):
        if granule < 1 or max_tokens < granule:
            raise ValueError(f"need 1 <= granule <= max_tokens, got granule={granule}, max_tokens={max_tokens}")
        self.granule, self.max_tokens, self.min_uses, self.ops = granule, max_tokens, min_uses, ops
        self.buckets: dict[int, _Bucket] = {}
        self.seen: dict[int, int] = {}
        self.bufs: _Buffers | None = None
        # engines of one model in several threads share the buffers: a forward through them is one critical section
        self.lock = threading.Lock()
        self.pool = self.stream = self.side = None  # the graphs' memory pool, capture and warm-up streams
        self.captures = self.replays = 0
        self.failed: str | None = None
        self.weights_version: int | None = None  # the model's, when the buckets were captured

    def follow_weights(self, model) -> None:
        """Drop every bucket (and the pool and buffers they used) when the model's weights were replaced since
        they were captured (``weights_version``): graphs read the weights by address. The model's own pieces
        (:func:`pieces_of`) are replaced instead; given ones (``StepGraphs(pieces=...)``) come here."""
        version = getattr(model, "weights_version", 0)
        if self.weights_version != version:
            if self.weights_version is not None:
                self.buckets, self.seen = {}, {}
                self.pool = self.bufs = None  # (a private pool is freed with its last graph: never reuse it)
            self.weights_version = version

    def bucket(self, tokens: int) -> int:
        """The bucket of a forward feeding ``tokens`` positions: rounded up to a multiple of ``granule``."""
        return -(-tokens // self.granule) * self.granule

    def wants(self, tokens: int) -> bool:
        """Whether :meth:`forward` runs a forward of ``tokens`` positions (counts it when it would capture)."""
        if self.failed is not None or not 0 < tokens <= self.max_tokens:
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
        with self.lock, on_device(ids.device):
            self.follow_weights(model)
            return self._forward(model, kv_pool, backend, rows, ids, positions, logits_index)

    def _forward(self, model, kv_pool, backend, rows, ids, positions, logits_index) -> torch.Tensor:
        T = ids.shape[1]
        n = self.bucket(T)
        bufs = self._buffers(model, ids.device)
        bufs.ids[:T].copy_(ids[0])
        bufs.positions[:T].copy_(positions[0])
        # the split-key attention kernel where its host time hides, as the fused functions' (ops_for_positions)
        attention = RaggedAttention(rows, kv_pool, backend, out=bufs.attn,
                                    kernels=ops_for_positions(model, T).fused)
        if n in self.buckets:
            replays = self.buckets[n].replays
            self._run(lambda i: replays[i](), len(replays), attention, T)
            self.replays += 1
        else:
            self._capture(model, n, attention, T)
        return model.gather_logits(bufs.hidden[:T].unsqueeze(0), logits_index)[0]

    @torch.no_grad()  # (outside an engine step, which runs without autograd)
    def capture_all(self, model, tokens: int, device: torch.device) -> int:
        """Capture every bucket of up to ``tokens`` positions (at most ``max_tokens``) not captured yet, largest
        first, without a step (a server's start-up); returns how many. The forward before each capture runs
        without attention: its values do not matter, only the kernels it prepares. Ends by returning the
        allocator's unused cached memory to the device."""
        with self.lock, on_device(device):
            self.follow_weights(model)
            self._buffers(model, device)
            top = self.bucket(min(tokens, self.max_tokens))
            done = 0
            for n in range(top, 0, -self.granule):
                if self.failed is not None:
                    break
                if n not in self.buckets:
                    done += self._capture(model, n, None, n)
            if done and device.type == "cuda":
                torch.cuda.empty_cache()  # the warm-ups' memory, cached for their stream only
            return done

    def _buffers(self, model, device: torch.device) -> _Buffers:
        if self.bufs is None:
            self.bufs = _Buffers.build(model, self.max_tokens, device)
            self.ops = model.ops if self.ops is None else self.ops
        return self.bufs

    def _run(self, run_piece: Callable[[int], None], count: int, attention: RaggedAttention | None, T: int) -> None:
        """Piece 0, attention of layer 0, piece 1, ..., piece L: a forward over the buffers, its hidden states
        into ``bufs.hidden`` (``attention=None``: the attention's output buffer is left as it is)."""
        q, k, v = self.bufs.qkv(T)
        for i in range(count):
            run_piece(i)
            if i < count - 1 and attention is not None:
                attention(i, q, k, v)

    def _capture(self, model, n: int, attention: RaggedAttention | None, T: int) -> bool:
        """Run the bucket's pieces eagerly (this step's hidden states), then record them as graphs; whether
        that worked (if not, :attr:`failed` says why and nothing more is captured)."""
        pieces = _pieces(model, n, self.bufs, self.ops)
        self._eager(pieces, attention, T)
        replays, state = [], ()
        try:
            for piece in pieces:
                replay, state = self._record(piece, state)
                replays.append(replay)
        except Exception as e:  # noqa: BLE001 - any failure to record leaves the model eager, with this reason
            self.failed = f"{type(e).__name__}: {e}"
            warnings.warn(f"dlm: piecewise CUDA graphs are off for this model, capturing failed ({self.failed}); "
                          "its steps that are not captured whole run eagerly", RuntimeWarning, stacklevel=2)
            return False
        self.buckets[n] = _Bucket(replays, pieces)
        self.captures += 1
        return True

    def _eager(self, pieces: list[Callable], attention: RaggedAttention | None, T: int) -> None:
        """The pieces run eagerly, each on the state the one before returned: the warm-up forward before a
        capture, on a side stream (kernels, workspaces and compiled functions are created there)."""
        state = ()

        def run_piece(i: int) -> None:
            nonlocal state
            state = pieces[i](*state)

        device = self.bufs.ids.device
        if device.type == "cuda" and self.side is None:  # one stream: the warm-ups reuse each other's memory
            self.side = torch.cuda.Stream(device)
        with side_stream(self.side):
            self._run(run_piece, len(pieces), attention, T)

    def _record(self, piece: Callable, state: tuple) -> tuple[Callable, tuple]:
        """Capture ``piece(*state)`` into a CUDA graph of the shared pool: (its replay, its outputs). (Not
        ``torch.cuda.graph``, which synchronises and empties the allocator's cache at each of a bucket's
        L + 1 captures.) Capture errors are thread-local: other threads' engines may allocate meanwhile."""
        device = self.bufs.ids.device
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
            self.stream = torch.cuda.Stream(device)
        graph = torch.cuda.CUDAGraph()
        with side_stream(self.stream):
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                out = piece(*state)
            except BaseException:
                with suppress(Exception):  # (the capture is invalid: ending it raises too)
                    graph.capture_end()
                raise
            graph.capture_end()
        return graph.replay, out


def on_device(device: torch.device):
    """Within: ``device`` is the current CUDA device (streams, graphs and pools are per device; a model on
    another GPU than the thread's current one would otherwise capture nothing)."""
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


@contextmanager
def side_stream(side) -> Iterator[None]:
    """Within: work runs on the CUDA stream ``side``, starting after, and ending before, the current stream's
    next work (``None``, on a CPU: nothing changes)."""
    if side is None:
        yield
        return
    main = torch.cuda.current_stream(side.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)


def supports(model) -> bool:
    """Whether the model's forward is what the pieces compute (:func:`~dlm.models.transformer.plain_layers`:
    the pieces call the layers' halves directly)."""
    return plain_layers(model)


def pieces_of(model) -> PieceGraphs | None:
    """The model's :class:`PieceGraphs` for its current elementwise functions (created on first use; each set
    of functions has its own, so a forward that passes other functions never replaces them), or None where
    :func:`supports` says no. They are dropped when the weights are replaced (the model's ``weights_version``
    changed: the graphs read them by address) and by :func:`forget`."""
    if not supports(model):
        return None
    by_ops = model.__dict__.setdefault("_piece_graphs", {})
    key = (model.ops, getattr(model, "weights_version", 0))
    if key not in by_ops:
        if any(version != key[1] for _, version in by_ops):  # weights replaced since: those graphs read freed memory
            by_ops.clear()
        by_ops[key] = PieceGraphs(ops=model.ops)
    return by_ops[key]


def forget(model) -> None:
    """Drop the model's captured pieces (see :func:`pieces_of`)."""
    model.__dict__.pop("_piece_graphs", None)
