"""The session store: one chat session per uploaded image, bounded in time and memory.

* Sessions unused for ``session_idle_s`` are deleted (a sweep runs periodically and
  before every new session).
* The memory all sessions hold together (image, normalised copy, slice embeddings,
  KV cache, the masks kept for download) stays below ``max_session_bytes``, and
  there are at most ``max_sessions``: the least recently used sessions are evicted
  first. A session with a request queued or running is never evicted.
* Each answer's masks are kept, bit-packed, for the last ``keep_answers`` answers of
  a session, so that clients can download them.

A client that uses an expired or evicted session gets a 404 that says so. All
methods are thread-safe (the model worker thread and the event loop share the store).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsegr.server.errors import ApiError
from medsegr.vocabulary import segment_terminology

log = logging.getLogger("medsegr.server")

#: how many ids of removed sessions are remembered, to say why a session is gone
_REMEMBER_GONE = 1024


@dataclass
class StoredMask:
    """One segment's mask, bit-packed (``np.packbits`` of the C-order ``(z, y, x)`` mask)."""

    segment_id: str
    name: str
    index: int
    packed: np.ndarray
    shape: tuple[int, int, int]

    def unpack(self) -> np.ndarray:
        count = int(np.prod(self.shape))
        return np.unpackbits(self.packed, count=count).reshape(self.shape).astype(bool)


@dataclass
class SessionEntry:
    """A chat session and its bookkeeping."""

    id: str
    session: Any  # medsegr.pipeline.ChatSession
    created: float
    last_used: float
    #: requests of this session that are queued or running
    active: int = 0
    #: request id -> its segment ids (oldest first)
    answers: "OrderedDict[str, list[str]]" = field(default_factory=OrderedDict)
    masks: dict[str, StoredMask] = field(default_factory=dict)

    def memory_bytes(self) -> int:
        masks = list(self.masks.values())  # the model thread may be adding some
        return int(self.session.memory_bytes()) + sum(m.packed.nbytes for m in masks)

    def describe(self, now: float) -> dict[str, Any]:
        image = self.session.image
        return {"session_id": self.id, "shape": list(image.shape), "spacing": list(image.spacing),
                "origin": list(image.origin), "direction": list(image.direction),
                "modality": image.modality, "is_2d": bool(image.is_2d),
                "turns": len(self.session.turns), "encoded_slices": int(self.session.encoder_calls),
                "memory_bytes": self.memory_bytes(), "idle_s": round(now - self.last_used, 3)}


