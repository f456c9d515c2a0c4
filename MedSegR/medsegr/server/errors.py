"""Every error the server sends is JSON ``{"error": {"code": ..., "message": ...}}``.

:class:`ApiError` carries an HTTP status, a short machine-readable code and a
one-line message; :func:`install_error_handlers` maps it, the engine's own
:class:`medsegr.errors.MedSegRError` (400), FastAPI's validation errors (400 for a
body that is not JSON, 422 for one that does not fit the schema), Starlette's HTTP
errors (404 for unknown paths, 405 with an ``Allow`` header listing every method the
path supports, …) and anything unexpected (500, details only in the log) to that
shape. :func:`send_error` sends the same shape from pure ASGI middleware.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Send

from medsegr.errors import MedSegRError

log = logging.getLogger("medsegr.server")

#: status -> default code, for errors raised without one (e.g. Starlette's 404)
_DEFAULT_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                  405: "method_not_allowed", 408: "request_timeout", 409: "conflict",
                  413: "too_large",
                  415: "unsupported_media_type", 422: "invalid_request", 500: "internal_error",
                  503: "busy", 504: "timeout", 507: "out_of_memory"}


class ApiError(Exception):
    """An error reply: HTTP ``status``, ``code``, one-line ``message``, extra ``headers``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_engine_error(exc: MedSegRError) -> ApiError:
    """A user-caused engine error (bad image, question, slice index …) as a 400."""
    return ApiError(400, exc.code, str(exc))


def error_body(status: int, code: str | None, message: str) -> dict[str, Any]:
    return {"error": {"code": code or _DEFAULT_CODES.get(status, "error"), "message": message}}


async def send_error(send: Send, status: int, code: str, message: str,
                     headers: Iterable[tuple[str, str]] = ()) -> None:
    """Send a complete JSON error reply through a raw ASGI ``send``."""
    body = json.dumps(error_body(status, code, message)).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode("ascii")),
                            *((k.lower().encode("latin-1"), v.encode("latin-1"))
                              for k, v in headers)]})
    await send({"type": "http.response.body", "body": body})


#: the methods a 405 answer's ``Allow`` header may list
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the application accepts on the request's path
    (each method is matched against the routes, nested routers included)."""
    routes = request.app.router.routes
    return [method for method in _METHODS
            if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                   for route in routes)]


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "bad_json", "the request body is not valid JSON"
    if not errors:
        return 422, "invalid_request", "the request does not fit the API"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    if first.get("type") == "missing" and where == "request":
        return 400, "bad_json", "the request needs a JSON body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, "invalid_request", f"{where}: {first.get('msg', 'invalid value')}{more}"


def install_error_handlers(app: FastAPI) -> None:
    """Make every error reply of ``app`` the JSON error shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(MedSegRError)
    async def _engine_error(request: Request, exc: MedSegRError) -> JSONResponse:
        return from_engine_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _validation_message(exc)
        return JSONResponse(error_body(status, code, message), status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = (f"{request.method} is not allowed on {request.url.path}; allowed: "
                       f"{', '.join(allowed)}")
        return JSONResponse(error_body(exc.status_code, getattr(exc, "code", None), message),
                            status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path,
                  exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(error_body(500, "internal_error",
                                       "the engine failed on this request; see the server log"),
                            status_code=500)
