"""In the Slicer module: an answer's segmentation and conversation go under the source
volume's study, the segmentation references the volume the way Slicer's DICOM SEG
exporter needs, and the Logic exports a DICOM SEG that references the source series.

The scene is real (slicer-core) and the volume is read from real DICOM files by
Slicer's own reader; what the DICOM browser adds when it loads a series (patient and
study items, the volume's ``DICOM.instanceUIDs``) is set up as it would be, and the
DICOM database's UID-to-file lookup is a dictionary of the real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

slicer = pytest.importorskip("slicer")
pytest.importorskip("uvicorn")

import highdicom as hd  # noqa: E402

from engine_server import LoopbackEngine  # noqa: E402
from helpers import force_seg, force_text  # noqa: E402
from medsegr.errors import InputError  # noqa: E402
from mrml_scene import load_volume_file, new_scene  # noqa: E402
from MedSegRLib import dicom_export, segmentation_results, study_placement  # noqa: E402
from MedSegRLib.chat_logic import MedSegRChatLogic  # noqa: E402
from MedSegRLib.segmentation_results import segment_mask  # noqa: E402
from test_dicom_seg import SLICES, write_ct_series  # noqa: E402


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    with LoopbackEngine(tiny_pipeline) as server:
        yield server


def load_dicom_volume(scene, folder: Path):
    """The series read by Slicer's volume reader, placed as the DICOM browser places it."""
    files = sorted(folder.iterdir())
    volume = load_volume_file(scene, str(files[0]), "3: CT")
    datasets = {p: pydicom.dcmread(p, stop_before_pixels=True) for p in files}
    normal = np.array([0.0, 0.0, 1.0])
    ordered = sorted(files, key=lambda p: float(np.dot([float(v) for v in datasets[p].ImagePositionPatient],
                                                        normal)))
    volume.SetAttribute("DICOM.instanceUIDs", " ".join(str(datasets[p].SOPInstanceUID) for p in ordered))
    sh = study_placement.subject_hierarchy(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Test^Phantom")
    study = sh.CreateStudyItem(patient, "CT study")
    item = sh.GetItemByDataNode(volume) or sh.CreateItem(study, volume)
    sh.SetItemParent(item, study)
    sh.SetItemUID(item, "DICOM", str(datasets[files[0]].SeriesInstanceUID))
    lookup = {str(ds.SOPInstanceUID): str(p) for p, ds in datasets.items()}
    return volume, study, (lambda uid: lookup.get(uid, ""))


@pytest.fixture
def dicom_scene(tmp_path):
    scene = new_scene()
    write_ct_series(tmp_path / "ct")
    volume, study, lookup = load_dicom_volume(scene, tmp_path / "ct")
    return scene, volume, study, lookup, tmp_path / "ct"


def ask(engine, tiny_pipeline, scene, volume, steps=(1,)):
    logic = MedSegRChatLogic(scene)
    logic.connect(engine.url, engine.token)
    with force_seg(tiny_pipeline.model, steps=set(steps)):
        result = logic.ask(volume, "Segment the liver in the whole scan.", scope="volume")
    return logic, result


def test_results_go_under_the_source_study_and_reference_the_volume(engine, tiny_pipeline, dicom_scene):
    scene, volume, study, _, _ = dicom_scene
    assert slicer.util.arrayFromVolume(volume).shape == (SLICES, 20, 24)
    logic, result = ask(engine, tiny_pipeline, scene, volume)
    sh = study_placement.subject_hierarchy(scene)
    segmentation = result.segmentation_node
    assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(result.conversation_node)) == study
    role = slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()
    assert role == "referenceImageGeometryRef"
    assert segmentation.GetNodeReference(role) is volume
    referenced = sh.GetItemAttribute(sh.GetItemByDataNode(segmentation), "DICOM.ReferencedInstanceUIDs")
    assert referenced.split() == volume.GetAttribute("DICOM.instanceUIDs").split() and len(referenced.split()) == SLICES
    for segment_id in result.segment_ids:
        assert segmentation_results.segment_tag(segmentation, segment_id, "DICOM.SegmentAlgorithmType") == "AUTOMATIC"
        assert segmentation_results.segment_tag(segmentation, segment_id, "DICOM.SegmentAlgorithmName") == "MedSegR"
    # a follow-up keeps both under the study
    with force_seg(tiny_pipeline.model, steps={1}):
        logic.ask(volume, "And again.", scope="volume", conversation_node=result.conversation_node)
    assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == study
    assert logic.can_export_dicom_seg(result.conversation_node)


