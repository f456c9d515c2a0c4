"""The model worker: one thread runs every question, in arrival order.

Requests wait in a bounded FIFO queue (``max_queue`` waiting; one more is accepted
only when a slot is free, else :class:`ApiError` 503 with ``Retry-After``). Each has
a deadline (``request_timeout_s`` after it was queued): a queued request past it
fails with 504 without running, a running one is stopped at the next generated
token. :meth:`ModelWorker.cancel` removes a queued request at once (its slot is
free immediately) or stops a running one at its next token (or, in volume mode,
between image-encoder calls), so the model is free for the next request.

Out-of-memory on the accelerator fails that request with 507, empties the CUDA
cache and the worker keeps serving. Results and errors are delivered through a
:class:`concurrent.futures.Future` per request; streamed text pieces and progress
go to the request's ``emit`` callback (from the worker thread).
"""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from medsegr.errors import MedSegRError
from medsegr.answers import Hints
from medsegr.pipeline import Cancelled, MedSegRPipeline
from medsegr.server.errors import ApiError, from_engine_error
from medsegr.server.sessions import SessionEntry, SessionStore

log = logging.getLogger("medsegr.server")

Emit = Callable[[str, dict[str, Any]], None]


@dataclass
class AskParams:
    """One question, as the worker runs it."""

    question: str
    volume: bool = False
    axis: str | int = "axial"
    slice_index: int | None = None
    hints: Hints = field(default_factory=Hints)
    max_new_tokens: int | None = None


