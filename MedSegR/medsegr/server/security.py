"""Who may talk to the server.

* :func:`check_bind_address`: the server binds to loopback by default and refuses
  any other address unless a token is set.
* :class:`TokenCheck`: compares the ``Authorization: Bearer`` token in constant time
  (:func:`hmac.compare_digest`).
* :class:`AuthMiddleware` (pure ASGI, outermost): refuses a token in the URL's query
  string (400 ``token_in_query``, and the connection is closed) and, on every path
  but the public ones, a missing or wrong token (401), from the request line and
  headers alone: nothing of the body has been read, parsed or buffered when it
  answers, and the connection is closed after an answer to a request that announced
  a body.
* :func:`require_token`: the same check as a FastAPI dependency, which also declares
  the bearer scheme in the OpenAPI document.
"""

from __future__ import annotations

import hmac
import ipaddress
import urllib.parse
from collections.abc import Iterable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from medsegr.errors import InputError
from medsegr.server.errors import ApiError, send_error

#: query parameter names that look like credentials (compared in lower case,
#: after percent-decoding); such a parameter is refused whatever its value
TOKEN_QUERY_NAMES = frozenset({"token", "access_token", "accesstoken", "auth", "auth_token",
                               "authorization", "bearer", "api_key", "apikey", "api-key",
                               "key", "password", "secret", "jwt", "id_token"})


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


class TokenCheck:
    """The request's bearer token must equal ``token``.

    With ``token=None`` every request passes (only allowed on loopback). The
    comparison runs in constant time over the UTF-8 bytes.
    """

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token else None

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def verify_header(self, header: str) -> None:
        """Raise a 401 :class:`ApiError` unless ``header`` (the Authorization header's
        value, ``""`` when absent) carries the token."""
        if self._token is None:
            return
        scheme, _, given = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "this engine needs a token: send "
                           "'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(given.strip().encode("utf-8"), self._token):
            raise ApiError(401, "unauthorized", "the token is not valid for this engine",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    def verify(self, request: Request) -> None:
        """Raise a 401 :class:`ApiError` unless the request carries the token."""
        self.verify_header(request.headers.get("authorization", ""))

    def in_text(self, text: str) -> bool:
        """Whether the token appears in ``text`` (a decoded query string)."""
        return self._token is not None and self._token.decode("utf-8") in text


def token_in_query(query_string: bytes, check: TokenCheck) -> str | None:
    """Why this query string holds a credential (a parameter named like one, or the
    engine's token anywhere), or None."""
    text = query_string.decode("latin-1")
    pairs = urllib.parse.parse_qsl(text, keep_blank_values=True)
    for name, _ in pairs:
        if name.strip().lower() in TOKEN_QUERY_NAMES:
            return f"the query parameter {name.strip().lower()!r}"
    if check.in_text(urllib.parse.unquote_plus(text)):
        return "the engine's token"
    return None


class AuthMiddleware:
    """Pure ASGI middleware that authenticates a request before anything reads its
    body: 400 for a credential in the query string (URLs end up in logs, proxies and
    browser histories), 401 for a missing or wrong token on any path outside
    ``public_paths``."""

    def __init__(self, app: ASGIApp, check: TokenCheck, public_paths: Iterable[str]) -> None:
        self.app = app
        self.check = check
        self.public = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name: value for name, value in scope.get("headers", [])}
        has_body = b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0"
        close = [("Connection", "close")] if has_body else []
        found = token_in_query(scope.get("query_string", b""), self.check)
        if found is not None:
            await send_error(send, 400, "token_in_query", f"the URL holds {found}: send the "
                             "token only in the 'Authorization: Bearer <token>' header, never "
                             "in the URL", [("Connection", "close")])
            return
        if scope.get("path", "") not in self.public:
            try:
                self.check.verify_header(headers.get(b"authorization", b"").decode("latin-1"))
            except ApiError as exc:
                await send_error(send, exc.status, exc.code, exc.message,
                                 [*exc.headers.items(), *close])
                return
        await self.app(scope, receive, send)


#: declares the bearer scheme in the OpenAPI document (the check itself is TokenCheck's)
bearer_scheme = HTTPBearer(auto_error=False, description="the token `medsegr serve` was "
                           "started with; not needed when it runs without one. Never put it "
                           "in the URL: a query parameter that looks like a credential is "
                           "refused (400 `token_in_query`)")


async def require_token(request: Request,
                        _: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> None:
    """FastAPI dependency: the running engine's :class:`TokenCheck` must accept the request."""
    request.app.state.engine.token_check.verify(request)


__all__ = ["AuthMiddleware", "TOKEN_QUERY_NAMES", "TokenCheck", "bearer_scheme",
           "check_bind_address", "is_loopback", "require_token", "token_in_query"]
