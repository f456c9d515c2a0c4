#!/usr/bin/env python
"""Engine server benchmark: the HTTP path against the in-process pipeline.

Usage::

    .venv/bin/python benchmarks/server_bench.py [--quick] [--json OUT] [--device cpu]

The real bundled model (base parts) answers with exactly 30 tokens
(``generation.min_new_tokens = max_new_tokens = 30``) about axial slice 90 of the
MNI152 T1 sample, in two places with the same configuration:

* in this process: ``MedSegRPipeline.load`` and ``ChatSession.ask``, run on one
  dedicated thread as the server's model worker runs it (under CPU contention,
  torch was seen running the same work several times slower on the main thread);
* in a ``medsegr serve`` subprocess on 127.0.0.1, asked through
  :class:`medsegr.client.EngineClient` (what the 3D Slicer module does), so client
  and engine are separate processes as in real use.

Workloads (the two paths alternate, repetition by repetition, so that machine
noise hits both alike):

1. **new session + question**: upload the volume (in process: ``new_session``) and
   ask; the image encoder runs every time;
2. **follow-up question** on an open session and slice (embedding and KV cache
   reused): the per-question overhead of HTTP, streamed (server-sent events, the
   client's default) and as one JSON reply;
3. **throughput**: 4 clients at once, each with its own session, asking
   ``--questions`` questions (the first encodes the slice); against one client
   asking the same questions one after the other.

The report (Markdown) goes to stdout; ``--json OUT`` writes every number. CPU used
by other processes during each workload is measured (``/proc``) and shown, since a
busy machine inflates every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ANSWER_TOKENS = 30
SLICE = 90
QUESTION = "Which tissue forms the deep, myelinated part of the cerebral hemispheres?"
FOLLOW_UPS = ["Where exactly is it on this slice?", "Is it symmetric?", "What surrounds it?",
              "How large is it here?", "Name its main parts.", "Is anything abnormal?",
              "What is its signal on T1?", "Summarise the answer."]


# --------------------------------------------------------------------------- CPU accounting


def _jiffies_machine() -> int:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    return sum(values) - values[3] - values[4]  # all but idle and iowait


def _jiffies_process(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class OtherCpu:
    """Cores used by processes other than ``pids`` while the block ran."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cores = float("nan")

    def __enter__(self) -> "OtherCpu":
        self._t0 = time.monotonic()
        try:
            self._m0 = _jiffies_machine()
            self._p0 = sum(_jiffies_process(p) for p in self.pids)
        except OSError:
            self._m0 = -1
        return self

    def __exit__(self, *exc: object) -> None:
        if self._m0 < 0:
            return
        wall = time.monotonic() - self._t0
        tick = os.sysconf("SC_CLK_TCK")
        other = (_jiffies_machine() - self._m0) - (sum(_jiffies_process(p) for p in self.pids)
                                                    - self._p0)
        self.cores = max(0.0, other / tick) / wall if wall > 0 else 0.0


# --------------------------------------------------------------------------- helpers


def median_spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def start_server(config: Path, device: str, token_file: Path) -> tuple[subprocess.Popen, str]:
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
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, line.split("listening on ", 1)[1].split()[0]
    raise RuntimeError("medsegr serve did not start:\n" + "".join(lines))


# --------------------------------------------------------------------------- workloads


