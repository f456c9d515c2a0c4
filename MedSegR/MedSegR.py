"""MedSegR: reasoning segmentation in 3D Slicer.

Ask a question about the current slice or the whole volume in a chat panel; the
MedSegR engine answers with its reasoning and returns the structures it names as
segments on the volume's grid. The engine runs as its own process (started by this
module, or on another computer); this module talks to it through
:mod:`medsegr.client` and never imports torch at Slicer start-up.

Module / Widget / Logic / Test follow Slicer's scripted-module pattern. The Widget
only wires the GUI; the work lives in :mod:`MedSegRLib` (scene, geometry, engine
process, install plan, transcript), which also runs without the Slicer application.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Annotated, Any, Callable, Optional, Union

import ctk
import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsFiducialNode, vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLTextNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from medsegr.client import EngineError, EngineUnavailable, Progress, RequestCancelled
from medsegr.errors import MedSegRError
from MedSegRLib import dependencies, scene_store, transcript
from MedSegRLib import settings as engine_settings
from MedSegRLib.background import BackgroundTask, MainThreadQueue
from MedSegRLib.chat_logic import AskResult, MedSegRChatLogic, engine_summary
from MedSegRLib.current_slice import VIEW_NAMES, slice_node_by_view, view_background_volume
from MedSegRLib.engine_manager import EngineManager
from MedSegRLib.engine_process import BundledEngine, EngineStartError
from MedSegRLib.messages import error_message
from MedSegRLib.qt_compat import exec_dialog, file_name, named_children, qt_value, url_text
from MedSegRLib.slicer_install import InstallError

SCOPE_SLICE = "Current slice"
SCOPE_VOLUME = "Whole volume"
LAST_HOVERED = "Last hovered view"
PRIVACY_NOTE = _(
    "You are about to send this volume to a MedSegR engine on another computer.\n\n"
    "The image (all voxels of the volume and its geometry) and your questions leave this "
    "computer. Make sure this is allowed for these data (de-identified data, an engine "
    "inside your institution's network, an encrypted connection).")
CITATION = ("Y. Huang, Z. Peng, Y. Zhao, P. Yang, X. Yang, W. Shen. MedSeg-R: Reasoning "
            "Segmentation in Medical Images with Multimodal Large Language Models. "
            "arXiv:2506.10465, 2025.")


#: failures the panel explains in one sentence; anything else is shown with its traceback
EXPECTED_ERRORS = (EngineError, MedSegRError, EngineStartError, InstallError, ValueError)


def progress_text(report: Progress | None) -> str:
    """What the phase label next to the progress bar says."""
    if report is None or report.stage == "started":
        return _("Waiting for the engine…")
    if report.stage == "queued":
        return _("Queued ({count} ahead)").format(count=report.done) if report.done else _("Queued")
    if report.stage == "encoding":
        return _("Encoding slices {done}/{total}").format(done=report.done, total=report.total)
    if report.stage == "answering":
        return _("Answering…")
    if report.stage == "masks":
        return _("Decoding masks {done}/{total}").format(done=report.done, total=report.total)
    return report.stage


#
# MedSegR
#


class MedSegR(ScriptedLoadableModule):
    """Module metadata (the Module class of Slicer's scripted-module pattern)."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedSegR")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedSegR developers"]
        self.parent.helpText = _("""
Ask a question about the current slice or the whole volume, e.g. <i>"Which structure here
is most likely to bleed? Segment it."</i> The MedSegR engine answers with its reasoning and
returns the structures it names as segments of a segmentation node on the volume's grid.
Accept, hide or remove each answer's segments with one click; the conversation is saved
with the scene.<br><br>
The engine runs on this computer (<b>bundled</b>: started by this module, on the GPU when
there is one) or on another one (<b>remote</b>: URL and token). The first start of the
bundled engine asks before installing PyTorch and the engine's requirements.<br><br>
<b>Research software, not for clinical decisions.</b> See the
<a href="https://github.com/medsegr/SlicerMedSegR#readme">documentation</a>.
""")
        self.parent.acknowledgementText = _(
            "MedSegR follows the MedSeg-R method: a multimodal language model whose [SEG] "
            "tokens are decoded into masks by a pixel-level grounding module. If you use it, "
            "please cite: ") + CITATION


#
# Parameters (saved with the scene)
#


@parameterNodeWrapper
class MedSegRParameterNode:
    """What the user chose in the panel.

    inputVolume - the volume to ask about.
    scope - the current slice or the whole volume.
    sliceView - the slice view whose slice is "current" (or the one last hovered).
    hintNode - an optional markups ROI (box) or point list (points) hint.
    conversation - the conversation shown in the chat panel.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    scope: Annotated[str, Choice([SCOPE_SLICE, SCOPE_VOLUME])] = SCOPE_SLICE
    sliceView: Annotated[str, Choice([LAST_HOVERED, *VIEW_NAMES])] = LAST_HOVERED
    hintNode: Optional[Union[vtkMRMLMarkupsROINode, vtkMRMLMarkupsFiducialNode]]
    conversation: vtkMRMLTextNode


#
# MedSegRWidget
#


class MedSegRWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The chat panel. It only wires the GUI; the work is done by :class:`MedSegRLogic`
    (off the main thread for everything that waits on the engine)."""

    TICK_MS = 40

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: MedSegRLogic | None = None
        self._parameterNode: MedSegRParameterNode | None = None
        self._parameterNodeGuiTag = None
        self.mainQueue = MainThreadQueue()
        self.task: BackgroundTask | None = None
        self.engineTask: BackgroundTask | None = None
        self.pending: transcript.PendingTurn | None = None
        self.lastHoveredView = "Red"
        self._afterEngine: list[Callable[[], None]] = []
        self._engineDeath: str | None = None  # the bundled engine died during a request
        self._renderNeeded = False
        self._conversationsNeedRefresh = False
        self._updatingGui = False

    # -- set-up -------------------------------------------------------------------
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedSegR.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = named_children(uiWidget, qt.QWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.inputVolumeSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.hintSelector.setMRMLScene(slicer.mrmlScene)
        self.ui.checkpointPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.progressBar.setVisible(False)

        self.logic = MedSegRLogic()
        self.settingsStore = qt.QSettings()

        self.timer = qt.QTimer()
        self.timer.setInterval(self.TICK_MS)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self._onNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self._onNodesChanged)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self._onNodesChanged)
        self._observeCrosshair()

        self.ui.questionLineEdit.returnPressed.connect(self.onSend)
        self.ui.sendButton.clicked.connect(lambda *_args: self.onSend())
        self.ui.cancelButton.clicked.connect(lambda *_args: self.onCancel())
        self.ui.newConversationButton.clicked.connect(lambda *_args: self.onNewConversation())
        self.ui.conversationComboBox.activated.connect(lambda *_args: self.onConversationChosen())
        self.ui.chatBrowser.anchorClicked.connect(self.onAnchorClicked)
        self.ui.copyTranscriptButton.clicked.connect(lambda *_args: self.onCopyTranscript())
        self.ui.exportTranscriptButton.clicked.connect(lambda *_args: self.onExportTranscript())
        self.ui.exportDicomSegButton.clicked.connect(lambda *_args: self.onExportDicomSeg())
        self.ui.bundledRadioButton.toggled.connect(lambda *_args: self.onEngineModeChanged())
        self.ui.startEngineButton.clicked.connect(lambda *_args: self.onStartEngine())
        self.ui.stopEngineButton.clicked.connect(lambda *_args: self.onStopEngine())
        self.ui.testConnectionButton.clicked.connect(lambda *_args: self.onTestConnection())
        for edit in (self.ui.remoteUrlLineEdit, self.ui.remoteTokenLineEdit):
            edit.editingFinished.connect(self.onRemoteSettingsEdited)
        self.ui.rememberTokenCheckBox.toggled.connect(lambda *_args: self.saveEngineSettings())
        self.ui.deviceComboBox.currentIndexChanged.connect(lambda *_args: self.saveEngineSettings())
        self.ui.checkpointPathLineEdit.currentPathChanged.connect(lambda *_args: self.saveEngineSettings())

        self.loadEngineSettings()
        self.initializeParameterNode()
        self.updateButtons()
        self.render()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.timer.stop()
        self._unobserveParameterNode()
        self.removeObservers()
        if self.task is not None:
            self.task.cancel()
        if self.engineTask is not None:
            self.engineTask.cancel()
        if self.logic is not None:
            self.logic.cleanup()  # stops the engine

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self._unobserveParameterNode()

    def _unobserveParameterNode(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            node = self._parameterNode.parameterNode
            if self.hasObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified):
                self.removeObserver(node, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def _observeCrosshair(self) -> None:
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair is not None and not self.hasObserver(
                crosshair, slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent, self._onCursorMoved):
            self.addObserver(crosshair, slicer.vtkMRMLCrosshairNode.CursorPositionModifiedEvent,
                             self._onCursorMoved)

    def _onCursorMoved(self, crosshair, _event=None) -> None:
        node = crosshair.GetCursorPositionXYZ([0.0, 0.0, 0.0])
        if node is not None and node.GetLayoutName():
            self.lastHoveredView = node.GetLayoutName()

    # -- parameter node -------------------------------------------------------------
    def onSceneStartClose(self, _caller=None, _event=None) -> None:
        if self.task is not None:
            self.task.cancel()
        self.pending = None
        self.setParameterNode(None)
        if self.logic is not None:
            self.logic.set_client(self.logic.client, self.logic.engine_info)  # sessions referred to old nodes

    def onSceneEndClose(self, _caller=None, _event=None) -> None:
        self._observeCrosshair()
        if getattr(self.parent, "isEntered", True):
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = view_background_volume(slicer.mrmlScene, "Red")
            if volume is None:
                for index in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")):
                    candidate = slicer.mrmlScene.GetNthNodeByClass(index, "vtkMRMLScalarVolumeNode")
                    if not candidate.IsA("vtkMRMLLabelMapVolumeNode"):
                        volume = candidate
                        break
            if volume is not None:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, inputParameterNode: MedSegRParameterNode | None) -> None:
        self._unobserveParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode.parameterNode, vtk.vtkCommand.ModifiedEvent,
                             self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, _caller=None, _event=None) -> None:
        parameters = self._parameterNode
        if parameters is not None:
            conversation = parameters.conversation
            volume = parameters.inputVolume
            if conversation is not None and (volume is None or scene_store.volume_node(conversation) is not volume):
                # another volume: show its latest conversation, or none
                nodes = self.logic.conversation_nodes(volume) if volume is not None else []
                parameters.conversation = nodes[-1] if nodes else None
                return
            self.ui.sliceViewComboBox.setEnabled(parameters.scope == SCOPE_SLICE)
        self._conversationsNeedRefresh = True
        self._renderNeeded = True
        self.updateButtons()

    def _onNodesChanged(self, _caller=None, _event=None) -> None:
        self._conversationsNeedRefresh = True

    # -- timer: main-thread callbacks and deferred updates ------------------------------------
    def _tick(self) -> None:
        self.mainQueue.drain()
        self._checkEngineAlive()
        if self._conversationsNeedRefresh:
            self._conversationsNeedRefresh = False
            self.refreshConversationList()
        if self._renderNeeded:
            self._renderNeeded = False
            self.render()

    # -- conversations ----------------------------------------------------------------
    def currentConversation(self) -> Any:
        node = self._parameterNode.conversation if self._parameterNode else None
        return node if scene_store.is_conversation_node(node) else None

    def refreshConversationList(self) -> None:
        combo = self.ui.conversationComboBox
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        nodes = self.logic.conversation_nodes(volume) if volume is not None else []
        current = self.currentConversation()
        combo.blockSignals(True)
        combo.clear()
        combo.addItem(_("(new conversation)"), "")
        for node in reversed(nodes):
            combo.addItem(node.GetName(), node.GetID())
        index = 0
        if current is not None:
            found = combo.findData(current.GetID())
            index = found if found >= 0 else 0
        combo.setCurrentIndex(index)
        combo.blockSignals(False)

    def onConversationChosen(self) -> None:
        combo = self.ui.conversationComboBox
        node_id = combo.itemData(qt_value(combo, "currentIndex"))
        node = slicer.mrmlScene.GetNodeByID(node_id) if node_id else None
        if self._parameterNode is not None and not self.busy():
            self.pending = None
            self._parameterNode.conversation = node

    def onNewConversation(self) -> None:
        if self.busy():
            return
        self.logic.end_conversation(self.currentConversation())
        self.pending = None
        if self._parameterNode is not None:
            self._parameterNode.conversation = None
        self.setStatus(_("New conversation: the next question starts afresh."))
        self._renderNeeded = True

    # -- rendering --------------------------------------------------------------------
    def render(self) -> None:
        node = self.currentConversation()
        conversation = None
        if node is not None:
            try:
                conversation = self.logic.conversation(node)
            except ValueError as exc:
                self.setStatus(str(exc))
        visible = (lambda sid: self.logic.segment_visible(node, sid)) if node is not None else None
        browser = self.ui.chatBrowser
        browser.setHtml(transcript.render_html(conversation, self.pending, visible))
        scrollbar = browser.verticalScrollBar()
        scrollbar.setValue(qt_value(scrollbar, "maximum"))

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.setText(text)

    def busy(self) -> bool:
        return self.task is not None and not self.task.finished.is_set()

    def updateButtons(self) -> None:
        busy = self.busy()
        starting = self.engineTask is not None and not self.engineTask.finished.is_set()
        has_volume = bool(self._parameterNode and self._parameterNode.inputVolume)
        self.ui.sendButton.setEnabled(not busy and not starting and has_volume)
        self.ui.cancelButton.setEnabled(busy or starting)
        self.ui.progressBar.setVisible(busy or starting)
        self.ui.progressLabel.setVisible(busy)
        if not busy:
            self.ui.progressBar.setRange(0, 0)
            self.ui.progressLabel.setText("")
        self.ui.newConversationButton.setEnabled(not busy)
        has_chat = self.currentConversation() is not None
        self.ui.copyTranscriptButton.setEnabled(has_chat)
        self.ui.exportTranscriptButton.setEnabled(has_chat)
        self.ui.exportDicomSegButton.setEnabled(not busy and self.logic.can_export_dicom_seg(self.currentConversation()))
        bundled = self.ui.bundledRadioButton.isChecked()
        self.ui.bundledWidget.setVisible(bundled)
        self.ui.remoteWidget.setVisible(not bundled)
        running = self.logic.engineManager.running
        self.ui.startEngineButton.setEnabled(bundled and not running and not starting)
        self.ui.stopEngineButton.setEnabled(bundled and (running or starting))

    # -- asking -----------------------------------------------------------------------
    def onSend(self) -> None:
        if self.busy():
            return
        question = str(qt_value(self.ui.questionLineEdit, "text")).strip()
        if not question:
            return
        self.ensureEngine(lambda: self.send(question))

    def send(self, question: str) -> None:
        """Check, then ask in the background (the engine is connected)."""
        parameters = self._parameterNode
        if parameters is None or self.busy():
            return
        if self.engineMode() == "remote" and not self.privacyAccepted():
            self.setStatus(_("Not sent: the image would have left this computer."))
            return
        scope = "volume" if parameters.scope == SCOPE_VOLUME else "slice"
        view = self.lastHoveredView if parameters.sliceView == LAST_HOVERED else parameters.sliceView
        try:
            slice_node = slice_node_by_view(slicer.mrmlScene, view) if scope == "slice" else None
            prepared = self.logic.prepare(parameters.inputVolume, question, scope, slice_node,
                                          parameters.hintNode, self.currentConversation())
        except Exception as exc:  # bad input: shown in the panel, nothing changes
            self.showFailure(question, _("(not sent)"), exc)
            return
        self.pending = transcript.PendingTurn(question=prepared.question, where=prepared.where)
        self.ui.questionLineEdit.clear()
        self.setStatus(_("Waiting for the engine…"))
        self.showProgress(None)
        self.task = self.logic.ask_async(prepared, self.mainQueue.post, self.onAnswer, self.onFailure,
                                         self.onText, self.onProgress)
        self.updateButtons()
        self._renderNeeded = True

    def showProgress(self, report: Progress | None) -> None:
        """The bar and its phase label: determinate for a counted phase (slices encoded,
        masks decoded), busy otherwise."""
        bar = self.ui.progressBar
        if report is None or report.total <= 0:
            bar.setRange(0, 0)
        else:
            bar.setRange(0, report.total)
            bar.setValue(min(report.done, report.total))
        self.ui.progressLabel.setText(progress_text(report))

    def onProgress(self, report: Progress) -> None:
        if self.busy():
            self.showProgress(report)

    def onText(self, piece: str) -> None:
        if self.pending is not None:
            self.pending.streamed += piece
            self.pending.status = "streaming"
            self._renderNeeded = True

    def onAnswer(self, result: AskResult) -> None:
        self.pending = None
        if self._parameterNode is not None:
            self._parameterNode.conversation = result.conversation_node
        count = len(result.segment_ids)
        seconds = result.answer.timings.get("total", result.answer.timings.get("server_total", 0.0))
        status = _("Answered in {seconds:.1f} s; {count} segment(s) added.").format(seconds=seconds, count=count)
        if result.notice:
            status += " " + result.notice
        if result.terminology_note:
            status += " " + result.terminology_note[0].upper() + result.terminology_note[1:] + "."
        self.setStatus(status)
        self._conversationsNeedRefresh = True
        self._renderNeeded = True
        self.updateButtons()

    def onFailure(self, exc: BaseException) -> None:
        if self.pending is None:
            self.pending = transcript.PendingTurn(question="", where="")
        self.pending.status = "cancelled" if isinstance(exc, RequestCancelled) else "error"
        self.pending.message = error_message(exc)
        died = self.logic.engineDied() if isinstance(exc, EngineUnavailable) else None
        if died is None and isinstance(exc, EngineUnavailable) and self._engineDeath:
            died = self._engineDeath
        if died is not None:
            self.pending.message = _("The engine stopped while answering; nothing was added to the scene. ") + died
            self.setEngineStatus(died)
        self._engineDeath = None
        if self.pending.status == "error":
            if isinstance(exc, EXPECTED_ERRORS):
                logging.warning("MedSegR: %s", self.pending.message)
            else:  # a bug, not bad input or an engine failure: the Slicer way, with the traceback
                self.showUnexpectedError(_("MedSegR could not answer the question."), exc)
        self.setStatus(self.pending.message)
        self._renderNeeded = True
        self.updateButtons()

    def showFailure(self, question: str, where: str, exc: BaseException) -> None:
        self.pending = transcript.PendingTurn(question=question, where=where)
        self.onFailure(exc)

    def onCancel(self) -> None:
        if self.task is not None and not self.task.finished.is_set():
            self.task.cancel()
            self.setStatus(_("Cancelling…"))
        elif self.engineTask is not None and not self.engineTask.finished.is_set():
            self.engineTask.cancel()
            self._afterEngine.clear()

    # -- one-click actions on an answer's segments ----------------------------------------
    def onAnchorClicked(self, url) -> None:
        action = transcript.parse_action(url_text(url))
        node = self.currentConversation()
        if action is None or node is None:
            return
        verb, turn = action
        try:
            if verb == "accept":
                self.logic.accept_turn(node, turn)
            elif verb in ("hide", "show"):
                self.logic.set_turn_visible(node, turn, verb == "show")
            elif verb == "remove":
                self.logic.remove_turn_segments(node, turn)
        except Exception as exc:
            self.setStatus(error_message(exc))
        self._renderNeeded = True

    # -- transcript -------------------------------------------------------------------
    def onCopyTranscript(self) -> None:
        node = self.currentConversation()
        if node is not None:
            qt.QApplication.clipboard().setText(self.logic.transcript(node))
            self.setStatus(_("Transcript copied to the clipboard."))

    def askSavePath(self, default_name: str) -> str:
        """The user's choice of a file to export to ("" when cancelled)."""
        return file_name(qt.QFileDialog.getSaveFileName(
            self.parent, _("Export MedSegR transcript"), default_name, _("Markdown (*.md);;Text (*.txt)")))

    def onExportTranscript(self) -> None:
        node = self.currentConversation()
        if node is None:
            return
        path = self.askSavePath(os.path.join(os.path.expanduser("~"), "medsegr-conversation.md"))
        if not path:
            return
        try:
            written = self.logic.export_transcript(node, path)
        except Exception as exc:
            self.setStatus(error_message(exc))
            return
        self.setStatus(_("Transcript saved to {path}.").format(path=written))

    def askDicomSegPath(self, default_name: str) -> str:
        """The user's choice of a DICOM SEG file to write ("" when cancelled)."""
        return file_name(qt.QFileDialog.getSaveFileName(
            self.parent, _("Export DICOM SEG"), default_name, _("DICOM (*.dcm)")))

    def onExportDicomSeg(self) -> None:
        node = self.currentConversation()
        if node is None:
            return
        path = self.askDicomSegPath(os.path.join(os.path.expanduser("~"), "medsegr-segmentation.dcm"))
        if not path:
            return
        try:
            written = self.logic.export_dicom_seg(node, path)
        except Exception as exc:
            self.setStatus(error_message(exc))
            return
        self.setStatus(_("DICOM SEG saved to {path}.").format(path=written))

    # -- engine -----------------------------------------------------------------------
    def engineMode(self) -> str:
        return "bundled" if self.ui.bundledRadioButton.isChecked() else "remote"

    def loadEngineSettings(self) -> None:
        values = engine_settings.load(self.settingsStore)
        self._updatingGui = True
        try:
            self.ui.bundledRadioButton.setChecked(values.mode == "bundled")
            self.ui.remoteRadioButton.setChecked(values.mode == "remote")
            self.ui.remoteUrlLineEdit.setText(values.remote_url)
            self.ui.remoteTokenLineEdit.setText(values.remote_token)
            self.ui.rememberTokenCheckBox.setChecked(values.remember_token)
            index = self.ui.deviceComboBox.findText(values.device)
            self.ui.deviceComboBox.setCurrentIndex(index if index >= 0 else 0)
            self.ui.checkpointPathLineEdit.setCurrentPath(values.checkpoint)
        finally:
            self._updatingGui = False

    def engineSettings(self) -> engine_settings.EngineSettings:
        stored = engine_settings.load(self.settingsStore)
        stored.mode = self.engineMode()
        stored.remote_url = str(qt_value(self.ui.remoteUrlLineEdit, "text")).strip()
        stored.remote_token = str(qt_value(self.ui.remoteTokenLineEdit, "text")).strip()
        stored.remember_token = self.ui.rememberTokenCheckBox.isChecked()
        stored.device = str(qt_value(self.ui.deviceComboBox, "currentText")) or "auto"
        stored.checkpoint = str(qt_value(self.ui.checkpointPathLineEdit, "currentPath") or "")
        return stored

    def saveEngineSettings(self) -> None:
        if not self._updatingGui:
            engine_settings.save(self.settingsStore, self.engineSettings())

    def onEngineModeChanged(self) -> None:
        if self._updatingGui:
            return
        self.saveEngineSettings()
        self.logic.disconnectEngine()
        self.setEngineStatus(_("Not connected."))
        self.updateButtons()

    def onRemoteSettingsEdited(self) -> None:
        self.saveEngineSettings()
        if self.engineMode() == "remote":
            self.logic.disconnectEngine()

    def setEngineStatus(self, text: str) -> None:
        self.ui.engineStatusLabel.setText(text)

    def describeEngine(self, info: dict) -> str:
        summary = engine_summary(info)
        text = _("Connected: medsegr {version} (API v{api}), model {model}, device {device}.").format(
            version=summary["engine_version"], api=summary["api_version"], model=summary["model"],
            device=summary["device"])
        if summary.get("fine_tuned") is False:
            text += " " + _("No fine-tuned checkpoint: answers are not grounded in the image.")
        return text

    def privacyAccepted(self) -> bool:
        """The note before the first request to a remote engine (with "don't show again")."""
        values = engine_settings.load(self.settingsStore)
        if values.privacy_acknowledged:
            return True
        accepted, dont_show_again = self.confirmPrivacy(PRIVACY_NOTE)
        if accepted and dont_show_again:
            values.privacy_acknowledged = True
            engine_settings.save(self.settingsStore, values)
        return accepted

    def confirmPrivacy(self, text: str) -> tuple[bool, bool]:
        box = qt.QMessageBox(self.parent)
        box.setWindowTitle(_("MedSegR: images leave this computer"))
        box.setIcon(qt.QMessageBox.Warning)
        box.setText(text)
        box.setStandardButtons(qt.QMessageBox.Ok | qt.QMessageBox.Cancel)
        checkbox = qt.QCheckBox(_("Don't show again"))
        box.setCheckBox(checkbox)
        exec_dialog(box)
        accepted = box.clickedButton() == box.button(qt.QMessageBox.Ok)
        return accepted, checkbox.isChecked()

    def ensureEngine(self, then: Callable[[], None]) -> None:
        """Run ``then`` once an engine is connected (connecting or starting one if needed)."""
        if self.logic.client is not None:
            then()
            return
        self._afterEngine.append(then)
        if self.engineStarting():
            return
        self.startEngine()

    def engineStarting(self) -> bool:
        return self.engineTask is not None and not self.engineTask.finished.is_set()

    def _runAfterEngine(self) -> None:
        waiting, self._afterEngine = self._afterEngine, []
        for callback in waiting:
            callback()

    def _engineFailed(self, exc: BaseException) -> None:
        self._afterEngine.clear()
        message = error_message(exc)
        self.setEngineStatus(message)
        self.setStatus(message)
        self.updateButtons()

    def onTestConnection(self) -> None:
        self.saveEngineSettings()
        self.logic.disconnectEngine()
        self.startEngine()

    def onStartEngine(self) -> None:
        self.saveEngineSettings()
        self.startEngine()

    def confirmInstall(self, text: str) -> bool:
        return slicer.util.confirmOkCancelDisplay(text, _("MedSegR: install the engine"))

    def installIfNeeded(self, values: engine_settings.EngineSettings) -> bool:
        """Ask, then install the bundled engine's requirements; False when the engine
        cannot start (declined or failed: the panel says why)."""
        plan = self.logic.engineInstallPlan(values.python or None)
        if plan is None:
            return True
        if not self.confirmInstall(plan.describe()):
            self._engineFailed(EngineStartError("the engine's requirements are not installed "
                                                "(installation declined)"))
            return False
        self.setEngineStatus(_("Installing the engine's requirements…"))
        slicer.app.processEvents()
        try:
            self.logic.installEngineRequirements(plan)
        except InstallError as exc:
            self._engineFailed(exc)
            return False
        return True

    def startEngine(self) -> None:
        """Connect to the remote engine or start the bundled one, as the panel chooses."""
        if self.engineStarting():
            return
        values = self.engineSettings()
        try:
            if values.mode == "remote":
                self.setEngineStatus(_("Connecting to {url}…").format(url=values.remote_url))
            else:
                if self.logic.engineManager.running and self.logic.client is not None:
                    self._runAfterEngine()
                    return
                if not self.installIfNeeded(values):
                    return
                self.ui.engineLogTextEdit.clear()
                self.setEngineStatus(_("Starting the engine (loading the model)…"))
            self.engineTask = self.logic.startEngineAsync(
                values, self.mainQueue.post, self._engineReady, self._engineFailed,
                on_log=lambda line: self.mainQueue.post(self.ui.engineLogTextEdit.appendPlainText, line))
        except Exception as exc:  # unexpected: the Slicer way (message, details in the log)
            self.showUnexpectedError(_("The MedSegR engine could not be started."), exc)
            self._afterEngine.clear()
        self.updateButtons()

    def _engineReady(self, info: dict) -> None:
        self.setEngineStatus(self.describeEngine(info))
        self.updateButtons()
        self._runAfterEngine()

    def showUnexpectedError(self, text: str, exc: BaseException) -> None:
        logging.error("MedSegR: %s", text, exc_info=(type(exc), exc, exc.__traceback__))
        details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        slicer.util.errorDisplay(f"{text}\n\n{error_message(exc)}", detailedText=details)

    def _checkEngineAlive(self) -> None:
        """Notice a bundled engine that stopped on its own (crash, killed)."""
        message = self.logic.engineDied()
        if message is not None:
            self._engineDeath = message
            self.setEngineStatus(message)
            if self.busy():
                self.setStatus(message)
            self.updateButtons()
        elif self.engineStarting() and self.engineMode() == "bundled":
            loading = self.logic.engineLoadStatus()
            if loading:
                self.setEngineStatus(_("Starting the engine: {step}…").format(step=loading.rstrip(".…")))

    def onStopEngine(self) -> None:
        if self.engineStarting():
            self.engineTask.cancel()
        self._afterEngine.clear()
        self.logic.stopEngine()
        self.setEngineStatus(_("Engine stopped."))
        self.updateButtons()


