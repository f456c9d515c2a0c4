"""The ``/v1`` endpoints.

The routes hold no state: they reach the running engine (pipeline, session store,
model worker, settings) through ``request.app.state.engine`` (see
:mod:`medsegr.server.app`), so the same routers also make the OpenAPI document
without a model.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from medsegr import __version__
from medsegr.answers import API_VERSION, NRRD_MEDIA_TYPE
from medsegr.server.errors import ApiError
from medsegr.server.schemas import (
    STREAM_DESCRIPTION, STREAM_EVENT_SCHEMA, AnswerRecord, AskRequest, CancelRecord, ErrorBody, HealthRecord,
    InfoRecord, ServiceRecord, SessionRecord)
from medsegr.server.security import require_token
from medsegr.server.uploads import read_upload

#: media types accepted for an uploaded image (both name the NRRD format)
UPLOAD_MEDIA_TYPES = (NRRD_MEDIA_TYPE, "application/nrrd")

#: paths that need no token
PUBLIC_PATHS = ("/", f"/v{API_VERSION}/health", f"/v{API_VERSION}/openapi.json")

_ERROR_DESCRIPTIONS = {
    400: "bad request; also a token in the URL's query string (`token_in_query`)",
    401: "missing or wrong token (checked before the body is read)",
    404: "no such session, segment or request",
    408: "the request body did not arrive in time (`request_timeout`: no data for a while, "
         "slower than the minimum upload rate, or not complete by the deadline); the "
         "connection is closed",
    409: "conflict: cancelled, duplicate request id, or the session is busy",
    413: "too large: the body, the image's declared voxels, or the session memory it "
         "would need once decoded (checked from the NRRD header, before decoding)",
    415: "wrong Content-Type",
    422: "the request does not fit the schema",
    503: "busy (queue full, or other uploads being decoded; see `Retry-After`) or "
         "shutting down",
    504: "the request did not finish within the request timeout",
    507: "out of GPU memory or session memory",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": _ERROR_DESCRIPTIONS.get(s, "error")}
            for s in statuses}


def _session_links() -> dict[str, Any]:
    """OpenAPI links: the new session's id feeds the operations on it."""
    session_id = {"session_id": "$response.body#/session_id"}
    return {name: {"operationId": operation, "parameters": session_id,
                   "description": f"{operation} on the session just opened"}
            for name, operation in (("GetSession", "get_session"),
                                    ("DeleteSession", "delete_session"),
                                    ("ResetSession", "reset_session"),
                                    ("Ask", "ask"), ("AskStream", "ask_stream"))}


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def json_body(request: Request) -> None:
    """Dependency: the body must be declared as JSON."""
    if _media_type(request) != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       "send the question as JSON (Content-Type: application/json)")


public = APIRouter(prefix=f"/v{API_VERSION}", tags=["service"], responses=_errors(400))
root = APIRouter(tags=["service"], responses=_errors(400))


@root.get("/", response_model=ServiceRecord, summary="Which API versions this engine speaks "
          "(no token needed; stays the same across API versions)")
async def service() -> dict[str, Any]:
    return {"service": "medsegr-engine", "api_versions": [API_VERSION],
            "engine_version": __version__}

api = APIRouter(prefix=f"/v{API_VERSION}", dependencies=[Depends(require_token)],
                responses=_errors(400, 401))


@public.get("/health", response_model=HealthRecord, summary="Is the engine up? (no token needed)")
async def health() -> dict[str, Any]:
    return {"status": "ok", "api_version": API_VERSION, "engine_version": __version__}


@api.get("/info", response_model=InfoRecord, tags=["service"],
         summary="Engine and API versions, model and its hashes, device, memory, capabilities")
async def info(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_engine(request).info)


