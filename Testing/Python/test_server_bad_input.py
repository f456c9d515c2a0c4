"""The bad-input corpus (bad_inputs.py) through the engine server on a real loopback
server: every image file sent to the upload endpoint, every bad question and hint sent
to the ask endpoint, gets a 4xx answer with a JSON error body; afterwards the engine is
alive (health answers, a good upload and question still succeed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bad_inputs import IMAGE_CASES, OPTION_CASES, QUESTION, QUESTION_CASES
from medsegr.client import EngineClient
from server_harness import TOKEN, live_server, oblique_volume
from test_server_api import error_of, raw_request

SERVER_OPTION_CASES = [c for c in OPTION_CASES if c.server is not None]
UPLOAD_CASES = [c for c in IMAGE_CASES if c.upload]


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN) as srv:  # the default (shared) limits
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return EngineClient(server.url, token=TOKEN, timeout=60)


@pytest.fixture(scope="module")
def session_id(client):
    arr, spacing, origin, direction = oblique_volume((4, 16, 16))
    return client.create_session(arr, spacing, origin, direction)


def assert_engine_alive(server, client, session_id):
    status, _, body = raw_request(server, "GET", "/v1/health", token=None)
    assert status == 200 and json.loads(body)
    answer = client.ask(session_id, QUESTION, max_new_tokens=2)
    assert answer is not None


@pytest.mark.parametrize("case", UPLOAD_CASES, ids=lambda c: c.id)
def test_bad_uploads(case, server, tmp_path):
    path = case.make(tmp_path)
    status, code, message = error_of(raw_request(server, "POST", "/v1/sessions", path.read_bytes(),
                                                 {"Content-Type": "application/x-nrrd"}))
    assert 400 <= status < 500, (status, code, message)
    assert "\n" not in message
    if case.words.startswith("max_") and path.suffix in (".nrrd", ".nhdr"):
        assert status == 413 and case.words in message, message


@pytest.mark.parametrize("case", QUESTION_CASES, ids=lambda c: c.id)
def test_bad_questions(case, server, session_id):
    body = json.dumps({"question": case.question}).encode("ascii")
    status, code, message = error_of(raw_request(server, "POST", f"/v1/sessions/{session_id}/ask",
                                                 body, {"Content-Type": "application/json"}))
    assert 400 <= status < 500, (status, code, message)


def test_undecodable_bytes_in_the_json_body(server, session_id):
    body = b'{"question": "Where is \xff the liver?"}'
    status, code, _ = error_of(raw_request(server, "POST", f"/v1/sessions/{session_id}/ask",
                                           body, {"Content-Type": "application/json"}))
    assert 400 <= status < 500, (status, code)


@pytest.mark.parametrize("case", SERVER_OPTION_CASES, ids=lambda c: c.id)
def test_bad_hints_and_options(case, server, session_id):
    body = json.dumps(case.server).encode("ascii")
    status, code, message = error_of(raw_request(server, "POST", f"/v1/sessions/{session_id}/ask",
                                                 body, {"Content-Type": "application/json"}))
    assert 400 <= status < 500, (status, code, message)


def test_non_finite_numbers_in_json(server, session_id):
    for text in ('{"question": "q", "points": [[NaN, 1, 1]]}',
                 '{"question": "q", "box": [0, 0, Infinity, 1]}',
                 '{"question": "q", "points": [[1e999, 1, 1]]}'):
        status, code, _ = error_of(raw_request(server, "POST", f"/v1/sessions/{session_id}/ask",
                                               text.encode(), {"Content-Type": "application/json"}))
        assert 400 <= status < 500, (text, status, code)


def test_the_engine_is_alive_after_the_corpus(server, client, session_id):
    """Runs after the cases above (file order): health, a new upload and a question work."""
    assert_engine_alive(server, client, session_id)
    fresh = client.create_session(np.zeros((2, 8, 8), np.float32), (1.0, 1.0, 1.0),
                                  (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert client.ask(fresh, QUESTION, max_new_tokens=2) is not None


def test_the_server_shares_the_cli_limits(server):
    from medsegr.io.limits import ImageLimits

    info = json.loads(raw_request(server, "GET", "/v1/info")[2])
    limits = ImageLimits()
    for name, value in limits.as_dict().items():
        assert info["limits"][name] == value
