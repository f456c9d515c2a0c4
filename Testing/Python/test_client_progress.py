"""Progress of a volume question, end to end: the pipeline's phases, the server's
``progress`` events, ``EngineClient.ask(on_progress=)`` and ``medsegr ask --server``'s
bar on stderr, against a real engine server on loopback."""

from __future__ import annotations

import pytest

from helpers import force_seg
from medsegr.cli.commands import main
from medsegr.client import EngineClient, Progress
from medsegr.io.images import image_from_array, write_image
from server_harness import TOKEN, live_server, oblique_volume

SHAPE = (7, 30, 36)


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN) as srv:
        yield srv


def _stages(reports: list[Progress]) -> list[str]:
    stages: list[str] = []
    for report in reports:
        if not stages or stages[-1] != report.stage:
            stages.append(report.stage)
    return stages


def test_volume_question_reports_its_phases_in_order(server, tiny_pipeline):
    arr, spacing, origin, direction = oblique_volume(SHAPE, seed=2)
    client = EngineClient(server.url, token=TOKEN)
    sid = client.create_session(arr, spacing, origin, direction, modality="MR")
    reports: list[Progress] = []
    try:
        with force_seg(tiny_pipeline.model, {1}):
            answer = client.ask(sid, "Segment the organ.", volume=True, max_new_tokens=3,
                                on_progress=reports.append)
    finally:
        client.delete_session(sid)
    assert _stages(reports) == ["queued", "started", "encoding", "answering", "masks"]
    encoding = [r for r in reports if r.stage == "encoding"]
    assert all(r.total == SHAPE[0] for r in encoding)
    done = [r.done for r in encoding]
    assert done == sorted(done) and done[-1] == SHAPE[0] and len(set(done)) >= 2
    assert encoding[-1].fraction == 1.0
    masks = [r for r in reports if r.stage == "masks"]
    assert masks[-1].done == masks[-1].total == len(answer.segments) == 1


def test_slice_question_without_stream_reports_nothing(server):
    arr, spacing, origin, direction = oblique_volume(SHAPE, seed=3)
    client = EngineClient(server.url, token=TOKEN)
    sid = client.create_session(arr, spacing, origin, direction, modality="MR")
    reports: list[Progress] = []
    try:
        client.ask(sid, "Where?", slice_index=1, max_new_tokens=2, stream=False,
                   on_progress=reports.append)
    finally:
        client.delete_session(sid)
    assert reports == []
    assert Progress("answering").fraction is None


def test_ask_server_shows_progress_on_stderr(server, tmp_path, capsys):
    arr, spacing, origin, direction = oblique_volume(SHAPE, seed=4)
    image = tmp_path / "scan.nrrd"
    write_image(image, image_from_array(arr, spacing=spacing, origin=origin, direction=direction,
                                        modality="MR"))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN, encoding="utf-8")
    status = main(["ask", str(image), "Segment the organ.", "--volume", "--server", server.url,
                   "--token-file", str(token_file), "--out", str(tmp_path / "out"),
                   "--max-new-tokens", "2", "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "encoding slices" in captured.err and f"{SHAPE[0]}/{SHAPE[0]}" in captured.err
    assert "answering" in captured.err
    assert captured.out.lstrip().startswith("{")  # stdout holds only the JSON record


def test_loading_a_model_in_the_cli_reports_its_steps_on_stderr(tmp_path, capsys):
    from server_harness import tiny_config_file

    arr, spacing, origin, direction = oblique_volume((3, 20, 24), seed=5)
    image = tmp_path / "scan.nrrd"
    write_image(image, image_from_array(arr, spacing=spacing, origin=origin, direction=direction,
                                        modality="MR"))
    status = main(["ask", str(image), "Where?", "--base", "--config", str(tiny_config_file(tmp_path)),
                   "--device", "cpu", "--out", str(tmp_path / "out"), "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert status == 0, err
    steps = [line for line in err.splitlines() if line.startswith("medsegr: ")]
    assert steps[:2] == ["medsegr: building the base model", "medsegr: the model is ready"]


def test_load_status_listeners_hear_only_while_listening():
    from medsegr.modeling.load_status import listening, report

    heard: list[str] = []
    with listening(heard.append):
        report("step one")
    report("step two")
    assert heard == ["step one"]
