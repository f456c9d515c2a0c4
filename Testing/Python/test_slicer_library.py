"""The Slicer module's small building blocks: terminology, transcript, stored
conversations, settings, main-thread dispatch, error messages, and segment writing
(all or nothing) in a real MRML scene."""

from __future__ import annotations

import html
import json
import threading

import numpy as np
import pytest

from medsegr.client import EngineBusy, EngineError, EngineUnavailable, RequestCancelled, VersionMismatch
from medsegr.errors import InputError
from MedSegRLib import settings, terminology, transcript
from MedSegRLib.background import BackgroundTask, MainThreadQueue, wait_for
from MedSegRLib.conversation import Conversation, ConversationFormatError, SegmentRecord, Turn
from MedSegRLib.messages import error_message


# --------------------------------------------------------------------------- terminology


def test_structure_names_map_to_snomed_terminology_entries():
    kidney = terminology.lookup("Left kidneys")
    assert kidney.entry == ("Segmentation category and type - 3D Slicer General Anatomy list"
                            "~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^7771000^Left"
                            "~Anatomic codes - DICOM master list~^^~^^")
    assert kidney.standard_name == "Left kidney" and kidney.laterality == "Left"
    assert kidney.color == pytest.approx((185 / 255, 102 / 255, 83 / 255))
    assert terminology.lookup("the liver").code == "10200004"
    assert terminology.lookup("Grey matter").code == "389081007"
    assert terminology.lookup("cerebral white matter").code == "68523003"
    assert terminology.lookup("a tumour").meaning == "Neoplasm"
    hepatic = terminology.lookup("hepatic lesion")
    assert hepatic.code == "52988006" and "~SCT^10200004^Liver~^^" in hepatic.entry
    assert hepatic.standard_name == "Liver lesion"
    assert terminology.lookup("Haemorrhage").code == "50960005"
    both = terminology.lookup("both lungs")
    assert both.code == "39607008" and both.laterality is None and "~^^~" in both.entry
    assert terminology.lookup("left liver").laterality is None  # the liver has no laterality
    assert terminology.lookup("segment 1") is None and terminology.lookup("") is None


def test_unknown_structures_get_distinct_palette_colours():
    first = terminology.palette_color([])
    second = terminology.palette_color([first])
    assert first != second
    everything = [tuple(c / 255 for c in rgb) for rgb in terminology.PALETTE]
    assert terminology.palette_color(everything) in everything


# --------------------------------------------------------------------------- conversations and transcript


def sample_conversation() -> Conversation:
    conversation = Conversation.start("CT chest", "Which organ <b>bleeds</b>? Segment it.")
    conversation.engine = {"engine_version": "0.1.0", "model": "smollm2 + litemedsam", "device": "cpu"}
    conversation.turns.append(Turn(
        question="Which organ <b>bleeds</b>? Segment it.", answer="The spleen shows a hyperdense area.",
        raw_answer="The <p>spleen</p> [SEG] shows a hyperdense area.", scope="slice", axis=0, slice_index=41,
        where="axial slice 41 (k axis, Red view)",
        segments=[SegmentRecord("MedSegR_spleen", "spleen", (157 / 255, 108 / 255, 162 / 255), 1234,
                                terminology.lookup("spleen").entry,
                                measured="9.9 cm², patient's left, 52 ± 9 HU, 1 piece, 41 × 38 mm "
                                         "(right-left × anterior-posterior)")],
        request_id="abc", fine_tuned=True, timings={"total": 2.5}, asked_at="2025-01-01T00:00:00+00:00"))
    return conversation


