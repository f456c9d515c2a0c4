"""Server settings: limits and defaults, in one typed object."""

from __future__ import annotations

from dataclasses import dataclass

from medsegr.errors import InputError
from medsegr.io.limits import DEFAULT_MAX_BYTES, DEFAULT_MAX_SIDE, DEFAULT_MAX_VOXELS, ImageLimits
from medsegr.prompts import MAX_QUESTION_CHARS

#: default TCP port of ``medsegr serve``
DEFAULT_PORT = 8765
#: the shortest bearer token the server accepts
MIN_TOKEN_CHARS = 16

MIB = 1024 * 1024


@dataclass(frozen=True)
class BodyTiming:
    """Deadlines for reading one request body (seconds; ``min_rate`` in bytes/s): no
    data for ``read_timeout_s``, not complete within ``deadline_s``, or, after
    ``rate_grace_s``, an average rate below ``min_rate``."""

    read_timeout_s: float = 30.0
    deadline_s: float = 600.0
    min_rate: float = 16 * 1024
    rate_grace_s: float = 10.0


@dataclass
class ServerSettings:
    """Everything the application needs besides the loaded pipeline.

    Sizes are in bytes, durations in seconds.
    """

    #: bearer token every request except ``/v1/health`` must carry (None: no check,
    #: only allowed on a loopback address)
    token: str | None = None
    #: largest request body: an uploaded image (NRRD, usually gzip-compressed)
    max_upload_bytes: int = 1024 * MIB
    #: largest JSON request body (questions, hints)
    max_json_bytes: int = 64 * 1024
    #: most voxels an uploaded image may have (the same default as ``medsegr ask``)
    max_voxels: int = DEFAULT_MAX_VOXELS
    #: most bytes an uploaded image's decoded voxel data may take
    max_bytes: int = DEFAULT_MAX_BYTES
    #: longest side of an uploaded image, in voxels
    max_side: int = DEFAULT_MAX_SIDE
    #: longest question, in characters
    max_question_chars: int = MAX_QUESTION_CHARS
    #: requests that may wait for the model (the running one not counted); more get 503
    max_queue: int = 16
    #: a request that has not finished this long after it was queued fails with 504
    request_timeout_s: float = 600.0
    #: sessions unused this long are deleted
    session_idle_s: float = 1800.0
    #: total memory all sessions may hold (images, embeddings, KV caches, masks);
    #: least recently used sessions are evicted to stay below it
    max_session_bytes: int = 4096 * MIB
    #: most sessions held at once (least recently used evicted first)
    max_sessions: int = 64
    #: how many answers per session keep their masks available for download
    keep_answers: int = 8
    #: seconds between keep-alive comments on an answer stream
    ping_interval_s: float = 2.0
    #: seconds a 503 (queue full) tells the client to wait (``Retry-After``)
    retry_after_s: int = 2
    #: a request's line and headers must arrive within this long of the connection
    #: opening (or of the previous answer on a kept-alive connection); else 408 and close
    header_timeout_s: float = 10.0
    #: an idle kept-alive connection is closed after this long
    keep_alive_s: float = 5.0
    #: largest request line plus headers
    max_header_bytes: int = 16 * 1024
    #: a request body that sends nothing for this long gets 408 (the connection is closed)
    body_read_timeout_s: float = 30.0
    #: a request body must be complete within this long
    body_deadline_s: float = 600.0
    #: after ``upload_rate_grace_s``, a body must arrive at this average rate or more
    min_upload_rate: float = 16 * 1024
    upload_rate_grace_s: float = 10.0

    def __post_init__(self) -> None:
        if self.token is not None:
            if len(self.token) < MIN_TOKEN_CHARS:
                raise InputError(f"the token must have at least {MIN_TOKEN_CHARS} characters "
                                 "(make one with: python -c \"import secrets; "
                                 "print(secrets.token_urlsafe(32))\")")
            if any(c.isspace() for c in self.token) or not self.token.isprintable():
                raise InputError("the token must be printable text without spaces")
        positive = ("max_upload_bytes", "max_json_bytes", "max_voxels", "max_bytes", "max_side",
                    "max_question_chars",
                    "max_queue", "request_timeout_s", "session_idle_s", "max_session_bytes",
                    "max_sessions", "keep_answers", "ping_interval_s", "retry_after_s",
                    "header_timeout_s", "keep_alive_s", "max_header_bytes", "body_read_timeout_s",
                    "body_deadline_s", "min_upload_rate", "upload_rate_grace_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise InputError(f"server setting {name} must be positive, got {getattr(self, name)}")

    def image_limits(self) -> ImageLimits:
        """The limits on uploaded images (shared with ``medsegr ask``)."""
        return ImageLimits(max_voxels=self.max_voxels, max_bytes=self.max_bytes,
                           max_side=self.max_side)

    def limits(self) -> dict[str, float | int]:
        """The limits a client may want to know (``/v1/info``)."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_json_bytes": self.max_json_bytes,
                "max_voxels": self.max_voxels, "max_bytes": self.max_bytes,
                "max_side": self.max_side, "max_question_chars": self.max_question_chars,
                "max_queue": self.max_queue, "request_timeout_s": self.request_timeout_s,
                "session_idle_s": self.session_idle_s,
                "max_session_bytes": self.max_session_bytes, "max_sessions": self.max_sessions,
                "keep_answers": self.keep_answers, "header_timeout_s": self.header_timeout_s,
                "body_read_timeout_s": self.body_read_timeout_s,
                "body_deadline_s": self.body_deadline_s, "min_upload_rate": self.min_upload_rate}

    def body_timing(self) -> BodyTiming:
        """The deadlines for reading request bodies."""
        return BodyTiming(read_timeout_s=self.body_read_timeout_s,
                          deadline_s=self.body_deadline_s, min_rate=self.min_upload_rate,
                          rate_grace_s=self.upload_rate_grace_s)
