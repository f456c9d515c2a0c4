"""Is the engine server's health endpoint still quick while hostile clients run?

::

    python -m medsegr.bench.hostile                      # starts `medsegr serve` (tiny model)
    python -m medsegr.bench.hostile --seconds 60 --slow 25
    python -m medsegr.bench.hostile --url http://gpu-box:8765 --token-file token

For ``--seconds``, ``--slow`` clients trickle request headers (a byte every
``--interval`` seconds), as many trickle an upload body the same way (with a valid
token, so that the body is actually read), and a few more send unauthenticated
requests announcing a 100 MB body and requests with a token in the URL; others upload
a gzip NRRD whose data is 200,000 empty gzip members before the (short) data of a
16×16×16 volume, and others ask questions of 2,000 CJK characters, over the model's
context in tokens (refused with 400 ``too_many_tokens`` before queueing; the session
they ask about is created once, at the start). Every hostile client reconnects as soon
as the server closes its connection. Meanwhile
``GET /v1/health`` is timed every ``--probe-every`` seconds, each on a new
connection. Prints the health latencies (median, p95, p99, max), failed probes, and
how long the server took to close each kind of hostile connection, as JSON.

Standard library only (asyncio sockets); without ``--url`` it starts ``medsegr serve``
with the tiny random model on a free loopback port, so that it measures the HTTP
layer, not the model.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: empty gzip members before the data in the ``empty_gzip_members`` uploads
EMPTY_MEMBERS = 200_000
#: characters of the ``long_question`` questions (within the character limit)
LONG_QUESTION_CHARS = 2000

TINY_CONFIG = {"llm": {"source": "tiny-random"}, "vision": {"source": "tiny-random"},
               "model": {"visual_grid": 4}, "generation": {"max_new_tokens": 12}}


@dataclass
class Tally:
    """What happened to one kind of hostile connection."""

    opened: int = 0
    closed_by_server: int = 0
    seconds_to_close: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        times = sorted(self.seconds_to_close)
        return {"opened": self.opened, "closed_by_server": self.closed_by_server,
                "statuses": self.statuses,
                "seconds_to_close": {"median": _round(statistics.median(times)) if times else None,
                                     "max": _round(times[-1]) if times else None}}


def _round(value: float) -> float:
    return round(value, 4)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


async def _trickle(host: str, port: int, head: bytes, trickled: bytes, interval: float,
                   tally: Tally, stop: asyncio.Event) -> None:
    """One connection: ``head`` at once, then ``trickled`` a byte per ``interval``
    until the server closes it (or the run ends)."""
    reader, writer = await asyncio.open_connection(host, port)
    tally.opened += 1
    started = time.monotonic()
    reply = b""

    async def read_all() -> None:
        nonlocal reply
        while chunk := await reader.read(65536):
            reply += chunk

    reading = asyncio.ensure_future(read_all())
    try:
        if head:
            writer.write(head)
        for byte in trickled:
            if stop.is_set() or reading.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            done, _ = await asyncio.wait({reading}, timeout=interval)
            if done:
                break
        if not reading.done():
            await asyncio.wait({reading, asyncio.ensure_future(stop.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
    except (ConnectionError, OSError):
        pass
    finally:
        if reading.done() and not stop.is_set():
            tally.closed_by_server += 1
            tally.seconds_to_close.append(time.monotonic() - started)
            status = reply.split(b" ", 2)[1].decode("ascii", "replace") if reply else "none"
            tally.statuses[status] = tally.statuses.get(status, 0) + 1
        reading.cancel()
        writer.close()


def _small_nrrd_header(encoding: str) -> bytes:
    return (f"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 16 16 16\nencoding: {encoding}\n"
            "endian: little\nspace: left-posterior-superior\n\n").encode("ascii")


def empty_members_nrrd(count: int = EMPTY_MEMBERS) -> bytes:
    """A gzip NRRD of 16×16×16 ``uint8`` whose data is ``count`` empty gzip members
    (20 bytes each) and then half the voxels: the decoder has to walk every member
    before it finds the data short (the ``gzip_nrrd_empty_members`` bad input)."""
    return (_small_nrrd_header("gzip") + gzip.compress(b"", mtime=0) * count
            + gzip.compress(b"\1" * 2048, mtime=0))


def long_question(chars: int = LONG_QUESTION_CHARS) -> str:
    """``chars`` CJK characters: within the character limit, over the context in tokens."""
    return ("肝脏有没有病变" * (chars // 7 + 1))[:chars]


def _post(host: str, path: str, auth: str, content_type: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


async def _create_session(host: str, port: int, auth: str) -> str:
    """Upload a small valid volume; the new session's id."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    writer.write(_post(host, "/v1/sessions", auth, "application/x-nrrd",
                       _small_nrrd_header("raw") + bytes(range(256)) * 16))
    reply = await asyncio.wait_for(reader.read(), 60)
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 201"):
        raise RuntimeError(f"could not create a session: {reply[:300]!r}")
    return str(json.loads(body)["session_id"])


