"""The application factory: the ``/v1`` API around one loaded pipeline.

::

    from medsegr.pipeline import MedSegRPipeline
    from medsegr.server.app import create_app
    from medsegr.server.settings import ServerSettings

    app = create_app(MedSegRPipeline.load(), ServerSettings(token="…"))
    uvicorn.run(app, host="127.0.0.1", port=8765)

:class:`Engine` holds what the routes need (pipeline, settings, session store,
model worker, token check); :func:`openapi_document` builds the API description
without a model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI
from starlette.types import Scope

from medsegr import __version__
from medsegr.answers import API_VERSION, Hints
from medsegr.io.images import image_from_array
from medsegr.io.nrrd_codec import NrrdInfo, NrrdTooLarge, decode_nrrd, encode_nrrd
from medsegr.pipeline import MedSegRPipeline
from medsegr.prompts import validate_question
from medsegr.server.bodies import BodyGuardMiddleware
from medsegr.server.context import check_context
from medsegr.server.errors import ApiError, install_error_handlers
from medsegr.server.redaction import install_redaction
from medsegr.server.routes import PUBLIC_PATHS, api, public, root
from medsegr.server.schemas import AskRequest
from medsegr.server.security import AuthMiddleware, TokenCheck
from medsegr.server.sessions import SessionEntry, SessionStore, StoredMask
from medsegr.server.settings import ServerSettings
from medsegr.server.uploads import (MAX_HEADER_BYTES, DecodeBudget, image_session_bytes,
                                   session_bytes, upload_header)
from medsegr.server.worker import AskParams, Job, ModelWorker

log = logging.getLogger("medsegr.server")

_DESCRIPTION = """MedSegR's engine: reasoning segmentation for medical images.

Upload an image once (`POST /v1/sessions`, an NRRD body), then ask questions about a
slice or the whole volume (`POST /v1/sessions/{id}/ask`, or `…/ask/stream` for the
answer text as server-sent events). Each answer lists its segments; download each
mask as NRRD on the uploaded image's exact grid (`GET …/segments/{segment_id}`).
Every request except `/v1/health` needs `Authorization: Bearer <token>` when the
engine runs with a token. Every error is JSON `{"error": {"code", "message"}}`."""


class Engine:
    """The running engine behind the routes."""

    def __init__(self, pipeline: MedSegRPipeline, settings: ServerSettings) -> None:
        self.pipeline = pipeline
        self.settings = settings
        self.store = SessionStore(settings.max_session_bytes, settings.session_idle_s,
                                  settings.max_sessions, settings.keep_answers)
        self.worker = ModelWorker(pipeline, self.store, settings.max_queue,
                                  settings.retry_after_s)
        self.token_check = TokenCheck(settings.token)
        self.decoding = DecodeBudget(settings.max_session_bytes, settings.retry_after_s)
        self.started = time.time()

    # -- sessions (run in a thread pool: decoding and normalising take a while) -------
    def check_upload_head(self, head: bytes) -> NrrdInfo | None:
        """Refuse an upload from its NRRD header alone, before it is decoded (413): a
        side above ``max_side``, more voxels than ``max_voxels``, more decoded bytes than
        ``max_bytes``, or more session memory than all sessions may hold. Returns the
        header; None when it cannot be read (the decoder reports that)."""
        info = upload_header(head, self.settings.image_limits())
        self._check_session_memory(session_bytes(info))
        return info

    def _check_session_memory(self, needed: int) -> None:
        if needed > self.store.max_bytes:
            raise ApiError(413, "too_large", f"this image needs {needed / 2**20:.1f} MiB of session "
                           f"memory once decoded (the image and its normalised 32-bit float "
                           f"copy); the engine allows {self.store.max_bytes / 2**20:.1f} MiB for "
                           "all sessions together (--max-session-memory)")

    def open_session(self, body: bytes, modality: str | None, window: str | None) -> SessionEntry:
        info = self.check_upload_head(body[:MAX_HEADER_BYTES + 4])
        with self.decoding.reserve(session_bytes(info)):
            try:
                array, spacing, origin, direction = decode_nrrd(
                    body, max_voxels=self.settings.max_voxels, limits=self.settings.image_limits())
            except NrrdTooLarge as exc:
                raise ApiError(413, "too_many_voxels", str(exc)) from None
            image = image_from_array(array, spacing=spacing, origin=origin, direction=direction,
                                     modality=modality, stored_type=True)
            del array  # the image holds it (or its float32 copy)
            self._check_session_memory(image_session_bytes(image.array.dtype, image.array.size))
            session = self.pipeline.new_session(image, window=window)
        entry = self.store.add(session)
        log.info("session %s opened: %s voxels (z, y, x) %s, %s, %.1f MiB", entry.id,
                 f"{image.array.size:,}", image.shape, image.modality, entry.memory_bytes() / 2**20)
        return entry

    def mask_nrrd(self, entry: SessionEntry, item: StoredMask) -> bytes:
        image = entry.session.image
        return encode_nrrd(item.unpack().astype(np.uint8), image.spacing, image.origin,
                           image.direction, encoding="gzip", compresslevel=1)

    # -- questions ---------------------------------------------------------------------
    def make_job(self, session_id: str, body: AskRequest, emit: Any) -> Job:
        """Check a question against the session before it is queued (bad input fails
        at once, not after waiting for the model)."""
        entry = self.store.get(session_id)
        question = body.question.strip()
        if len(question) > self.settings.max_question_chars:
            raise ApiError(422, "question_too_long", f"the question has {len(question):,} "
                           f"characters; this engine accepts at most "
                           f"{self.settings.max_question_chars:,}")
        cfg = self.pipeline.model.config
        question = validate_question(question, (cfg.model.seg_token, cfg.model.image_token))
        check_context(self.pipeline.model, list(entry.session.turns), question,
                      body.max_new_tokens)
        image = entry.session.image
        if body.volume and image.is_2d:
            raise ApiError(400, "bad_input", "volume mode needs a 3-D image; this image is 2-D")
        if not body.volume and body.slice_index is not None:
            from medsegr.imaging.slicing import resolve_axis

            axis = 0 if image.is_2d else resolve_axis(body.axis, image.direction)
            if body.slice_index >= image.shape[axis]:
                raise ApiError(400, "bad_input", f"slice index {body.slice_index} is out of range "
                               f"(0..{image.shape[axis] - 1} along axis {axis})")
        hints = Hints(box=tuple(body.box) if body.box else None,  # type: ignore[arg-type]
                      points=[(float(x), float(y), int(label)) for x, y, label in body.points or []])
        params = AskParams(question=question, volume=body.volume, axis=body.axis,
                           slice_index=body.slice_index, hints=hints,
                           max_new_tokens=body.max_new_tokens)
        return Job(request_id=body.request_id or uuid.uuid4().hex, entry=entry, params=params,
                   deadline=time.monotonic() + self.settings.request_timeout_s, emit=emit)

    # -- information -------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        model = self.pipeline.info()
        return {"engine_version": __version__, "api_version": API_VERSION, "model": model,
                "device": str(model.get("device", "?")), "memory": self.memory(),
                "capabilities": {"slice": True, "volume": True, "hints": True,
                                 "streaming": True, "cancel": True},
                "limits": self.settings.limits(), "queue": self.worker.stats(),
                "auth": self.settings.token is not None}

    def memory(self) -> dict[str, Any]:
        memory: dict[str, Any] = {**self.store.stats(), "process_rss_bytes": _rss_bytes()}
        device = str(self.pipeline.model.device)
        if device.startswith("cuda"):
            import torch

            free, total = torch.cuda.mem_get_info(self.pipeline.model.device)
            memory["gpu"] = {"allocated_bytes": int(torch.cuda.memory_allocated(device)),
                             "reserved_bytes": int(torch.cuda.memory_reserved(device)),
                             "free_bytes": int(free), "total_bytes": int(total)}
        return memory


def _rss_bytes() -> int | None:
    """Resident memory of this process (Linux), else the peak (``ru_maxrss``)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return None