def test_conversation_json_round_trip_and_strict_reading():
    conversation = sample_conversation()
    again = Conversation.from_json(conversation.to_json())
    assert again == conversation
    assert conversation.title == "Which organ <b>bleeds</b>? Segment it."
    assert Conversation.start("v", "x" * 100).title.endswith("…") and len(Conversation.start("v", "x" * 100).title) == 48
    with pytest.raises(ConversationFormatError, match="not JSON"):
        Conversation.from_json("{broken")
    with pytest.raises(ConversationFormatError, match="format"):
        Conversation.from_json('{"format": "something else"}')
    older = json.loads(conversation.to_json())  # saved before the engine measured
    del older["turns"][0]["segments"][0]["measured"]
    assert Conversation.from_json(json.dumps(older)).turns[0].segments[0].measured is None
    damaged = conversation.to_json().replace('"state": "proposed"', '"state": "maybe"')
    with pytest.raises(ConversationFormatError, match="unknown segment state 'maybe'"):
        Conversation.from_json(damaged)
    missing = conversation.to_json().replace('"question"', '"quest"', 1)
    with pytest.raises(ConversationFormatError, match="missing field 'question'"):
        Conversation.from_json(missing)


def test_streamed_text_hides_markers_even_when_partly_received():
    assert transcript.stream_text("The <p>spleen</p> [SEG] is") == "The spleen is"
    assert transcript.stream_text("The <p>spl") == "The spl"
    assert transcript.stream_text("The spleen [SE") == "The spleen"
    assert transcript.stream_text("The spleen </") == "The spleen"
    assert transcript.parse_action("medsegr:accept/3") == ("accept", 3)
    assert transcript.parse_action("medsegr:remove/0") == ("remove", 0)
    assert transcript.parse_action("https://example.org") is None
    assert transcript.parse_action("medsegr:delete/1") is None


def test_chat_html_escapes_text_and_offers_one_click_actions():
    conversation = sample_conversation()
    page = transcript.render_html(conversation, visible=lambda _sid: True)
    assert "&lt;b&gt;bleeds&lt;/b&gt;" in page and "<b>bleeds</b>" not in page
    assert 'href="medsegr:accept/0"' in page and 'href="medsegr:hide/0"' in page and 'href="medsegr:remove/0"' in page
    assert "#9d6ca2" in page and "1,234 voxels" in page
    assert "Measured by the engine: 9.9 cm², patient&#x27;s left, 52 ± 9 HU" in page
    hidden = transcript.render_html(conversation, visible=lambda _sid: False)
    assert 'href="medsegr:show/0"' in hidden and "hidden" in hidden
    conversation.turns[0].segments[0].state = "accepted"
    assert 'medsegr:accept/0' not in transcript.render_html(conversation)
    pending = transcript.PendingTurn("And now?", "axial slice 41", streamed="Looking at <p>sple")
    page = transcript.render_html(conversation, pending)
    assert "Looking at sple" in page and "And now?" in page
    pending.status, pending.message = "error", "The engine could not answer: boom."
    assert "The engine could not answer: boom." in transcript.render_html(None, pending)
    assert "Ask a question" in transcript.render_html(None)


def test_markdown_transcript():
    text = transcript.to_markdown(sample_conversation())
    assert text.startswith("# MedSegR conversation: Which organ <b>bleeds</b>? Segment it.\n")
    assert "- Engine: medsegr 0.1.0, model smollm2 + litemedsam, device cpu" in text
    assert "## 1. Which organ <b>bleeds</b>? Segment it." in text
    assert "- spleen (1,234 voxels, proposed, colour #9d6ca2)" in text
    assert "  - measured by the engine: 9.9 cm², patient's left, 52 ± 9 HU, 1 piece" in text
    assert text.rstrip().endswith("not for clinical decisions.")
    assert "no standard code" not in text


def test_words_the_engine_picked_from_its_measurements_are_shown_and_stored():
    conversation = sample_conversation()
    assert "Written by the engine" not in transcript.render_html(conversation)
    conversation.turns[0].engine_words = [("left", "right lung")]
    again = Conversation.from_json(conversation.to_json())
    assert again == conversation and again.turns[0].engine_words == [("left", "right lung")]
    line = "Written by the engine from its measurements: “right lung” (the model's next word: “left”)."
    assert html.escape(line) in transcript.render_html(conversation)
    assert f"> {line}" in transcript.to_markdown(conversation)
    record = json.loads(conversation.to_json())
    record["turns"][0]["engine_words"] = [["left"]]
    with pytest.raises(ConversationFormatError, match="engine_words"):
        Conversation.from_json(json.dumps(record))
    del record["turns"][0]["engine_words"]  # saved before the engine picked words
    assert Conversation.from_json(json.dumps(record)).turns[0].engine_words == []


