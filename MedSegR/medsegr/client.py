"""A client for the MedSegR engine server, with the standard library and numpy only.

It runs inside 3D Slicer's Python (no torch, no SimpleITK) as well as anywhere else::

    from medsegr.client import EngineClient

    client = EngineClient("http://127.0.0.1:8765", token=token)
    client.check_version()                     # clear error when the API versions differ
    sid = client.create_session(array, spacing, origin, direction, modality="CT")
    answer = client.ask(sid, "Which organ shows a hypodense lesion?", slice_index=40,
                        on_text=print)         # text pieces as they are generated
    for seg in answer.segments:
        seg.mask                               # bool (z, y, x) on the uploaded grid
    client.delete_session(sid)

``ask(..., on_progress=fn)`` reports where the answer is (:class:`Progress`: queued,
started, slices encoded of the total, answering, masks decoded).

Conventions: ``array`` is numpy ``(z, y, x)``; ``spacing`` ``(x, y, z)`` mm, ``origin``
LPS mm, ``direction`` the row-major ITK 3x3 matrix (see :mod:`medsegr.io.nrrd_codec`).
Box and point hints use the in-plane voxel indices of :class:`medsegr.answers.Hints`
(axial: ``(i, j)``, coronal: ``(i, k)``, sagittal: ``(j, k)``).

Every failure is an :class:`EngineError` (``.code``, ``.status``, ``.message``):
:class:`EngineUnavailable` when the engine cannot be reached or the connection is
lost, :class:`VersionMismatch` when client and server speak different API versions,
:class:`RequestCancelled` when a request was cancelled, :class:`EngineBusy` (a 503
with ``.retry_after``) when the engine's queue is full.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from medsegr import __version__
from medsegr.answers import API_VERSION, NRRD_MEDIA_TYPE, Answer, Measurement, Segment
from medsegr.io.nrrd_codec import NrrdError, decode_nrrd, encode_nrrd

__all__ = [
    "API_VERSION",
    "Answer",
    "EngineBusy",
    "EngineClient",
    "EngineError",
    "EngineUnavailable",
    "NRRD_MEDIA_TYPE",
    "Progress",
    "RemoteAnswer",
    "RemoteSegment",
    "RequestCancelled",
    "Segment",
    "VersionMismatch",
]

#: after a cancel was asked for, how long to wait for the server to confirm it
_CANCEL_GRACE_S = 5.0


@dataclass(frozen=True)
class Progress:
    """Where a streamed answer is. ``stage`` is ``queued`` (``done``: requests ahead),
    ``started``, ``encoding`` (slices encoded of ``total``), ``answering`` (the language
    model reads and generates; no count) or ``masks`` (segments decoded of ``total``)."""

    stage: str
    done: int = 0
    total: int = 0

    @property
    def fraction(self) -> float | None:
        """``done / total`` for a counted stage, None otherwise."""
        return min(1.0, self.done / self.total) if self.total > 0 else None


class EngineError(Exception):
    """A request to the engine failed. ``code`` is the server's machine-readable error
    code (or a client-side one), ``status`` the HTTP status when there was one."""

    def __init__(self, message: str, code: str = "engine_error", status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return self.message


class EngineUnavailable(EngineError):
    """The engine cannot be reached, the connection was lost, or it timed out."""


class VersionMismatch(EngineError):
    """The client and the server speak different API versions."""


class RequestCancelled(EngineError):
    """The request was cancelled (by this client, or on the server)."""


class EngineBusy(EngineError):
    """The engine's request queue is full (HTTP 503); try again after ``retry_after`` s."""

    def __init__(self, message: str, code: str = "busy", status: int | None = 503,
                 retry_after: float | None = None) -> None:
        super().__init__(message, code, status)
        self.retry_after = retry_after


#: the answer types of the wire, by their earlier names (see :mod:`medsegr.answers`)
RemoteAnswer = Answer
RemoteSegment = Segment


@dataclass
class _Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]