def run(args: argparse.Namespace) -> dict[str, Any]:
    import secrets

    import torch

    from medsegr.client import EngineClient
    from medsegr.config import MedSegRConfig
    from medsegr.io.images import load_image
    from medsegr.pipeline import MedSegRPipeline
    from medsegr.cli.samples import sample_path

    repeats = 2 if args.quick else args.repeats
    questions = 2 if args.quick else args.questions
    cfg = MedSegRConfig()
    cfg.generation.min_new_tokens = cfg.generation.max_new_tokens = ANSWER_TOKENS
    work = Path(tempfile.mkdtemp(prefix="medsegr-server-bench-"))
    (work / "config.json").write_text(json.dumps({"generation": {
        "min_new_tokens": ANSWER_TOKENS, "max_new_tokens": ANSWER_TOKENS}}))
    token = secrets.token_urlsafe(24)
    (work / "token").write_text(token)
    (work / "token").chmod(0o600)

    print("loading the model in process and starting `medsegr serve`...", file=sys.stderr)
    proc, url = start_server(work / "config.json", args.device, work / "token")
    try:
        pipe = MedSegRPipeline.load(None, config=cfg, device=args.device)
        image = load_image(sample_path("brain-mri"))
        client = EngineClient(url, token=token, timeout=600)
        info = client.check_version()
        pids = [os.getpid(), proc.pid]
        geometry = (image.array, image.spacing, image.origin, image.direction)

        # The in-process path runs the model on one dedicated thread, as the server's
        # model worker does: under CPU contention torch's main thread was seen running
        # the same work several times slower, which would flatter the HTTP path.
        model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="in-process")

        def in_thread(fn: Callable[[], Any]) -> Callable[[], Any]:
            return lambda: model_thread.submit(fn).result()

        @in_thread
        def local_new() -> Any:
            return pipe.new_session(image).ask(QUESTION, slice_index=SLICE)

        def remote_new() -> Any:
            sid = client.create_session(*geometry, modality=image.modality)
            answer = client.ask(sid, QUESTION, slice_index=SLICE)
            client.delete_session(sid)
            return answer

        # warm-up: one question on each path (first-call allocations, caches)
        local_new(), remote_new()
        results: dict[str, Any] = {}

        print("1. new session + question", file=sys.stderr)
        local_t, remote_t = [], []
        with OtherCpu(pids) as other:
            for _ in range(repeats):
                t, a = timed(local_new)
                local_t.append(t)
                t, r = timed(remote_new)
                remote_t.append(t)
                assert a.tokens["generated"] == r.tokens["generated"] == ANSWER_TOKENS
        results["new_session"] = {"in_process": median_spread(local_t),
                                  "http": median_spread(remote_t), "other_cpu_cores": other.cores,
                                  "upload_mb": image.array.nbytes / 1e6}

        print("2. follow-up questions", file=sys.stderr)
        local_session = model_thread.submit(pipe.new_session, image).result()
        in_thread(lambda: local_session.ask(QUESTION, slice_index=SLICE))()
        sid_stream = client.create_session(*geometry, modality=image.modality)
        sid_plain = client.create_session(*geometry, modality=image.modality)
        for sid in (sid_stream, sid_plain):
            client.ask(sid, QUESTION, slice_index=SLICE)
        local_f, stream_f, plain_f, transport = [], [], [], []
        with OtherCpu(pids) as other:
            for i in range(repeats * 2):
                q = FOLLOW_UPS[i % len(FOLLOW_UPS)]
                t, a = timed(in_thread(lambda: local_session.ask(q, slice_index=SLICE)))
                local_f.append(t)
                t, s = timed(lambda: client.ask(sid_stream, q, slice_index=SLICE))
                stream_f.append(t)
                t, p = timed(lambda: client.ask(sid_plain, q, slice_index=SLICE, stream=False))
                plain_f.append(t)
                # what HTTP adds around the engine's own time (queue to answer)
                transport += [stream_f[-1] - s.timings["server_total"],
                              plain_f[-1] - p.timings["server_total"]]
                assert a.encoded_slices == s.encoded_slices == p.encoded_slices == 0
                assert a.raw_text == s.raw_text == p.raw_text  # same work on both paths
        for sid in (sid_stream, sid_plain):
            client.delete_session(sid)
        results["follow_up"] = {"in_process": median_spread(local_f),
                                "http_stream": median_spread(stream_f),
                                "http_json": median_spread(plain_f),
                                "transport_s": median_spread(transport),
                                "other_cpu_cores": other.cores}

        print(f"3. throughput: {args.clients} clients x {questions} questions", file=sys.stderr)

        def one_client(latencies: list[float]) -> None:
            c = EngineClient(url, token=token, timeout=600)
            sid = c.create_session(*geometry, modality=image.modality)
            for i in range(questions):
                q = QUESTION if i == 0 else FOLLOW_UPS[(i - 1) % len(FOLLOW_UPS)]
                t, _ = timed(lambda: c.ask(sid, q, slice_index=SLICE))
                latencies.append(t)
            c.delete_session(sid)

        sequential: list[float] = []
        with OtherCpu(pids) as other_seq:
            seq_wall, _ = timed(lambda: [one_client(sequential) for _ in range(args.clients)])
        concurrent: list[float] = []
        threads = [threading.Thread(target=one_client, args=(concurrent,))
                   for _ in range(args.clients)]
        with OtherCpu(pids) as other_conc:
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            conc_wall = time.perf_counter() - t0
        total = args.clients * questions
        results["throughput"] = {
            "clients": args.clients, "questions_per_client": questions,
            "sequential": {"wall_s": seq_wall, "questions_per_min": 60 * total / seq_wall,
                           "latency": median_spread(sequential), "other_cpu_cores": other_seq.cores},
            "concurrent": {"wall_s": conc_wall, "questions_per_min": 60 * total / conc_wall,
                           "latency": median_spread(concurrent),
                           "latency_p95": sorted(concurrent)[int(0.95 * (len(concurrent) - 1))],
                           "other_cpu_cores": other_conc.cores}}
        results["machine"] = {
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "device": info["device"],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3])
            if Path("/proc/loadavg").is_file() else "n/a"}
        results["plan"] = {"repeats": repeats, "quick": bool(args.quick)}
        return results
    finally:
        proc.kill()
        proc.wait()


