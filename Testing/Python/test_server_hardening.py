"""The engine server against hostile and careless clients, over real sockets.

* authentication runs before anything reads the body (401, not 400, for a bad body
  without a token; a huge announced body is not waited for);
* a token in the URL is refused, and no token reaches a log line (a real
  ``medsegr serve`` process, its whole output searched);
* request headers and bodies that trickle in are cut off (408, connection closed)
  within their deadlines;
* an upload whose decoded size is over the session memory bound (or ``max_bytes``) is
  refused from its header: the decoder is never called and the process does not grow;
* a question longer than the model's context in tokens is refused before it is
  queued, with the limit;
* a client that disconnects mid-upload is logged once, at INFO, without a traceback;
* 405 answers list every method of the path; only NRRD uploads are accepted.
"""

from __future__ import annotations

import gzip
import json
import logging
import socket
import threading
import time

import numpy as np
import pytest

from medsegr.client import EngineClient
from medsegr.io.nrrd_codec import encode_nrrd
from server_harness import TOKEN, LiveServer, ServeProcess, free_port, oblique_volume, tiny_config_file
from test_server_api import error_of, raw_request

MIB = 1024 * 1024
#: the deadlines of the guarded test server (seconds)
HEADER_S = 3.0
BODY_GRACE_S = 3.0


class GuardedServer(LiveServer):
    """:class:`LiveServer` run with the engine's own uvicorn configuration (guarded
    h11 protocol, keep-alive and header limits), as ``medsegr serve`` runs it."""

    def __init__(self, pipeline, **settings) -> None:
        import uvicorn

        from medsegr.server.app import create_app
        from medsegr.server.protocol import uvicorn_config
        from medsegr.server.settings import ServerSettings

        config = ServerSettings(**settings)
        super().__init__(create_app(pipeline, config))
        self.server = uvicorn.Server(uvicorn_config(self.app, config, log_level="warning",
                                                    access_log=True))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="uvicorn-guarded", daemon=True)


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with GuardedServer(tiny_pipeline, token=TOKEN, header_timeout_s=HEADER_S,
                       body_read_timeout_s=10.0, upload_rate_grace_s=BODY_GRACE_S,
                       min_upload_rate=1024.0, max_session_bytes=1024 * MIB) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return EngineClient(server.url, token=TOKEN, timeout=60)


@pytest.fixture(scope="module")
def session_id(client):
    arr, spacing, origin, direction = oblique_volume((4, 16, 16))
    return client.create_session(arr, spacing, origin, direction)


