"""Who may talk to the server, and how much they may send.

* :func:`check_bind_address`: the server binds to loopback by default and refuses
  any other address unless a token is set.
* :class:`TokenCheck` (used by the :func:`require_token` dependency): compares the
  ``Authorization: Bearer`` token in constant time (:func:`hmac.compare_digest`).
* :class:`BodyLimitMiddleware`: refuses request bodies above a size (413) as soon as
  the declared ``Content-Length`` or the bytes received exceed it, before the body
  is held in memory.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Callable

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medsegr.errors import InputError
from medsegr.server.errors import ApiError, error_body


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind_address(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise InputError(f"refusing to listen on {host} without a token: anyone who can reach "
                         "this machine could use the engine. Pass --token-file FILE (or "
                         "--token), or listen on 127.0.0.1")


#: declares the bearer scheme in the OpenAPI document (the check itself is TokenCheck's)
bearer_scheme = HTTPBearer(auto_error=False, description="the token `medsegr serve` was "
                           "started with; not needed when it runs without one")


class TokenCheck:
    """The request's bearer token must equal ``token``.

    With ``token=None`` every request passes (only allowed on loopback). The
    comparison runs in constant time over the UTF-8 bytes.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token else None

    def verify(self, request: Request) -> None:
        """Raise a 401 :class:`ApiError` unless the request carries the token."""
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "this engine needs a token: send "
                           "'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            raise ApiError(401, "unauthorized", "the token is not valid for this engine",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})


async def require_token(request: Request,
                        _: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> None:
    """FastAPI dependency: the running engine's :class:`TokenCheck` must accept the request."""
    request.app.state.engine.token_check.verify(request)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` once the body exceeds the limit; an HTTPException so
    that FastAPI's body parsing lets it through to the JSON error handler."""

    def __init__(self, received: int, limit: int) -> None:
        super().__init__(413, _too_large(received, limit))
        self.received = received


class BodyLimitMiddleware:
    """Pure ASGI middleware: 413 JSON error for bodies larger than the limit that
    ``limit_for(scope)`` returns for the request."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "bad_request", "Content-Length is not a number")
                    return
        if declared is not None and declared > limit:
            await _send_error(send, 413, "too_large", _too_large(declared, limit))
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(received, limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:  # raised outside the application's error handlers
            if not started:
                await _send_error(send, 413, "too_large", _too_large(received, limit))


def _too_large(size: int, limit: int) -> str:
    return f"the request body ({size:,} bytes or more) is larger than this engine accepts ({limit:,} bytes)"


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps(error_body(status, code, message)).encode("utf-8")
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode("ascii")),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


__all__ = ["BodyLimitMiddleware", "TokenCheck", "bearer_scheme", "check_bind_address",
           "is_loopback", "require_token"]