def _base_app(lifespan: Any = None) -> FastAPI:
    app = FastAPI(title="MedSegR engine", version=__version__, description=_DESCRIPTION,
                  docs_url=None, redoc_url=None, openapi_url=f"/v{API_VERSION}/openapi.json",
                  lifespan=lifespan, generate_unique_id_function=lambda route: route.name)
    app.include_router(root)
    app.include_router(public)
    app.include_router(api)
    install_error_handlers(app)
    return app


def create_app(pipeline: MedSegRPipeline, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``pipeline`` (already loaded, on its device)."""
    settings = settings or ServerSettings()
    engine = Engine(pipeline, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_redaction(settings.token)  # uvicorn has configured its logging by now
        engine.worker.start()
        sweeper = asyncio.create_task(_sweep(engine))
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.get_running_loop().run_in_executor(None, engine.worker.stop)

    app = _base_app(lifespan)
    app.state.engine = engine
    upload_path = f"/v{API_VERSION}/sessions"

    def limit_for(scope: Scope) -> int:
        if scope.get("method") == "POST" and scope.get("path", "").rstrip("/") == upload_path:
            return settings.max_upload_bytes
        return settings.max_json_bytes

    app.add_middleware(BodyGuardMiddleware, limit_for=limit_for, timing=settings.body_timing())
    # outermost: the token is checked before anything reads the body
    app.add_middleware(AuthMiddleware, check=engine.token_check, public_paths=PUBLIC_PATHS)
    return app


async def _sweep(engine: Engine) -> None:
    """Delete idle sessions now and then."""
    interval = max(1.0, min(60.0, engine.settings.session_idle_s / 4))
    while True:
        await asyncio.sleep(interval)
        engine.store.sweep()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI description of the ``/v1`` API (no model needed)."""
    return _base_app().openapi()
