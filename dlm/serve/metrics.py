"""Prometheus metrics of the server (``GET /metrics``), through prometheus-client.

Engine state (per replica, from what the engine reports after every step): ``dlm_queue_depth`` (requests waiting
for rows), ``dlm_running_requests``, ``dlm_active_rows`` (rows of the key/value pool in use),
``dlm_max_rows``, ``dlm_engine_steps_total``, ``dlm_engine_step_seconds``, ``dlm_committed_tokens_total``
and ``dlm_tokens_per_second`` (committed answer positions per second over the last 10 s).

Requests (set by the HTTP side): ``dlm_requests_total{endpoint, outcome}`` (outcome: ok, error, cancelled,
rejected, timeout), ``dlm_request_latency_seconds{endpoint}``, ``dlm_time_to_first_token_seconds`` (streamed
requests: arrival to the first chunk with answer text), ``dlm_completion_tokens_total`` (answer tokens
returned), ``dlm_nfe_total`` and ``dlm_nfe_per_token`` (forward passes per returned token, since start).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

WINDOW_S = 10.0
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """The server's metrics in their own registry (several servers may live in one process, e.g. in tests)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        rep = ["replica"]
        self.queue_depth = Gauge("dlm_queue_depth", "requests waiting for rows", rep, registry=r)
        self.running = Gauge("dlm_running_requests", "requests decoding", rep, registry=r)
        self.rows = Gauge("dlm_active_rows", "rows of the key/value pool in use", rep, registry=r)
        self.max_rows = Gauge("dlm_max_rows", "rows of the key/value pool", rep, registry=r)
        self.steps = Counter("dlm_engine_steps", "engine steps (one forward each)", rep, registry=r)
        self.step_seconds = Histogram("dlm_engine_step_seconds", "wall time of one engine step", rep,
                                      buckets=STEP_BUCKETS, registry=r)
        self.committed = Counter("dlm_committed_tokens", "answer positions committed", rep, registry=r)
        self.requests = Counter("dlm_requests", "HTTP requests by outcome", ["endpoint", "outcome"], registry=r)
        self.latency = Histogram("dlm_request_latency_seconds", "arrival to the last byte of the answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("dlm_time_to_first_token_seconds", "streamed requests: arrival to the first text",
                              buckets=TTFT_BUCKETS, registry=r)
        self.completion_tokens = Counter("dlm_completion_tokens", "answer tokens returned", registry=r)
        self.nfe = Counter("dlm_nfe", "forward passes of the answered requests", registry=r)
        Gauge("dlm_tokens_per_second", f"committed answer positions per second over the last {WINDOW_S:g} s",
              registry=r).set_function(self.tokens_per_second)
        Gauge("dlm_nfe_per_token", "forward passes per returned answer token since start",
              registry=r).set_function(self.nfe_per_token)
        self._window: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()
        self._nfe = self._tokens = 0

    # ----------------------------------------------------------------- engine reports (on the asyncio loop)
    def engine_state(self, replica: str, stats: dict, inbox: int) -> None:
        self.queue_depth.labels(replica).set(stats["queued"] + inbox)
        self.running.labels(replica).set(stats["running"])
        self.rows.labels(replica).set(stats["rows_in_use"])
        self.max_rows.labels(replica).set(stats["max_rows"])

    def step(self, replica: str, seconds: float, committed: int, requests: int) -> None:
        self.steps.labels(replica).inc()
        self.step_seconds.labels(replica).observe(seconds)
        self.committed.labels(replica).inc(committed)
        now = time.monotonic()
        with self._lock:
            self._window.append((now, committed))
            while self._window and self._window[0][0] < now - WINDOW_S:
                self._window.popleft()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [(t, n) for t, n in self._window if t >= now - WINDOW_S]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3) if len(recent) > 1 else WINDOW_S
        return sum(n for _, n in recent) / min(span, WINDOW_S)

    # ----------------------------------------------------------------- HTTP side
    def answered(self, endpoint: str, outcome: str, seconds: float, tokens: int = 0, nfe: int = 0) -> None:
        self.requests.labels(endpoint, outcome).inc()
        self.latency.labels(endpoint).observe(seconds)
        if tokens or nfe:
            self.completion_tokens.inc(tokens)
            self.nfe.inc(nfe)
            with self._lock:
                self._tokens += tokens
                self._nfe += nfe

    def rejected(self, endpoint: str, outcome: str = "rejected") -> None:
        self.requests.labels(endpoint, outcome).inc()

    def nfe_per_token(self) -> float:
        with self._lock:
            return self._nfe / self._tokens if self._tokens else 0.0

    def render(self) -> bytes:
        return generate_latest(self.registry)
