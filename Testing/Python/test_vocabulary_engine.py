"""The engine returns each segment's code: ``Answer.summary()`` (the CLI's JSON), the
server's segment records over real HTTP, the client's decoding, and the ``.seg.nrrd``
files the CLI writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import force_text
from medsegr import vocabulary
from medsegr.answers import Segment
from medsegr.client import EngineClient
from server_harness import TOKEN, live_server, oblique_volume


ANSWER = "This is the <p>right kidney</p> [SEG] and a <p>hepatic lesion</p> [SEG] and <p>blob</p> [SEG]."


@pytest.fixture(scope="module")
def server(tiny_pipeline):
    with live_server(tiny_pipeline, token=TOKEN, max_voxels=100_000) as srv:
        yield srv


def test_answer_summary_carries_each_segments_code(tiny_pipeline):
    from medsegr.io.images import image_from_array

    arr, spacing, origin, direction = oblique_volume((2, 24, 24))
    session = tiny_pipeline.new_session(image_from_array(arr, spacing=spacing, origin=origin, direction=direction,
                                                         modality="CT"))
    with force_text(tiny_pipeline.model, ANSWER):
        answer = session.ask("Segment the kidney.", axis="axial", slice_index=1, max_new_tokens=40)
    assert [s.name for s in answer.segments] == ["right kidney", "hepatic lesion", "blob"]
    summary = json.loads(json.dumps(answer.summary()))
    kidney, lesion, blob = summary["segments"]
    assert kidney["terminology"]["type"] == {"scheme": "SCT", "value": "64033007", "meaning": "Kidney"}
    assert kidney["terminology"]["type_modifier"]["meaning"] == "Right"
    assert lesion["terminology"]["region"]["value"] == "10200004"
    assert blob["terminology"]["coded"] is False and blob["terminology"]["name"] == "blob"


def test_server_and_client_send_each_segments_code(server, tiny_pipeline):
    client = EngineClient(server.url, token=TOKEN, timeout=60)
    arr, spacing, origin, direction = oblique_volume((2, 24, 24))
    sid = client.create_session(arr, spacing, origin, direction, modality="CT")
    with force_text(tiny_pipeline.model, ANSWER):
        remote = client.ask(sid, "Segment the kidney.", axis="axial", slice_index=1, max_new_tokens=40)
    assert [s.name for s in remote.segments] == ["right kidney", "hepatic lesion", "blob"]
    for segment in remote.segments:
        assert segment.terminology == vocabulary.segment_terminology(segment.name)
    assert [s.coded for s in remote.segments] == [True, True, False]
    assert remote.segments[0].terminology["color"] == list(vocabulary.get("right_kidney").color)
    client.delete_session(sid)


def test_client_reads_segments_without_a_code_from_an_older_engine():
    segment = Segment(id="a", name="liver", index=0, mask=np.zeros((1, 2, 2), bool))
    assert segment.terminology is None and not segment.coded


def test_cli_result_files_are_coded(tiny_pipeline, tmp_path):
    from medsegr.io.images import image_from_array
    from medsegr.io.segmentation_files import read_seg_nrrd
    from medsegr.cli.outputs import FILES, write_results

    arr, spacing, origin, direction = oblique_volume((2, 24, 24))
    session = tiny_pipeline.new_session(image_from_array(arr, spacing=spacing, origin=origin, direction=direction,
                                                         modality="CT"))
    with force_text(tiny_pipeline.model, ANSWER):
        answer = session.ask("Segment the kidney.", axis="axial", slice_index=1, max_new_tokens=40)
    paths = write_results(tmp_path / "out", session, "Segment the kidney.", answer, {})
    record = json.loads(paths["answer"].read_text())
    assert [s["terminology"]["coded"] for s in record["segments"]] == [True, True, False]
    assert record["segments"][0]["color"] == pytest.approx([c / 255 for c in vocabulary.get("right_kidney").color])
    specs, _ = read_seg_nrrd(tmp_path / "out" / FILES["segmentation"])
    assert specs[0].terminology == vocabulary.slicer_terminology_string(vocabulary.lookup("right kidney"))
    assert specs[1].terminology.endswith("~SCT^10200004^Liver~^^") and specs[2].terminology is None
    assert [s.name for s in specs] == ["right kidney", "hepatic lesion", "blob"]