def connect(server, timeout=30.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def read_reply(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection (or the socket
    times out): (data, closed)."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data, True
            data += chunk
    except (socket.timeout, TimeoutError):
        return data, False
    except ConnectionResetError:
        return data, True


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def json_error(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]


# --------------------------------------------------------------------------- auth first


def test_a_bad_body_without_a_token_gets_401_not_400(server, session_id):
    path = f"/v1/sessions/{session_id}/ask"
    bad = b'{"question": '
    for token in (None, "wrong-token-0123456789abcdef"):
        status, code, _ = error_of(raw_request(server, "POST", path, bad,
                                               {"Content-Type": "application/json"}, token=token))
        assert (status, code) == (401, "unauthorized"), token
    status, code, _ = error_of(raw_request(server, "POST", path, bad,
                                           {"Content-Type": "application/json"}))
    assert (status, code) == (400, "bad_json")  # with the token the body is read


def test_an_announced_body_is_not_waited_for_without_a_token(server):
    """401 comes from the headers alone, at once, and the connection is closed: the
    100 MB the client announced are never read."""
    with connect(server, timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-nrrd"
                     b"\r\nContent-Length: 100000000\r\n\r\nNRRD0004\n")
        reply, closed = read_reply(sock)
        elapsed = time.monotonic() - started
    assert status_of(reply) == 401 and json_error(reply)["code"] == "unauthorized"
    assert closed and elapsed < 2.0, elapsed


# --------------------------------------------------------------------------- tokens in URLs


@pytest.mark.parametrize("query", ["token=abc", "access_token=abc", "%74oken=abc", "TOKEN=",
                                   "api_key=abc", f"x={TOKEN}", f"modality=CT&key=abc"])
def test_a_token_in_the_query_string_is_refused(server, query):
    for path in ("/v1/info", "/v1/health", "/"):
        status, code, message = error_of(raw_request(server, "GET", f"{path}?{query}"))
        assert (status, code) == (400, "token_in_query"), (path, query)
        assert "Authorization" in message and TOKEN not in message


def test_harmless_query_parameters_still_work(server):
    assert raw_request(server, "GET", "/v1/health?modality=CT")[0] == 200
    assert raw_request(server, "GET", "/v1/info?window=abdomen")[0] == 200


def test_the_redaction_filter():
    from medsegr.server.redaction import RedactingFilter

    secret = "s3cr3t-0123456789abcdef"
    redact = RedactingFilter([secret]).redact
    cases = {
        '127.0.0.1:5 - "GET /v1/info?token=abc&modality=CT HTTP/1.1" 400':
            '127.0.0.1:5 - "GET /v1/info?token=[redacted]&modality=CT HTTP/1.1" 400',
        "GET /v1/info?%74oken=abc&x=1": "GET /v1/info?%74oken=[redacted]&x=[redacted]",
        "Authorization: Bearer abc.def": "Authorization: [redacted]",
        "{'authorization': 'Basic abc'}": "{'authorization': '[redacted]'}",
        "sent bearer abc.def": "sent bearer [redacted]",
        'api_key=foo; "password": "bar"': 'api_key=[redacted]; "password": "[redacted]"',
        f"it was {secret}!": "it was [redacted]!",
        "max_new_tokens=96, token required": "max_new_tokens=96, token required",
    }
    for text, expected in cases.items():
        assert redact(text) == expected, text


def test_a_log_record_is_redacted_through_any_handler():
    from medsegr.server.redaction import RedactingFilter

    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    handler.addFilter(RedactingFilter(["s3cr3t-0123456789abcdef"]))
    logger = logging.getLogger("medsegr.test_redaction")
    logger.addHandler(handler)
    try:
        logger.warning("url %s header %r", "/x?token=abc",
                       {"authorization": "Bearer s3cr3t-0123456789abcdef"})
        try:
            raise ValueError("token=s3cr3t-0123456789abcdef")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert records and all("abc" not in r and "s3cr3t" not in r for r in records), records


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory):
    """``medsegr serve`` with a token, at debug level (the most it ever logs)."""
    folder = tmp_path_factory.mktemp("serve")
    token_file = folder / "token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")
    token_file.chmod(0o600)
    proc = ServeProcess(["--base", "--config", str(tiny_config_file(folder)), "--device", "cpu",
                         "--port", str(free_port()), "--token-file", str(token_file),
                         "--log-level", "debug"]).start()
    yield proc
    proc.kill()