@dataclass
class Job:
    """A queued or running request."""

    request_id: str
    entry: SessionEntry
    params: AskParams
    deadline: float
    emit: Emit | None = None
    queued_at: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    state: str = "queued"  # queued | running | done
    #: set to stop the request; ``reason`` says why (cancelled, disconnected, timeout)
    stop: threading.Event = field(default_factory=threading.Event)
    reason: str | None = None

    def send(self, kind: str, data: dict[str, Any]) -> None:
        if self.emit is not None:
            try:
                self.emit(kind, data)
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or other accelerator) out-of-memory, whichever way torch reports it."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_accelerator_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelWorker:
    """The single thread that runs the model, fed by a bounded FIFO queue."""

    def __init__(self, pipeline: MedSegRPipeline, store: SessionStore, max_queue: int,
                 retry_after_s: int = 2) -> None:
        self.pipeline = pipeline
        self.store = store
        self.max_queue = int(max_queue)
        self.retry_after_s = int(retry_after_s)
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}  # queued and running, by request id
        self._running: Job | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.completed = 0
        self.failed = 0

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="medsegr-model", daemon=True)
            self._thread.start()
            threading.Thread(target=self._reap, name="medsegr-queue-timeouts", daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Fail queued requests, stop the running one and end the thread."""
        with self._cond:
            self._stopping = True
            while self._queue:
                job = self._queue.popleft()
                self._finish(job, error=ApiError(503, "shutting_down", "the engine is shutting down"))
            if self._running is not None:
                self._running.reason = "shutdown"
                self._running.stop.set()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- requests ------------------------------------------------------------------
    def submit(self, job: Job) -> int:
        """Queue ``job``; returns how many requests are ahead of it (the running one
        included). Raises 503 when the queue is full, 409 for a request id in use."""
        with self._cond:
            if self._stopping:
                raise ApiError(503, "shutting_down", "the engine is shutting down")
            if job.request_id in self._jobs:
                raise ApiError(409, "duplicate_request_id",
                               f"request id {job.request_id!r} is already queued or running")
            if len(self._queue) >= self.max_queue:
                raise ApiError(503, "busy", f"the engine is busy ({len(self._queue)} requests "
                               f"waiting); try again in {self.retry_after_s} s",
                               {"Retry-After": str(self.retry_after_s)})
            self.store.acquire(job.entry)
            ahead = len(self._queue) + (1 if self._running is not None else 0)
            self._queue.append(job)
            self._jobs[job.request_id] = job
            self._cond.notify_all()
            return ahead

    def cancel(self, request_id: str, reason: str = "cancelled") -> str | None:
        """Cancel a queued or running request; returns its state before the cancel
        (``"queued"``/``"running"``) or None when no such request is pending."""
        with self._cond:
            job = self._jobs.get(request_id)
            if job is None:
                return None
            if job.state == "queued":
                self._queue.remove(job)
                job.reason = reason
                self._finish(job, error=_stopped_error(job))
                return "queued"
            if job.reason is None:
                job.reason = reason
            job.stop.set()
            return "running"

    def cancel_session(self, entry: SessionEntry) -> int:
        """Cancel every queued or running request of a session; returns how many."""
        with self._cond:
            ids = [rid for rid, job in self._jobs.items() if job.entry is entry]
            for rid in ids:
                self.cancel(rid, "cancelled")
            return len(ids)

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"waiting": len(self._queue), "running": self._running is not None,
                    "max_queue": self.max_queue, "completed": self.completed,
                    "failed": self.failed}

    def position(self, request_id: str) -> int | None:
        with self._cond:
            job = self._jobs.get(request_id)
            if job is None or job.state != "queued":
                return None
            return self._queue.index(job) + (1 if self._running is not None else 0)

    # -- the thread ----------------------------------------------------------------
    def _loop(self) -> None:
        try:
            self.pipeline.prompt_prefix()  # computed once, before the first session needs it
        except Exception:  # noqa: BLE001 - the first request reports it properly
            log.exception("could not prepare the shared prompt prefix")
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait(timeout=0.5)
                if self._stopping:
                    return
                self._expire_queued()
                if not self._queue:
                    continue
                job = self._queue.popleft()
                job.state = "running"
                self._running = job
            try:
                record = self._run(job)
            except ApiError as exc:
                self._finish(job, error=exc)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
                log.exception("request %s failed", job.request_id)
                self._finish(job, error=ApiError(500, "internal_error", "the engine failed on "
                                                 f"this request ({type(exc).__name__}); see the "
                                                 "server log"))
            else:
                self._finish(job, result=record)

    def _reap(self) -> None:
        """Fail queued requests at their deadline, even while the model is busy."""
        with self._cond:
            while not self._stopping:
                self._expire_queued()
                self._cond.wait(timeout=0.25)

    def _expire_queued(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._queue if now > j.deadline]:
            self._queue.remove(job)
            job.reason = "timeout"
            self._finish(job, error=_stopped_error(job))

    def _finish(self, job: Job, result: dict[str, Any] | None = None,
                error: ApiError | None = None) -> None:
        with self._cond:
            if job.state == "done":
                return
            job.state = "done"
            self._jobs.pop(job.request_id, None)
            if self._running is job:
                self._running = None
            if error is None:
                self.completed += 1
            else:
                self.failed += 1
        self.store.release(job.entry)
        if error is not None:
            log.info("request %s: %s (%s)", job.request_id, error.code, error.message)
            job.future.set_exception(error)
        else:
            job.future.set_result(result)

    # -- running one question ------------------------------------------------------
    def _should_stop(self, job: Job) -> bool:
        if job.stop.is_set():
            return True
        if time.monotonic() > job.deadline:
            job.reason = job.reason or "timeout"
            return True
        return False

    def _run(self, job: Job) -> dict[str, Any]:
        started = time.monotonic()
        if self._should_stop(job):
            raise _stopped_error(job)
        job.send("started", {"request_id": job.request_id,
                             "queue_wait_s": round(started - job.queued_at, 4)})
        session = job.entry.session
        p = job.params

        def on_token(piece: str) -> bool:
            if self._should_stop(job):
                return False
            job.send("text", {"text": piece})
            return True

        def on_progress(stage: str, done: int, total: int) -> None:
            job.send("progress", {"stage": stage, "done": int(done), "total": int(total)})

        try:
            encoded = self._encode_volume(job) if p.volume else 0
            answer = session.ask(p.question, axis=p.axis, slice_index=p.slice_index,
                                 volume=p.volume, hints=p.hints, on_token=on_token,
                                 max_new_tokens=p.max_new_tokens, on_progress=on_progress)
        except Cancelled:
            raise _stopped_error(job) from None
        except MedSegRError as exc:
            raise from_engine_error(exc) from None
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            free_accelerator_memory()
            log.warning("request %s ran out of accelerator memory; cache emptied", job.request_id)
            raise ApiError(507, "out_of_memory", "the engine ran out of GPU memory on this "
                           "request; try a single slice, a smaller image, or again when the "
                           "engine is less busy") from None
        segments = self.store.store_answer(job.entry, job.request_id, answer.segments)
        for seg in segments:
            seg["mask_url"] = (f"/v1/sessions/{job.entry.id}/segments/{seg['id']}")
        finished = time.monotonic()
        timings = {k: round(float(v), 6) for k, v in answer.timings.items()}
        timings["queue_wait"] = round(started - job.queued_at, 6)
        timings["server_total"] = round(finished - job.queued_at, 6)
        log.info("request %s (session %s): %s, %d question characters, %d segment(s), %.2f s",
                 job.request_id, job.entry.id, answer.mode, len(p.question), len(segments),
                 finished - started)
        log.debug("request %s question: %r", job.request_id, p.question)
        return {"request_id": job.request_id, "session_id": job.entry.id, "text": answer.text,
                "raw_text": answer.raw_text, "mode": answer.mode, "axis": int(answer.axis),
                "slice_index": answer.slice_index, "key_slices": [int(k) for k in answer.key_slices],
                "fine_tuned": bool(answer.fine_tuned), "timings": timings,
                "tokens": {k: int(v) for k, v in answer.tokens.items()},
                "encoded_slices": int(encoded + answer.encoded_slices), "segments": segments,
                "not_found": [str(name) for name in answer.not_found],
                "presence": [float(p) for p in answer.presence],
                "engine_words": [{"model": str(a), "engine": str(b)} for a, b in answer.engine_words]}

    def _encode_volume(self, job: Job) -> int:
        """Encode a volume's slices before asking, a few at a time, so that a cancel or
        the deadline stops it between encoder calls and a volume that cannot fit in
        the session memory bound is refused early. Returns the slices encoded."""
        from medsegr.imaging.slicing import resolve_axis

        session = job.entry.session
        if session.image.is_2d:
            return 0  # session.ask reports the error
        axis = resolve_axis(job.params.axis, session.image.direction)
        total = session.image.shape[axis]
        step = max(1, self.pipeline.encoder_batch())
        encoded = 0
        checked_room = False
        with session.lock:
            for start in range(0, total, step):
                if self._should_stop(job):
                    raise Cancelled("stopped while encoding the volume")
                chunk = list(range(start, min(total, start + step)))
                before = session.memory_bytes()
                _, computed = session.embeddings(axis, chunk)
                encoded += computed
                if computed and not checked_room:
                    checked_room = True
                    per_slice = max(0, session.memory_bytes() - before) / computed
                    missing = sum(1 for i in range(total) if (axis, i) not in session._embeddings)
                    if not self.store.room_for(job.entry, int(per_slice * missing)):
                        raise ApiError(507, "session_memory", f"this volume needs about "
                                       f"{(per_slice * total) / 2**20:.0f} MiB of slice "
                                       "embeddings, more than the engine's session memory "
                                       "limit allows; ask about single slices, or raise "
                                       "--max-session-memory")
                if computed:
                    job.send("progress", {"stage": "encoding", "done": start + len(chunk),
                                          "total": total})
        return encoded


def _stopped_error(job: Job) -> ApiError:
    if job.reason == "timeout":
        return ApiError(504, "timeout", "the request did not finish within the engine's "
                        "request timeout")
    if job.reason == "shutdown":
        return ApiError(503, "shutting_down", "the engine is shutting down")
    return ApiError(409, "cancelled", "the request was cancelled")
