"""The engine suite's ``http`` workload: the server's HTTP path against the in-process
pipeline, on the same model and configuration.

- in the worker's own process: ``MedSegRPipeline.load`` and ``ChatSession.ask``, run
  on one dedicated thread as the server's model worker runs it (under CPU
  contention, torch was seen running the same work several times slower on the
  main thread);
- in a ``medsegr serve`` subprocess on 127.0.0.1, asked through
  :class:`medsegr.client.EngineClient` (what the 3D Slicer module does), so client
  and engine are separate processes as in real use.

Parts (the two paths alternate, repetition by repetition, so that machine noise hits
both alike): a new session + question (upload and encoding every time); follow-up
questions on an open session and slice, streamed (server-sent events, the client's
default) and as one JSON reply, with the transport time alone (client wall time
minus the engine's own ``timings.server_total``); throughput of ``clients`` clients
at once, each with its own session, against the same clients one after the other.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from medsegr.bench.cpu_load import ForeignCpu, processes_cpu_s
from medsegr.bench.engine_plan import ANSWER_TOKENS, HttpPlan, engine_config
from medsegr.bench.questions import QUESTION, SAMPLE, SLICE_INDEX
from medsegr.bench.stats import spread

#: the follow-up questions, cycled
HTTP_FOLLOW_UPS = ("Where exactly is it on this slice?", "Is it symmetric?", "What surrounds it?",
                   "How large is it here?", "Name its main parts.", "Is anything abnormal?",
                   "What is its signal on T1?", "Summarise the answer.")


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def start_server(config: Path, device: str, token_file: Path) -> tuple[subprocess.Popen, str]:
    """``medsegr serve`` on a free loopback port; the process and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "medsegr.cli", "serve", "--base", "--config", str(config),
         "--device", device, "--port", "0", "--token-file", str(token_file),
         "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, encoding="utf-8",
        errors="replace")
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "listening on " in line:
            out = proc.stdout
            threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
            return proc, line.split("listening on ", 1)[1].split()[0]
    raise RuntimeError("medsegr serve did not start:\n" + "".join(lines))


def http_workload(device: str, model: str, plan: HttpPlan) -> dict[str, Any]:
    """Both paths on axial slice 90 of the sample; every number as a JSON-ready dict."""
    from medsegr.cli.samples import sample_path
    from medsegr.client import EngineClient
    from medsegr.io.images import load_image
    from medsegr.pipeline import MedSegRPipeline

    config = engine_config(model)
    work = Path(tempfile.mkdtemp(prefix="medsegr-http-bench-"))
    (work / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    token = secrets.token_urlsafe(24)
    (work / "token").write_text(token, encoding="utf-8")
    (work / "token").chmod(0o600)
    print("loading the model in process and starting `medsegr serve` ...", file=sys.stderr)
    proc, url = start_server(work / "config.json", device, work / "token")
    try:
        pipe = MedSegRPipeline.load(None, config=config, device=device)
        image = load_image(sample_path(SAMPLE))
        client = EngineClient(url, token=token, timeout=600)
        engine_device = client.check_version()["device"]
        cpu = processes_cpu_s([os.getpid(), proc.pid])
        geometry = (image.array, image.spacing, image.origin, image.direction)
        # the in-process path runs the model on one dedicated thread, as the server does
        model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="in-process")

        def in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
            return lambda: model_thread.submit(fn).result()

        @in_thread
        def local_new() -> Any:
            return pipe.new_session(image).ask(QUESTION, slice_index=SLICE_INDEX)

        def remote_new() -> Any:
            sid = client.create_session(*geometry, modality=image.modality)
            answer = client.ask(sid, QUESTION, slice_index=SLICE_INDEX)
            client.delete_session(sid)
            return answer

        local_new(), remote_new()  # warm-up: first-call allocations, caches
        results: dict[str, Any] = {}

        print("http: new session + question", file=sys.stderr)
        local_t, remote_t = [], []
        with ForeignCpu(cpu) as other:
            for _ in range(plan.repeats):
                t, a = _timed(local_new)
                local_t.append(t)
                t, r = _timed(remote_new)
                remote_t.append(t)
                assert a.tokens["generated"] == r.tokens["generated"] == ANSWER_TOKENS
        results["new_session"] = {"in_process": spread(local_t, count=True),
                                  "http": spread(remote_t, count=True),
                                  "other_cpu_cores": other.cores,
                                  "upload_mb": image.array.nbytes / 1e6}

        print("http: follow-up questions", file=sys.stderr)
        local_session = model_thread.submit(pipe.new_session, image).result()
        in_thread(lambda: local_session.ask(QUESTION, slice_index=SLICE_INDEX))()
        sid_stream = client.create_session(*geometry, modality=image.modality)
        sid_plain = client.create_session(*geometry, modality=image.modality)
        for sid in (sid_stream, sid_plain):
            client.ask(sid, QUESTION, slice_index=SLICE_INDEX)
        local_f, stream_f, plain_f, transport = [], [], [], []
        with ForeignCpu(cpu) as other:
            for i in range(plan.repeats * 2):
                q = HTTP_FOLLOW_UPS[i % len(HTTP_FOLLOW_UPS)]
                t, a = _timed(in_thread(lambda: local_session.ask(q, slice_index=SLICE_INDEX)))
                local_f.append(t)
                t, s = _timed(lambda: client.ask(sid_stream, q, slice_index=SLICE_INDEX))
                stream_f.append(t)
                t, p = _timed(lambda: client.ask(sid_plain, q, slice_index=SLICE_INDEX,
                                                 stream=False))
                plain_f.append(t)
                transport += [stream_f[-1] - s.timings["server_total"],
                              plain_f[-1] - p.timings["server_total"]]
                assert a.encoded_slices == s.encoded_slices == p.encoded_slices == 0
                assert a.raw_text == s.raw_text == p.raw_text  # same work on both paths
        for sid in (sid_stream, sid_plain):
            client.delete_session(sid)
        results["follow_up"] = {"in_process": spread(local_f, count=True),
                                "http_stream": spread(stream_f, count=True),
                                "http_json": spread(plain_f, count=True),
                                "transport_s": spread(transport, count=True),
                                "other_cpu_cores": other.cores}

        print(f"http: throughput, {plan.clients} clients x {plan.questions} questions",
              file=sys.stderr)

        def one_client(latencies: list[float]) -> None:
            c = EngineClient(url, token=token, timeout=600)
            sid = c.create_session(*geometry, modality=image.modality)
            for i in range(plan.questions):
                q = QUESTION if i == 0 else HTTP_FOLLOW_UPS[(i - 1) % len(HTTP_FOLLOW_UPS)]
                latencies.append(_timed(lambda: c.ask(sid, q, slice_index=SLICE_INDEX))[0])
            c.delete_session(sid)

        sequential: list[float] = []
        with ForeignCpu(cpu) as other_seq:
            seq_wall, _ = _timed(lambda: [one_client(sequential) for _ in range(plan.clients)])
        concurrent: list[float] = []
        threads = [threading.Thread(target=one_client, args=(concurrent,))
                   for _ in range(plan.clients)]
        with ForeignCpu(cpu) as other_conc:
            t0 = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            conc_wall = time.perf_counter() - t0
        total = plan.clients * plan.questions
        results["throughput"] = {
            "clients": plan.clients, "questions_per_client": plan.questions,
            "sequential": {"wall_s": seq_wall, "questions_per_min": 60 * total / seq_wall,
                           "latency": spread(sequential, count=True),
                           "other_cpu_cores": other_seq.cores},
            "concurrent": {"wall_s": conc_wall, "questions_per_min": 60 * total / conc_wall,
                           "latency": spread(concurrent, count=True),
                           "latency_p95": sorted(concurrent)[int(0.95 * (len(concurrent) - 1))],
                           "other_cpu_cores": other_conc.cores}}
        results["engine_device"] = engine_device
        return results
    finally:
        proc.kill()
        proc.wait()


