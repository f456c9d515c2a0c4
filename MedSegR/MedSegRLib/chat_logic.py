"""The module's logic: ask the engine about a volume, keep the chat and its segments.

Usable without any GUI, from Slicer's Python console or a script::

    logic = MedSegRChatLogic(slicer.mrmlScene, EngineClient(url, token))
    result = logic.ask(volumeNode, "Which structure is most likely to bleed? Segment it.",
                       scope="slice")                       # the slice the Red view shows
    result.answer.text, result.segment_ids, result.segmentation_node
    logic.ask(volumeNode, "Now only its left half.", conversation_node=result.conversation_node)

A question goes through three steps, so the GUI never waits on the engine:

1. :meth:`prepare` (main thread) reads the scene: the volume and, when the engine
   does not have it yet, a copy of its voxels; the slice a view shows; markups hints.
   It changes nothing in the scene.
2. :meth:`execute` (any thread) talks to the engine only: upload, ask, stream text,
   download the masks. Cancelling raises :class:`medsegr.client.RequestCancelled`.
3. :meth:`apply` (main thread) adds the answer's segments and the turn to the
   scene. It is all or nothing: if it fails, the scene is as it was.

:meth:`ask` runs the three in a row; :meth:`ask_async` runs step 2 in a thread.
Each conversation has its own engine session (the engine keeps the conversation's
context and the image embeddings); a session that the engine has lost (restart,
expiry) is recreated once, and the answer then says that earlier turns were not
known to the engine.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from medsegr.answers import Answer, Hints
from medsegr.client import EngineClient, EngineError, EngineUnavailable, Progress, RequestCancelled
from medsegr.errors import InputError
from medsegr.io.atomic import atomic_write_text
from medsegr.prompts import validate_question

from MedSegRLib import dicom_export, scene_store, segmentation_results, study_placement, transcript
from MedSegRLib.background import BackgroundTask
from MedSegRLib.conversation import Conversation, SegmentRecord, Turn, make_title, now_iso
from MedSegRLib.current_slice import SliceSelection, hints_from_markups, hovered_slice_node, slice_node_by_view, slice_selection
from MedSegRLib.volume_geometry import VolumeGeometry, check_volume, engine_geometry, ijk_to_ras, modality_hint, volume_array

SCOPES = ("slice", "volume")
SEG_TOKEN = "[SEG]"
NOTICE_FRESH_CONTEXT = ("The engine did not know the earlier turns of this conversation (it was "
                        "restarted, the session expired, or the conversation was reopened from a "
                        "saved scene); this question was answered without them.")
NOTICE_VOLUME_CHANGED = ("The volume changed since the last question; the engine received the new "
                         "voxels and answered without the earlier turns.")
_SESSION_LOST_CODES = ("session_not_found", "unknown_session", "not_found", "no_such_session")


class SessionExpired(EngineError):
    """The engine no longer has the conversation's session."""


@dataclass(frozen=True)
class Upload:
    """The voxels and geometry to open a new engine session with."""

    array: np.ndarray
    geometry: VolumeGeometry
    modality: str | None


@dataclass
class PreparedQuestion:
    """A question, ready for the engine; created on the main thread by :meth:`prepare`."""

    request_id: str
    question: str
    scope: str
    axis: int
    slice_index: int | None
    hints: Hints
    where: str
    volume_node_id: str
    volume_name: str
    volume_stamp: tuple
    conversation_id: str
    conversation_node_id: str | None
    session_id: str | None  # an engine session to reuse (None: upload first)
    reset_session: bool = False  # reuse the session but start a new conversation in it
    upload: Upload | None = None
    notice: str | None = None
    selection: SliceSelection | None = None


@dataclass
class AskResult:
    """What :meth:`MedSegRChatLogic.ask` returns."""

    answer: Answer
    conversation_node: Any
    segmentation_node: Any | None
    segment_ids: list[str]
    turn_index: int
    notice: str | None = None
    #: segments kept with a free-text name because the vocabulary has no code for them
    terminology_note: str | None = None

    @property
    def text(self) -> str:
        return self.answer.text


@dataclass
class _EngineSession:
    session_id: str
    volume_node_id: str
    volume_stamp: tuple
    spare: bool = False  # left by a finished conversation, may be reset and reused


