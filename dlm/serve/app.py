"""The FastAPI application: OpenAI's endpoints, health, metrics, the playground.

    GET  /                      the playground (dlm/serve/static/playground.html)
    GET  /health                200 while the engine loops run, else 503
    GET  /metrics               Prometheus metrics (dlm.serve.metrics)
    GET  /v1/models             the served model
    GET  /v1/dlm/options        registered schedulers, caches and verifiers with their parameters
    POST /v1/completions        OpenAI completions (dlm's settings as extra fields)
    POST /v1/chat/completions   OpenAI chat completions (the tokenizer's chat template)

With an API key every /v1 route and /metrics need ``Authorization: Bearer KEY``; the playground page (which asks
for the key) and /health do not.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sse_starlette import EventSourceResponse

from . import errors, params
from .completion import Completion
from .errors import APIError
from .schemas import ChatCompletionRequest, CommonFields, CompletionRequest
from .server import Server
from .stream import sse_events


def create_app(server: Server) -> FastAPI:
    """The application serving ``server``; its lifespan starts the engines and drains them at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.start(asyncio.get_running_loop())
        yield
        await server.shutdown()

    app = FastAPI(title="dlm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    errors.install(app)

    def authorized(authorization: str | None = Header(default=None)) -> None:
        server.check_key(authorization)

    api = APIRouter(dependencies=[Depends(authorized)])
    _add_api_routes(api, server)
    app.include_router(api)
    _add_open_routes(app, server)
    return app


def _add_open_routes(app: FastAPI, server: Server) -> None:
    page = resources.files("dlm.serve").joinpath("static/playground.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = not server.stopping and all(loop.alive for loop in server.loops)
        return JSONResponse({"status": "ok" if ok else "unavailable"}, status_code=200 if ok else 503)


def _add_api_routes(api: APIRouter, server: Server) -> None:
    lm = server.lm

    @api.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card(server)]}

    @api.get("/v1/dlm/options")
    async def options() -> dict:
        return {"model": model_card(server), **registered_components()}

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        server.check_model(body.model)
        with _counted(server, "completions"):
            params.check_body(body)
            prompts = params.completion_prompts(lm, body.prompt)
            specs = params.answer_specs(body, lm, prompts, slot_len=server.slot_len, prompt_param="prompt")
        return await respond(server, request, body, specs, chat=False, endpoint="completions")

    @api.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        server.check_model(body.model)
        with _counted(server, "chat"):
            params.check_body(body)
            prompt = params.chat_prompt(lm, body)
            specs = params.answer_specs(body, lm, [prompt], slot_len=server.slot_len, prompt_param="messages")
        return await respond(server, request, body, specs, chat=True, endpoint="chat")


class _counted:
    """Count a refusal (400) raised while a request is read, then let it propagate."""

    def __init__(self, server: Server, endpoint: str):
        self.server, self.endpoint = server, endpoint

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, APIError):
            self.server.metrics.rejected(self.endpoint, "invalid")
        return False


async def respond(server: Server, request: Request, body: CommonFields, specs, *, chat: bool, endpoint: str):
    """Run the answers of one request: an SSE stream, or one JSON response (cancelled if the client leaves)."""
    opts = body.stream_options
    canvas = bool(body.stream and opts and opts.dlm_canvas)
    c = Completion(server, specs, chat=chat, stream=body.stream, endpoint=endpoint, return_ids=body.return_token_ids,
                   canvas=canvas)
    await c.start()
    if body.stream:
        events = sse_events(c, bool(opts and opts.include_usage), canvas)
        grace = server.settings.shutdown_grace
        return EventSourceResponse(events, sep="\n", shutdown_grace_period=grace, headers={"Cache-Control": "no-cache"})
    outcome = "cancelled"
    try:
        if not await _unless_disconnected(request, c.collect()):
            return Response(status_code=499)  # nobody reads it: nginx's "client closed request"
        outcome = "ok"
        return JSONResponse(c.response())
    except APIError as exc:
        outcome = "timeout" if exc.status == 504 else "error"
        raise
    finally:
        c.cancel()
        c.finished(outcome)


async def _unless_disconnected(request: Request, work) -> bool:
    """Await ``work``; False if the client disconnected first (``work`` is then cancelled)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        task.result()  # its APIError, if any
        return True
    task.cancel()
    return False


async def _disconnect(request: Request) -> None:
    """Return once the client has gone (the body is read already, so the next ASGI message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def model_card(server: Server) -> dict:
    """The served model as /v1/models lists it, with dlm's facts under ``dlm``."""
    lm, loops = server.lm, server.loops
    tok = lm.tokenizer
    info = {"model_type": lm.model_type, "context": server.slot_len, "max_rows": sum(lp.max_rows for lp in loops),
            "replicas": len(loops), "engine": loops[0].where, "chat_template": bool(tok is not None and getattr(tok, "chat_template", None)),
            "tokenizer": tok is not None, "vocab_size": lm.arch.valid_vocab or lm.arch.vocab_size,
            "mask_id": lm.ids.mask_id, "batch_invariant": all(lp.batch_invariant for lp in loops),
            "default_block_length": params.DEFAULT_BLOCK, "default_max_tokens": params.DEFAULT_MAX_TOKENS}
    return {"id": server.model_name, "object": "model", "created": int(time.time()), "owned_by": "dlm", "dlm": info}


def registered_components() -> dict:
    """Names and parameters (with defaults) of every registered scheduler, cache and verifier."""
    import dlm

    out = {}
    for kind, registry in (("schedulers", dlm.schedulers.SCHEDULERS), ("caches", dlm.cache.CACHES),
                           ("verifiers", dlm.verify.VERIFIERS)):
        items = []
        for entry in registry.entries():
            try:
                cls = registry.get(entry.name)
            except Exception:  # noqa: BLE001 - a broken plugin is listed as such by `dlm schedulers`
                continue
            items.append({"name": entry.name, "params": _params(cls),
                          "doc": ((cls.__doc__ or "").strip().splitlines() or [""])[0]})
        out[kind] = items
    return out


def _params(cls) -> dict:
    """A component's parameters with their defaults (every field of ``Params`` has one)."""
    try:
        return dataclasses.asdict(cls.Params())
    except Exception:  # noqa: BLE001 - no Params, or one that needs arguments: nothing to show
        return {}
