"""How much, how fast and how completely a client must send a request body.

:class:`BodyGuardMiddleware` (pure ASGI) wraps the ``receive`` channel that every
body read goes through (FastAPI's JSON parsing, the image upload's stream):

* **size**: a declared ``Content-Length`` above the limit is refused at once, and a
  body that grows past it is refused as soon as it does (413 ``too_large``), before
  it is held in memory;
* **time**: each wait for the next piece of the body is bounded by
  ``read_timeout_s`` (no data at all), by an overall ``deadline_s`` for the whole
  body, and by a minimum average rate: after ``rate_grace_s`` seconds the body must
  have arrived at ``min_rate`` bytes/s or more. A body that misses any of them gets
  408 ``request_timeout`` and the connection is closed, so a client trickling a
  byte every few seconds holds a connection for seconds, not forever;
* **disconnects**: a client that goes away before its body is complete is logged
  once, at INFO, without a traceback, and the request ends quietly (there is
  nobody to answer).

The errors are raised from ``receive`` as :class:`starlette.exceptions.HTTPException`
subclasses, so that FastAPI's body parsing lets them through to the JSON error
handlers; one raised outside them is answered here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medsegr.server.errors import send_error
from medsegr.server.settings import BodyTiming

log = logging.getLogger("medsegr.server")


class BodyError(HTTPException):
    """A body the engine will not read to the end; the connection is closed after
    the answer (the rest of the body is not read)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message, headers={"Connection": "close"})
        self.code = code


class ClientGone(BodyError):
    """The client disconnected before its body was complete (nobody to answer)."""

    def __init__(self, received: int) -> None:
        super().__init__(400, "client_disconnected",
                         f"the client disconnected after {received:,} bytes of the body")


def too_large_message(size: int, limit: int) -> str:
    return (f"the request body ({size:,} bytes or more) is larger than this engine accepts "
            f"({limit:,} bytes)")


class _BodyReader:
    """The guarded ``receive`` of one request."""

    def __init__(self, receive: Receive, scope: Scope, limit: int, timing: BodyTiming,
                 clock: Callable[[], float]) -> None:
        self._receive = receive
        self.scope = scope
        self.limit = limit
        self.timing = timing
        self.clock = clock
        self.started = clock()
        self.received = 0
        self.complete = False

    def _wait_s(self) -> tuple[float, str]:
        """How long the next piece may take, and what runs out first."""
        t, now = self.timing, self.clock()
        rate_due = self.started + max(t.rate_grace_s, self.received / t.min_rate)
        return min((t.read_timeout_s, "idle"), (self.started + t.deadline_s - now, "deadline"),
                   (rate_due - now, "rate"))

    def _timeout(self, why: str) -> BodyError:
        t = self.timing
        reason = {"idle": f"no part of it arrived for {t.read_timeout_s:g} s",
                  "deadline": f"it was not complete within {t.deadline_s:g} s",
                  "rate": f"it arrives slower than {t.min_rate / 1024:g} KiB/s"}[why]
        log.info("%s %s: request body timed out after %s bytes (%s)", self.scope.get("method"),
                 self.scope.get("path"), f"{self.received:,}", why)
        return BodyError(408, "request_timeout", f"the request body took too long: {reason}; "
                         "the connection is closed")

    async def __call__(self) -> Message:
        if self.complete:  # after the body: disconnect checks of streaming answers
            return await self._receive()
        wait, why = self._wait_s()
        if wait <= 0:
            raise self._timeout(why)
        try:
            message = await asyncio.wait_for(self._receive(), wait)
        except asyncio.TimeoutError:
            raise self._timeout(why) from None
        if message["type"] == "http.disconnect":
            self.complete = True
            log.info("%s %s: the client disconnected after %s bytes of the request body",
                     self.scope.get("method"), self.scope.get("path"), f"{self.received:,}")
            raise ClientGone(self.received)
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise BodyError(413, "too_large", too_large_message(self.received, self.limit))
            if not message.get("more_body", False):
                self.complete = True
        return message


class BodyGuardMiddleware:
    """Pure ASGI middleware: the body limits above, with the size limit that
    ``limit_for(scope)`` returns for the request."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int],
                 timing: BodyTiming = BodyTiming(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.app = app
        self.limit_for = limit_for
        self.timing = timing
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = _content_length(scope)
        if declared == -1:
            await send_error(send, 400, "bad_request", "Content-Length is not a number",
                             [("Connection", "close")])
            return
        if declared is not None and declared > limit:
            await send_error(send, 413, "too_large", too_large_message(declared, limit),
                             [("Connection", "close")])
            return
        reader = _BodyReader(receive, scope, limit, self.timing, self.clock)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, reader, tracking_send)
        except ClientGone:
            return  # logged once where it was seen; nobody to answer
        except BodyError as exc:  # raised outside the application's error handlers
            if not started:
                await send_error(send, exc.status_code, exc.code, str(exc.detail),
                                 list((exc.headers or {}).items()))


def _content_length(scope: Scope) -> int | None:
    """The declared Content-Length, None when absent, -1 when it is not a number."""
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


__all__ = ["BodyError", "BodyGuardMiddleware", "BodyTiming", "ClientGone", "too_large_message"]