class EngineClient:
    """Talks to one MedSegR engine server (``medsegr serve``).

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8765``.
        token: the bearer token the server was started with (None: no token).
        timeout: seconds to wait for the server on any socket operation (connect,
            or the next bytes of a reply; a streamed answer sends a keep-alive
            event every few seconds, so long answers do not time out).
        connect_retries: how many times to retry a connection that is refused (with
            a short back-off), e.g. while a local engine is still starting. Requests
            that may have reached the server are never retried.
        compress: gzip uploaded images (None: only when the engine is not on this
            machine; on loopback, compressing costs more time than it saves).
    """

    def __init__(self, url: str, token: str | None = None, timeout: float = 300.0,
                 connect_retries: int = 3, compress: bool | None = None) -> None:
        parsed = urllib.parse.urlsplit(url.strip())
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise EngineError(f"the engine URL must look like http://HOST:PORT, got {url!r}",
                              code="bad_url")
        path = parsed.path.rstrip("/")
        if path.endswith(f"/v{API_VERSION}"):
            path = path[: -len(f"/v{API_VERSION}")]
        self.url = urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, path, "", ""))
        self._token = token
        self.timeout = float(timeout)
        self.connect_retries = max(0, int(connect_retries))
        self._grids: dict[str, _Grid] = {}
        self._checked: dict[str, Any] | None = None
        handlers: list[urllib.request.BaseHandler] = []
        local = _is_loopback(parsed.hostname)
        self.compress = (not local) if compress is None else bool(compress)
        if local:
            handlers.append(urllib.request.ProxyHandler({}))  # never send loopback via a proxy
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:  # never shows the token
        return f"EngineClient({self.url!r}, token={'set' if self._token else None})"

    # -- service ------------------------------------------------------------------
    def health(self) -> dict:
        """``GET /v1/health`` (no token needed): ``status``, ``api_version``, ``engine_version``."""
        return self._json("GET", "/health")

    def info(self) -> dict:
        """``GET /v1/info``: engine and API versions, model (with its weight hashes),
        device, memory, capabilities, limits and queue."""
        return self._json("GET", "/info")

    def check_version(self) -> dict:
        """``info()``, raising :class:`VersionMismatch` when the server's API version is
        not this client's."""
        try:
            info = self.info()
        except EngineError as exc:
            if exc.status == 404:
                raise self._mismatch() from None
            raise
        server = str(info.get("api_version"))
        if server != API_VERSION:
            raise VersionMismatch(
                f"the engine at {self.url} speaks API v{server} (medsegr "
                f"{info.get('engine_version', '?')}) but this client speaks API v{API_VERSION} "
                f"(medsegr {__version__}); install matching versions of the engine and the "
                "Slicer extension", code="version_mismatch")
        self._checked = info
        return info

    def _mismatch(self) -> VersionMismatch:
        """The error for a server without this client's API version: what it speaks
        instead, from its version-independent ``GET /``."""
        try:
            response = self._opener.open(urllib.request.Request(self.url + "/"),
                                         timeout=self.timeout)
            with response:
                service = json.loads(response.read().decode("utf-8"))
            versions = [str(v) for v in service["api_versions"]]
            engine = str(service.get("engine_version", "?"))
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
            return VersionMismatch(
                f"the server at {self.url} does not offer MedSegR API v{API_VERSION} (this "
                f"client is medsegr {__version__}); is it a MedSegR engine of a matching "
                "version?", code="version_mismatch", status=404)
        return VersionMismatch(
            f"the engine at {self.url} speaks API v{', v'.join(versions)} (medsegr {engine}) "
            f"but this client speaks API v{API_VERSION} (medsegr {__version__}); install "
            "matching versions of the engine and the Slicer extension",
            code="version_mismatch", status=404)

    # -- sessions -----------------------------------------------------------------
    def create_session(self, array: np.ndarray, spacing: Any, origin: Any, direction: Any,
                       modality: str | None = None, window: str | None = None) -> str:
        """Upload an image (numpy ``(z, y, x)``; a 2-D ``(y, x)`` array is one slice) with
        its ITK/LPS geometry (``direction``: 9 values row-major, or a 3x3 array); returns
        the new session's id."""
        if self._checked is None:
            self.check_version()
        data = np.asarray(array)
        if data.ndim == 2:
            data = data[np.newaxis]
        spacing = _vector(spacing, 3, "spacing")
        origin = _vector(origin, 3, "origin")
        direction = _vector(direction, 9, "direction")
        try:
            body = encode_nrrd(data, spacing, origin, direction,
                               encoding="gzip" if self.compress else "raw", compresslevel=1)
        except NrrdError as exc:
            raise EngineError(str(exc), code="bad_input") from None
        query = {k: v for k, v in (("modality", modality), ("window", window)) if v}
        path = "/sessions" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        reply = self._json("POST", path, body, NRRD_MEDIA_TYPE)
        sid = str(reply["session_id"])
        self._grids[sid] = _Grid(tuple(int(n) for n in data.shape),  # type: ignore[arg-type]
                                 spacing, origin, direction)
        return sid

    def session_info(self, session_id: str) -> dict:
        """``GET /v1/sessions/{id}``: the session's image geometry, turns, memory."""
        return self._json("GET", f"/sessions/{_quote(session_id)}")

    def delete_session(self, session_id: str) -> None:
        self._json("DELETE", f"/sessions/{_quote(session_id)}")
        self._grids.pop(session_id, None)

    def reset_conversation(self, session_id: str) -> None:
        """Start a new conversation on the same image (cached embeddings are kept)."""
        self._json("POST", f"/sessions/{_quote(session_id)}/reset")

    # -- asking -------------------------------------------------------------------
    def ask(self, session_id: str, question: str, *, volume: bool = False,
            axis: str | int = "axial", slice_index: int | None = None,
            box: tuple[float, float, float, float] | None = None,
            points: list[tuple[float, float, int]] | None = None,
            on_text: Callable[[str], None] | None = None,
            cancel_event: threading.Event | None = None,
            request_id: str | None = None, max_new_tokens: int | None = None,
            stream: bool = True,
            on_progress: Callable[[Progress], None] | None = None) -> Answer:
        """Ask a question in a session and download the answer's masks.

        ``on_text(piece)`` receives the raw answer text as it is generated (it may
        contain ``<p>`` and ``[SEG]`` markers; ``Answer.text`` is the clean
        version). Setting ``cancel_event`` cancels the request on the server and
        raises :class:`RequestCancelled`. ``on_progress(Progress)`` receives the
        server's progress events in order (queued, started, encoding slices done of
        total, answering, masks). ``stream=False`` asks for one JSON reply instead of
        server-sent events (``on_text`` and ``on_progress`` are then not called).
        """
        if cancel_event is not None and cancel_event.is_set():
            raise RequestCancelled("the request was cancelled before it was sent", code="cancelled")
        request_id = request_id or uuid.uuid4().hex
        payload: dict[str, Any] = {"question": question, "volume": bool(volume), "axis": axis,
                                   "slice_index": slice_index, "request_id": request_id}
        if box is not None:
            payload["box"] = [float(v) for v in box]
        if points:
            payload["points"] = [[float(p[0]), float(p[1]), int(p[2]) if len(p) > 2 else 1]
                                 for p in points]
        if max_new_tokens is not None:
            payload["max_new_tokens"] = int(max_new_tokens)
        body = json.dumps(payload).encode("utf-8")
        path = f"/sessions/{_quote(session_id)}/ask"
        watcher = _CancelWatcher(self, request_id, cancel_event)
        try:
            if stream:
                record = self._ask_streamed(path + "/stream", body, on_text, watcher, on_progress)
            else:
                record = self._json("POST", path, body, "application/json")
        except EngineError as exc:
            if watcher.sent and not isinstance(exc, RequestCancelled):
                raise RequestCancelled("the request was cancelled", code="cancelled",
                                       status=exc.status) from None
            raise
        finally:
            watcher.stop()
        if cancel_event is not None and cancel_event.is_set():
            raise RequestCancelled("the request was cancelled", code="cancelled")
        return self._answer(session_id, record)

    def cancel(self, request_id: str) -> None:
        """Cancel a queued or running request (no error if it has already finished)."""
        try:
            self._json("POST", f"/requests/{_quote(request_id)}/cancel")
        except EngineError as exc:
            if exc.status != 404:
                raise

    # -- internals ----------------------------------------------------------------
    def _ask_streamed(self, path: str, body: bytes, on_text: Callable[[str], None] | None,
                      watcher: "_CancelWatcher",
                      on_progress: Callable[[Progress], None] | None = None) -> dict:
        response = self._open("POST", path, body, "application/json",
                              accept="text/event-stream")
        watcher.start(response)
        try:
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                return _decode_json(response.read(), response.status)
            for event, data in _sse_events(response, watcher):
                if event == "text" and on_text is not None:
                    on_text(str(data.get("text", "")))
                elif on_progress is not None and event in ("queued", "started", "progress"):
                    on_progress(_progress(event, data))
                elif event == "answer":
                    return data
                elif event == "error":
                    raise _error_from_body(data, data.get("error", {}).get("status"), None)
            raise EngineUnavailable(f"lost the connection to the engine at {self.url} while "
                                    "waiting for the answer (the stream ended early; was the "
                                    "engine stopped?)", code="connection_lost")
        except (OSError, http.client.HTTPException) as exc:
            if watcher.sent:
                raise RequestCancelled("the request was cancelled", code="cancelled") from None
            raise EngineUnavailable(f"lost the connection to the engine at {self.url} while "
                                    f"waiting for the answer ({_reason(exc)})",
                                    code="connection_lost") from None
        finally:
            response.close()

    def _answer(self, session_id: str, record: dict) -> Answer:
        grid = self._grids.get(session_id)
        segments = []
        for seg in record.get("segments", []):
            mask = self._mask(session_id, str(seg["id"]), grid)
            coded = seg.get("terminology")
            measured = seg.get("measured")
            segments.append(Segment(id=str(seg["id"]), name=str(seg["name"]),
                                    index=int(seg["index"]), mask=mask,
                                    terminology=coded if isinstance(coded, dict) else None,
                                    measured=(Measurement.from_dict(measured)
                                              if isinstance(measured, dict) else None)))
        return Answer(
            request_id=str(record["request_id"]), text=str(record["text"]),
            raw_text=str(record["raw_text"]), segments=segments, mode=str(record["mode"]),
            axis=int(record["axis"]),
            slice_index=None if record.get("slice_index") is None else int(record["slice_index"]),
            fine_tuned=bool(record["fine_tuned"]),
            timings={k: float(v) for k, v in record.get("timings", {}).items()},
            encoded_slices=int(record["encoded_slices"]),
            key_slices=[int(k) for k in record.get("key_slices", [])],
            tokens={k: int(v) for k, v in record.get("tokens", {}).items()},
            not_found=[str(n) for n in record.get("not_found", [])],
            presence=[float(p) for p in record.get("presence", [])],
            engine_words=[(str(w.get("model", "")), str(w.get("engine", "")))
                          for w in record.get("engine_words", []) if isinstance(w, dict)])

    def _mask(self, session_id: str, segment_id: str, grid: _Grid | None) -> np.ndarray:
        path = f"/sessions/{_quote(session_id)}/segments/{_quote(segment_id)}"
        response = self._open("GET", path, accept=NRRD_MEDIA_TYPE)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailable(f"lost the connection to the engine while downloading a "
                                    f"mask ({_reason(exc)})", code="connection_lost") from None
        finally:
            response.close()
        try:
            array, spacing, origin, direction = decode_nrrd(data)
        except NrrdError as exc:
            raise EngineError(f"the engine sent an unreadable mask: {exc}",
                              code="bad_response") from None
        if grid is not None and (array.shape != grid.shape or not _close(spacing, grid.spacing)
                                 or not _close(origin, grid.origin)
                                 or not _close(direction, grid.direction)):
            raise EngineError(f"the engine sent a mask on another grid (shape {array.shape}, "
                              f"spacing {spacing}) than the uploaded image (shape {grid.shape}, "
                              f"spacing {grid.spacing})", code="bad_response")
        return array > 0

    def _json(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None) -> Any:
        response = self._open(method, path, body, content_type)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailable(f"lost the connection to the engine at {self.url} "
                                    f"({_reason(exc)})", code="connection_lost") from None
        finally:
            response.close()
        if response.status == 204 or not raw:
            return {}
        return _decode_json(raw, response.status)

    def _open(self, method: str, path: str, body: bytes | None = None,
              content_type: str | None = None, accept: str = "application/json") -> Any:
        """Send one request; returns the open response (2xx) or raises an EngineError."""
        url = f"{self.url}/v{API_VERSION}{path}"
        headers = {"Accept": accept, "User-Agent": f"medsegr-client/{__version__}"}
        if content_type:
            headers["Content-Type"] = content_type
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        attempt = 0
        while True:
            request = urllib.request.Request(url, data=body, headers=headers, method=method)
            try:
                return self._opener.open(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                try:
                    raw = exc.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
                finally:
                    exc.close()
                raise _error_from_body(_maybe_json(raw), exc.code, exc.headers) from None
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
                if _connect_failure(reason) and attempt < self.connect_retries:
                    time.sleep(min(2.0, 0.25 * 2**attempt))
                    attempt += 1
                    continue
                if isinstance(reason, (TimeoutError, socket.timeout)):
                    raise EngineUnavailable(f"the engine at {self.url} did not answer within "
                                            f"{self.timeout:g} s", code="timeout") from None
                if _connect_failure(reason):
                    raise EngineUnavailable(f"cannot connect to the MedSegR engine at {self.url} "
                                            f"({_reason(reason)}); is it running?",
                                            code="unavailable") from None
                raise EngineUnavailable(f"lost the connection to the engine at {self.url} "
                                        f"({_reason(reason)})", code="connection_lost") from None


class _CancelWatcher:
    """Turns a set ``cancel_event`` into a cancel request to the server, from a
    helper thread, while the caller's thread waits for the reply."""

    def __init__(self, client: EngineClient, request_id: str,
                 event: threading.Event | None) -> None:
        self.client, self.request_id, self.event = client, request_id, event
        self.sent = False
        self.sent_at = 0.0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        if event is not None:
            self._thread = threading.Thread(target=self._run, name="medsegr-cancel", daemon=True)
            self._thread.start()

    def start(self, response: Any) -> None:
        self._response = response

    def expired(self) -> bool:
        """True when a cancel was sent long enough ago that the caller should give up."""
        return self.sent and time.monotonic() - self.sent_at > _CANCEL_GRACE_S

    def _run(self) -> None:
        assert self.event is not None
        while not self._done.is_set():
            if self.event.wait(0.05):
                break
        if self._done.is_set():
            return
        self.sent, self.sent_at = True, time.monotonic()
        path = f"/requests/{_quote(self.request_id)}/cancel"
        while not self._done.is_set() and not self.expired():
            try:
                self.client._json("POST", path)
                return
            except EngineError as exc:
                if exc.status != 404:
                    return  # the request's own reply reports what happened
            # 404: the request has not reached the engine's queue yet (or just finished)
            self._done.wait(0.1)

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)


