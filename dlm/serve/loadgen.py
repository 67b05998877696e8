"""The client side of ``dlm bench serve``: streamed requests against a running server, a fixed number of
clients at a time (closed loop: each client sends its next request when the last one has finished).

Each request is streamed (``stream_options.include_usage``) so that the time to the first text is measured as
a client sees it; the answer's tokens and NFE come from the usage chunk. Nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass
class RequestResult:
    """One request: ``ok``, seconds to the first text (``ttft``) and to the end (``latency``), answer
    ``tokens`` and ``nfe`` (from usage), ``error`` (the message when not ok)."""

    ok: bool
    latency: float
    ttft: float | None = None
    tokens: int = 0
    nfe: int = 0
    prompt_tokens: int = 0
    error: str | None = None


@dataclass
class LevelResult:
    """One concurrency level: its requests' results and the wall time from the first send to the last end."""

    concurrency: int
    wall: float
    results: list[RequestResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ok = [r for r in self.results if r.ok]
        tokens = sum(r.tokens for r in ok)
        lat = sorted(r.latency for r in ok)
        ttft = sorted(r.ttft for r in ok if r.ttft is not None)
        return {"concurrency": self.concurrency, "requests": len(self.results), "errors": len(self.results) - len(ok),
                "wall_s": self.wall, "requests_per_s": len(ok) / self.wall if self.wall else 0.0,
                "output_tokens": tokens, "output_tokens_per_s": tokens / self.wall if self.wall else 0.0,
                "nfe_per_token": sum(r.nfe for r in ok) / tokens if tokens else 0.0,
                "prompt_tokens_mean": statistics.fmean(r.prompt_tokens for r in ok) if ok else 0.0,
                "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99),
                "latency_p50_s": percentile(lat, 50), "latency_p99_s": percentile(lat, 99),
                "first_errors": sorted({r.error for r in self.results if r.error})[:3]}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (linear interpolation), None without values."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1] if q < 100 else sorted_values[-1]


async def one_request(http: httpx.AsyncClient, body: dict[str, Any]) -> RequestResult:
    """POST one streamed completion and time it."""
    # token ids ride along so that a model without a tokenizer (random weights) has a first token too
    body = {**body, "stream": True, "stream_options": {"include_usage": True}, "return_token_ids": True}
    t0 = time.perf_counter()
    ttft, usage, error = None, None, None
    try:
        async with http.stream("POST", "/v1/completions", json=body) as r:
            if r.status_code != 200:
                text = (await r.aread()).decode(errors="replace")
                return RequestResult(False, time.perf_counter() - t0, error=f"HTTP {r.status_code}: {text[:200]}")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    error = chunk["error"].get("message", "error event")
                for c in chunk.get("choices") or ():
                    if ttft is None and (c.get("text") or c.get("token_ids")):
                        ttft = time.perf_counter() - t0
                usage = chunk.get("usage") or usage
    except httpx.HTTPError as exc:
        return RequestResult(False, time.perf_counter() - t0, error=f"{type(exc).__name__}: {exc}")
    latency = time.perf_counter() - t0
    if error is not None or usage is None:
        return RequestResult(False, latency, error=error or "the stream ended without usage")
    return RequestResult(True, latency, ttft, usage["completion_tokens"], usage.get("nfe", 0), usage["prompt_tokens"])


async def run_level(url: str, bodies: list[dict[str, Any]], concurrency: int, *, api_key: str | None = None,
                    timeout: float = 600.0) -> LevelResult:
    """Send ``bodies`` with ``concurrency`` clients at a time; results in the order of ``bodies``."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[RequestResult | None] = [None] * len(bodies)
    pending = iter(range(len(bodies)))

    async def client(http: httpx.AsyncClient) -> None:
        for i in pending:  # the shared iterator hands each index to one client
            results[i] = await one_request(http, bodies[i])

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return LevelResult(concurrency, wall, [r for r in results if r is not None])


def level_json(level: LevelResult) -> dict[str, Any]:
    return {**level.summary(), "per_request": [asdict(r) for r in level.results]}
