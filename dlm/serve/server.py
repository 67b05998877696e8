"""The server's state: the model, one engine loop per replica, admission (queue limit, API key), shutdown.

    server = Server([ProcessBackend(spec)], ServerSettings(model_name="dlm-tiny", max_queue=256), lm)
    app = create_app(server)      # dlm.serve.app

``lm`` reads prompts and writes answers (its tokenizer and special ids: weights are not needed, see
:func:`dlm.api.load_meta`); each backend runs an engine (:mod:`dlm.serve.process`: in its own process;
:class:`dlm.serve.loop.ThreadBackend`: in a thread). Requests go to the replica with the fewest requests in
flight (``--data-parallel``: one engine per device).
The server holds at most ``max_rows`` (summed over replicas) + ``max_queue`` engine requests at once (a request
with ``n`` choices counts ``n``); beyond that it answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time
from dataclasses import dataclass

from .errors import APIError
from .loop import EngineLoop
from .metrics import Metrics

log = logging.getLogger("dlm.serve")


@dataclass(frozen=True)
class ServerSettings:
    """``model_name``: the id /v1/models reports; ``max_queue``: engine requests that may wait beyond the
    running ones; ``api_key``: required as ``Authorization: Bearer KEY`` when set; ``request_timeout``: seconds
    before a request is cancelled (None: never); ``shutdown_grace``: seconds in-flight requests get to finish
    on shutdown before they are cancelled; ``stream_interval``: a streamed answer's progress goes out every this
    many engine steps (and at its end; the ``dlm_canvas`` extension gets every step)."""

    model_name: str
    max_queue: int = 256
    api_key: str | None = None
    request_timeout: float | None = 600.0
    shutdown_grace: float = 30.0
    stream_interval: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.stream_interval, int) or self.stream_interval < 1:
            raise ValueError(f"stream_interval must be an integer >= 1, got {self.stream_interval!r}")


class Server:
    """Engines behind one HTTP front (see the module doc)."""

    def __init__(self, backends: list, settings: ServerSettings, lm):
        if not backends:
            raise ValueError("a server needs at least one engine")
        self.settings = settings
        self.metrics = Metrics()
        self.loops = [EngineLoop(b, self.metrics, name=str(i)) for i, b in enumerate(backends)]
        self.lm = lm
        self.stopping = False
        self._latency = 1.0  # moving average of request latency (s), for Retry-After

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    @property
    def request_timeout(self) -> float | None:
        return self.settings.request_timeout

    @property
    def slot_len(self) -> int:
        return min(loop.slot_len for loop in self.loops)

    @property
    def capacity(self) -> int:
        return sum(loop.max_rows for loop in self.loops) + self.settings.max_queue

    @property
    def in_flight(self) -> int:
        return sum(loop.in_flight for loop in self.loops)

    # ----------------------------------------------------------------- requests
    def check_key(self, authorization: str | None) -> None:
        """401 unless ``authorization`` is ``Bearer <the key>`` (compared in constant time)."""
        key = self.settings.api_key
        if key is None:
            return
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise APIError(404, f"the model {name!r} does not exist here; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")

    def admit(self, n: int, endpoint: str) -> None:
        """503 while shutting down or when an engine loop has died; 400 when ``n`` answers can never fit; 429 when
        ``n`` more would overfill the server now."""
        if self.stopping or not all(loop.alive for loop in self.loops):
            self.metrics.rejected(endpoint, "unavailable")
            raise APIError(503, "the server is shutting down or its engine has stopped", type="server_error",
                           code="unavailable")
        if n > self.capacity:
            self.metrics.rejected(endpoint, "invalid")
            raise APIError(400, f"the request asks for {n} answers (prompts x n) but this server holds at most "
                                f"{self.capacity} at once (--max-rows + --max-queue); send fewer", param="n")
        if self.in_flight + n > self.capacity:
            self.metrics.rejected(endpoint)
            wait = max(1, math.ceil(self._latency))
            raise APIError(429, f"the server is full: {self.in_flight} requests in flight, room for "
                                f"{self.capacity} (--max-rows + --max-queue); retry in {wait} s",
                           type="rate_limit_error", code="queue_full", headers={"Retry-After": str(wait)})

    def route(self) -> EngineLoop:
        """The replica with the fewest requests in flight."""
        return min(self.loops, key=lambda loop: loop.in_flight)

    def note_latency(self, seconds: float) -> None:
        self._latency = 0.8 * self._latency + 0.2 * seconds

    # ----------------------------------------------------------------- life
    def start(self, aio: asyncio.AbstractEventLoop) -> None:
        for loop in self.loops:
            loop.start(aio)

    async def shutdown(self) -> None:
        """Let in-flight requests finish for up to ``shutdown_grace`` seconds, then cancel the rest and stop
        the engines."""
        self.stopping = True
        deadline = time.monotonic() + self.settings.shutdown_grace
        while self.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning("dlm serve: cancelling %d request(s) still in flight at shutdown", self.in_flight)
        for loop in self.loops:
            await asyncio.to_thread(loop.stop)
