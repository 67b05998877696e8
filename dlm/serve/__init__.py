"""``dlm serve``: an OpenAI-compatible HTTP server over :class:`dlm.Engine` (continuous batching), with
streaming, Prometheus metrics, a live playground page and a load generator (``dlm bench serve``).

Needs the ``dlm[serve]`` extra (FastAPI, uvicorn, sse-starlette, prometheus-client, httpx). See
docs/serving.md. Modules: ``schemas`` (request bodies), ``params`` (body -> engine requests), ``driver`` (steps
an engine), ``process`` (the engine in its own process), ``progress`` (what comes back from it), ``loop`` (its
asyncio side), ``answer`` (final text as it grows), ``completion`` (one HTTP request's answers), ``stream``
(server-sent events), ``metrics``, ``server`` (state, routing, admission), ``app`` (routes), ``cli``, and the
load generator ``loadgen`` / ``bench`` / ``report``.
"""
