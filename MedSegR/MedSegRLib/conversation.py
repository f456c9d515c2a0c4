"""A chat about one volume: its turns, the segments each answer produced, as JSON.

The conversation is what the scene stores (see :mod:`MedSegRLib.scene_store`), so
saving and reopening a scene brings the chat back next to its segments. The JSON is
versioned (``format``) and read strictly: a damaged record raises
:class:`ConversationFormatError` with the field that is wrong.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

FORMAT = "medsegr.conversation/1"
TITLE_LENGTH = 48

SEGMENT_STATES = ("proposed", "accepted", "removed")


class ConversationFormatError(ValueError):
    """A stored conversation cannot be read."""


@dataclass
class SegmentRecord:
    """One segment an answer produced, as the chat shows it."""

    id: str
    name: str
    color: tuple[float, float, float]
    voxels: int
    terminology: str | None = None
    state: str = "proposed"  # proposed | accepted | removed
    #: what the engine measured on the mask, one line (None from an engine that does not
    #: measure, or a conversation saved before it did)
    measured: str | None = None


@dataclass
class Turn:
    """A question and its answer."""

    question: str
    answer: str
    raw_answer: str
    scope: str  # "slice" | "volume"
    axis: int
    slice_index: int | None
    where: str  # human description of the slice or volume asked about
    segments: list[SegmentRecord] = field(default_factory=list)
    request_id: str = ""
    fine_tuned: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    asked_at: str = ""
    notice: str | None = None  # e.g. "the engine did not remember earlier turns"
    #: words of the answer the engine picked from its measurements where the model had
    #: written another: [the model's word, the engine's word] pairs
    engine_words: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Conversation:
    """All turns of one chat about one volume."""

    id: str
    title: str
    volume_name: str
    created_at: str
    turns: list[Turn] = field(default_factory=list)
    engine: dict[str, Any] = field(default_factory=dict)  # engine version, model, device

    @classmethod
    def start(cls, volume_name: str, first_question: str) -> "Conversation":
        return cls(id=uuid.uuid4().hex, title=make_title(first_question), volume_name=volume_name,
                   created_at=now_iso())

    def segment_ids(self, turn_index: int, include_removed: bool = False) -> list[str]:
        turn = self.turns[turn_index]
        return [s.id for s in turn.segments if include_removed or s.state != "removed"]

    def find_segment(self, segment_id: str) -> SegmentRecord | None:
        for turn in self.turns:
            for segment in turn.segments:
                if segment.id == segment_id:
                    return segment
        return None

    def to_json(self) -> str:
        record = {"format": FORMAT, **asdict(self)}
        return json.dumps(record, ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Conversation":
        try:
            record = json.loads(text)
        except (TypeError, json.JSONDecodeError) as exc:
            raise ConversationFormatError(f"the stored conversation is not JSON ({exc})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            found = record.get("format") if isinstance(record, dict) else type(record).__name__
            raise ConversationFormatError(f"the stored conversation has format {found!r}, "
                                          f"expected {FORMAT!r}")
        try:
            turns = [_turn(t) for t in _get(record, "turns", list)]
            return cls(id=_get(record, "id", str), title=_get(record, "title", str),
                       volume_name=_get(record, "volume_name", str),
                       created_at=_get(record, "created_at", str), turns=turns,
                       engine=dict(_get(record, "engine", dict)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConversationFormatError(f"the stored conversation is damaged: {exc}") from None


def _get(record: dict, key: str, kind: type) -> Any:
    if key not in record:
        raise KeyError(f"missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise TypeError(f"field {key!r} should be {kind.__name__}, got {type(value).__name__}")
    return value


def _optional_int(record: dict, key: str) -> int | None:
    value = record.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"field {key!r} should be an integer or null")
    return value


def _segment(record: Any) -> SegmentRecord:
    if not isinstance(record, dict):
        raise TypeError("a segment should be an object")
    color = _get(record, "color", list)
    if len(color) != 3 or not all(isinstance(c, (int, float)) for c in color):
        raise ValueError("a segment colour should be three numbers")
    state = _get(record, "state", str)
    if state not in SEGMENT_STATES:
        raise ValueError(f"unknown segment state {state!r}")
    term = record.get("terminology")
    if term is not None and not isinstance(term, str):
        raise TypeError("field 'terminology' should be a string or null")
    measured = record.get("measured")
    if measured is not None and not isinstance(measured, str):
        raise TypeError("field 'measured' should be a string or null")
    return SegmentRecord(id=_get(record, "id", str), name=_get(record, "name", str),
                         color=tuple(float(c) for c in color),  # type: ignore[arg-type]
                         voxels=int(_get(record, "voxels", int)), terminology=term, state=state,
                         measured=measured)


def _turn(record: Any) -> Turn:
    if not isinstance(record, dict):
        raise TypeError("a turn should be an object")
    scope = _get(record, "scope", str)
    if scope not in ("slice", "volume"):
        raise ValueError(f"unknown scope {scope!r}")
    notice = record.get("notice")
    words = record.get("engine_words", [])
    if not isinstance(words, list) or not all(
            isinstance(w, (list, tuple)) and len(w) == 2 and all(isinstance(x, str) for x in w) for w in words):
        raise TypeError("field 'engine_words' should be a list of [model word, engine word] pairs")
    return Turn(question=_get(record, "question", str), answer=_get(record, "answer", str),
                raw_answer=_get(record, "raw_answer", str), scope=scope,
                axis=int(_get(record, "axis", int)), slice_index=_optional_int(record, "slice_index"),
                where=_get(record, "where", str),
                segments=[_segment(s) for s in _get(record, "segments", list)],
                request_id=str(record.get("request_id", "")),
                fine_tuned=bool(record.get("fine_tuned", False)),
                timings={str(k): float(v) for k, v in dict(record.get("timings", {})).items()},
                asked_at=str(record.get("asked_at", "")),
                notice=notice if isinstance(notice, str) else None,
                engine_words=[(str(a), str(b)) for a, b in words])


def make_title(question: str) -> str:
    text = " ".join(question.split())
    return text if len(text) <= TITLE_LENGTH else text[: TITLE_LENGTH - 1].rstrip() + "…"


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