def test_without_a_study_results_go_beside_the_volume(engine, tiny_pipeline, dicom_scene):
    scene, _, _, _, folder_of_files = dicom_scene
    first_file = str(sorted(folder_of_files.iterdir())[0])
    sh = study_placement.subject_hierarchy(scene)
    plain = load_volume_file(scene, first_file, "plain")
    folder = sh.CreateFolderItem(sh.GetSceneItemID(), "my folder")
    sh.SetItemParent(sh.GetItemByDataNode(plain) or sh.CreateItem(folder, plain), folder)
    logic, result = ask(engine, tiny_pipeline, scene, plain)
    assert sh.GetItemParent(sh.GetItemByDataNode(result.segmentation_node)) == folder
    assert sh.GetItemParent(sh.GetItemByDataNode(result.conversation_node)) == folder
    assert not logic.can_export_dicom_seg(result.conversation_node)  # no DICOM.instanceUIDs
    with pytest.raises(InputError, match="was not loaded from DICOM"):
        logic.export_dicom_seg(result.conversation_node, folder_of_files.parent / "x.dcm", lambda uid: "")
    at_root = load_volume_file(scene, first_file, "at root")
    _, second = ask(engine, tiny_pipeline, scene, at_root)
    assert sh.GetItemParent(sh.GetItemByDataNode(second.segmentation_node)) == sh.GetSceneItemID()


def test_logic_exports_a_dicom_seg_of_the_conversation(engine, tiny_pipeline, dicom_scene, tmp_path):
    scene, volume, _, lookup, _ = dicom_scene
    logic, result = ask(engine, tiny_pipeline, scene, volume, steps=(1, 3))
    assert len(result.segment_ids) == 2
    # a segment the user removed is not exported
    segmentation = result.segmentation_node
    segmentation_results.remove_segments(segmentation, result.segment_ids[1:])
    conversation = logic.conversation(result.conversation_node)
    conversation.turns[0].segments[1].state = "removed"
    from MedSegRLib import scene_store

    scene_store.save(result.conversation_node, conversation)
    target = tmp_path / "export" / "seg.dcm"
    target.parent.mkdir()
    written = logic.export_dicom_seg(result.conversation_node, target, lookup)
    assert written == target and [p.name for p in target.parent.iterdir()] == ["seg.dcm"]

    seg = hd.seg.segread(target)
    sources = {uid: pydicom.dcmread(lookup(uid)) for uid in volume.GetAttribute("DICOM.instanceUIDs").split()}
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == set(sources)
    assert seg.StudyInstanceUID == next(iter(sources.values())).StudyInstanceUID
    (described,) = seg.SegmentSequence  # only the segment that was not removed
    name = segmentation_results.segment_tag(segmentation, result.segment_ids[0], segmentation_results.TAG_ENGINE_NAME)
    assert described.SegmentLabel == " ".join(name.split())[:64]
    assert described.SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "MedSegR"
    mask = segment_mask(segmentation, result.segment_ids[0], volume)
    ordered = volume.GetAttribute("DICOM.instanceUIDs").split()  # slice k of the volume
    exported = seg.get_pixels_by_source_instance(ordered, assert_missing_frames_are_empty=True)[..., 0]
    np.testing.assert_array_equal(exported.astype(bool), mask)
    assert mask.any() and int(seg.NumberOfFrames) == int(mask.any(axis=(1, 2)).sum())

    # a source file that is gone: a clear error, no file written
    Path(lookup(ordered[2])).unlink()
    with pytest.raises(InputError, match="1 of the 6 DICOM files"):
        logic.export_dicom_seg(result.conversation_node, tmp_path / "export" / "again.dcm", lookup)
    assert not (tmp_path / "export" / "again.dcm").exists()


