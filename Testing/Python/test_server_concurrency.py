"""8 concurrent clients x 25 questions against one engine: every reply arrives, and
every reply (text, slice, masks and their grid) belongs to the client that asked."""

from __future__ import annotations

import threading

import numpy as np

from medsegr.client import EngineClient
from server_harness import TOKEN, decoding_hook, live_server, oblique_volume

CLIENTS = 8
QUESTIONS = 25


def test_eight_clients_25_questions_no_lost_or_mixed_replies(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN, max_queue=CLIENTS) as srv, \
            decoding_hook(tiny_pipeline.model, always_seg=True):  # every answer has a mask
        worker = srv.engine.worker
        done_before, failed_before = worker.completed, worker.failed
        results: dict[int, list] = {k: [] for k in range(CLIENTS)}
        errors: list[BaseException] = []
        start = threading.Barrier(CLIENTS)

        def run(k: int) -> None:
            try:
                # each client: its own image (shape and origin differ) and its own slice
                shape = (3 + k % 3, 16 + 2 * k, 20 + k)
                arr, spacing, _, direction = oblique_volume(shape, seed=k)
                origin = (float(k), -2.5 * k, 10.0 + k)
                client = EngineClient(srv.url, token=TOKEN, timeout=120)
                sid = client.create_session(arr, spacing, origin, direction)
                slice_index = k % shape[0]
                start.wait(timeout=120)
                for i in range(QUESTIONS):
                    pieces: list[str] = []
                    answer = client.ask(sid, f"Client {k}, question {i}: what is here?",
                                        slice_index=slice_index, request_id=f"c{k}-q{i}",
                                        max_new_tokens=1, stream=(k + i) % 2 == 0,
                                        on_text=pieces.append)
                    results[k].append((answer, "".join(pieces), shape, slice_index, sid))
                client.delete_session(sid)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors[:3]
        assert worker.completed - done_before == CLIENTS * QUESTIONS
        assert worker.failed == failed_before

    for k, answers in results.items():
        assert len(answers) == QUESTIONS  # zero lost
        for i, (answer, streamed, shape, slice_index, sid) in enumerate(answers):
            assert answer.request_id == f"c{k}-q{i}"  # zero mixed up
            assert answer.mode == "slice" and answer.slice_index == slice_index
            assert answer.encoded_slices == (1 if i == 0 else 0)
            assert answer.raw_text == "[SEG]" and len(answer.segments) == 1
            if (k + i) % 2 == 0:
                assert streamed == answer.raw_text
            for seg in answer.segments:
                # the client checked each mask's grid (shape, spacing, origin, direction)
                # against its own upload; the voxels lie on its own slice only
                assert seg.mask.shape == shape
                assert not np.delete(seg.mask, slice_index, axis=0).any()