class SessionStore:
    """Sessions by id, in least-recently-used order."""

    def __init__(self, max_bytes: int, idle_s: float, max_sessions: int, keep_answers: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = int(max_bytes)
        self.idle_s = float(idle_s)
        self.max_sessions = int(max_sessions)
        self.keep_answers = int(keep_answers)
        self.clock = clock
        self._entries: OrderedDict[str, SessionEntry] = OrderedDict()
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> why it is gone
        self._lock = threading.RLock()
        self.evictions = {"expired": 0, "memory": 0, "count": 0}

    # -- lifecycle -----------------------------------------------------------------
    def add(self, session: Any) -> SessionEntry:
        """Hold a new session; evicts idle and least recently used ones as needed."""
        now = self.clock()
        entry = SessionEntry(id=uuid.uuid4().hex, session=session, created=now, last_used=now)
        with self._lock:
            self.sweep()
            self._entries[entry.id] = entry
            self.enforce_limits(keep=entry)
        return entry

    def get(self, session_id: str) -> SessionEntry:
        """The session (marked as just used) or a 404 that says why it is not there."""
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or self._expired(entry, self.clock()):
                if entry is not None:
                    self._remove(entry, "expired")
                raise self._unknown(session_id)
            entry.last_used = self.clock()
            self._entries.move_to_end(session_id)
            return entry

    def delete(self, session_id: str) -> None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None:
                raise self._unknown(session_id)
            self._remove(entry, "deleted")

    def acquire(self, entry: SessionEntry) -> None:
        """A request of this session was queued: it must not be evicted meanwhile."""
        with self._lock:
            entry.active += 1
            entry.last_used = self.clock()

    def release(self, entry: SessionEntry) -> None:
        with self._lock:
            entry.active = max(0, entry.active - 1)
            entry.last_used = self.clock()
            if entry.id in self._entries:
                self._entries.move_to_end(entry.id)
                self.enforce_limits(keep=entry)

    def sweep(self) -> int:
        """Delete sessions idle for longer than ``idle_s``; returns how many."""
        with self._lock:
            now = self.clock()
            expired = [e for e in self._entries.values() if self._expired(e, now)]
            for entry in expired:
                self._remove(entry, "expired")
            return len(expired)

    def enforce_limits(self, keep: SessionEntry | None = None) -> None:
        """Evict least recently used idle sessions until the count and memory bounds hold
        (``keep`` and sessions with active requests are never evicted)."""
        with self._lock:
            while len(self._entries) > self.max_sessions:
                victim = self._victim(keep)
                if victim is None:
                    break
                self._remove(victim, "count")
            total = self.total_bytes()
            while total > self.max_bytes:
                victim = self._victim(keep)
                if victim is None:
                    break
                total -= victim.memory_bytes()
                self._remove(victim, "memory")

    def room_for(self, entry: SessionEntry, extra_bytes: int) -> bool:
        """Whether ``entry`` can grow by ``extra_bytes`` within the memory bound once every
        other idle session is evicted."""
        with self._lock:
            pinned = sum(e.memory_bytes() for e in self._entries.values()
                         if e is entry or e.active > 0)
            return pinned + extra_bytes <= self.max_bytes

    # -- answers and masks -----------------------------------------------------------
    def store_answer(self, entry: SessionEntry, request_id: str, segments: list[Any]
                     ) -> list[dict[str, Any]]:
        """Keep an answer's masks for download; returns ``[{id, name, index, voxels,
        terminology, measured}]``."""
        stored = []
        records = []
        for seg in segments:
            mask = np.ascontiguousarray(seg.mask, dtype=bool)
            item = StoredMask(segment_id=uuid.uuid4().hex[:20], name=seg.name, index=seg.index,
                              packed=np.packbits(mask.ravel()),
                              shape=tuple(int(n) for n in mask.shape))  # type: ignore[arg-type]
            stored.append(item)
            records.append({"id": item.segment_id, "name": seg.name, "index": int(seg.index),
                            "voxels": int(mask.sum()), "terminology": segment_terminology(seg.name),
                            "measured": seg.measured.to_dict() if seg.measured else None})
        with self._lock:
            for item in stored:
                entry.masks[item.segment_id] = item
            entry.answers[request_id] = [item.segment_id for item in stored]
            while len(entry.answers) > self.keep_answers:
                _, old = entry.answers.popitem(last=False)
                for segment_id in old:
                    entry.masks.pop(segment_id, None)
        return records

    def mask(self, session_id: str, segment_id: str) -> tuple[SessionEntry, StoredMask]:
        with self._lock:
            entry = self.get(session_id)
            item = entry.masks.get(segment_id)
            if item is None:
                raise ApiError(404, "unknown_segment",
                               f"no segment {segment_id!r} in session {session_id} (masks are "
                               f"kept for the last {self.keep_answers} answers of a session)")
            return entry, item

    # -- information ----------------------------------------------------------------
    def total_bytes(self) -> int:
        with self._lock:
            return sum(e.memory_bytes() for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"sessions": len(self._entries), "session_bytes": self.total_bytes(),
                    "max_session_bytes": self.max_bytes, "max_sessions": self.max_sessions,
                    "evicted": dict(self.evictions)}

    # -- internals -------------------------------------------------------------------
    def _expired(self, entry: SessionEntry, now: float) -> bool:
        return entry.active == 0 and now - entry.last_used > self.idle_s

    def _victim(self, keep: SessionEntry | None) -> SessionEntry | None:
        for entry in self._entries.values():  # least recently used first
            if entry is not keep and entry.active == 0:
                return entry
        return None

    def _remove(self, entry: SessionEntry, why: str) -> None:
        self._entries.pop(entry.id, None)
        entry.masks.clear()
        entry.answers.clear()
        self._gone[entry.id] = why
        while len(self._gone) > _REMEMBER_GONE:
            self._gone.popitem(last=False)
        if why in self.evictions:
            self.evictions[why] += 1
        log.info("session %s %s", entry.id,
                 {"expired": f"expired after {self.idle_s:g} s idle",
                  "memory": "evicted to stay within the session memory limit",
                  "count": "evicted to stay within the session count limit",
                  "deleted": "deleted"}[why])

    def _unknown(self, session_id: str) -> ApiError:
        why = self._gone.get(session_id)
        reason = {"expired": f"it expired after {self.idle_s:g} s without use",
                  "memory": "it was evicted to free memory for newer sessions",
                  "count": "it was evicted to make room for newer sessions",
                  "deleted": "it was deleted"}.get(why or "", "")
        message = f"no session {session_id!r}"
        if reason:
            message += f": {reason}; upload the image again"
        return ApiError(404, "unknown_session", message)