def _sse_events(response: Any, watcher: _CancelWatcher) -> Iterator[tuple[str, dict]]:
    """Server-sent events from an open response: ``(event name, JSON data)``."""
    event, data_lines = "message", []
    while True:
        if watcher.expired():
            raise RequestCancelled("the request was cancelled (the engine did not confirm in "
                                   f"{_CANCEL_GRACE_S:g} s)", code="cancelled")
        line = response.readline()
        if not line:
            return
        text = line.decode("utf-8").rstrip("\r\n")
        if not text:
            if data_lines:
                try:
                    yield event, json.loads("\n".join(data_lines))
                except json.JSONDecodeError:
                    raise EngineError("the engine sent a malformed event",
                                      code="bad_response") from None
            event, data_lines = "message", []
        elif text.startswith(":"):
            continue  # keep-alive comment
        elif text.startswith("event:"):
            event = text[6:].strip()
        elif text.startswith("data:"):
            data_lines.append(text[5:].lstrip(" "))


def _progress(event: str, data: dict) -> Progress:
    """A :class:`Progress` from a ``queued``, ``started`` or ``progress`` event."""
    def count(key: str) -> int:
        try:
            return max(0, int(data.get(key) or 0))
        except (TypeError, ValueError):
            return 0

    if event == "queued":
        return Progress("queued", count("position"), 0)
    if event == "started":
        return Progress("started")
    return Progress(str(data.get("stage") or "working"), count("done"), count("total"))