def render_http(r: dict[str, Any], repeats: int) -> list[str]:
    """The ``http`` workload's Markdown section."""
    ns, fu, tp = r["new_session"], r["follow_up"], r["throughput"]

    def row(name: str, local: dict, remote: dict, other: float, note: str = "") -> str:
        ratio = remote["median"] / local["median"] - 1
        return (f"| {name} | {local['median']:.3f} ({local['min']:.3f}–{local['max']:.3f}) | "
                f"{remote['median']:.3f} ({remote['min']:.3f}–{remote['max']:.3f}) | "
                f"{remote['median'] - local['median']:+.3f} s ({ratio:+.1%}) | {other:.2f} "
                f"| {note} |")

    seq, conc = tp["sequential"], tp["concurrent"]
    return [
        "### HTTP path against the in-process pipeline", "",
        f"{repeats} repetitions; {ANSWER_TOKENS}-token answers; the sample "
        f"({ns['upload_mb']:.0f} MB float32), axial slice {SLICE_INDEX}; engine device "
        f"{r.get('engine_device', '?')}", "",
        "| workload | in process, s (min–max) | HTTP, s (min–max) | HTTP overhead "
        "| other CPU (cores) | note |",
        "|---|---:|---:|---:|---:|---|",
        row("follow-up question, streamed (SSE)", fu["in_process"], fu["http_stream"],
            fu["other_cpu_cores"], "the client's default"),
        row("follow-up question, one JSON reply", fu["in_process"], fu["http_json"],
            fu["other_cpu_cores"]),
        row("new session + question", ns["in_process"], ns["http"], ns["other_cpu_cores"],
            "includes the volume upload (raw NRRD on loopback)"),
        "",
        f"Transport alone (client wall time minus the engine's own queue-to-answer time, "
        f"follow-ups): median {1000 * fu['transport_s']['median']:.1f} ms "
        f"({1000 * fu['transport_s']['min']:.1f}–{1000 * fu['transport_s']['max']:.1f} ms), "
        f"{fu['transport_s']['median'] / fu['in_process']['median']:.1%} of an in-process "
        "follow-up.", "",
        f"Throughput, {tp['clients']} clients x {tp['questions_per_client']} questions "
        "(each client its own session; the first question encodes the slice):", "",
        "| clients | wall (s) | questions/min | latency median (min–max), s | other CPU (cores) |",
        "|---|---:|---:|---:|---:|",
        f"| 1 at a time | {seq['wall_s']:.1f} | {seq['questions_per_min']:.1f} | "
        f"{seq['latency']['median']:.2f} ({seq['latency']['min']:.2f}–"
        f"{seq['latency']['max']:.2f}) | {seq['other_cpu_cores']:.2f} |",
        f"| {tp['clients']} at once | {conc['wall_s']:.1f} | {conc['questions_per_min']:.1f} | "
        f"{conc['latency']['median']:.2f} ({conc['latency']['min']:.2f}–"
        f"{conc['latency']['max']:.2f}; p95 {conc['latency_p95']:.2f}) | "
        f"{conc['other_cpu_cores']:.2f} |",
        "",
    ]
