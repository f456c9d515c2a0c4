"""Concurrent sessions through the engine server, against the reference path.

MedSegR: the real engine server (:func:`medsegr.server.app.create_app` under
uvicorn, on a free loopback port, in this process, serving the same loaded
pipeline), reached with the standard-library client (:class:`medsegr.client.
EngineClient`) from one thread per session. Each session uploads the same small
volume, and all sessions then ask their questions at the same moment, each about
its own slice, turn after turn. The server's single model worker answers the
requests one at a time, in arrival order.

Reference: the same sessions as :class:`~medsegr.bench.reference.ReferenceSession`
threads in this process, one answer at a time as well (a lock around each answer),
since a LISA-style model serves one request at a time too.

The latency of a repetition is the time until every session has all its answers
(HTTP, streaming and mask download included for MedSegR); the single requests'
latencies are kept as well.
"""

from __future__ import annotations

import importlib.util
import secrets
import socket
import threading
import time
from typing import Any, Callable

import numpy as np

from medsegr.bench.equality import AnswerDigest
from medsegr.bench.timing import Measured, PathRun, add_phases
from medsegr.bench.context import (FOLLOW_UPS, MEDSEGR, QUESTION, REFERENCE, BenchContext,
                                   WorkloadResult, interleave)
from medsegr.client import EngineClient
from medsegr.io.images import MedicalImage
from medsegr.imaging.slicing import resolve_axis

#: slices of the volume every session uploads
SERVER_VOLUME_SLICES = 16
#: how long to wait for uvicorn to start, seconds
START_TIMEOUT_S = 60.0


class LoopbackServer:
    """The engine server for ``pipeline`` on 127.0.0.1 (a free port), in a thread,
    with a random bearer token."""

    def __init__(self, pipeline: Any) -> None:
        import uvicorn

        from medsegr.server.app import create_app
        from medsegr.server.settings import ServerSettings

        self.token = secrets.token_urlsafe(24)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        app = create_app(pipeline, ServerSettings(token=self.token))
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="medsegr-bench-server", daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                self.sock.close()
                raise RuntimeError("the engine server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def _run_threads(jobs: list[Callable[[], None]]) -> None:
    """Start ``jobs`` together, wait for all, re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def wrap(job: Callable[[], None]) -> None:
        try:
            start.wait()
            job()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(job,), name=f"bench-session-{i}")
               for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def concurrent_sessions(ctx: BenchContext) -> WorkloadResult:
    plan = ctx.plan
    count, turns = plan.server_sessions, plan.server_turns
    result = WorkloadResult("server", f"{count} concurrent sessions through the server"
                            f" ({turns} question{'s' if turns > 1 else ''} each)")
    missing = [name for name in ("medsegr.server", "fastapi", "uvicorn")
               if importlib.util.find_spec(name) is None]
    if missing:
        result.skipped = (f"the engine server cannot run here ({', '.join(missing)} not "
                          "installed; pip install 'medsegr[serve]')")
        return result
    volume = ctx.sub_volume(SERVER_VOLUME_SLICES)
    axis = resolve_axis("axial", volume.direction)
    depth = volume.shape[axis]
    slices = [int(round(v)) for v in np.linspace(0, depth - 1, count + 2)[1:-1]]
    questions = [QUESTION, *FOLLOW_UPS][:turns]

    def digests(per_session: list[list[Any]]) -> list[AnswerDigest]:
        return [AnswerDigest.of(a) for answers in per_session for a in answers]

    with LoopbackServer(ctx.pipeline) as server:
        def via_server() -> tuple[PathRun, list[AnswerDigest]]:
            clients = [EngineClient(server.url, token=server.token) for _ in slices]
            ids = [c.create_session(volume.array, volume.spacing, volume.origin,
                                    volume.direction, modality=volume.modality) for c in clients]
            return _measure(ctx, volume, slices, questions,
                            lambda i, q: clients[i].ask(ids[i], q, axis="axial",
                                                        slice_index=slices[i]),
                            digests, cleanup=lambda: [c.delete_session(s)
                                                      for c, s in zip(clients, ids)])

        def in_process() -> tuple[PathRun, list[AnswerDigest]]:
            sessions = [ctx.open_session(REFERENCE, volume) for _ in slices]
            one_at_a_time = threading.Lock()

            def ask(i: int, question: str) -> Any:
                with one_at_a_time:
                    return sessions[i].ask(question, axis="axial", slice_index=slices[i])

            return _measure(ctx, volume, slices, questions, ask, digests, cleanup=lambda: None)

        runners = {MEDSEGR: via_server, REFERENCE: in_process}
        interleave(ctx, result, {MEDSEGR: plan.server_reps, REFERENCE: plan.server_reps},
                   lambda path: runners[path]())
    result.notes.append(f"{count} sessions on a {depth}-slice axial volume (slices {slices}), "
                        "all asking at once; the latency is until the last answer arrived")
    return result


def _measure(ctx: BenchContext, volume: MedicalImage, slices: list[int], questions: list[str],
             ask: Callable[[int, str], Any], digests: Callable[[list[list[Any]]], list[AnswerDigest]],
             cleanup: Callable[[], Any]) -> tuple[PathRun, list[AnswerDigest]]:
    answers: list[list[Any]] = [[] for _ in slices]
    requests: list[float] = []
    steps: list[float] = []
    lock = threading.Lock()
    t0 = 0.0

    def session_job(i: int) -> Callable[[], None]:
        def job() -> None:
            for question in questions:
                t = time.perf_counter()
                answer = ask(i, question)
                with lock:
                    requests.append(time.perf_counter() - t)
                answers[i].append(answer)
            with lock:
                steps.append(time.perf_counter() - t0)
        return job

    with Measured(ctx.device) as m:
        t0 = time.perf_counter()
        _run_threads([session_job(i) for i in range(len(slices))])
    cleanup()
    tokens = sum(int(a.tokens["generated"]) for per in answers for a in per)
    phases: dict[str, float] = {}
    for per in answers:
        for a in per:
            add_phases(phases, a.timings)
    run = PathRun(m.seconds, tokens, tokens, phases, sorted(steps), m.memory, requests_s=requests)
    return run, digests(answers)