def _error_from_body(body: Any, status: int | None, headers: Any) -> EngineError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code", "engine_error"))
        message = str(error.get("message", "")) or f"the engine answered HTTP {status}"
    else:
        code, message = "engine_error", f"the engine answered HTTP {status}"
    if code == "cancelled":
        return RequestCancelled(message, code=code, status=status)
    if code == "version_mismatch":
        return VersionMismatch(message, code=code, status=status)
    if status == 503:
        retry = None
        if headers is not None and headers.get("Retry-After"):
            try:
                retry = float(headers.get("Retry-After"))
            except ValueError:
                retry = None
        return EngineBusy(message, code=code, status=status, retry_after=retry)
    return EngineError(message, code=code, status=status)


def _decode_json(raw: bytes, status: int) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise EngineError(f"the engine sent a reply that is not JSON (HTTP {status})",
                          code="bad_response", status=status) from None


def _maybe_json(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def _connect_failure(reason: Any) -> bool:
    """True for failures that prove the request never reached the server (safe to retry)."""
    return isinstance(reason, ConnectionRefusedError) or (
        isinstance(reason, OSError) and reason.errno in (111, 113, 10061, 10065))


def _reason(exc: Any) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc) or type(exc).__name__
    return text


def _close(a: Any, b: Any) -> bool:
    """Geometry values equal to 1e-6 (mm, or direction cosines)."""
    return len(a) == len(b) and bool(np.allclose(a, b, rtol=0.0, atol=1e-6))


def _vector(values: Any, count: int, what: str) -> tuple[float, ...]:
    """``values`` (a sequence or numpy array, e.g. a 3x3 matrix) as ``count`` floats."""
    try:
        flat = tuple(float(v) for v in np.asarray(values, dtype=float).ravel())
    except (TypeError, ValueError):
        raise EngineError(f"{what} must be {count} numbers", code="bad_input") from None
    if len(flat) != count:
        raise EngineError(f"{what} must be {count} numbers, got {len(flat)}", code="bad_input")
    return flat


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
