"""The HTTP connection layer: uvicorn's h11 protocol with a deadline for request
headers, and the uvicorn configuration ``medsegr serve`` runs with.

Uvicorn bounds the size of a request's headers (``h11_max_incomplete_event_size``)
and the idle time between requests on a kept-alive connection
(``timeout_keep_alive``), but not the time a client may take to send the request
line and headers: a client sending one byte every few seconds would hold its
connection forever. :class:`GuardedH11Protocol` closes a connection whose next
request has not been received completely ``header_timeout_s`` after the connection
was opened or the previous answer was sent (408 when part of a request arrived).
Bodies have their own deadlines (:mod:`medsegr.server.bodies`).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from medsegr.server.errors import error_body
from medsegr.server.settings import ServerSettings


class GuardedH11Protocol(H11Protocol):
    """:class:`H11Protocol` with a deadline for each request's line and headers.

    The class attribute ``header_timeout_s`` is set per server by
    :func:`uvicorn_config` (uvicorn builds protocols from the class alone)."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._bytes_since_armed = 0
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._bytes_since_armed += len(data)
        super().data_received(data)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a complete request line and headers arrived
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        self._arm_header_timer()  # the next request's headers, if the connection stays open
        super().on_response_complete()

    # -- the deadline -----------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._bytes_since_armed = 0
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered: its body has its own deadlines
        if self._bytes_since_armed and self.conn.their_state is h11.IDLE:
            self.logger.info("closing a connection whose request headers did not arrive within "
                             "%g s", self.header_timeout_s)
            body = json.dumps(error_body(408, "request_timeout", "the request line and headers "
                                         f"did not arrive within {self.header_timeout_s:g} s"))
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json"
                                 b"\r\nconnection: close\r\ncontent-length: "
                                 + str(len(body)).encode("ascii") + b"\r\n\r\n"
                                 + body.encode("utf-8"))
        self.transport.close()


def protocol_class(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` subclass with this header deadline."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,),
                {"header_timeout_s": float(header_timeout_s)})


def uvicorn_config(app: Any, settings: ServerSettings, **options: Any) -> uvicorn.Config:
    """The uvicorn configuration the engine runs with: the guarded h11 protocol, the
    keep-alive timeout and the header size limit of ``settings``; ``options`` go to
    :class:`uvicorn.Config` (``log_level``, ``access_log`` …)."""
    options.setdefault("timeout_graceful_shutdown", 5)
    return uvicorn.Config(app, http=protocol_class(settings.header_timeout_s),
                          timeout_keep_alive=max(1, round(settings.keep_alive_s)),
                          h11_max_incomplete_event_size=settings.max_header_bytes,
                          ws="none", **options)


__all__ = ["GuardedH11Protocol", "protocol_class", "uvicorn_config"]