#
# MedSegRLogic
#


class MedSegRLogic(ScriptedLoadableModuleLogic, MedSegRChatLogic):
    """Everything the module does, without a GUI (see :class:`MedSegRLib.chat_logic.MedSegRChatLogic`).

    The logic is the one owner of the engine (:class:`MedSegRLib.engine_manager.EngineManager`):
    it installs the bundled engine's requirements, starts and stops the engine, connects
    to a remote one and notices an engine that died. The engine stops in :meth:`cleanup`,
    which runs when the module is closed and when Slicer exits.

    From Slicer's Python console::

        logic = slicer.util.getModuleLogic("MedSegR")
        plan = logic.engineInstallPlan()              # None: nothing to install
        if plan: logic.installEngineRequirements(plan)
        logic.startBundledEngine()                    # or logic.connectRemote(url, token)
        result = logic.ask(getNode("MRHead"), "Segment the brain.", scope="volume",
                           on_progress=print)         # Progress(stage, done, total)
        result.answer.text, result.segment_ids
        logic.stopEngine()
    """

    def __init__(self, scene=None, client=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        MedSegRChatLogic.__init__(self, scene if scene is not None else slicer.mrmlScene, client)
        self.engineManager = EngineManager()
        app = getattr(slicer, "app", None)
        if app is not None and hasattr(app, "aboutToQuit"):
            app.aboutToQuit.connect(self.cleanup)

    def getParameterNode(self):
        return MedSegRParameterNode(super().getParameterNode())

    # -- engine ------------------------------------------------------------------------
    @property
    def engine(self) -> BundledEngine | None:
        """The bundled engine process, when one was started."""
        return self.engineManager.engine

    def engineInstallPlan(self, python: str | None = None) -> dependencies.InstallPlan | None:
        """What must be installed before the bundled engine can run (None: nothing)."""
        return self.engineManager.install_plan(python)

    def installEngineRequirements(self, plan: dependencies.InstallPlan) -> list[str]:
        """Install ``plan`` into Slicer's Python with Slicer's packaging tools (blocking;
        ask the user first). Raises :class:`MedSegRLib.slicer_install.InstallError`."""
        return self.engineManager.install(plan, slicer)

    def startBundledEngine(self, device: str = "auto", checkpoint: str | None = None, python: str | None = None,
                           base: bool = False, config: str | None = None, timeout: float = 900.0,
                           on_log: Callable[[str], None] | None = None, cancel=None) -> dict:
        """Start the bundled engine, wait until it answers, and use it; returns its info."""
        info = self.engineManager.start_bundled(python=python, device=device, checkpoint=checkpoint,
                                                base=base, config=config, timeout=timeout, cancel=cancel,
                                                on_log=on_log)
        self.set_client(self.engineManager.client, info)
        return info

    def connectRemote(self, url: str, token: str | None = None) -> dict:
        """Use the engine at ``url`` (another computer); returns its info."""
        info = self.engineManager.connect_remote(url, token)
        self.set_client(self.engineManager.client, info)
        return info

    def connect(self, url: str, token: str | None = None, timeout: float = 300.0) -> dict:
        return self.connectRemote(url, token)

    def startEngineAsync(self, values: engine_settings.EngineSettings, dispatch: Callable[..., None],
                         on_done: Callable[[dict], None], on_error: Callable[[BaseException], None],
                         on_log: Callable[[str], None] | None = None) -> BackgroundTask:
        """Connect (remote) or start (bundled) the engine ``values`` choose, in a thread;
        ``on_done(info)`` / ``on_error(exc)`` run through ``dispatch`` on the main thread."""
        manager = self.engineManager

        def work(cancel) -> dict:
            if values.mode == "remote":
                return manager.connect_remote(values.remote_url, values.remote_token or None)
            return manager.start_bundled(python=values.python or None, device=values.device,
                                         checkpoint=values.checkpoint or None, cancel=cancel, on_log=on_log)

        def finished(info: dict) -> None:
            self.set_client(manager.client, info)
            on_done(info)

        return BackgroundTask(work, finished, on_error, dispatch, name="medsegr-engine").start()

    def disconnectEngine(self) -> None:
        """Stop using the current engine (a running bundled engine keeps running)."""
        self.engineManager.disconnect()
        self.set_client(None)

    def stopEngine(self) -> None:
        """Stop the bundled engine (if any); safe to call twice."""
        engine = self.engineManager.engine
        if engine is not None and self.client is not None and self.client.url == engine.url:
            self.set_client(None)
        self.engineManager.stop()

    stopBundledEngine = stopEngine

    def engineDied(self) -> str | None:
        """A sentence when the bundled engine in use stopped on its own, else None."""
        message = self.engineManager.died()
        if message is not None:
            self.set_client(None)
        return message

    def engineLoadStatus(self) -> str:
        """The bundled engine's latest loading step while it starts ("" when none)."""
        return self.engineManager.load_status

    def cleanup(self) -> None:
        """Stop the engine and forget its sessions (module closed, Slicer exiting)."""
        try:
            self.close()
        finally:
            self.engineManager.stop()


#
# MedSegRTest
#


class MedSegRTest(ScriptedLoadableModuleTest):
    """Self-test in 3D Slicer: a sample MRI, the bundled engine started by the logic,
    one question about a slice, the answer's segment on the volume's grid."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MedSegR_question_through_the_logic()

    def test_MedSegR_question_through_the_logic(self):
        from MedSegRLib.segmentation_results import segment_mask

        self.delayDisplay("Loading a sample MRI")
        import SampleData

        volume = SampleData.downloadSample("MRHead")
        self.assertIsNotNone(volume)

        logic = MedSegRLogic()
        try:
            plan = logic.engineInstallPlan()
            if plan is not None:
                self.delayDisplay("Installing the engine's requirements (testing mode: no prompt)")
                logic.installEngineRequirements(plan)

            self.delayDisplay("Starting the bundled engine")
            info = logic.startBundledEngine()
            red = slicer.app.layoutManager().sliceWidget("Red").sliceLogic()
            red.GetSliceCompositeNode().SetBackgroundVolumeID(volume.GetID())
            red.FitSliceToAll()

            self.delayDisplay("Asking about the red slice")
            reports: list[Progress] = []
            result = logic.ask(volume, "Which structure fills most of this slice? Segment it.", scope="slice",
                               slice_node=red.GetSliceNode(), on_progress=reports.append)
            self.assertTrue(result.answer.text.strip(), "the answer text is empty")
            self.assertIn("answering", [report.stage for report in reports])
            turn = logic.conversation(result.conversation_node).turns[-1]
            if turn.segments or engine_summary(info).get("fine_tuned"):
                self.assertTrue(turn.segments, "the fine-tuned engine answered without segments")
                segmentation = scene_store.segmentation_node(result.conversation_node)
                mask = segment_mask(segmentation, turn.segments[0].id, volume)
                self.assertEqual(mask.shape, slicer.util.arrayFromVolume(volume).shape)
                self.assertTrue(mask.any(), "the answer's segment is empty")
            else:
                self.delayDisplay("The engine runs the untrained base model: it answered in text without "
                                  "segments; install a fine-tuned checkpoint to test segments")
        finally:
            logic.cleanup()
        self.assertFalse(logic.engineManager.running, "the engine still runs after cleanup")
        self.delayDisplay("Test passed")