async def _repeat(make: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run ``make`` again and again (a short pause between: hostile, not a flood)."""
    while not stop.is_set():
        try:
            await make()
        except (ConnectionError, OSError):
            pass
        await asyncio.sleep(0.05)


async def _probe(host: str, port: int, every: float, stop: asyncio.Event,
                 latencies: list[float], failures: list[str]) -> None:
    request = f"GET /v1/health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            writer.write(request)
            reply = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            if not reply.startswith(b"HTTP/1.1 200"):
                failures.append(reply[:40].decode("latin-1"))
            else:
                latencies.append(time.perf_counter() - started)
        except (asyncio.TimeoutError, ConnectionError, OSError) as exc:
            failures.append(type(exc).__name__)
        await asyncio.sleep(max(0.0, every - (time.perf_counter() - started)))


async def run(url: str, token: str | None, seconds: float, slow: int, interval: float,
              probe_every: float) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stop = asyncio.Event()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    kinds = {"slow_headers": Tally(), "slow_body": Tally(), "unauthenticated_body": Tally(),
             "token_in_url": Tally(), "empty_gzip_members": Tally(), "long_question": Tally()}
    header_bytes = (f"POST /v1/sessions HTTP/1.1\r\nHost: {host}\r\nX-Padding: "
                    + "x" * 4000 + "\r\n\r\n").encode()
    body_head = (f"POST /v1/sessions HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: "
                 "application/x-nrrd\r\nContent-Length: 100000000\r\n\r\n").encode()
    unauth = (f"POST /v1/sessions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-nrrd"
              "\r\nContent-Length: 100000000\r\n\r\n").encode()
    in_url = (f"GET /v1/info?token={secrets.token_urlsafe(24)} HTTP/1.1\r\nHost: {host}\r\n"
              "\r\n").encode()
    members = _post(host, "/v1/sessions", auth, "application/x-nrrd", empty_members_nrrd())
    session_id = await _create_session(host, port, auth)
    question = _post(host, f"/v1/sessions/{session_id}/ask", auth, "application/json",
                     json.dumps({"question": long_question()}).encode("utf-8"))

    def client(kind: str, head: bytes, trickled: bytes, gap: float) -> Callable[[], Awaitable[None]]:
        return lambda: _trickle(host, port, head, trickled, gap, kinds[kind], stop)

    tasks = [asyncio.ensure_future(_repeat(client("slow_headers", b"", header_bytes, interval),
                                           stop)) for _ in range(slow)]
    tasks += [asyncio.ensure_future(_repeat(client("slow_body", body_head, b"N" * 100000,
                                                   interval), stop)) for _ in range(slow)]
    tasks += [asyncio.ensure_future(_repeat(client("unauthenticated_body", unauth, b"N" * 100,
                                                   0.5), stop)) for _ in range(2)]
    tasks += [asyncio.ensure_future(_repeat(client("token_in_url", in_url, b"", 0.5), stop))
              for _ in range(2)]
    tasks += [asyncio.ensure_future(_repeat(client("empty_gzip_members", members, b"", 0.5), stop))
              for _ in range(2)]
    tasks += [asyncio.ensure_future(_repeat(client("long_question", question, b"", 0.5), stop))
              for _ in range(2)]
    latencies: list[float] = []
    failures: list[str] = []
    probe = asyncio.ensure_future(_probe(host, port, probe_every, stop, latencies, failures))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait([probe, *tasks], timeout=10)
    ms = [1000 * v for v in latencies]
    return {"url": url, "seconds": seconds, "slow_clients_per_kind": slow,
            "trickle_interval_s": interval,
            "health_ms": {"n": len(ms), "median": _round(statistics.median(ms)) if ms else None,
                          "p95": _round(percentile(ms, 95)) if ms else None,
                          "p99": _round(percentile(ms, 99)) if ms else None,
                          "max": _round(max(ms)) if ms else None},
            "health_failures": len(failures), "failure_kinds": sorted(set(failures))[:5],
            "hostile": {kind: tally.report() for kind, tally in kinds.items()}}


def start_engine(folder: Path, token: str) -> tuple[subprocess.Popen[str], str]:
    """``medsegr serve`` with the tiny random model on a free loopback port."""
    config = folder / "tiny.json"
    config.write_text(json.dumps(TINY_CONFIG), encoding="utf-8")
    token_file = folder / "token"
    token_file.write_text(token + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "medsegr.cli", "serve", "--base", "--config",
                             str(config), "--device", "cpu", "--port", "0", "--token-file",
                             str(token_file), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "listening on " in line:
            return proc, line.split("listening on ", 1)[1].split()[0]
    proc.kill()
    raise RuntimeError("medsegr serve did not start:\n" + "".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an engine to measure (default: start one, tiny model)")
    parser.add_argument("--token-file", help="the engine's token (with --url)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--slow", type=int, default=25, help="slow clients of each kind")
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between the bytes a slow client sends")
    parser.add_argument("--probe-every", type=float, default=0.05)
    args = parser.parse_args(argv)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            url = args.url
            token = (Path(args.token_file).read_text(encoding="utf-8").strip()
                     if args.token_file else None)
        else:
            token = secrets.token_urlsafe(24)
            proc, url = start_engine(Path(tmp), token)
            if proc.stdout is not None:  # keep draining its log so that it never blocks
                import threading

                threading.Thread(target=proc.stdout.read, daemon=True).start()
        try:
            result = asyncio.run(run(url, token, args.seconds, args.slow, args.interval,
                                     args.probe_every))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
