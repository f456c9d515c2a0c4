"""The engine server's /v1 API over real HTTP (uvicorn on loopback, tiny random model):
round trips with geometry checked voxel for voxel, embedding reuse, streaming, auth,
limits and every kind of bad request."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import logging
import socket
import urllib.parse

import numpy as np
import pytest

from helpers import force_seg, force_text, grounding_finds_everything
from medsegr.client import (EngineClient, EngineError, RequestCancelled, VersionMismatch)
from medsegr.io.images import image_from_array
from medsegr.io.nrrd_codec import decode_nrrd, encode_nrrd
from medsegr.answers import Hints
from server_harness import TOKEN, live_server, oblique_volume

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN, max_upload_bytes=2 * MIB,
                     max_voxels=100_000, max_question_chars=300) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return EngineClient(server.url, token=TOKEN, timeout=60)


def raw_request(server, method, path, body=b"", headers=None, token=TOKEN):
    """One HTTP request with full control over headers and body: (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def error_of(status_headers_body):
    status, headers, body = status_headers_body
    assert headers.get("content-type", "").startswith("application/json"), headers
    error = json.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return status, error["code"], error["message"]


# --------------------------------------------------------------------------- service


def test_health_needs_no_token_and_info_describes_the_engine(server, client):
    assert EngineClient(server.url).health() == {"status": "ok", "api_version": "1",
                                                 "engine_version": "0.1.0"}
    info = client.check_version()
    assert info["api_version"] == "1" and info["auth"] is True
    assert info["capabilities"] == {"slice": True, "volume": True, "hints": True,
                                    "streaming": True, "cancel": True}
    assert info["model"]["base"]["llm"]["name"] == "tiny-random" and info["device"] == "cpu"
    assert info["limits"]["max_voxels"] == 100_000 and info["queue"]["max_queue"] == 16
    assert info["memory"]["process_rss_bytes"] > 0


def test_version_mismatch_is_reported_clearly(server, monkeypatch):
    import medsegr.client as client_module

    monkeypatch.setattr(client_module, "API_VERSION", "2")
    other = EngineClient(server.url, token=TOKEN)
    with pytest.raises(VersionMismatch, match="API v1.*this client speaks API v2"):
        other.check_version()
    with pytest.raises(VersionMismatch):  # create_session checks first
        other.create_session(np.zeros((1, 4, 4), np.float32), (1, 1, 1), (0, 0, 0),
                             (1, 0, 0, 0, 1, 0, 0, 0, 1))


@pytest.mark.parametrize("token, code", [(None, "unauthorized"), ("wrong-token-0123456789", "unauthorized")])
def test_auth_missing_or_wrong_token_is_refused(server, token, code):
    status, got, message = error_of(raw_request(server, "GET", "/v1/info", token=token))
    assert status == 401 and got == code
    with pytest.raises(EngineError) as exc:
        EngineClient(server.url, token=token).info()
    assert exc.value.status == 401 and exc.value.code == "unauthorized"
    assert TOKEN not in message
    status, _, _ = raw_request(server, "GET", "/v1/info")  # the right token
    assert status == 200
    status, _, _ = raw_request(server, "GET", "/v1/info", headers={"Authorization": "Basic abc"},
                               token=None)
    assert status == 401


# --------------------------------------------------------------------------- round trips


def test_slice_round_trip_geometry_voxel_for_voxel(server, client, tiny_pipeline):
    arr, spacing, origin, direction = oblique_volume()
    sid = client.create_session(arr, spacing, origin, direction, modality="MR")
    described = client.session_info(sid)
    assert described["shape"] == [6, 40, 48] and tuple(described["spacing"]) == spacing
    assert tuple(described["origin"]) == origin and tuple(described["direction"]) == direction
    held = server.engine.store.get(sid).session.image
    assert np.array_equal(held.array, arr)  # the uploaded voxels, exactly

    question = "Segment the organ."
    with force_seg(tiny_pipeline.model, {1, 3}):
        remote = client.ask(sid, question, axis="axial", slice_index=3, box=(5, 5, 40, 30),
                            points=[(20, 18, 1)], max_new_tokens=6)
    local_session = tiny_pipeline.new_session(
        image_from_array(arr, spacing=spacing, origin=origin, direction=direction, modality="MR"))
    with force_seg(tiny_pipeline.model, {1, 3}):
        local = local_session.ask(question, axis="axial", slice_index=3, max_new_tokens=6,
                                  hints=Hints(box=(5, 5, 40, 30), points=[(20, 18, 1)]))
    assert remote.raw_text == local.raw_text and remote.text == local.text
    assert remote.mode == "slice" and remote.slice_index == 3 and remote.encoded_slices == 1
    assert len(remote.segments) == len(local.segments) == 2
    for r, seg in zip(remote.segments, local.segments):
        assert r.name == seg.name and r.index == seg.index
        assert r.mask.dtype == bool and r.mask.shape == arr.shape
        assert np.array_equal(r.mask, seg.mask)  # voxel for voxel
        assert r.mask.any() and not np.delete(r.mask, 3, axis=0).any()

    # the NRRD the server sends carries the uploaded grid exactly
    status, headers, body = raw_request(
        server, "GET", f"/v1/sessions/{sid}/segments/{remote.segments[0].id}")
    assert status == 200 and headers["content-type"] == "application/x-nrrd"
    mask, sp, org, dirs = decode_nrrd(body)
    assert (sp, org, dirs) == (spacing, origin, direction) and mask.dtype == np.uint8
    assert np.array_equal(mask > 0, local.segments[0].mask)
    client.delete_session(sid)


def test_geometry_from_float32_matrices_comes_back_exactly(server, client):
    arr, spacing, origin, direction = oblique_volume((2, 12, 14))
    matrix = np.asarray(direction, np.float32).reshape(3, 3)  # as Slicer's float32 matrices
    gzip_client = EngineClient(server.url, token=TOKEN, compress=True)  # as for a remote engine
    assert client.compress is False and gzip_client.compress is True  # loopback: raw upload
    sid = gzip_client.create_session(arr, np.float32([0.7, 0.7, 2.5]), origin, matrix)
    assert np.array_equal(server.engine.store.get(sid).session.image.array, arr)
    info = client.session_info(sid)
    assert info["direction"] == [float(v) for v in matrix.ravel()]
    assert info["spacing"] == [float(v) for v in np.float32([0.7, 0.7, 2.5])]
    client.delete_session(sid)


def test_volume_round_trip_and_follow_ups_do_not_re_encode(server, client, tiny_pipeline):
    arr, spacing, origin, direction = oblique_volume((5, 24, 28), seed=1, origin=(3.5, -7.25, 11.0))
    sid = client.create_session(arr, spacing, origin, direction)
    with force_seg(tiny_pipeline.model, {1}):
        vol = client.ask(sid, "Segment the organ in the whole scan.", volume=True, max_new_tokens=4)
    local = tiny_pipeline.new_session(image_from_array(arr, spacing=spacing, origin=origin,
                                                       direction=direction))
    with force_seg(tiny_pipeline.model, {1}):
        expected = local.ask("Segment the organ in the whole scan.", volume=True, max_new_tokens=4)
    assert vol.mode == "volume" and vol.slice_index is None and vol.encoded_slices == 5
    assert vol.key_slices == expected.key_slices
    assert len(vol.segments) == 1 and np.array_equal(vol.segments[0].mask, expected.segments[0].mask)
    encoded_before = client.session_info(sid)["encoded_slices"]

    follow = client.ask(sid, "And on slice two?", slice_index=2, max_new_tokens=3)
    again = client.ask(sid, "Once more, the whole scan.", volume=True, max_new_tokens=3)
    assert follow.encoded_slices == 0 and again.encoded_slices == 0  # measured by the engine
    assert follow.tokens["reused"] > 0
    assert client.session_info(sid)["encoded_slices"] == encoded_before == 5
    assert client.session_info(sid)["turns"] == 3
    client.reset_conversation(sid)
    info = client.session_info(sid)
    assert info["turns"] == 0 and info["encoded_slices"] == 5  # embeddings kept
    assert client.ask(sid, "New conversation.", slice_index=1, max_new_tokens=2).encoded_slices == 0
    client.delete_session(sid)
    with pytest.raises(EngineError) as exc:
        client.ask(sid, "Still there?")
    assert exc.value.status == 404 and "deleted" in exc.value.message


NAMED = "The <p>liver</p> [SEG] and the <p>spleen</p> [SEG]."


def test_a_segment_below_the_presence_threshold_comes_back_in_not_found(
        server, client, tiny_pipeline, monkeypatch):
    """A [SEG] the grounding module finds on no slice makes no segment: the answer
    record names it in ``not_found`` (plain JSON and server-sent events, as the client
    decodes them), and its text says so."""
    arr, spacing, origin, direction = oblique_volume((3, 16, 16), seed=2)
    sid = client.create_session(arr, spacing, origin, direction, modality="MR")
    payload = json.dumps({"question": "Where are the liver and the spleen?", "slice_index": 1,
                          "max_new_tokens": 48}).encode("ascii")
    model = tiny_pipeline.model

    with force_text(model, NAMED), grounding_finds_everything(model):
        found = client.ask(sid, "Where are the liver and the spleen?", slice_index=1,
                           max_new_tokens=48)
    assert [s.name for s in found.segments] == ["liver", "spleen"] and found.not_found == []
    assert "Not found" not in found.text
    assert len(found.presence) == 2 and all(p > 0.99 for p in found.presence)
    in_plane_cm2 = spacing[0] * spacing[1] / 100.0  # an axial slice of the session image
    for seg in found.segments:  # measured by the engine on the mask it sent
        assert seg.measured is not None and seg.measured.mode == "slice"
        assert seg.measured.voxels == seg.voxels > 0 and seg.measured.components >= 1
        assert seg.measured.area_cm2 == pytest.approx(seg.voxels * in_plane_cm2, abs=0.01)
        # the slice normal is 20 degrees off the inferior-superior axis: that one is left out
        assert set(seg.measured.extent_mm) == {"right-left", "anterior-posterior"}

    monkeypatch.setattr(model.config.model, "presence_threshold", 1.0)  # nothing is present
    with grounding_finds_everything(model):
        with force_text(model, NAMED):
            status, _, body = raw_request(server, "POST", f"/v1/sessions/{sid}/ask", payload,
                                          {"Content-Type": "application/json"})
        with force_text(model, NAMED):
            plain = client.ask(sid, "Where are the liver and the spleen?", slice_index=1,
                               max_new_tokens=48, stream=False)
        with force_text(model, NAMED):
            streamed = client.ask(sid, "Where are the liver and the spleen?", slice_index=1,
                                  max_new_tokens=48)  # server-sent events
    assert status == 200
    record = json.loads(body)
    assert record["not_found"] == ["liver", "spleen"] and record["segments"] == []
    assert "[Not found in this slice: liver.]" in record["text"]
    assert "[Not found in this slice: spleen.]" in record["text"]
    for answer in (plain, streamed):
        assert answer.not_found == ["liver", "spleen"] and answer.segments == []
        assert answer.text == record["text"]
    client.delete_session(sid)


def test_streaming_yields_the_same_text_as_the_plain_answer(server, client):
    arr, spacing, origin, direction = oblique_volume((3, 30, 30), seed=2)
    plain_sid = client.create_session(arr, spacing, origin, direction)
    stream_sid = client.create_session(arr, spacing, origin, direction)
    plain = client.ask(plain_sid, "Describe this slice.", slice_index=1, stream=False,
                       max_new_tokens=10)
    pieces: list[str] = []
    streamed = client.ask(stream_sid, "Describe this slice.", slice_index=1, on_text=pieces.append,
                          max_new_tokens=10)
    assert len(pieces) >= 2 and "".join(pieces) == streamed.raw_text == plain.raw_text
    assert streamed.text == plain.text
    for sid in (plain_sid, stream_sid):
        client.delete_session(sid)


def test_sse_wire_format(server, client):
    arr, spacing, origin, direction = oblique_volume((2, 20, 20))
    sid = client.create_session(arr, spacing, origin, direction)
    body = json.dumps({"question": "What is this?", "max_new_tokens": 3,
                       "request_id": "wire-1"}).encode()
    status, headers, raw = raw_request(server, "POST", f"/v1/sessions/{sid}/ask/stream", body,
                                       {"Content-Type": "application/json"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["x-request-id"] == "wire-1"
    events = [block.split("\n") for block in raw.decode().strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events if not lines[0].startswith(":")]
    assert names[0] == "queued" and names[1] == "started" and names[-1] == "answer"
    assert set(names[2:-1]) <= {"text", "progress"}
    answer = json.loads(events[-1][1].removeprefix("data: "))
    assert answer["request_id"] == "wire-1" and answer["session_id"] == sid
    client.delete_session(sid)


def test_a_2d_image_round_trip(server, client, tiny_pipeline):
    picture = np.random.default_rng(5).uniform(0, 255, (32, 40)).astype(np.float32)
    sid = client.create_session(picture, (0.7, 0.7, 1.0), (1.0, 2.0, 0.0),
                                (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert client.session_info(sid)["is_2d"] is True
    with force_seg(tiny_pipeline.model, {1}):
        answer = client.ask(sid, "Segment it.", max_new_tokens=3)
    assert answer.segments[0].mask.shape == (1, 32, 40)
    with pytest.raises(EngineError, match="2-D") as exc:
        client.ask(sid, "The whole volume?", volume=True)
    assert exc.value.status == 400
    client.delete_session(sid)


# --------------------------------------------------------------------------- bad requests


@pytest.fixture(scope="module")
def session_id(client):
    arr, spacing, origin, direction = oblique_volume((2, 16, 16))
    return client.create_session(arr, spacing, origin, direction)


def ask_raw(server, sid, payload, content_type="application/json"):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return raw_request(server, "POST", f"/v1/sessions/{sid}/ask", body,
                       {"Content-Type": content_type})


def test_malformed_and_oversized_uploads(server):
    def upload(body, content_type="application/x-nrrd", query=""):
        return error_of(raw_request(server, "POST", "/v1/sessions" + query, body,
                                    {"Content-Type": content_type}))

    good = encode_nrrd(np.zeros((2, 8, 8), np.float32))
    assert upload(b"NRRD0004\ntype: float\n\n0000")[:2] == (400, "bad_nrrd")
    assert upload(good[:-10])[:2] == (400, "bad_nrrd")  # truncated gzip data
    assert upload(b"")[:2] == (400, "bad_nrrd")
    assert upload(good, "image/png")[:2] == (415, "unsupported_media_type")
    assert upload(good, "application/json")[:2] == (415, "unsupported_media_type")
    huge = b"NRRD0004\ntype: float\ndimension: 3\nsizes: 4096 4096 4096\nendian: little\nencoding: gzip\n\n"
    status, code, message = upload(huge + gzip.compress(b"\0" * 64))
    assert (status, code) == (413, "too_many_voxels") and "68,719,476,736 voxels" in message
    over = encode_nrrd(np.zeros((2, 200, 300), np.float32))  # 120,000 voxels > 100,000
    assert upload(over)[:2] == (413, "too_many_voxels")
    nan = encode_nrrd(np.full((1, 4, 4), np.nan, np.float32))
    assert upload(nan)[:2] == (400, "bad_input")
    assert upload(good, query="?modality=PET")[:2] == (422, "invalid_request")
    status, code, message = upload(good, query="?modality=CT&window=bogus")
    assert (status, code) == (400, "bad_input") and "window" in message


def test_body_size_limits(server, session_id):
    # declared too large: refused before reading
    status, code, _ = error_of(raw_request(server, "POST", "/v1/sessions", b"x" * 10,
                                           {"Content-Type": "application/x-nrrd",
                                            "Content-Length": str(3 * MIB)}))
    assert (status, code) == (413, "too_large")
    # sent without a length (chunked) and too large: refused while reading; the engine
    # answers and closes the connection without reading the rest, so the client may
    # see its sending fail before it reads the answer (as http.client cannot)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                     f"{TOKEN}\r\nContent-Type: application/x-nrrd\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode("ascii"))
        try:
            for _ in range(12):  # 3 MiB
                sock.sendall(b"40000\r\n" + b"\0" * (256 * 1024) + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the engine closed the connection after answering
            pass
        reply = b""
        with contextlib.suppress(OSError):
            while piece := sock.recv(65536):
                reply += piece
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), reply[:200]
    assert json.loads(body)["error"]["code"] == "too_large"
    # JSON bodies have their own, small limit
    status, code, _ = error_of(ask_raw(server, session_id, {"question": "x" * 70_000}))
    assert (status, code) == (413, "too_large")


@pytest.mark.parametrize("payload, content_type, status, code, text", [
    (b"{not json", "application/json", 400, "bad_json", "not valid JSON"),
    (b"", "application/json", 400, "bad_json", "JSON body"),
    ({"question": "hi"}, "text/plain", 415, "unsupported_media_type", "application/json"),
    ({"question": "q" * 301}, "application/json", 422, "question_too_long", "at most 300"),
    ({"question": "   "}, "application/json", 400, "bad_input", "empty"),
    ({"question": "show [SEG] here"}, "application/json", 400, "bad_input", "reserved"),
    ({"question": "hi", "slice_index": 2}, "application/json", 400, "bad_input", "out of range"),
    ({"question": "hi", "axis": "diagonal"}, "application/json", 422, "invalid_request", "axis"),
    ({"question": "hi", "box": [1, 2, 3]}, "application/json", 422, "invalid_request", "box"),
    ({"question": "hi", "points": [[1, 2, 5]]}, "application/json", 422, "invalid_request", "points"),
    ({"question": "hi", "request_id": "bad id!"}, "application/json", 422, "invalid_request",
     "request_id"),
    ({"question": "hi", "colour": "red"}, "application/json", 422, "invalid_request", "colour"),
    ({"question": "hi", "box": [0, 0, 500, 500]}, "application/json", 400, "bad_input", "outside"),
])
def test_bad_questions(server, session_id, payload, content_type, status, code, text):
    got_status, got_code, message = error_of(ask_raw(server, session_id, payload, content_type))
    assert (got_status, got_code) == (status, code) and text in message


def test_unknown_things_are_json_404s(server, session_id):
    assert error_of(ask_raw(server, "0" * 32, {"question": "hi"}))[:2] == (404, "unknown_session")
    assert error_of(raw_request(server, "GET", "/v1/sessions/nope"))[:2] == (404, "unknown_session")
    assert error_of(raw_request(server, "DELETE", "/v1/sessions/nope"))[:2] == (404, "unknown_session")
    assert error_of(raw_request(server, "GET", f"/v1/sessions/{session_id}/segments/nope"))[:2] == \
        (404, "unknown_segment")
    assert error_of(raw_request(server, "POST", "/v1/requests/nope/cancel"))[:2] == \
        (404, "unknown_request")
    assert error_of(raw_request(server, "GET", "/v2/info"))[:2] == (404, "not_found")
    assert error_of(raw_request(server, "PUT", "/v1/info"))[:2] == (405, "method_not_allowed")
    with pytest.raises(VersionMismatch, match="does not offer MedSegR API v1"):
        EngineClient(server.url + "/nothing-here", token=TOKEN).check_version()


def test_logs_hold_neither_question_text_nor_token(server, client, caplog):
    secret_question = "Is the zebra-lesion-7781 visible here?"
    arr, spacing, origin, direction = oblique_volume((2, 16, 16))
    with caplog.at_level(logging.INFO):
        sid = client.create_session(arr, spacing, origin, direction)
        client.ask(sid, secret_question, max_new_tokens=2)
        EngineClient(server.url, token="wrong-token-0123456789").health()
        with pytest.raises(EngineError):
            EngineClient(server.url, token="wrong-token-0123456789").info()
        client.delete_session(sid)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"session {sid}" in text and "question characters" in text  # it did log the request
    assert "zebra-lesion" not in text and TOKEN not in text and "wrong-token" not in text
    with caplog.at_level(logging.DEBUG, logger="medsegr.server"):
        sid = client.create_session(arr, spacing, origin, direction)
        client.ask(sid, secret_question, max_new_tokens=2)
    assert "zebra-lesion" in "\n".join(r.getMessage() for r in caplog.records)  # debug only
    client.delete_session(sid)


def test_cancel_of_a_finished_request_is_harmless(client, session_id):
    answer = client.ask(session_id, "Quick one.", request_id="done-1", max_new_tokens=2)
    assert answer.request_id == "done-1"
    client.cancel("done-1")  # 404 on the server, no error for the caller
    with pytest.raises(RequestCancelled):
        import threading

        event = threading.Event()
        event.set()
        client.ask(session_id, "Cancelled before it starts.", cancel_event=event, max_new_tokens=2)


def test_openapi_document_is_served_and_up_to_date(server):
    from pathlib import Path

    from medsegr.server.app import openapi_document

    status, _, body = raw_request(server, "GET", "/v1/openapi.json", token=None)
    assert status == 200
    served = json.loads(body)
    assert served == openapi_document()
    committed = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json")
                           .read_text(encoding="utf-8"))
    assert committed == served, ("docs/openapi.json is out of date: run "
                                 "`medsegr serve --export-openapi docs/openapi.json`")
    paths = set(served["paths"])
    assert {"/v1/health", "/v1/info", "/v1/sessions", "/v1/sessions/{session_id}",
            "/v1/sessions/{session_id}/ask", "/v1/sessions/{session_id}/ask/stream",
            "/v1/sessions/{session_id}/segments/{segment_id}",
            "/v1/requests/{request_id}/cancel"} <= paths


def test_url_forms_accepted_by_the_client(server):
    for url in (server.url, server.url + "/", server.url + "/v1"):
        assert EngineClient(url).health()["status"] == "ok"
    with pytest.raises(EngineError, match="http://HOST:PORT"):
        EngineClient("ftp://example.org")
    assert urllib.parse.urlsplit(EngineClient(server.url + "/v1/").url).path == ""