def test_export_needs_highdicom_says_what_to_install(engine, tiny_pipeline, dicom_scene, monkeypatch, tmp_path):
    scene, volume, _, lookup, _ = dicom_scene
    logic, result = ask(engine, tiny_pipeline, scene, volume)
    import builtins

    real_import = builtins.__import__

    def without_highdicom(name, *args, **kwargs):
        if name == "highdicom":
            raise ImportError("No module named 'highdicom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_highdicom)
    with pytest.raises(InputError, match=r"pip_install\('highdicom==0.28.2'\)"):
        dicom_export.export_conversation(result.conversation_node, tmp_path / "x.dcm", lookup)
    assert not (tmp_path / "x.dcm").exists()



# --------------------------------------------------------------------------- the panel


class _DicomDatabase:
    """Stands in for Slicer's DICOM database (a ctkDICOMDatabase, which needs the Slicer
    application): only ``fileForInstance``, answered from the real files' UIDs."""

    def __init__(self, lookup):
        self.lookup = lookup

    def fileForInstance(self, uid: str) -> str:  # noqa: N802 (CTK's name)
        return self.lookup(uid)


def test_panel_volume_question_on_a_dicom_series_ends_under_its_study_and_exports(
        engine, tiny_pipeline, tmp_path, monkeypatch):
    """The issue's end to end in the panel (PySide6, real .ui): a volume question on a
    DICOM series moves a determinate bar, its segmentation and conversation go under the
    series' study, and "Export DICOM SEG" writes a file that reads back with the
    series' references and the answer's segments."""
    pytest.importorskip("PySide6")
    import slicer_shell
    from mrml_scene import show_in_view
    from test_slicer_engine_manager import bar_recorder, send_volume_question
    from test_slicer_widget import connect_remote

    write_ct_series(tmp_path / "ct", slices=12)
    shell = slicer_shell.install(new_scene(), tmp_path / "settings")
    try:
        volume, study, lookup = load_dicom_volume(shell.scene, tmp_path / "ct")
        show_in_view(shell.scene, volume, "Red")
        monkeypatch.setattr(slicer, "dicomDatabase", _DicomDatabase(lookup), raising=False)
        import MedSegR

        widget = MedSegR.MedSegRWidget()
        widget.setup()
        widget.parent.show()
        shell.process_events(0.1)
        try:
            assert widget._parameterNode.inputVolume is volume
            assert not widget.ui.exportDicomSegButton.isEnabled()  # nothing to export yet
            connect_remote(shell, widget, engine)
            widget.confirmPrivacy = lambda text: (True, True)
            values = bar_recorder(widget)
            # the random model is steered to answer with a named structure
            with force_text(tiny_pipeline.model, "The <p>liver</p> [SEG]."):
                send_volume_question(shell, widget, "Segment the liver in the whole scan.")
                assert shell.wait_for(lambda: widget.task is not None and not widget.busy(), timeout=180)
            shell.process_events(0.1)
            assert widget.pending is None, widget.pending.message
            assert max(m for _v, m in values) == 12  # slices encoded of 12: a determinate bar
            assert len({v for v, m in values if m == 12}) >= 3

            node = widget.currentConversation()
            from MedSegRLib import scene_store, terminology

            segmentation = scene_store.segmentation_node(node)
            sh = study_placement.subject_hierarchy(shell.scene)
            assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == study
            assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study
            turn = widget.logic.conversation(node).turns[0]
            # a coded, coloured segment: SNOMED CT "Liver" with the vocabulary's colour
            liver = terminology.lookup("liver")
            assert [s.name for s in turn.segments] == ["liver"] and turn.segments[0].terminology == liver.entry
            segment = segmentation.GetSegmentation().GetSegment(turn.segments[0].id)
            assert liver.code in segment.GetTerminology()
            np.testing.assert_allclose(segment.GetColor(), liver.color, atol=1e-6)
            assert "no standard code" not in widget.ui.chatBrowser.toPlainText()

            assert widget.ui.exportDicomSegButton.isEnabled()
            target = tmp_path / "out" / "liver.dcm"
            target.parent.mkdir()
            asked: list[str] = []
            widget.askDicomSegPath = lambda default: asked.append(default) or str(target)
            shell.qt.QTest.mouseClick(widget.ui.exportDicomSegButton, shell.qt.Qt.LeftButton)
            shell.process_events(0.1)
            assert asked and asked[0].endswith(".dcm")
            assert widget.ui.statusLabel.text() == f"DICOM SEG saved to {target}."
            seg = hd.seg.segread(target)
            ordered = volume.GetAttribute("DICOM.instanceUIDs").split()
            (series,) = seg.ReferencedSeriesSequence
            assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == set(ordered)
            (described,) = seg.SegmentSequence
            assert described.SegmentLabel == "liver"
            assert described.SegmentedPropertyTypeCodeSequence[0].CodeValue == liver.code
            mask = segment_mask(segmentation, turn.segments[0].id, volume)
            exported = seg.get_pixels_by_source_instance(ordered, assert_missing_frames_are_empty=True)[..., 0]
            np.testing.assert_array_equal(exported.astype(bool), mask)

            # a follow-up whose segment has no standard code: kept, and said so
            with force_seg(tiny_pipeline.model, steps={1}):
                send_volume_question(shell, widget, "And the rest?")
                assert shell.wait_for(lambda: widget.task is not None and not widget.busy(), timeout=180)
            shell.process_events(0.1)
            second = widget.logic.conversation(node).turns[1]
            assert [s.name for s in second.segments] == ["segment 1"] and second.segments[0].terminology is None
            assert "no standard code" in widget.ui.chatBrowser.toPlainText()
            assert "no standard code for 'segment 1'" in widget.ui.statusLabel.text().lower()
            widget.askDicomSegPath = lambda default: str(target)

            # cancelling the file dialog writes nothing; an unwritable path is a message
            widget.askDicomSegPath = lambda default: ""
            shell.qt.QTest.mouseClick(widget.ui.exportDicomSegButton, shell.qt.Qt.LeftButton)
            widget.askDicomSegPath = lambda default: str(tmp_path / "missing" / "x.dcm")
            before = widget.ui.statusLabel.text()
            shell.qt.QTest.mouseClick(widget.ui.exportDicomSegButton, shell.qt.Qt.LeftButton)
            shell.process_events(0.1)
            assert widget.ui.statusLabel.text() != before and "missing" in widget.ui.statusLabel.text()
            assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "out", "settings"]
            assert [p.name for p in target.parent.iterdir()] == ["liver.dcm"]
        finally:
            widget.cleanup()
            widget.parent.close()
    finally:
        shell.uninstall()
