"""The model worker under load, over real HTTP: the bounded FIFO queue (503 with
Retry-After), cancel (queued and running), disconnects, per-request timeouts,
out-of-memory, and the session store's idle expiry and memory bound."""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
import pytest
import torch

from medsegr.client import EngineBusy, EngineClient, EngineError, RequestCancelled
from medsegr.server.errors import ApiError
from medsegr.server.sessions import SessionStore
from server_harness import TOKEN, decoding_hook, live_server, oblique_volume

SMALL = oblique_volume((2, 16, 16))


def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Asker(threading.Thread):
    """Asks one question in a thread and keeps the answer or the error."""

    def __init__(self, client, sid, request_id, **kwargs):
        super().__init__(daemon=True)
        self.client, self.sid, self.request_id, self.kwargs = client, sid, request_id, kwargs
        self.answer = None
        self.error = None
        self.start()

    def run(self):
        try:
            self.answer = self.client.ask(self.sid, "What is this?", request_id=self.request_id,
                                          **self.kwargs)
        except EngineError as exc:
            self.error = exc


@pytest.fixture(scope="module")
def busy_server(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN, max_queue=2, retry_after_s=3) as srv:
        yield srv


def test_full_queue_answers_503_and_cancel_frees_it(busy_server, tiny_pipeline):
    client = EngineClient(busy_server.url, token=TOKEN, timeout=60)
    sid = client.create_session(*SMALL)
    client.ask(sid, "Warm up.", slice_index=0, max_new_tokens=1)  # embedding cached
    worker = busy_server.engine.worker
    with decoding_hook(tiny_pipeline.model, delay=0.05) as hook:
        running = Asker(client, sid, "run-a", slice_index=0, max_new_tokens=400)
        wait_for(lambda: hook.calls > 2, what="the first request to generate")
        queued = [Asker(client, sid, f"wait-{i}", slice_index=0, max_new_tokens=2) for i in range(2)]
        wait_for(lambda: worker.stats()["waiting"] == 2, what="two queued requests")

        with pytest.raises(EngineBusy) as exc:  # the queue is full
            client.ask(sid, "One too many.", max_new_tokens=2)
        assert exc.value.status == 503 and exc.value.retry_after == 3.0
        assert exc.value.code == "busy"

        client.cancel("wait-0")  # a queued request leaves the queue at once ...
        assert worker.stats()["waiting"] == 1
        late = Asker(client, sid, "late-1", slice_index=0, max_new_tokens=2)  # ... its slot is free
        wait_for(lambda: worker.stats()["waiting"] == 2, what="the late request to queue")

        calls = hook.calls
        t0 = time.monotonic()
        client.cancel("run-a")  # the running one stops at its next token
        for asker in (running, queued[0], queued[1], late):
            asker.join(timeout=60)
        assert hook.calls - calls < 60  # it did not run on to 400 tokens
    assert isinstance(running.error, RequestCancelled) and running.error.status == 409
    assert isinstance(queued[0].error, RequestCancelled)
    assert queued[1].answer is not None and late.answer is not None  # FIFO went on
    assert time.monotonic() - t0 < 30
    assert worker.stats() == {**worker.stats(), "waiting": 0, "running": False}
    # the cancelled turn left the conversation as it was: warm-up + two answered questions
    assert client.session_info(sid)["turns"] == 3


def test_cancel_event_and_disconnects_free_the_model(busy_server, tiny_pipeline):
    client = EngineClient(busy_server.url, token=TOKEN, timeout=60)
    sid = client.create_session(*SMALL)
    client.ask(sid, "Warm up.", slice_index=0, max_new_tokens=1)
    worker = busy_server.engine.worker
    with decoding_hook(tiny_pipeline.model, delay=0.05) as hook:
        # the client's cancel_event, while text streams
        event = threading.Event()
        pieces: list[str] = []

        def on_text(piece: str) -> None:
            pieces.append(piece)
            if len(pieces) == 3:
                event.set()

        with pytest.raises(RequestCancelled):
            client.ask(sid, "Stream, then stop.", slice_index=0, on_text=on_text,
                       cancel_event=event, max_new_tokens=400)
        assert 3 <= len(pieces) < 100
        wait_for(lambda: not worker.stats()["running"], what="the model to be free")

        # a streaming client that disconnects
        for path, accept in ((f"/v1/sessions/{sid}/ask/stream", "text/event-stream"),
                             (f"/v1/sessions/{sid}/ask", "application/json")):
            conn = http.client.HTTPConnection("127.0.0.1", busy_server.port, timeout=30)
            body = json.dumps({"question": "Long answer.", "slice_index": 0,
                               "max_new_tokens": 400}).encode()
            conn.request("POST", path, body=body, headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json",
                "Accept": accept})
            calls = hook.calls
            wait_for(lambda: hook.calls > calls + 3, what="generation to start")
            failed = worker.failed
            conn.sock.shutdown(2)  # the client goes away mid-answer
            conn.close()
            wait_for(lambda: worker.failed == failed + 1 and not worker.stats()["running"],
                     what="the disconnect to cancel the request")
            assert hook.calls - calls < 150
    answer = client.ask(sid, "Still serving?", slice_index=0, max_new_tokens=2)
    assert answer.tokens["generated"] == 2