def process_request(proc, method, path, body=b"", headers=None):
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(proc.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for_line(proc, words, timeout=10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in list(proc.lines) if words in line]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_no_token_reaches_the_log_of_a_real_server(serve_process):
    leaked = ["leaked-query-token-0123456789", "leaked-header-token-0123456789"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert process_request(serve_process, "GET", f"/v1/info?token={leaked[0]}", headers=auth)[0] == 400
    assert process_request(serve_process, "GET", f"/v1/health?x={TOKEN}")[0] == 400
    assert process_request(serve_process, "GET", "/v1/info",
                           headers={"Authorization": f"Bearer {leaked[1]}"})[0] == 401
    assert process_request(serve_process, "GET", "/v1/info", headers=auth)[0] == 200
    sid = EngineClient(serve_process.url, token=TOKEN).create_session(
        *oblique_volume((2, 8, 8)))
    assert process_request(serve_process, "POST", f"/v1/sessions/{sid}/ask",
                           json.dumps({"question": f"token={leaked[0]} where?",
                                       "max_new_tokens": 2}).encode(),
                           {**auth, "Content-Type": "application/json"})[0] == 200
    assert wait_for_line(serve_process, "question:")  # debug logs the question, redacted
    logged = "".join(serve_process.lines)
    assert "/v1/info?token=[redacted]" in logged  # the refused request is logged ...
    for secret in [*leaked, TOKEN]:
        assert secret not in logged  # ... and nothing secret is


# --------------------------------------------------------------------------- slow clients


def test_a_client_trickling_its_headers_is_cut_off(server):
    """A byte every 2 s: the connection gets 408 and is closed at the header deadline."""
    request = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server, timeout=0.5) as sock:
        started = time.monotonic()
        reply, closed = b"", False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            reply, closed = read_reply(sock)
            if closed:
                break
            time.sleep(1.5)
        elapsed = time.monotonic() - started
    assert closed, "the connection was never closed"
    assert HEADER_S - 0.5 <= elapsed <= HEADER_S + 2.5, elapsed
    assert status_of(reply) == 408 and json_error(reply)["code"] == "request_timeout"


@pytest.mark.parametrize("path, content_type", [("/v1/sessions", "application/x-nrrd"),
                                                ("/v1/sessions/any/ask", "application/json")])
def test_a_client_trickling_its_body_is_cut_off(server, path, content_type):
    """Headers at once, then a byte of the body every 2 s: 408 once the minimum rate
    applies, and the connection is closed."""
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: 5000\r\n\r\n").encode()
    with connect(server, timeout=0.5) as sock:
        sock.sendall(head)
        started = time.monotonic()
        reply, closed = b"", False
        while time.monotonic() - started < 20:
            try:
                sock.sendall(b"N")
            except OSError:
                closed = True
                break
            reply, closed = read_reply(sock)
            if closed:
                break
            time.sleep(1.5)
        elapsed = time.monotonic() - started
    assert closed and elapsed <= BODY_GRACE_S + 2.5, elapsed
    assert status_of(reply) == 408 and json_error(reply)["code"] == "request_timeout"
    assert "KiB/s" in json_error(reply)["message"]


def test_a_client_that_stops_sending_is_cut_off(tiny_pipeline):
    with GuardedServer(tiny_pipeline, token=TOKEN, body_read_timeout_s=1.0) as srv:
        with connect(srv, timeout=5) as sock:
            sock.sendall(f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
                         "\r\nContent-Type: application/x-nrrd\r\nContent-Length: 100\r\n\r\n"
                         "NRRD".encode())
            started = time.monotonic()
            reply, closed = read_reply(sock)
            elapsed = time.monotonic() - started
    assert closed and 0.8 <= elapsed <= 3.0, elapsed
    assert status_of(reply) == 408 and "no part of it arrived" in json_error(reply)["message"]


def test_the_engine_serves_after_the_slow_clients(server, client, session_id):
    assert client.health()["status"] == "ok"
    assert client.ask(session_id, "Where is the liver?", max_new_tokens=2) is not None


# --------------------------------------------------------------------------- upload sizes


def bomb_nrrd() -> bytes:
    """A ~255 KiB gzip NRRD of 512 x 512 x 1024 uint8 zeros: within max_voxels (2^28),
    2 GiB of session memory once decoded."""
    header = ("NRRD0004\ntype: uint8\ndimension: 3\nspace: left-posterior-superior\n"
              "sizes: 512 512 1024\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
              "kinds: domain domain domain\nencoding: gzip\nspace origin: (0,0,0)\n\n")
    return header.encode("ascii") + gzip.compress(bytes(512 * 512 * 1024), compresslevel=9)


def rss_bytes() -> int:
    import os

    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_an_upload_over_the_memory_bound_is_refused_before_decoding(server, monkeypatch):
    import medsegr.server.app as app_module

    body = bomb_nrrd()
    assert len(body) < 300 * 1024
    calls = []
    real = app_module.decode_nrrd
    monkeypatch.setattr(app_module, "decode_nrrd",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    before = rss_bytes()
    status, code, message = error_of(raw_request(server, "POST", "/v1/sessions", body,
                                                 {"Content-Type": "application/x-nrrd"}))
    grown = rss_bytes() - before
    assert (status, code) == (413, "too_large"), message
    # 512 x 512 x 1024 uint8, kept in its type: 1 byte + its 4-byte normalised copy a voxel
    assert "1280.0 MiB" in message and "1024.0 MiB" in message and "decoded" in message
    assert calls == []  # refused from the header: the decoder never ran
    assert grown < 64 * MIB, grown / MIB  # nothing near the 256 MiB (let alone 2 GiB) volume


def test_an_upload_over_max_bytes_is_refused_from_its_header(server, monkeypatch):
    """The upload's header is read as the decoder reads it (``nrrd_info``): the decoded
    bytes its type declares are checked against ``max_bytes`` before the decoder runs."""
    import medsegr.server.app as app_module

    calls = []
    real = app_module.decode_nrrd
    monkeypatch.setattr(app_module, "decode_nrrd",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    header = ("NRRD0004\ntype: double\ndimension: 3\nendian: little\nsizes: 512 512 600\n"
              "encoding: gzip\n\n")  # 157 M voxels (within max_voxels), 1.2 GB as double
    body = header.encode("ascii") + gzip.compress(bytes(4096))
    status, code, message = error_of(raw_request(server, "POST", "/v1/sessions", body,
                                                 {"Content-Type": "application/x-nrrd"}))
    assert (status, code) == (413, "too_many_voxels") and "(max_bytes)" in message, message
    assert calls == []


def test_an_upload_over_max_voxels_is_refused_from_its_header(tiny_pipeline):
    with GuardedServer(tiny_pipeline, token=TOKEN, max_voxels=1000) as srv:
        body = encode_nrrd(np.zeros((20, 20, 20), np.uint8), encoding="gzip")
        status, code, message = error_of(raw_request(srv, "POST", "/v1/sessions", body,
                                                     {"Content-Type": "application/x-nrrd"}))
    assert (status, code) == (413, "too_many_voxels") and "max_voxels" in message


def test_an_upload_within_the_bound_is_decoded(server, client):
    arr, spacing, origin, direction = oblique_volume((3, 12, 12))
    sid = client.create_session(arr, spacing, origin, direction)
    status, _, body = raw_request(server, "GET", f"/v1/sessions/{sid}")
    assert status == 200 and json.loads(body)["shape"] == [3, 12, 12]


def test_only_nrrd_uploads_are_accepted(server):
    body = encode_nrrd(np.zeros((2, 4, 4), np.float32))
    for content_type, expected in (("application/octet-stream", 415), ("text/plain", 415),
                                   ("application/nrrd", 201), ("application/x-nrrd", 201)):
        status, _, _ = raw_request(server, "POST", "/v1/sessions", body,
                                   {"Content-Type": content_type})
        assert status == expected, content_type


# --------------------------------------------------------------------------- question tokens


def test_a_question_over_the_context_in_tokens_is_refused_before_queueing(server, session_id,
                                                                          tiny_pipeline):
    model = tiny_pipeline.model
    context = model.llm.config.max_position_embeddings
    question = "肝脏有没有病变" * 285 + "吗"  # 1,996 characters: within the character limit
    tokens = len(model.tokenizer.encode(question, add_special_tokens=False))
    assert len(question) <= 2000 and tokens > context
    before = server.engine.worker.stats()
    status, code, message = error_of(raw_request(
        server, "POST", f"/v1/sessions/{session_id}/ask",
        json.dumps({"question": question}).encode("utf-8"), {"Content-Type": "application/json"}))
    assert (status, code) == (400, "too_many_tokens"), message
    assert f"{tokens:,} tokens" in message and f"at most {context:,} tokens" in message
    after = server.engine.worker.stats()
    assert (after["completed"], after["failed"]) == (before["completed"], before["failed"])


def test_a_question_that_fits_is_answered(client, session_id):
    answer = client.ask(session_id, "肝脏在哪里？", max_new_tokens=2)
    assert answer.tokens["prompt"] > 0


def test_the_context_check_counts_the_prompt_as_the_session_does(tiny_pipeline):
    """The count equals the keys the session feeds the model (first question, image shown)."""
    from medsegr.answers import Turn
    from medsegr.io.images import image_from_array
    from medsegr.server.context import prompt_tokens

    session = tiny_pipeline.new_session(image_from_array(np.zeros((2, 8, 8), np.float32)))
    question = "Where is the liver?"
    keys = session._keys([Turn(question=question, image_id="0:1")])
    assert prompt_tokens(tiny_pipeline.model, [], question) == len(keys)


# --------------------------------------------------------------------------- disconnects


def test_a_disconnect_mid_upload_is_logged_once_at_info_without_a_traceback(serve_process):
    from urllib.parse import urlsplit

    url = urlsplit(serve_process.url)
    mark = len(serve_process.lines)
    with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
        sock.sendall(f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/x-nrrd\r\nContent-Length: 1000000\r\n\r\n"
                     .encode() + b"NRRD0004\n" + b"x" * 20000)
        time.sleep(0.5)
    assert wait_for_line(serve_process, "disconnected after")
    time.sleep(1.0)  # anything logged later would be in these lines too
    lines = serve_process.lines[mark:]
    told = [line for line in lines if "disconnected after" in line]
    assert len(told) == 1 and told[0].startswith("INFO"), lines
    assert "bytes of the request body" in told[0]
    text = "".join(lines)
    assert "Traceback" not in text and "Exception in ASGI application" not in text
    assert not [line for line in lines if line.startswith(("ERROR", "CRITICAL"))], lines
    assert process_request(serve_process, "GET", "/v1/health")[0] == 200


# --------------------------------------------------------------------------- methods


def test_405_lists_every_method_of_the_path(server, session_id):
    status, headers, _ = raw_request(server, "PUT", f"/v1/sessions/{session_id}")
    assert status == 405
    allowed = {m.strip() for m in headers["allow"].split(",")}
    assert {"GET", "DELETE"} <= allowed and "PUT" not in allowed
    status, headers, _ = raw_request(server, "GET", "/v1/sessions")
    assert status == 405 and headers["allow"] == "POST"


# --------------------------------------------------------------------------- the benchmark


def test_the_hostile_client_benchmark_measures_health(server):
    """``python -m medsegr.bench.hostile`` (the health latency under hostile clients;
    numbers in docs/server.md) runs: briefly, against this server; no timing asserted."""
    import asyncio

    from medsegr.bench.hostile import percentile, run

    result = asyncio.run(run(server.url, TOKEN, seconds=HEADER_S + 2, slow=3, interval=0.5,
                             probe_every=0.1))
    assert result["health_ms"]["n"] > 10 and result["health_failures"] == 0, result
    hostile = result["hostile"]
    assert hostile["slow_headers"]["statuses"] == {"408": hostile["slow_headers"]["closed_by_server"]}
    assert hostile["slow_headers"]["closed_by_server"] >= 3
    assert set(hostile["unauthenticated_body"]["statuses"]) == {"401"}
    assert set(hostile["token_in_url"]["statuses"]) == {"400"}
    assert set(hostile["empty_gzip_members"]["statuses"]) == {"400"}
    assert hostile["empty_gzip_members"]["closed_by_server"] >= 1
    assert set(hostile["long_question"]["statuses"]) == {"400"}
    assert hostile["long_question"]["closed_by_server"] >= 1
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 95) == 5.0
    assert percentile([float(v) for v in range(1, 101)], 95) == 95.0
