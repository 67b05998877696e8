"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status that fits.

Every way a request can be refused ends here: a body that is not JSON, an unknown or mistyped field, a value
GenerationConfig rejects, a prompt over the context, a full queue (429 with Retry-After), a missing key (401).
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

# OpenAI parameters this server knows but does not implement: refused by name instead of "unknown field"
UNSUPPORTED = ("audio", "function_call", "functions", "modalities", "parallel_tool_calls", "prediction",
               "response_format", "tool_choice", "tools", "web_search_options", "reasoning_effort", "verbosity")


class APIError(Exception):
    """A refused request: HTTP ``status``, a message naming the value and what is allowed, the body field
    (``param``, dotted for nested fields: ``messages.0.role``) and OpenAI's error ``type``/``code``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


TYPE_TAGS = ("str", "int", "float", "bool", "list", "dict", "none", "literal")


def _param(loc: tuple) -> str | None:
    """The body field of a pydantic error location: ('body', 'messages', 0, 'role') -> 'messages.0.role';
    the member tags of a union (``str``, ``list[TextPart]``) are not fields and are dropped."""
    parts = [str(p) for p in (loc[1:] if loc and loc[0] == "body" else loc)]
    parts = [p for p in parts if not ("[" in p or p.lower() in TYPE_TAGS)]
    return ".".join(parts) or None


def _validation_message(err: dict[str, Any]) -> APIError:
    """One pydantic error as an APIError naming its field."""
    kind, loc = err.get("type", ""), tuple(err.get("loc", ()))
    param = _param(loc)
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return bad_request(f"the request body is not valid JSON ({detail})".replace(" ()", ""), None, "invalid_json")
    if kind == "extra_forbidden":
        name = str(loc[-1])
        if name in UNSUPPORTED:
            return bad_request(f"{name} is not supported by dlm serve", param, "unsupported_parameter")
        return bad_request(f"unknown field {name!r}; see docs/serving.md for the fields dlm serve accepts", param,
                           "unknown_parameter")
    if kind == "missing":
        if param is None:
            return bad_request("the request needs a JSON object body", None)
        return bad_request(f"{param} is required", param, "missing_parameter")
    if kind in ("model_type", "model_attributes_type", "dict_type") and param is None:
        return bad_request(f"the request body must be a JSON object, got {_kind(err.get('input'))}", None)
    value = json.dumps(err.get("input"), default=str)
    if len(value) > 80:
        value = value[:77] + "..."
    return bad_request(f"{param}: {err.get('msg', 'invalid value')} (got {value})", param, "invalid_value")


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


async def validation_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _validation_message(_chosen(exc.errors())).response()


def _chosen(errs: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to report: the first one, or of a union's alternatives (one error each, all under the first
    one's field) the one that got furthest into the value (``content.0.type`` rather than ``content`` is not
    a string)."""
    base = _param(tuple(errs[0].get("loc", ()))) or ""
    same = [e for e in errs if (_param(tuple(e.get("loc", ()))) or "").startswith(base)]
    return max(same, key=lambda e: len(e.get("loc", ())))


async def api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 / 405 and the like, in OpenAI's shape."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return APIError(exc.status_code, message, type=kind).response()


async def unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    """A bug: OpenAI's shape, no details (the traceback goes to the server's log)."""
    return APIError(500, f"internal error ({type(exc).__name__}); see the server log", type="server_error").response()


def install(app) -> None:
    """Route every refusal of ``app`` through the handlers above."""
    app.add_exception_handler(Exception, unexpected_handler)
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(APIError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