@api.post("/sessions", status_code=201, response_model=SessionRecord, tags=["sessions"],
          summary="Upload an image (NRRD body) and open a chat session on it",
          responses={201: {"description": "the session", "links": _session_links()},
                     **_errors(400, 408, 413, 415, 422, 503)},
          openapi_extra={"requestBody": {"required": True, "description": (
              "one attached-header NRRD file (raw or gzip), 2-D or 3-D scalar, in "
              "left-posterior-superior or right-anterior-superior space; its geometry is "
              "kept exactly and every mask comes back on this grid. Only NRRD is accepted "
              "(any other Content-Type: 415; bytes that are not such an NRRD: 400 "
              "`bad_nrrd`). The header is checked before the data is decoded: declared "
              "sizes above `max_side`, `max_voxels` or `max_bytes`, or session memory "
              "above the engine's bound, give 413 at once"),
              "content": {t: {"schema": {"type": "string", "format": "binary",
                                         "contentMediaType": t,
                                         "description": "an NRRD file (NRRD0001-NRRD0005)"}}
                          for t in UPLOAD_MEDIA_TYPES}}})
async def create_session(
        request: Request,
        modality: Literal["CT", "MR", "OT"] | None = Query(
            None, description="override the modality (default: CT when the values look like "
            "Hounsfield units, else OT)"),
        window: str | None = Query(None, max_length=32, description="CT window preset: "
                                   "soft_tissue, abdomen, liver, brain, lung, bone, wide"),
) -> dict[str, Any]:
    if _media_type(request) not in UPLOAD_MEDIA_TYPES:
        raise ApiError(415, "unsupported_media_type", "upload the image as an NRRD file "
                       f"(Content-Type: {NRRD_MEDIA_TYPE})")
    engine = _engine(request)
    body = await read_upload(request.stream(), engine.check_upload_head)
    if not body:
        raise ApiError(400, "bad_nrrd", "the request has no body; send an NRRD file")
    entry = await run_in_threadpool(engine.open_session, body, modality, window)
    return entry.describe(engine.store.clock())


@api.get("/sessions/{session_id}", response_model=SessionRecord, tags=["sessions"],
         summary="A session's image geometry, turns and memory", responses=_errors(404))
async def get_session(session_id: str, request: Request) -> dict[str, Any]:
    store = _engine(request).store
    return store.get(session_id).describe(store.clock())


@api.delete("/sessions/{session_id}", status_code=204, tags=["sessions"],
            summary="Delete a session (its queued or running requests are cancelled)",
            responses=_errors(404))
async def delete_session(session_id: str, request: Request) -> Response:
    engine = _engine(request)
    entry = engine.store.get(session_id)
    engine.worker.cancel_session(entry)
    engine.store.delete(session_id)
    return Response(status_code=204)


@api.post("/sessions/{session_id}/reset", status_code=204, tags=["sessions"],
          summary="Start a new conversation on the same image (embeddings are kept)",
          responses=_errors(404, 409))
async def reset_session(session_id: str, request: Request) -> Response:
    entry = _engine(request).store.get(session_id)
    if entry.active:
        raise ApiError(409, "session_busy", "the session has a request queued or running; "
                       "cancel it or wait for it before resetting the conversation")
    await run_in_threadpool(entry.session.reset)
    return Response(status_code=204)


@api.post("/sessions/{session_id}/ask", response_model=AnswerRecord, tags=["questions"],
          dependencies=[Depends(json_body)],
          summary="Ask a question; one JSON reply when the answer is complete",
          responses={200: {"description": "the answer", "links": {"GetSegment": {
              "operationId": "segment_mask", "description": "the answer's first segment's mask",
              "parameters": {"session_id": "$response.body#/session_id",
                             "segment_id": "$response.body#/segments/0/id"}}}},
                     **_errors(400, 404, 408, 409, 413, 415, 422, 503, 504, 507)})
async def ask(session_id: str, body: AskRequest, request: Request) -> dict[str, Any]:
    engine = _engine(request)
    job = await run_in_threadpool(engine.make_job, session_id, body, None)
    engine.worker.submit(job)
    future = _wrap(job.future)
    try:
        while True:
            done, _ = await asyncio.wait({future}, timeout=0.25)
            if done:
                return future.result()
            if await request.is_disconnected():
                engine.worker.cancel(job.request_id, "disconnected")
                await asyncio.wait({future}, timeout=5.0)
                raise ApiError(409, "cancelled", "the client disconnected")
    finally:
        if job.state != "done":
            engine.worker.cancel(job.request_id, "disconnected")