def test_request_timeout_504_for_running_and_queued(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN, request_timeout_s=1.5) as srv:
        client = EngineClient(srv.url, token=TOKEN, timeout=60)
        sid = client.create_session(*SMALL)
        client.ask(sid, "Warm up.", slice_index=0, max_new_tokens=1)
        with decoding_hook(tiny_pipeline.model, delay=1.0):  # 1 s per model step
            slow = Asker(client, sid, "slow", slice_index=0, max_new_tokens=400)
            time.sleep(0.3)
            waiting = Asker(client, sid, "queued", slice_index=0, max_new_tokens=2, stream=False)
            waiting.join(timeout=60)  # its deadline passes while the slow one still runs
            assert slow.is_alive()
            slow.join(timeout=60)
        for asker in (slow, waiting):
            assert asker.error is not None and asker.error.status == 504, asker.answer
            assert asker.error.code == "timeout"
        assert client.ask(sid, "And now?", slice_index=0, max_new_tokens=1).tokens["generated"] == 1


@pytest.mark.parametrize("error", [
    lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda: RuntimeError("CUDA error: out of memory"),
])
def test_out_of_memory_is_a_507_and_the_server_keeps_serving(busy_server, error):
    client = EngineClient(busy_server.url, token=TOKEN, timeout=60)
    sid = client.create_session(*SMALL)
    session = busy_server.engine.store.get(sid).session
    real_ask = session.ask
    calls = []

    def failing_ask(*args, **kwargs):  # one ask runs out of accelerator memory
        calls.append(1)
        session.ask = real_ask
        raise error()

    session.ask = failing_ask
    with pytest.raises(EngineError) as exc:
        client.ask(sid, "Too big for the GPU.", max_new_tokens=2)
    assert calls and exc.value.status == 507 and exc.value.code == "out_of_memory"
    assert "GPU memory" in exc.value.message
    assert client.ask(sid, "Again, normally.", max_new_tokens=2).tokens["generated"] == 2


def test_sessions_expire_when_idle_and_memory_is_bounded_lru(tiny_pipeline):
    arr, spacing, origin, direction = oblique_volume((3, 20, 20))
    with live_server(tiny_pipeline, token=TOKEN) as srv:
        client = EngineClient(srv.url, token=TOKEN, timeout=60)
        a = client.create_session(arr, spacing, origin, direction)
        client.ask(a, "First.", slice_index=1, max_new_tokens=1)
        one_session = client.session_info(a)["memory_bytes"]  # image, embedding, KV cache
        assert one_session > 2 * arr.nbytes + 256 * 64 * 64 * 2  # at least image + embedding
        srv.engine.store.max_bytes = int(2.5 * one_session)  # room for two such sessions
        b = client.create_session(arr, spacing, origin, direction)
        client.ask(b, "Second.", slice_index=1, max_new_tokens=1)
        client.session_info(a)  # a is now the most recently used
        c = client.create_session(arr, spacing, origin, direction)
        client.ask(c, "Third.", slice_index=1, max_new_tokens=1)
        store = srv.engine.store
        assert store.total_bytes() <= store.max_bytes
        with pytest.raises(EngineError, match="evicted to free memory") as exc:
            client.session_info(b)  # least recently used went first
        assert exc.value.status == 404 and exc.value.code == "unknown_session"
        assert client.session_info(a)["turns"] == 1 and client.session_info(c)["turns"] == 1

        big = np.zeros((40, 128, 160), np.float32)  # 2 x 3.3 MB: more than the whole bound
        with pytest.raises(EngineError, match="session memory") as exc:
            client.create_session(big, spacing, origin, direction)
        assert exc.value.status == 413

        srv.engine.store.idle_s = 0.5  # what --session-idle sets
        time.sleep(0.8)
        with pytest.raises(EngineError, match="expired after 0.5 s"):
            client.ask(a, "Still there?", max_new_tokens=1)
        assert srv.engine.store.sweep() == 1 and len(srv.engine.store) == 0  # c expired too


def test_session_store_rules_with_a_fake_clock():
    class FakeSession:
        def __init__(self, size):
            self.size = size

        def memory_bytes(self):
            return self.size

    now = [0.0]
    store = SessionStore(max_bytes=100, idle_s=10, max_sessions=3, keep_answers=2,
                         clock=lambda: now[0])
    a, b = store.add(FakeSession(40)), store.add(FakeSession(40))
    store.acquire(a)  # a request of a is queued: a must survive
    now[0] = 5
    c = store.add(FakeSession(40))  # 120 > 100: b (idle, least recent) goes
    assert {e.id for e in store._entries.values()} == {a.id, c.id}
    with pytest.raises(ApiError, match="evicted to free memory"):
        store.get(b.id)
    store.release(a)  # its request finished: a was just used
    d = store.add(FakeSession(10))
    e = store.add(FakeSession(10))  # 4 > max_sessions: c (least recently used) goes
    assert [x.id for x in store._entries.values()] == [a.id, d.id, e.id]
    now[0] = 14
    store.get(d.id)
    now[0] = 16  # a and e idle 11 s, d 2 s
    assert store.sweep() == 2 and len(store) == 1
    assert not store.room_for(d, 95) and store.room_for(d, 90)
