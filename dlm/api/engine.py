"""``dlm.Engine``: requests that join and leave at any step (continuous batching).

    engine = dlm.Engine(model, max_rows=32)
    req = engine.submit("add: 66+163 =", dlm.GenerationConfig(gen_length=32, scheduler="threshold"))
    while not req.done:
        for event in engine.step():          # ONE forward over every running request
            print(event.request_id, event.new_tokens())
    print(req.output.texts[0])

Each request brings its own :class:`~dlm.config.GenerationConfig` (length, blocks, steps, scheduler, cache,
sampling, seed) and gets its own slots of a key/value pool preallocated when the engine is built
(``max_rows`` slots of ``max_tokens // max_rows`` positions). A request that does not fit waits in the queue
until one ends; nothing is allocated per step.

**Batch invariance.** A request's answer is token for token the answer it gets alone, whatever runs beside it and
whenever it joins: at temperature 0 and with seeded sampling (each request draws from its own generator). On a
CPU in float32 this holds always (tested). On a GPU, matrix kernels change their rounding with the shape of the
batch; with ``batch_invariant=True`` every matrix product and reduction runs on fixed-size tiles and attention
per request, so it holds there too, at a cost (see BENCHMARKS.md).
"""

from __future__ import annotations

import json
import threading
from typing import Any

import torch

from ..config import GenerationConfig
from ..engine.build import RequestBuilder
from ..engine.core import EngineCore
from ..engine.request import Request, Status
from ..errors import ConfigError
from ..outputs import StepEvent
from .defaults import effective_config

ATTENTION = ("auto", "loop", "padded")