def report(r: dict[str, Any]) -> str:
    m = r["machine"]
    ns, fu, tp = r["new_session"], r["follow_up"], r["throughput"]

    def row(name: str, local: dict, remote: dict, other: float, note: str = "") -> str:
        ratio = remote["median"] / local["median"] - 1
        return (f"| {name} | {local['median']:.3f} ({local['min']:.3f}–{local['max']:.3f}) | "
                f"{remote['median']:.3f} ({remote['min']:.3f}–{remote['max']:.3f}) | "
                f"{remote['median'] - local['median']:+.3f} s ({ratio:+.1%}) | {other:.2f} | {note} |")

    lines = [
        f"- **Machine**: {m['cpu']}, {m['cores']} cores; torch {m['torch']}, {m['threads']} threads; "
        f"Python {m['python']}; engine device {m['device']}; {m['date']}; load average after: "
        f"{m['loadavg']}",
        f"- **Plan**: {r['plan']['repeats']} repetitions{' (quick)' if r['plan']['quick'] else ''}; "
        f"{ANSWER_TOKENS}-token answers; MNI152 T1 (197x233x189, "
        f"{ns['upload_mb']:.0f} MB float32), axial slice {SLICE}",
        "",
        "| workload | in process, s (min–max) | HTTP, s (min–max) | HTTP overhead | other CPU (cores) | note |",
        "|---|---:|---:|---:|---:|---|",
        row("follow-up question, streamed (SSE)", fu["in_process"], fu["http_stream"],
            fu["other_cpu_cores"], "the client's default"),
        row("follow-up question, one JSON reply", fu["in_process"], fu["http_json"],
            fu["other_cpu_cores"], ""),
        row("new session + question", ns["in_process"], ns["http"], ns["other_cpu_cores"],
            "includes the volume upload (raw NRRD on loopback)"),
        "",
        f"Transport alone (client wall time minus the engine's own queue-to-answer time, "
        f"follow-ups): median {1000 * fu['transport_s']['median']:.1f} ms "
        f"({1000 * fu['transport_s']['min']:.1f}–{1000 * fu['transport_s']['max']:.1f} ms), "
        f"{fu['transport_s']['median'] / fu['in_process']['median']:.1%} of an in-process "
        "follow-up.",
        "",
        f"Throughput, {tp['clients']} clients x {tp['questions_per_client']} questions "
        "(each client its own session; the first question encodes the slice):",
        "",
        "| clients | wall (s) | questions/min | latency median (min–max), s | other CPU (cores) |",
        "|---|---:|---:|---:|---:|",
        f"| 1 at a time | {tp['sequential']['wall_s']:.1f} | {tp['sequential']['questions_per_min']:.1f} | "
        f"{tp['sequential']['latency']['median']:.2f} ({tp['sequential']['latency']['min']:.2f}–"
        f"{tp['sequential']['latency']['max']:.2f}) | {tp['sequential']['other_cpu_cores']:.2f} |",
        f"| {tp['clients']} at once | {tp['concurrent']['wall_s']:.1f} | "
        f"{tp['concurrent']['questions_per_min']:.1f} | {tp['concurrent']['latency']['median']:.2f} "
        f"({tp['concurrent']['latency']['min']:.2f}–{tp['concurrent']['latency']['max']:.2f}; "
        f"p95 {tp['concurrent']['latency_p95']:.2f}) | {tp['concurrent']['other_cpu_cores']:.2f} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 repetitions, 2 questions per client")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--questions", type=int, default=4, help="questions per client")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, metavar="OUT")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    results = run(args)
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