def engine_summary(info: dict) -> dict[str, Any]:
    """Engine version, model and device from ``/v1/info`` (tolerant of its shape)."""
    model = info.get("model")
    if isinstance(model, dict):
        base = model.get("base") if isinstance(model.get("base"), dict) else {}
        name = (model.get("name") or " + ".join(str(v.get("name", k)) if isinstance(v, dict) else str(v)
                                                for k, v in base.items()) or None)
        fine_tuned = model.get("fine_tuned")
        device = model.get("device") or info.get("device")
    else:
        name, fine_tuned, device = (str(model) if model else None), info.get("fine_tuned"), info.get("device")
    if isinstance(device, dict):
        device = device.get("name") or device.get("type")
    return {"engine_version": info.get("engine_version"), "api_version": info.get("api_version"),
            "model": name, "fine_tuned": fine_tuned, "device": device}


class MedSegRChatLogic:
    """Chat with the MedSegR engine about volumes of one MRML scene."""

    def __init__(self, scene: Any, client: EngineClient | None = None, engine_info: dict | None = None) -> None:
        self.scene = scene
        self.client = client
        self.engine_info: dict = dict(engine_info or {})
        self._sessions: dict[str, _EngineSession] = {}
        self._lock = threading.Lock()

    # -- engine -------------------------------------------------------------------
    def set_client(self, client: EngineClient | None, engine_info: dict | None = None) -> None:
        """Use another engine; sessions on the previous one are forgotten (and deleted)."""
        old = self.client
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        self.client = client
        self.engine_info = dict(engine_info or {})
        if old is not None and sessions:
            _delete_quietly(old, [s.session_id for s in sessions])

    def connect(self, url: str, token: str | None = None, timeout: float = 300.0) -> dict:
        """Connect to an engine at ``url``; returns its info (raises on version mismatch)."""
        client = EngineClient(url, token=token, timeout=timeout)
        info = client.check_version()
        self.set_client(client, info)
        return info

    def _require_client(self) -> EngineClient:
        if self.client is None:
            raise EngineUnavailable("no MedSegR engine is connected: start the bundled engine or "
                                    "connect to a remote one", code="no_engine")
        return self.client

    def close(self) -> None:
        """Delete this logic's engine sessions (best effort)."""
        self.set_client(None)

    # -- step 1: read the scene ------------------------------------------------------
    def prepare(self, volume_node: Any, question: str, scope: str = "slice", slice_node: Any | None = None,
                hint_node: Any | None = None, conversation_node: Any | None = None,
                force_upload: bool = False) -> PreparedQuestion:
        """Check the inputs and collect what the engine needs; changes nothing."""
        self._require_client()
        text = validate_question(question, (SEG_TOKEN,))
        if scope not in SCOPES:
            raise InputError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        shape = check_volume(volume_node)
        conversation = None
        if conversation_node is not None:
            if not scene_store.is_conversation_node(conversation_node):
                raise InputError(f"{conversation_node.GetName()!r} is not a MedSegR conversation")
            conversation = scene_store.load(conversation_node)
            conv_volume = scene_store.volume_node(conversation_node)
            if conv_volume is not None and conv_volume.GetID() != volume_node.GetID():
                raise InputError(f"this conversation is about volume {conv_volume.GetName()!r}; start a "
                                 f"new conversation to ask about {volume_node.GetName()!r}")
        selection = None
        if scope == "slice":
            view = slice_node or hovered_slice_node(self.scene) or slice_node_by_view(self.scene, "Red")
            selection = slice_selection(volume_node, view)
            axis, index = selection.axis, selection.index
            where = selection.describe()
        else:
            axis, index = axial_axis(volume_node), None
            where = f"whole volume ({shape[axis]} {_plane_of_axis(volume_node, axis)} slices)"
        hints = hints_from_markups(volume_node, axis, hint_node)
        if not hints.empty:
            where += f"; hint: {hint_node.GetName()}"

        conversation_id = conversation.id if conversation else uuid.uuid4().hex
        stamp = volume_stamp(volume_node)
        session_id, reset, notice = None, False, None
        with self._lock:
            session = self._sessions.get(conversation_id)
            if session is None and conversation is None:
                spare_key = _spare_key(volume_node.GetID())
                spare = self._sessions.get(spare_key)
                if spare is not None and spare.volume_stamp == stamp and not force_upload:
                    session_id, reset = spare.session_id, True
            elif session is not None and session.volume_stamp == stamp and not force_upload:
                session_id = session.session_id
            elif session is not None:
                notice = NOTICE_VOLUME_CHANGED
        if conversation is not None and conversation.turns and session_id is None and notice is None:
            notice = NOTICE_FRESH_CONTEXT
        upload = None
        if session_id is None:
            upload = Upload(volume_array(volume_node), engine_geometry(volume_node), modality_hint(volume_node))
        return PreparedQuestion(
            request_id=uuid.uuid4().hex, question=text, scope=scope, axis=axis, slice_index=index,
            hints=hints, where=where, volume_node_id=volume_node.GetID(), volume_name=volume_node.GetName(),
            volume_stamp=stamp, conversation_id=conversation_id,
            conversation_node_id=conversation_node.GetID() if conversation_node is not None else None,
            session_id=session_id, reset_session=reset, upload=upload, notice=notice, selection=selection)

    def _reupload(self, prepared: PreparedQuestion) -> PreparedQuestion:
        """Main thread: a copy of ``prepared`` that opens a new engine session."""
        volume = self.scene.GetNodeByID(prepared.volume_node_id)
        if volume is None:
            raise InputError(f"volume {prepared.volume_name!r} was removed from the scene")
        if volume_stamp(volume) != prepared.volume_stamp:
            raise InputError(f"volume {prepared.volume_name!r} changed while the question was "
                             "being answered; ask again")
        upload = Upload(volume_array(volume), engine_geometry(volume), modality_hint(volume))
        had_turns = prepared.conversation_node_id is not None
        return _replace(prepared, session_id=None, reset_session=False, upload=upload,
                        notice=NOTICE_FRESH_CONTEXT if had_turns else prepared.notice)

    # -- step 2: talk to the engine --------------------------------------------------
    def execute(self, prepared: PreparedQuestion, on_text: Callable[[str], None] | None = None,
                cancel_event: threading.Event | None = None,
                on_main: Callable[[Callable[[], Any]], Any] | None = None,
                on_progress: Callable[[Progress], None] | None = None) -> tuple[PreparedQuestion, Answer]:
        """Ask the engine (any thread). Returns the question as finally sent (it may have
        needed a new session) and the answer. ``on_main(fn)`` runs ``fn`` on the main
        thread and returns its result (default: call it here); ``on_progress`` gets the
        engine's :class:`medsegr.client.Progress` reports (in this thread)."""
        run_on_main = on_main or (lambda fn: fn())
        try:
            return prepared, self._execute_once(prepared, on_text, cancel_event, on_progress)
        except SessionExpired:
            if cancel_event is not None and cancel_event.is_set():
                raise RequestCancelled("the request was cancelled", code="cancelled") from None
            again = run_on_main(lambda: self._reupload(prepared))
            return again, self._execute_once(again, on_text, cancel_event, on_progress)

    def _execute_once(self, prepared: PreparedQuestion, on_text: Callable[[str], None] | None,
                      cancel_event: threading.Event | None,
                      on_progress: Callable[[Progress], None] | None = None) -> Answer:
        client = self._require_client()
        session_id = prepared.session_id
        if prepared.upload is not None:
            geometry = prepared.upload.geometry
            session_id = client.create_session(prepared.upload.array, geometry.spacing, geometry.origin,
                                               geometry.direction, modality=prepared.upload.modality)
            self._remember(prepared, session_id)
        else:
            assert session_id is not None
            try:
                if prepared.reset_session:
                    client.reset_conversation(session_id)
                    self._remember(prepared, session_id)
            except EngineError as exc:
                self._forget_on_loss(prepared, exc)
                raise
        if cancel_event is not None and cancel_event.is_set():
            raise RequestCancelled("the request was cancelled", code="cancelled")
        try:
            return client.ask(session_id, prepared.question, volume=prepared.scope == "volume",
                              axis=prepared.axis, slice_index=prepared.slice_index,
                              box=prepared.hints.box, points=prepared.hints.points or None,
                              on_text=on_text, cancel_event=cancel_event, request_id=prepared.request_id,
                              on_progress=on_progress)
        except EngineError as exc:
            if prepared.upload is None:
                self._forget_on_loss(prepared, exc)
            raise

    def _remember(self, prepared: PreparedQuestion, session_id: str) -> None:
        with self._lock:
            spare_key = _spare_key(prepared.volume_node_id)
            spare = self._sessions.get(spare_key)
            if spare is not None and spare.session_id == session_id:
                del self._sessions[spare_key]
            old = self._sessions.get(prepared.conversation_id)
            self._sessions[prepared.conversation_id] = _EngineSession(
                session_id, prepared.volume_node_id, prepared.volume_stamp)
        if old is not None and old.session_id != session_id and self.client is not None:
            _delete_quietly(self.client, [old.session_id])

    def _forget_on_loss(self, prepared: PreparedQuestion, exc: EngineError) -> None:
        if exc.status == 404 and (exc.code in _SESSION_LOST_CODES or "session" in exc.message.lower()):
            with self._lock:
                for key, session in list(self._sessions.items()):
                    if session.session_id == prepared.session_id:
                        del self._sessions[key]
            raise SessionExpired(exc.message, code=exc.code, status=exc.status) from None

    # -- step 3: write the scene --------------------------------------------------
    def apply(self, prepared: PreparedQuestion, answer: Answer) -> AskResult:
        """Add the answer to the scene (main thread); all or nothing."""
        volume = self.scene.GetNodeByID(prepared.volume_node_id)
        if volume is None:
            raise InputError(f"volume {prepared.volume_name!r} was removed from the scene while "
                             "the question was being answered")
        shape = check_volume(volume)
        for segment in answer.segments:
            if tuple(segment.mask.shape) != shape:
                raise InputError(f"the engine's mask for {segment.name!r} has shape {segment.mask.shape}, "
                                 f"the volume {shape}; the volume changed, ask again")
        created: list[Any] = []
        conv_node = (self.scene.GetNodeByID(prepared.conversation_node_id)
                     if prepared.conversation_node_id else None)
        try:
            if conv_node is None:
                conversation = Conversation(id=prepared.conversation_id, title=make_title(prepared.question),
                                            volume_name=volume.GetName(), created_at=now_iso(),
                                            engine=engine_summary(self.engine_info))
            else:
                conversation = scene_store.load(conv_node)
            turn_index = len(conversation.turns)
            segmentation = conv_node and scene_store.segmentation_node(conv_node)
            written: list[segmentation_results.WrittenSegment] = []
            if answer.segments:
                if segmentation is None:
                    segmentation = segmentation_results.create_segmentation_node(
                        self.scene, volume, f"{scene_store.SEGMENTATION_NAME_PREFIX}: {conversation.title}",
                        conversation.id)
                    created.append(segmentation)
                written = segmentation_results.write_segments(
                    segmentation, volume,
                    [segmentation_results.NewSegment(s.name, s.mask) for s in answer.segments],
                    {segmentation_results.TAG_CONVERSATION: conversation.id,
                     segmentation_results.TAG_TURN: str(turn_index),
                     segmentation_results.TAG_REQUEST: answer.request_id})
            conversation.turns.append(Turn(
                question=prepared.question, answer=answer.text, raw_answer=answer.raw_text,
                scope=prepared.scope, axis=answer.axis, slice_index=answer.slice_index, where=prepared.where,
                segments=[SegmentRecord(w.id, w.name, w.color, w.voxels, w.terminology,
                                        measured=s.measured.describe() if s.measured else None)
                          for w, s in zip(written, answer.segments)],
                request_id=answer.request_id, fine_tuned=answer.fine_tuned, timings=dict(answer.timings),
                asked_at=now_iso(), notice=prepared.notice,
                engine_words=[(str(a), str(b)) for a, b in getattr(answer, "engine_words", [])]))
            if self.engine_info and not conversation.engine:
                conversation.engine = engine_summary(self.engine_info)
            if conv_node is None:
                conv_node = scene_store.create_conversation_node(self.scene, conversation, volume)
                created.append(conv_node)
            else:
                scene_store.save(conv_node, conversation)
            if segmentation is not None and scene_store.segmentation_node(conv_node) is None:
                scene_store.set_segmentation_node(conv_node, segmentation)
            study_placement.place_results(self.scene, volume, segmentation, conv_node, [w.id for w in written])
        except Exception:
            for node in reversed(created):
                self.scene.RemoveNode(node)
            raise
        return AskResult(answer=answer, conversation_node=conv_node, segmentation_node=segmentation,
                         segment_ids=[w.id for w in written], turn_index=turn_index, notice=prepared.notice,
                         terminology_note=segmentation_results.uncoded_note(written))

    # -- all three ----------------------------------------------------------------
    def ask(self, volume_node: Any, question: str, scope: str = "slice", slice_node: Any | None = None,
            hint_node: Any | None = None, conversation_node: Any | None = None,
            on_text: Callable[[str], None] | None = None,
            cancel_event: threading.Event | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> AskResult:
        """Ask and wait (blocks the caller: for scripts; the GUI uses :meth:`ask_async`)."""
        prepared = self.prepare(volume_node, question, scope, slice_node, hint_node, conversation_node)
        final, answer = self.execute(prepared, on_text, cancel_event, on_progress=on_progress)
        return self.apply(final, answer)

    def ask_async(self, prepared: PreparedQuestion, dispatch: Callable[..., None],
                  on_done: Callable[[AskResult], None], on_error: Callable[[BaseException], None],
                  on_text: Callable[[str], None] | None = None,
                  on_progress: Callable[[Progress], None] | None = None) -> BackgroundTask:
        """Run :meth:`execute` in a thread and :meth:`apply` on the main thread.

        ``dispatch(fn, *args)`` must run ``fn(*args)`` on the main thread later (the
        widget's :class:`MedSegRLib.background.MainThreadQueue` ``post``); ``on_text``,
        ``on_progress``, ``on_done`` and ``on_error`` are called through it.
        """

        def on_main(function: Callable[[], Any]) -> Any:
            box: dict[str, Any] = {}
            done = threading.Event()

            def run() -> None:
                try:
                    box["value"] = function()
                except BaseException as exc:  # noqa: BLE001 - re-raised in the worker
                    box["error"] = exc
                finally:
                    done.set()

            dispatch(run)
            done.wait()
            if "error" in box:
                raise box["error"]
            return box["value"]

        def work(cancel_event: threading.Event) -> tuple[PreparedQuestion, Answer]:
            streamed = (lambda piece: dispatch(on_text, piece)) if on_text else None
            progress = (lambda report: dispatch(on_progress, report)) if on_progress else None
            return self.execute(prepared, streamed, cancel_event, on_main, progress)

        def finished(result: tuple[PreparedQuestion, Answer]) -> None:
            try:
                applied = self.apply(*result)
            except Exception as exc:  # noqa: BLE001 - reported like any other failure
                on_error(exc)
            else:
                on_done(applied)

        return BackgroundTask(work, finished, on_error, dispatch).start()

    # -- conversations ------------------------------------------------------------
    def conversation(self, conversation_node: Any) -> Conversation:
        return scene_store.load(conversation_node)

    def conversation_nodes(self, volume_node: Any | None = None) -> list[Any]:
        return scene_store.conversation_nodes(self.scene, volume_node)

    def end_conversation(self, conversation_node: Any | None) -> None:
        """The user starts a new conversation: the old one's engine session becomes a
        spare that the next new conversation on the same volume resets and reuses
        (no re-upload, no re-encoding)."""
        if conversation_node is None:
            return
        conversation_id = conversation_node.GetAttribute(scene_store.ATTRIBUTE)
        with self._lock:
            session = self._sessions.pop(conversation_id, None)
            if session is None:
                return
            spare_key = _spare_key(session.volume_node_id)
            previous = self._sessions.get(spare_key)
            self._sessions[spare_key] = _EngineSession(session.session_id, session.volume_node_id,
                                                       session.volume_stamp, spare=True)
        if previous is not None and self.client is not None:
            _delete_quietly(self.client, [previous.session_id])

    def has_engine_session(self, conversation_node: Any) -> bool:
        with self._lock:
            return conversation_node.GetAttribute(scene_store.ATTRIBUTE) in self._sessions

    # -- one-click actions on an answer's segments ----------------------------------------
    def _turn_segments(self, conversation_node: Any, turn_index: int) -> tuple[Conversation, Any, list[str]]:
        conversation = scene_store.load(conversation_node)
        if not 0 <= turn_index < len(conversation.turns):
            raise InputError(f"the conversation has no answer {turn_index + 1}")
        segmentation = scene_store.segmentation_node(conversation_node)
        ids = conversation.segment_ids(turn_index)
        if ids and segmentation is None:
            raise InputError("the conversation's segmentation node was removed from the scene")
        return conversation, segmentation, ids

    def accept_turn(self, conversation_node: Any, turn_index: int) -> list[str]:
        conversation, segmentation, ids = self._turn_segments(conversation_node, turn_index)
        done = segmentation_results.set_accepted(segmentation, ids) if ids else []
        for segment in conversation.turns[turn_index].segments:
            if segment.id in done:
                segment.state = "accepted"
        scene_store.save(conversation_node, conversation)
        return done

    def set_turn_visible(self, conversation_node: Any, turn_index: int, visible: bool) -> list[str]:
        _conversation, segmentation, ids = self._turn_segments(conversation_node, turn_index)
        return segmentation_results.set_visible(segmentation, ids, visible) if ids else []

    def remove_turn_segments(self, conversation_node: Any, turn_index: int) -> list[str]:
        conversation, segmentation, ids = self._turn_segments(conversation_node, turn_index)
        if ids:
            segmentation_results.remove_segments(segmentation, ids)
        for segment in conversation.turns[turn_index].segments:
            if segment.id in ids:
                segment.state = "removed"
        scene_store.save(conversation_node, conversation)
        return ids

    def segment_visible(self, conversation_node: Any, segment_id: str) -> bool:
        segmentation = scene_store.segmentation_node(conversation_node)
        if segmentation is None or segmentation.GetSegmentation().GetSegment(segment_id) is None:
            return False
        return segmentation_results.is_visible(segmentation, segment_id)

    # -- transcript ---------------------------------------------------------------
    def transcript(self, conversation_node: Any) -> str:
        return transcript.to_markdown(scene_store.load(conversation_node))

    # -- DICOM SEG ----------------------------------------------------------------
    def can_export_dicom_seg(self, conversation_node: Any | None) -> bool:
        """True when the conversation's volume came from DICOM and it has a segmentation."""
        return (conversation_node is not None and scene_store.segmentation_node(conversation_node) is not None
                and dicom_export.can_export(scene_store.volume_node(conversation_node)))

    def export_dicom_seg(self, conversation_node: Any, path: str | os.PathLike[str],
                         file_for_instance: Callable[[str], str] | None = None) -> Path:
        """Write the conversation's segments as a DICOM SEG referencing the source series
        (see :mod:`MedSegRLib.dicom_export`)."""
        return dicom_export.export_conversation(conversation_node, path, file_for_instance)

    def export_transcript(self, conversation_node: Any, path: str | os.PathLike[str]) -> Path:
        """Write the conversation as Markdown (atomically: :func:`medsegr.io.atomic.atomic_write_text`)."""
        target = Path(path)
        text = self.transcript(conversation_node)
        if not target.parent.is_dir():
            raise InputError(f"folder {str(target.parent)!r} does not exist")
        return atomic_write_text(target, text)


def volume_stamp(volume_node: Any) -> tuple:
    """Changes whenever the voxels or the geometry of the volume change."""
    image = volume_node.GetImageData()
    return (image.GetMTime() if image is not None else 0,
            tuple(np.round(ijk_to_ras(volume_node).ravel(), 9)),
            volume_node.GetTransformNodeID())


def axial_axis(volume_node: Any) -> int:
    """The numpy axis whose slices are closest to axial (as the engine resolves "axial")."""
    direction = np.asarray(engine_geometry(volume_node).direction).reshape(3, 3)
    return 2 - int(np.argmax(np.abs(direction[2, :])))


def _plane_of_axis(volume_node: Any, axis: int) -> str:
    direction = np.asarray(engine_geometry(volume_node).direction).reshape(3, 3)
    lps = int(np.argmax(np.abs(direction[:, 2 - axis])))
    return ("sagittal", "coronal", "axial")[lps]


def _spare_key(volume_node_id: str) -> str:
    return f"spare:{volume_node_id}"


def _replace(prepared: PreparedQuestion, **changes: Any) -> PreparedQuestion:
    values = {**prepared.__dict__, **changes}
    return PreparedQuestion(**values)


def _delete_quietly(client: EngineClient, session_ids: list[str]) -> None:
    """Delete engine sessions in the background; failures do not matter."""

    def run() -> None:
        for session_id in session_ids:
            try:
                client.delete_session(session_id)
            except Exception:  # noqa: BLE001 - the engine may be gone already
                pass

    threading.Thread(target=run, name="medsegr-cleanup", daemon=True).start()


__all__ = ["AskResult", "MedSegRChatLogic", "PreparedQuestion", "SessionExpired", "axial_axis",
           "engine_summary", "volume_stamp"]