@api.post("/sessions/{session_id}/ask/stream", tags=["questions"],
          dependencies=[Depends(json_body)], response_class=StreamingResponse,
          summary="Ask a question; the answer text streams as server-sent events",
          responses={200: {"description": STREAM_DESCRIPTION,
                           "content": {"text/event-stream": {"schema": STREAM_EVENT_SCHEMA}}},
                     **_errors(400, 404, 408, 409, 413, 415, 422, 503)})
async def ask_stream(session_id: str, body: AskRequest, request: Request) -> StreamingResponse:
    engine = _engine(request)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    def emit(kind: str, data: dict[str, Any]) -> None:  # called from the model thread
        loop.call_soon_threadsafe(events.put_nowait, (kind, data))

    job = await run_in_threadpool(engine.make_job, session_id, body, emit)
    ahead = engine.worker.submit(job)
    return StreamingResponse(
        _event_stream(engine, job, events, ahead), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                 "X-Request-Id": job.request_id})


async def _event_stream(engine: Any, job: Any, events: asyncio.Queue, ahead: int,
                        ) -> AsyncIterator[bytes]:
    future = _wrap(job.future)
    ping = engine.settings.ping_interval_s
    getter: asyncio.Future | None = None
    try:
        yield _sse("queued", {"request_id": job.request_id, "position": ahead})
        while True:
            getter = asyncio.ensure_future(events.get())
            done, _ = await asyncio.wait({getter, future}, timeout=ping,
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield _sse(*getter.result())
                continue
            getter.cancel()
            if future not in done:
                yield b": ping\n\n"
                continue
            while not events.empty():
                yield _sse(*events.get_nowait())
            error = future.exception()
            if error is None:
                yield _sse("answer", future.result())
            elif isinstance(error, ApiError):
                yield _sse("error", {"error": {"code": error.code, "message": error.message,
                                               "status": error.status}})
            else:
                yield _sse("error", {"error": {"code": "internal_error", "status": 500,
                                               "message": "the engine failed on this request"}})
            return
    finally:
        if getter is not None and not getter.done():
            getter.cancel()
        if job.state != "done":  # the client went away: free the model for the next one
            engine.worker.cancel(job.request_id, "disconnected")


def _wrap(future: Any) -> asyncio.Future:
    """An asyncio view of a worker future whose outcome counts as seen even when the
    client went away before it came (no "exception was never retrieved" noise)."""
    wrapped = asyncio.wrap_future(future)
    wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
    return wrapped


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode("utf-8")


@api.get("/sessions/{session_id}/segments/{segment_id}", tags=["questions"],
         summary="A segment's mask: gzip NRRD (uint8 0/1) on the session image's exact grid",
         response_class=Response, responses={
             200: {"content": {NRRD_MEDIA_TYPE: {"schema": {"type": "string",
                                                            "format": "binary"}}}},
             **_errors(404)})
async def segment_mask(session_id: str, segment_id: str, request: Request) -> Response:
    engine = _engine(request)
    entry, item = engine.store.mask(session_id, segment_id)
    data = await run_in_threadpool(engine.mask_nrrd, entry, item)
    return Response(data, media_type=NRRD_MEDIA_TYPE, headers={
        "Content-Disposition": f'attachment; filename="segment-{item.index + 1}.nrrd"'})


@api.post("/requests/{request_id}/cancel", response_model=CancelRecord, tags=["questions"],
          summary="Cancel a queued or running request", responses=_errors(404))
async def cancel(request_id: str, request: Request) -> dict[str, Any]:
    state = _engine(request).worker.cancel(request_id, "cancelled")
    if state is None:
        raise ApiError(404, "unknown_request", f"no queued or running request {request_id!r} "
                       "(it may have finished)")
    return {"request_id": request_id, "state": state}