def test_a_segment_without_a_standard_code_is_marked_in_the_chat_and_the_transcript():
    conversation = sample_conversation()
    assert "no standard code" not in transcript.render_html(conversation)
    conversation.turns[0].segments.append(SegmentRecord("MedSegR_blob", "odd blob", (0.5, 0.5, 0.5), 10, None))
    assert "10 voxels · no standard code" in transcript.render_html(conversation)
    assert ("- odd blob (10 voxels, proposed, colour #808080, no standard code (free-text name))"
            in transcript.to_markdown(conversation))


# --------------------------------------------------------------------------- settings


class DictStore:
    """QSettings' interface over a dict (values come back as strings, like an ini file)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def value(self, key, default=None):
        return self.values.get(key, default)

    def setValue(self, key, value):
        self.values[key] = str(value).lower() if isinstance(value, bool) else str(value)

    def remove(self, key):
        self.values.pop(key, None)


def test_settings_round_trip_and_the_token_is_stored_only_when_asked():
    store = DictStore()
    assert settings.load(store) == settings.EngineSettings()
    chosen = settings.EngineSettings(mode="remote", remote_url="http://gpu:8765", remote_token="secret-token",
                                     remember_token=False, device="cuda:1", checkpoint="/ckpt",
                                     privacy_acknowledged=True)
    settings.save(store, chosen)
    assert "MedSegR/RemoteToken" not in store.values
    loaded = settings.load(store)
    assert loaded.remote_token == "" and loaded.mode == "remote" and loaded.device == "cuda:1"
    assert loaded.privacy_acknowledged is True and loaded.remote_url == "http://gpu:8765"
    chosen.remember_token = True
    settings.save(store, chosen)
    assert store.values["MedSegR/RemoteToken"] == "secret-token"
    assert settings.load(store).remote_token == "secret-token"
    store.values["MedSegR/EngineMode"] = "quantum"
    store.values["MedSegR/Device"] = "tpu"
    assert settings.load(store).mode == "bundled" and settings.load(store).device == "auto"
    assert [settings.to_bool(v) for v in ("true", "1", "false", "0", None, "junk")] == [True, True, False, False,
                                                                                       False, False]


# --------------------------------------------------------------------------- threads


def test_work_runs_off_the_main_thread_and_callbacks_on_it():
    queue = MainThreadQueue()
    main = threading.get_ident()
    seen: dict = {}

    def work(cancel: threading.Event) -> int:
        seen["worker"] = threading.get_ident()
        return 42

    task = BackgroundTask(work, lambda value: seen.update(done=(value, threading.get_ident())),
                          lambda exc: seen.update(error=exc), queue.post).start()
    assert wait_for(lambda: "done" in seen, queue, timeout=10)
    assert seen["worker"] != main and seen["done"] == (42, main) and task.finished.is_set()

    failing = BackgroundTask(lambda cancel: 1 / 0, lambda value: None, lambda exc: seen.update(error=exc), queue.post)
    failing.start()
    assert wait_for(lambda: "error" in seen, queue, timeout=10)
    assert isinstance(seen["error"], ZeroDivisionError)

    order: list[int] = []
    queue.post(order.append, 1)
    queue.post(lambda: 1 / 0)  # a failing callback does not stop the others
    queue.post(order.append, 2)
    assert queue.drain() == 3 and order == [1, 2] and queue.empty()


def test_error_messages_are_specific():
    assert error_message(RequestCancelled("x", code="cancelled")).startswith("Cancelled; nothing was added")
    assert error_message(EngineUnavailable("cannot connect to the MedSegR engine at http://h:1", code="unavailable")) \
        == "Cannot connect to the MedSegR engine at http://h:1. Check the Engine section: is the engine running, " \
           "is the URL right?"
    assert "try the current slice" in error_message(EngineUnavailable("no answer within 300 s", code="timeout"))
    assert "ran out of memory" in error_message(EngineError("CUDA OOM", code="out_of_memory", status=507))
    assert "refused the token" in error_message(EngineError("bad token", code="unauthorized", status=401))
    assert "try again in 2 s" in error_message(EngineBusy("queue full", retry_after=2.0))
    assert "install matching" in error_message(VersionMismatch("API v2 vs v1; install matching versions",
                                                               code="version_mismatch"))
    assert error_message(InputError("the question is empty")) == "The question is empty."
    assert error_message(RuntimeError("boom")) == "Unexpected error (RuntimeError): boom"


# --------------------------------------------------------------------------- segments


def test_segments_are_written_all_or_nothing_with_terminology(mrml_scene, monkeypatch):
    import slicer
    import vtk
    from MedSegRLib import segmentation_results as results
    from mrml_scene import add_volume

    volume = add_volume(mrml_scene, np.zeros((4, 5, 6), np.int16), np.diag([-0.7, -0.7, 2.0, 1.0]), "ct")
    node = results.create_segmentation_node(mrml_scene, volume, "MedSegR: test", "conv-1")
    kidney = np.zeros((4, 5, 6), bool)
    kidney[1:3, 1:4, 2:5] = True
    written = results.write_segments(node, volume, [results.NewSegment("right kidney", kidney),
                                                    results.NewSegment("blob", np.zeros((4, 5, 6), bool))],
                                     {results.TAG_TURN: "0"})
    assert [w.name for w in written] == ["right kidney", "blob"]
    assert written[0].voxels == 18 and written[1].voxels == 0
    segment = node.GetSegmentation().GetSegment(written[0].id)
    assert "SCT^24028007^Right" in segment.GetTerminology()
    assert segment.GetColor() == pytest.approx(terminology.lookup("right kidney").color)
    tag = vtk.reference("")
    assert segment.GetTag(segment.GetTerminologyEntryTagName(), tag) and str(tag) == written[0].terminology
    blob = node.GetSegmentation().GetSegment(written[1].id)
    default = slicer.vtkSegment().GetTerminology()  # Slicer's generic "Tissue" entry
    assert written[1].terminology is None and blob.GetTerminology() == default and blob.GetName() == "blob"
    assert results.uncoded_note(written) == "no standard code for 'blob' (kept with its free-text name)"
    assert results.uncoded_note(written[:1]) is None
    assert results.segment_tag(node, written[0].id, results.TAG_TURN) == "0"
    assert np.array_equal(results.segment_mask(node, written[0].id, volume), kidney)
    assert not results.segment_mask(node, written[1].id, volume).any()
    assert node.GetAttribute(results.ATTRIBUTE_CONVERSATION) == "conv-1"

    with pytest.raises(InputError, match="the volume changed"):
        results.write_segments(node, volume, [results.NewSegment("x", np.zeros((3, 3, 3), bool))], {})
    real = results._Logic

    class FailingOnSecondMask:
        """The segmentations logic, failing to write the second mask it is given."""

        calls = 0

        def __getattr__(self, name):
            return getattr(real, name)

        def SetBinaryLabelmapToSegment(self, *args):
            FailingOnSecondMask.calls += 1
            return real.SetBinaryLabelmapToSegment(*args) if self.calls == 1 else False

    monkeypatch.setattr(results, "_Logic", FailingOnSecondMask())
    with pytest.raises(RuntimeError, match="could not write the mask"):
        results.write_segments(node, volume, [results.NewSegment("a", kidney), results.NewSegment("b", kidney)], {})
    assert node.GetSegmentation().GetNumberOfSegments() == 2  # nothing half-written