class Engine:
    """Continuous batching over one model (see the module doc).

    Args:
        model: a :class:`~dlm.api.DiffusionLM`.
        max_rows: requests that run at once (a request with classifier-free guidance counts twice).
        max_tokens: positions of the key/value pool, shared equally by the rows; a request's prompt +
            gen_length must fit in ``max_tokens // max_rows``. Default: ``max_rows`` times the model's context.
        attention: ragged attention backend: ``"loop"`` (one attention call per request), ``"padded"`` (one call
            over padded rows), ``"auto"`` (loop on CPU and with ``batch_invariant``, padded otherwise).
        batch_invariant: make answers independent of the batch on a GPU too (slower); default: True on CPU,
            where it costs almost nothing, False on CUDA.
        graphs: what replays repeated step layouts, and the other steps' dense parts by piecewise graphs
            (default: :class:`~dlm.engine.graphs.StepGraphs` on CUDA when the model was loaded with
            ``cuda_graphs=True``, else nothing).
        lookahead: launch a step's forward before the previous step's results reach the host when that forward
            is certain (:mod:`dlm.engine.lookahead`: the host's work between steps then runs while the GPU
            computes); default: on CUDA. ``False`` is the reference loop.
    """

    def __init__(self, model, max_rows: int = 32, max_tokens: int | None = None, *, attention: str = "auto",
                 batch_invariant: bool | None = None, graphs=None, lookahead: bool | None = None):
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ConfigError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        if max_tokens is None:
            max_tokens = max_rows * model.max_length
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < max_rows:
            raise ConfigError(f"max_tokens must be an integer >= max_rows ({max_rows}), got {max_tokens!r}")
        if attention not in ATTENTION:
            raise ConfigError(f"unknown attention backend {attention!r}; allowed: {', '.join(ATTENTION)}")
        if lookahead is not None and not isinstance(lookahead, bool):
            raise ConfigError(f"lookahead must be True, False or None (on for CUDA), got {lookahead!r}")
        self.model = model
        self.core = EngineCore.build(model, max_rows, max_tokens // max_rows, attention, batch_invariant, graphs,
                                     lookahead=lookahead)
        self.batch_invariant = self.core.batch_invariant
        self._lock = threading.RLock()
        self._builder = RequestBuilder(model)
        self._verifiers: dict[str, Any] = {}
        self._drivers: dict[str, Any] = {}

    # ----------------------------------------------------------------- requests
    def submit(self, prompt, config: GenerationConfig | None = None, *, tag: Any = None, **overrides) -> Request:
        """Queue one request; it starts at the next step that has room for it. ``prompt`` is a string or a list
        of token ids; ``overrides`` replace fields of ``config``."""
        config = config or GenerationConfig()
        if overrides:
            config = config.replace(**overrides)
        ids = self.model.encode(prompt, chat_template=config.chat_template)
        if len(ids) != 1:
            raise ConfigError(f"submit() takes one prompt, got {len(ids)}; submit them one by one")
        request = self.prepare(ids[0], config, tag=tag)
        with self._lock:
            self.core.submit(request)
        return request

    def prepare(self, prompt_ids: list[int], config: GenerationConfig, tag: Any = None,
                name: str = "the prompt") -> Request:
        """A checked :class:`Request` for token ids, not yet queued (``generate`` prepares all before queueing);
        ``name`` is how error messages call the prompt."""
        lm = self.model
        config = effective_config(lm, config)  # unset fields: generation_config.json, then the format's defaults
        driver = None
        if config.verify is not None:
            config, driver = self._verifier(config)
        return self._builder.build(prompt_ids, config, tag=tag, driver=driver, name=name)

    def _verifier(self, config: GenerationConfig):
        """The decode a lossless verifier reproduces, and the driver (one per verifier configuration) that runs it."""
        from .. import verify

        key = json.dumps([config.verify, {k: repr(v) for k, v in dict(config.verify_kwargs).items()}], sort_keys=True)
        if key not in self._drivers:
            self._verifiers[key] = verify.get(config.verify)(**dict(config.verify_kwargs))
            self._drivers[key] = self._verifiers[key].driver(self.model)
        verifier = self._verifiers[key]
        verifier.check(config)
        return verifier.reference_config(config), self._drivers[key]

    def reset_components(self) -> None:
        """Forget the scheduler and verifier objects built for earlier requests, so that the next requests build
        their own (``generate`` does this per call, as each call used to build its components)."""
        self._builder.reset()
        self._verifiers.clear()
        self._drivers.clear()

    def enqueue(self, request: Request) -> None:
        with self._lock:
            self.core.submit(request)

    def cancel(self, request: Request) -> None:
        """Cancel a request: a queued one now, a running one before the next step (its slots are freed then)."""
        with self._lock:
            self.core.cancel(request)

    # ----------------------------------------------------------------- running
    def step(self) -> list[StepEvent]:
        """Admit queued requests that fit, then run ONE forward over every running request; returns one
        :class:`~dlm.outputs.StepEvent` per request that took part."""
        with self._lock:
            return self.core.step()

    def run(self, stream=None) -> None:
        """Step until no request is queued or running; ``stream`` gets every event."""
        while self.pending:
            for event in self.step():
                if stream is not None:
                    stream(event)
                if event.stop_requested and not event.request.done:
                    self.cancel(event.request)

    def capture_graphs(self, tokens: int | None = None) -> int:
        """Capture now the piecewise CUDA graphs (:mod:`dlm.engine.pieces`) of every step size up to ``tokens``
        fed positions (default: the most a step of this engine feeds, ``max_tokens``, or the most they serve,
        4,096, if that is less), as a server does at start-up, instead of in the first steps that meet each size
        (a capture costs about one eager step more). They belong to the model and serve its other engines too.
        Returns how many were captured: 0 without CUDA graphs (a CPU, ``cuda_graphs=False``,
        ``batch_invariant=True``) or where the model cannot run them."""
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            raise ConfigError(f"tokens must be a positive int or None (every size), got {tokens!r}")
        with self._lock:
            core = self.core
            pieces = core.graphs.pieces_for(core.lm.model) if core.graphs is not None else None
            if pieces is None:
                return 0
            most = core.max_rows * core.slot_len if tokens is None else tokens
            return pieces.capture_all(core.lm.model, most, core.device)

    @property
    def pending(self) -> int:
        """Requests queued or running."""
        return len(self.core.queue) + len(self.core.running)

    def canvas(self, request: Request) -> torch.Tensor:
        """A running request's canvas now: (length,) long on the CPU, prompt then answer (mask id where still
        masked; EOS past an end-of-text cut)."""
        if request.status != Status.RUNNING:
            raise ConfigError(f"request {request.id} is {request.status.value}, not running; read request.output")
        with self._lock:
            return self.core.buf.tokens[request.slots[0], : request.layout.length].to("cpu", copy=True)

    def stats(self) -> dict[str, float]:
        """Queue depth, running requests, rows of the pool in use and its size."""
        core = self.core
        return {"queued": len(core.queue), "running": len(core.running), "rows_in_use": core.pool.in_use(),
                "max_rows": core.max_rows, "slot_len": core.slot_len, "steps": core.steps,
                "pool_bytes": core.pool.nbytes()}


__all__ = ["Engine", "Request", "Status"]
